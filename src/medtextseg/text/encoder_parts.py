"""What every text encoder kind shares: quiet loading, frozen weights, one embedding per prompt, one-line errors.

The kinds (:mod:`medtextseg.text.encoders`' Hugging Face BERT-style folders, :mod:`medtextseg.text.clip`,
:mod:`medtextseg.text.sentence_encoder`) import these; :mod:`medtextseg.text.encoders` picks the kind.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import Tensor

from medtextseg.text.batch import PromptEmbedding
from medtextseg.utils.errors import MedTextSegError


@contextlib.contextmanager
def quiet_loading():
    """Hugging Face's progress bars off (noise for a model that loads in a second) and its loading reports
    (e.g. the unused vision weights of a full CLIP model) silenced while loading."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none), for one-line messages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode with every parameter frozen."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def prompt_embeddings(pooled: Tensor, tokens: Tensor, mask: Tensor) -> list[PromptEmbedding]:
    """Split a batch into one :class:`PromptEmbedding` per prompt.

    Args:
        pooled: [B, D] sentence embeddings (L2-normalised here).
        tokens: [B, T, D] token states.
        mask: [B, T] bool or 0/1, True where a real token is.
    """
    pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
    tokens, mask = tokens.float(), mask.bool()
    return [PromptEmbedding(pooled[i].clone(), tokens[i, mask[i]].clone()) for i in range(pooled.shape[0])]


def read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MedTextSegError(f"text encoder file {path}: not readable JSON ({error})") from None
    if not isinstance(content, dict):
        raise MedTextSegError(f"text encoder file {path}: expected a JSON object")
    return content


__all__ = ["first_line", "frozen", "prompt_embeddings", "quiet_loading", "read_json"]
