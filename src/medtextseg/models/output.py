"""``ModelOutput``: the one output type of every model, in training and in evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ModelOutput:
    """What a segmenter returns for B (image, prompt) pairs.

    Attributes:
        logits: [B, K, *spatial] mask logits (K=1: sigmoid head, the prompted target vs the rest).
        presence: [B] logit that the prompted target exists in the image at all, or None.
        deep_supervision: lower-resolution logits, highest resolution first (may be empty).
        similarity: stage name -> pixel-text similarity map [B, 1, *spatial_stage].
        evidence: [B, K, *spatial] non-negative Dirichlet evidence of an evidential head, or None.
    """

    logits: Tensor
    presence: Tensor | None = None
    deep_supervision: list[Tensor] = field(default_factory=list)
    similarity: dict[str, Tensor] = field(default_factory=dict)
    evidence: Tensor | None = None
