"""What the output convolution's channels mean (``model.head``): one sigmoid logit, or Dirichlet evidence."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from medtextseg.models.evidential import evidence_from_logits, evidential_logits


class OutputHead(Protocol):
    channels: int  # of the output convolution

    def __call__(self, raw: Tensor) -> tuple[Tensor, Tensor | None]:
        """raw: [B, channels, *spatial]. Returns the logits [B, 1, *spatial] and the evidence (or None)."""


class SigmoidHead:
    """One logit per voxel, as it comes."""

    channels = 1

    def __call__(self, raw: Tensor) -> tuple[Tensor, Tensor | None]:
        return raw, None


class EvidentialHead:
    """Softplus evidence for {background, target}; the logit of the expected target probability besides."""

    channels = 2

    def __call__(self, raw: Tensor) -> tuple[Tensor, Tensor | None]:
        evidence = evidence_from_logits(raw)
        return evidential_logits(evidence), evidence


OUTPUT_HEADS: dict[str, OutputHead] = {"sigmoid": SigmoidHead(), "evidential": EvidentialHead()}
