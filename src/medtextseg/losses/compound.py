"""Compound losses: sums of other loss terms, each kept whole so the composite can apply its own rules."""

from __future__ import annotations

from torch import Tensor

from medtextseg.losses.base import LossTerm
from medtextseg.losses.pixelwise import BCELoss
from medtextseg.losses.region import DiceLoss


class DiceBCELoss(LossTerm):
    """Dice + BCE per sample, 1:1 (the FiLM+CBN paper's DiceBCE): ``DiceLoss`` + ``BCELoss``.

    Called on its own it returns their sum [B] for every sample, an empty target's Dice included. Inside the
    composite loss (``loss.terms: {dice_bce: w}``) its ``components()`` are used instead: the Dice part is
    averaged over samples with a non-empty target and the BCE part over all samples, exactly as
    ``{dice: w, bce: w}``.

    Args:
        smooth: Dice smoothing, > 0.
        squared: squared Dice denominator.
        label_smoothing: BCE label smoothing in [0, 1).
    """

    scope = "compound"

    def __init__(self, smooth: float = 1e-5, squared: bool = False, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.dice = DiceLoss(smooth=smooth, squared=squared)
        self.bce = BCELoss(label_smoothing=label_smoothing)

    def components(self) -> dict[str, LossTerm]:
        return {"dice": self.dice, "bce": self.bce}

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return self.dice(logits, target, weight) + self.bce(logits, target, weight)
