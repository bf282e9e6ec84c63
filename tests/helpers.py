"""Small helpers shared by tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import torch
from torch import nn

from medtextseg.text.batch import PromptEmbedding


def as_if_trained(model: nn.Module, std: float = 0.5, seed: int = 0) -> nn.Module:
    """Give the text conditioners' (and the prompt head's) zero-initialised weight matrices random values, as
    after training, so that the prompt changes the answer (an untrained FiLM / CBN is the identity by design, an
    untrained prompt head the same head for every prompt)."""
    generator = torch.Generator().manual_seed(seed)
    text_paths = [module for module in (model.conditioners, model.prompt_head) if module is not None]
    with torch.no_grad():
        for parameter in (p for module in text_paths for p in module.parameters()):
            if parameter.ndim > 1 and not parameter.any():  # weights only: random biases would shift every answer
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


class CountingEncoder:
    """A fake encoder: embedding = the prompt's character codes, so every prompt differs."""

    name = "counting"
    dim = 4

    def __init__(self) -> None:
        self.calls: list[str] = []

    def encode(self, prompts):
        self.calls += prompts
        out = []
        for p in prompts:
            codes = torch.tensor([float(ord(c)) for c in p[:4].ljust(4)])
            out.append(PromptEmbedding(codes / codes.norm(), codes[None].repeat(len(p.split()), 1)))
        return out


def text_checkpoint(folder, in_channels: int = 2, overrides: tuple[str, ...] = (), seed: int = 0):
    """``folder/best.pt``: a tiny 3D model (channels 4, 8; patch 16 x 16 x 8) whose answer depends on the prompt
    (:func:`as_if_trained`), as a run folder holds it; ``seed`` draws its weights."""
    from pathlib import Path

    from medtextseg.config import Config
    from medtextseg.models.checkpoint import save_checkpoint
    from medtextseg.models.factory import create_model

    config = Config.load("default", ["model.channels=[4,8]", "model.strides=[[1,1,1],[2,2,2]]",
                                     "data.patch_size=[16,16,8]", f"model.in_channels={in_channels}", *overrides])
    torch.manual_seed(seed)
    model = as_if_trained(create_model(config.model, 384), seed=seed)
    return save_checkpoint(Path(folder) / "best.pt", {"model": model.state_dict(), "config": config.model_dump(),
                                                      "text_dim": 384,
                                                      "channel_names": ["t2w", "adc", "hbv"][:in_channels]})


def repack(package, out, replace: dict | None = None, extra: tuple = (), digests: bool = True):
    """A copy of a model package with members replaced (name -> bytes) and raw ``extra`` members appended
    ((name or ZipInfo, bytes), left out of metadata.json); ``digests`` recomputes metadata.json's SHA-256 of the
    members, as an attacker who edits a package would."""
    import hashlib
    import json
    import zipfile

    with zipfile.ZipFile(package) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files |= replace or {}
    if digests:
        metadata = json.loads(files["metadata.json"])
        metadata["medtextseg"]["files"] = {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                                           for name, data in files.items() if name != "metadata.json"}
        files["metadata.json"] = json.dumps(metadata).encode()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in [*files.items(), *extra]:
            archive.writestr(name, data)
    return out


class Payload:
    """Pickles as a call that creates a file: what a hostile checkpoint would do (a test checks the file is never
    made)."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (self.marker,))


def link_member(name: str):
    """A zip member header that says: a symbolic link."""
    import stat
    import zipfile

    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info
