"""Region losses: one minus an overlap ratio of soft counts, per sample (Dice, Jaccard, Tversky, focal-Tversky).

With p = sigmoid(logits) in [0, 1], g the target and w the voxel weights (1 without a weight map), every sum
runs over the voxels of one sample:

    TP = sum w p g        FP = sum w p (1 - g)        FN = sum w (1 - p) g

A region loss is undefined on an empty target (it only measures how much of the target was found), so the
composite loss averages it over the samples whose target is not empty. The smoothing ``smooth`` (> 0) keeps
the value and its gradient finite there anyway.

These are MONAI's ``DiceLoss`` / ``TverskyLoss`` (``sigmoid=True``, ``batch=False``) with a voxel weight map
added: MONAI's ``weight`` is a per-class weight. With w all ones they equal MONAI's values
(``tests/test_loss_library.py``); with a 0/1 map they equal ``MaskedDiceLoss``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medtextseg.losses.base import LossTerm, check_inputs, check_range, spatial_sum


def soft_counts(logits: Tensor, target: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample weighted soft (TP, FP, FN), each [B], from logits [B, 1, *spatial] and a target in [0, 1]."""
    logits, target, weight = check_inputs(logits, target, weight)
    probability = torch.sigmoid(logits)
    true_positive = spatial_sum(probability * target, weight)
    false_positive = spatial_sum(probability * (1 - target), weight)
    false_negative = spatial_sum((1 - probability) * target, weight)
    return true_positive, false_positive, false_negative


class DiceLoss(LossTerm):
    """Soft Dice loss per sample: 1 - (2 TP + s) / (sum w p + sum w g + s).

    Args:
        smooth: s > 0, added to numerator and denominator (MONAI's ``smooth_nr = smooth_dr``).
        squared: square p and g in the denominator, sum w p^2 + sum w g^2 (Milletari et al. 2016, V-Net;
            RADA's weighted Dice). MONAI's ``squared_pred``.

    Returns [B] in [0, 1]: 0 for a perfect prediction (up to the smoothing).
    """

    scope = "region"

    def __init__(self, smooth: float = 1e-5, squared: bool = False) -> None:
        super().__init__()
        check_range(self, "smooth", smooth, 0, low_inclusive=False)
        self.smooth = smooth
        self.squared = squared

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        logits, target, weight = check_inputs(logits, target, weight)
        probability = torch.sigmoid(logits)
        power = 2 if self.squared else 1
        overlap = spatial_sum(probability * target, weight)
        total = spatial_sum(probability**power, weight) + spatial_sum(target**power, weight)
        return 1 - (2 * overlap + self.smooth) / (total + self.smooth)


class JaccardLoss(LossTerm):
    """Soft Jaccard (IoU) loss per sample: 1 - (TP + s) / (sum w p + sum w g - TP + s).

    Args:
        smooth: s > 0. MONAI's ``DiceLoss(jaccard=True)`` writes the same ratio with numerator and denominator
            doubled, so its ``smooth_nr = smooth_dr = 2 s`` gives our value.

    Returns [B] in [0, 1].
    """

    scope = "region"

    def __init__(self, smooth: float = 1e-5) -> None:
        super().__init__()
        check_range(self, "smooth", smooth, 0, low_inclusive=False)
        self.smooth = smooth

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        logits, target, weight = check_inputs(logits, target, weight)
        probability = torch.sigmoid(logits)
        overlap = spatial_sum(probability * target, weight)
        union = spatial_sum(probability, weight) + spatial_sum(target, weight) - overlap
        return 1 - (overlap + self.smooth) / (union + self.smooth)


class TverskyLoss(LossTerm):
    """Tversky loss per sample (Salehi et al. 2017): 1 - (TP + s) / (TP + alpha FP + beta FN + s).

    ``alpha`` weighs false positives and ``beta`` false negatives (MONAI's convention); alpha = beta = 0.5 is
    Dice. The methods we reproduce use opposite settings: FiLM+CBN ``alpha=0.7, beta=0.3`` (precision-
    favouring), Align-then-Refine ``alpha=0.3, beta=0.7`` (recall-favouring).

    Args:
        alpha: weight of the false positives, >= 0.
        beta: weight of the false negatives, >= 0.
        smooth: s > 0.

    Returns [B] in [0, 1].
    """

    scope = "region"

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1e-5) -> None:
        super().__init__()
        check_range(self, "alpha", alpha, 0)
        check_range(self, "beta", beta, 0)
        check_range(self, "smooth", smooth, 0, low_inclusive=False)
        self.alpha, self.beta, self.smooth = alpha, beta, smooth

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        true_positive, false_positive, false_negative = soft_counts(logits, target, weight)
        denominator = true_positive + self.alpha * false_positive + self.beta * false_negative + self.smooth
        return 1 - (true_positive + self.smooth) / denominator


class FocalTverskyLoss(TverskyLoss):
    """Focal-Tversky loss per sample: (Tversky loss) ** gamma.

    ``gamma`` is the exponent applied as written here: Abraham & Khan (2019) write (1 - TI) ** (1 / g) with
    g = 4/3, which is our default ``gamma=0.75``; Align-then-Refine's code uses ``gamma=1.5``. gamma < 1
    raises the loss (and its gradient) of nearly-right samples, gamma > 1 lowers it.

    Args:
        alpha: weight of the false positives, >= 0 (see ``TverskyLoss``).
        beta: weight of the false negatives, >= 0.
        gamma: exponent, > 0.
        smooth: s > 0.

    Returns [B] in [0, 1].
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, gamma: float = 0.75, smooth: float = 1e-5) -> None:
        super().__init__(alpha, beta, smooth)
        check_range(self, "gamma", gamma, 0, low_inclusive=False)
        self.gamma = gamma

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        # the clamp keeps the gradient finite for gamma < 1 when a rounding error makes the loss exactly 0
        return super().forward(logits, target, weight).clamp(min=1e-12) ** self.gamma
