"""Deep supervision: the weight of each output resolution, and targets and weight maps brought down to it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from medtextseg.utils.errors import MedTextSegError


def level_weights(levels: int, setting: Sequence[float] | Literal["halving"]) -> list[float]:
    """Normalised weights of ``levels`` outputs, full resolution first.

    ``"halving"`` gives 1, 1/2, 1/4, ... (nnU-Net's and Align-then-Refine's 2^-k; both also set the lowest
    level to 0, which a preset writes as an explicit list); a list gives one weight per level. Both are
    divided by their sum.

    Raises:
        MedTextSegError: the list does not have one weight per level, or sums to 0.
    """
    if setting == "halving":
        weights = [0.5**level for level in range(levels)]
    else:
        weights = [float(w) for w in setting]
        if len(weights) != levels:
            raise MedTextSegError(f"config field 'loss.deep_supervision_weights' has {len(weights)} weights but the "
                                  f"model returns {levels} outputs (full resolution + {levels - 1} deep-supervision "
                                  "maps); give one weight per output, full resolution first")
    total = sum(weights)
    if total <= 0:
        raise MedTextSegError(f"config field 'loss.deep_supervision_weights' must have a positive sum, got {weights}")
    return [w / total for w in weights]


def downsample_target(target: Tensor, size: Sequence[int]) -> Tensor:
    """Bring a mask [B, 1, *spatial] down to ``size`` by max-pooling (adaptive, any size ratio).

    Max-pooling, not nearest: a lower-resolution voxel is foreground when any voxel it covers is, so a
    one-voxel lesion survives at every level and a non-empty target stays non-empty (nearest sampling can
    drop it, turning a present target into a false "absent" at coarse levels).
    """
    if tuple(target.shape[2:]) == tuple(size):
        return target
    _check_size(target, size)
    pool = {3: F.adaptive_max_pool1d, 4: F.adaptive_max_pool2d, 5: F.adaptive_max_pool3d}[target.ndim]
    return pool(target.float(), tuple(size))


def downsample_weight(weight: Tensor, target_shape: Sequence[int], size: Sequence[int]) -> Tensor:
    """Bring a voxel weight map (broadcastable to ``target_shape``) down to ``size`` by average-pooling.

    Averaging: a lower-resolution voxel weighs the mean of what it covers, e.g. the share of labelled voxels of
    a sparse-label map.
    """
    weight = weight.float().expand(*target_shape)
    if tuple(weight.shape[2:]) == tuple(size):
        return weight
    _check_size(weight, size)
    pool = {3: F.adaptive_avg_pool1d, 4: F.adaptive_avg_pool2d, 5: F.adaptive_avg_pool3d}[weight.ndim]
    return pool(weight, tuple(size))


def _check_size(tensor: Tensor, size: Sequence[int]) -> None:
    if len(size) != tensor.ndim - 2 or any(s > t for s, t in zip(size, tensor.shape[2:], strict=True)):
        raise MedTextSegError(f"deep supervision: a map of spatial size {list(size)} is not a downsampling of the "
                              f"target's {list(tensor.shape[2:])}")
