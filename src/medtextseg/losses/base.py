"""What every loss term shares: the call contract, input checks and the weighted per-sample reductions.

A loss term is an ``nn.Module`` called as ``term(logits, target, weight=None)`` on B (image, prompt) samples:

* ``logits``: [B, 1, *spatial] raw mask logits of a sigmoid head (2D or 3D spatial; region and pixel-wise
  terms take any number of spatial axes), any float dtype;
* ``target``: [B, 1, *spatial] binary mask in {0, 1} (soft values in [0, 1] are accepted);
* ``weight``: optional non-negative voxel weight map broadcastable to the target, e.g. a sparse-label map with
  0 on unlabelled voxels; ``None`` weighs every voxel 1;

and returns the per-sample loss [B] (float32), so the caller decides which samples to average.

A few terms read more of the model's output than the mask logits (``OutputLossTerm``: the pixel-text
similarity maps, the Dirichlet evidence); they are called as ``term(output, target, weight=None)`` with the
whole ``ModelOutput`` and the full-resolution target, once per step (not per deep-supervision level).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import Tensor, nn

from medtextseg.utils.errors import MedTextSegError

if TYPE_CHECKING:  # type hints only: the loss terms sit below the config and the models (docs/architecture.md)
    from medtextseg.models.output import ModelOutput

Scope = Literal["region", "pixel", "compound"]


class LossTerm(nn.Module):
    """Base of every loss term; ``scope`` tells the composite loss which samples a term is averaged over.

    * ``"region"``: a ratio of soft counts over the whole mask (Dice, Tversky, ...): undefined on an empty
      target, so averaged only over samples whose target is not empty.
    * ``"pixel"``: a mean of per-voxel losses (BCE, focal, ...): defined everywhere, averaged over all samples.
    * ``"compound"``: a sum of other terms, listed by ``components()``; each keeps its own scope.
    """

    scope: ClassVar[Scope]

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class OutputLossTerm(LossTerm):
    """A loss term on more of the model's output than the mask logits; ``scope`` as for ``LossTerm``."""

    def forward(self, output: ModelOutput, target: Tensor, weight: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """output: the model's ``ModelOutput``; target: [B, 1, *spatial]; weight: as for ``LossTerm``.
        Returns the per-sample loss [B]."""
        raise NotImplementedError


def check_inputs(logits: Tensor, target: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Return float32 ``(logits, target, weight)`` with ``weight`` expanded to the target's shape.

    Raises:
        MedTextSegError: logits and target differ in shape, are not [B, 1, *spatial], or the
            weight map does not broadcast to the target or has a negative value.
    """
    if logits.shape != target.shape:
        raise MedTextSegError(f"loss: logits {list(logits.shape)} and target {list(target.shape)} must have the "
                              "same shape [B, 1, *spatial]")
    if logits.ndim < 3 or logits.shape[1] != 1:
        raise MedTextSegError(f"loss: expected logits [B, 1, *spatial] of a sigmoid head (one channel), got "
                              f"{list(logits.shape)}")
    if weight is not None:
        try:
            weight = torch.broadcast_to(weight, target.shape).float()
        except RuntimeError:
            raise MedTextSegError(f"loss: weight map {list(weight.shape)} does not broadcast to the target "
                                  f"{list(target.shape)}") from None
        if bool((weight < 0).any()):
            raise MedTextSegError(f"loss: the weight map must be non-negative, got a minimum of {float(weight.min())}")
    return logits.float(), target.float(), weight


def spatial_sum(values: Tensor, weight: Tensor | None) -> Tensor:
    """Per-sample sum of ``weight * values`` over every axis but the first: [B, ...] -> [B]."""
    if weight is not None:
        values = values * weight
    return values.flatten(1).sum(1)


def weighted_voxel_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    """Per-sample weighted mean of per-voxel ``values`` [B, ...] -> [B].

    With weights, sum(w * v) / sum(w): a voxel of weight 0 counts as if it were not there. A sample whose
    weights are all 0 gets 0 (the composite loss leaves such samples out of the batch mean).
    """
    if weight is None:
        return values.flatten(1).mean(1)
    total = weight.flatten(1).sum(1)
    return spatial_sum(values, weight) / total.clamp(min=torch.finfo(total.dtype).tiny)


def check_range(owner: object, name: str, value: float, low: float, high: float = math.inf,
                low_inclusive: bool = True, high_inclusive: bool = True) -> None:
    """Raise ``MedTextSegError`` naming the class, the argument and the rule when ``value`` is out of range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MedTextSegError(f"{type(owner).__name__}: {name} must be a number, got {value!r}")
    above = value >= low if low_inclusive else value > low
    below = value <= high if high_inclusive else value < high
    if not (above and below):
        rule = f"{'>=' if low_inclusive else '>'} {low}"
        if high != math.inf:
            rule += f" and {'<=' if high_inclusive else '<'} {high}"
        raise MedTextSegError(f"{type(owner).__name__}: {name} must be {rule}, got {value!r}")
