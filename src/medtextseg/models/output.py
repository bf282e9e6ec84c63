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

    def float(self) -> ModelOutput:
        """The same output in float32 (after a mixed-precision forward: losses sum over every voxel, which
        bfloat16's 8-bit mantissa cannot do)."""
        return ModelOutput(logits=self.logits.float(),
                           presence=None if self.presence is None else self.presence.float(),
                           deep_supervision=[level.float() for level in self.deep_supervision],
                           similarity={name: value.float() for name, value in self.similarity.items()},
                           evidence=None if self.evidence is None else self.evidence.float())
