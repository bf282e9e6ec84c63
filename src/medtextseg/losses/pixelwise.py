"""Pixel-wise losses: a weighted mean of per-voxel losses, per sample (BCE, focal, Top-K BCE).

Every voxel has a loss of its own, so these are defined on an empty target too: they are what teaches an
absent target -> an empty mask, and the composite loss averages them over all samples. With a weight map the
per-sample value is sum(w l) / sum(w): a voxel of weight 0 is exactly a voxel left out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import FocalLoss as MonaiFocalLoss
from torch import Tensor

from medtextseg.losses.base import LossTerm, check_inputs, check_range, weighted_voxel_mean


def smoothed_target(target: Tensor, label_smoothing: float) -> Tensor:
    """Two-class label smoothing: g (1 - e) + e / 2, so 1 -> 1 - e/2 and 0 -> e/2.

    This is the binary case of PyTorch's ``cross_entropy(label_smoothing=e)`` over two classes (nnU-Net's and
    Align-then-Refine's Top-K CE with e = 0.05).
    """
    return target * (1 - label_smoothing) + label_smoothing / 2 if label_smoothing else target


class BCELoss(LossTerm):
    """Binary cross-entropy of the logits per sample, weighted mean over voxels.

    l = -[g' log sigmoid(x) + (1 - g') log(1 - sigmoid(x))] with g' the (optionally smoothed) target.

    Args:
        label_smoothing: e in [0, 1): targets become g (1 - e) + e / 2.

    Returns [B] >= 0 (the minimum is the entropy of g', 0 without smoothing).
    """

    scope = "pixel"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        check_range(self, "label_smoothing", label_smoothing, 0, 1, high_inclusive=False)
        self.label_smoothing = label_smoothing

    def voxel_losses(self, logits: Tensor, target: Tensor) -> Tensor:
        """Per-voxel BCE [B, 1, *spatial] of float32 logits and target."""
        return F.binary_cross_entropy_with_logits(logits, smoothed_target(target, self.label_smoothing),
                                                  reduction="none")

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        logits, target, weight = check_inputs(logits, target, weight)
        return weighted_voxel_mean(self.voxel_losses(logits, target), weight)


class FocalLoss(LossTerm):
    """Sigmoid focal loss per sample (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log p_t, weighted mean over voxels.

    p_t = p where g = 1 and 1 - p where g = 0; alpha_t = alpha where g = 1 and 1 - alpha where g = 0. The
    per-voxel values are MONAI's ``FocalLoss(reduction="none")``.

    Args:
        gamma: focusing exponent, >= 0 (0 with ``alpha=None`` is BCE).
        alpha: weight of the foreground voxels in [0, 1], or None for no class balancing.

    Returns [B] >= 0.
    """

    scope = "pixel"

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25) -> None:
        super().__init__()
        check_range(self, "gamma", gamma, 0)
        if alpha is not None:
            check_range(self, "alpha", alpha, 0, 1)
        self.gamma, self.alpha = gamma, alpha
        self.focal = MonaiFocalLoss(gamma=gamma, alpha=alpha, reduction="none")

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        logits, target, weight = check_inputs(logits, target, weight)
        return weighted_voxel_mean(self.focal(logits, target), weight)


class TopKBCELoss(LossTerm):
    """Top-K BCE per sample: the mean BCE of the ``percent`` % voxels with the largest BCE (nnU-Net's TopK loss).

    Hard voxels (boundaries, small targets, false positives far from the target) dominate the gradient
    instead of the easy background. k = ceil(percent / 100 * n), at least 1, where n is the number of voxels
    of the sample, or with a weight map the number of voxels of positive weight; the chosen voxels are then
    averaged with their weights. Unlike nnU-Net (k over the whole batch) k is per sample, so each prompt's
    hardest voxels count.

    Args:
        percent: share of voxels kept, in (0, 100] (100 is BCE).
        label_smoothing: e in [0, 1), as in ``BCELoss`` (Align-then-Refine: 0.05).

    Returns [B] >= 0.
    """

    scope = "pixel"

    def __init__(self, percent: float = 10.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        check_range(self, "percent", percent, 0, 100, low_inclusive=False)
        self.percent = percent
        self.bce = BCELoss(label_smoothing)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        logits, target, weight = check_inputs(logits, target, weight)
        losses = self.bce.voxel_losses(logits, target).flatten(1)  # [B, N]
        if weight is None:
            k = max(1, math.ceil(self.percent / 100 * losses.shape[1]))
            return losses.topk(k, dim=1).values.mean(1)
        weight = weight.flatten(1)
        labelled = weight > 0
        # k differs between samples: take the largest k, then keep each sample's first k of them
        k = (labelled.sum(1) * (self.percent / 100)).ceil().clamp(min=1)  # [B]
        k_max = int(min(k.max(), losses.shape[1]))
        values, index = losses.masked_fill(~labelled, -math.inf).topk(k_max, dim=1)
        chosen = (torch.arange(k_max, device=losses.device) < k[:, None]) & labelled.gather(1, index)
        chosen_weight = weight.gather(1, index) * chosen
        total = (torch.where(chosen, values, 0.0) * chosen_weight).sum(1)
        return total / chosen_weight.sum(1).clamp(min=torch.finfo(total.dtype).tiny)
