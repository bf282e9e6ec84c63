"""Boundary loss: the distance-transform surrogate of the Hausdorff distance (Karimi & Salcudean 2019)."""

from __future__ import annotations

import torch
from monai.transforms.utils import distance_transform_edt
from torch import Tensor

from medtextseg.losses.base import LossTerm, check_inputs, check_range, weighted_voxel_mean
from medtextseg.utils.errors import MedTextSegError


@torch.no_grad()
def boundary_distance(mask: Tensor) -> Tensor:
    """Per-sample distance (in voxels) of every voxel to the boundary of a binary mask.

    Args:
        mask: [B, 1, *spatial] boolean.

    Returns:
        [B, 1, *spatial] float32, >= 0: inside the mask the distance to the nearest background voxel, outside
        it the distance to the nearest mask voxel. A sample whose mask is empty or full has no boundary and
        gets 0 everywhere (MONAI's convention).
    """
    distance = torch.zeros(mask.shape, dtype=torch.float32)
    for index, sample in enumerate(mask.cpu()):  # scipy's transform runs on the CPU, one sample at a time
        if sample.any() and not sample.all():
            distance[index] = distance_transform_edt(sample) + distance_transform_edt(~sample)
    return distance.to(mask.device)


class HausdorffDTLoss(LossTerm):
    """Hausdorff-distance surrogate per sample: weighted mean of (p - g)^2 (d_G^a + d_P^a).

    p = sigmoid(logits); d_G and d_P are the distances to the boundary of the target and of the thresholded
    prediction p > 0.5 (``boundary_distance``, no gradient), in voxels. Errors far from either boundary cost
    most, which is what the Hausdorff distance measures. The value is in squared voxels, not in [0, 1]: give
    it a small weight beside Dice. The distance to an empty target's boundary is undefined, so this is a
    region term (averaged over samples with a non-empty target). The unweighted value is MONAI's
    ``HausdorffDTLoss(sigmoid=True)``; MONAI has no voxel weight map.

    Args:
        alpha: exponent a of the distances, > 0 (Karimi & Salcudean: 2).

    Returns [B] >= 0.

    Raises:
        MedTextSegError: the inputs are not 2D or 3D (besides ``check_inputs``'s checks).
    """

    scope = "region"

    def __init__(self, alpha: float = 2.0) -> None:
        super().__init__()
        check_range(self, "alpha", alpha, 0, low_inclusive=False)
        self.alpha = alpha

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        logits, target, weight = check_inputs(logits, target, weight)
        if logits.ndim not in (4, 5):
            raise MedTextSegError(f"HausdorffDTLoss: expected 2D or 3D logits [B, 1, H, W] or [B, 1, D, H, W], "
                                  f"got {list(logits.shape)}")
        probability = torch.sigmoid(logits)
        distance = (boundary_distance(target > 0.5) ** self.alpha
                    + boundary_distance(probability.detach() > 0.5) ** self.alpha)
        return weighted_voxel_mean((probability - target) ** 2 * distance, weight)
