"""Losses on the pixel-text similarity maps (``ModelOutput.similarity``, logits ``cos / tau``).

* ``pixel_text_contrastive`` (TextBCS Eqs. 6-7): at every map, the target area-resized to the map's grid and
  thresholded at 0.5 gives positive and negative pixels; the loss is the BCE of ``sigmoid(cos / tau)`` against
  them, averaged over all pixels, summed over the maps (stages).
* ``pixel_text_heat`` (Align-then-Refine's heatmap loss): the same BCE, but the map is brought up to the
  target's grid (bilinear / trilinear), as that paper does at the bottleneck.
* ``pixel_text_align`` (Align-then-Refine's alignment loss): ``1 - sum H y / sum y`` on the upsampled heatmap
  ``H = sigmoid(.)``: how much of the target the map covers. Undefined on an empty target (a region term).

Deviation, stated: Align-then-Refine pools both over the whole batch; here they are per sample and the composite
loss averages them over samples (all for the BCE terms, those with a target for the alignment), like every term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from medtextseg.losses.base import OutputLossTerm, check_inputs, spatial_sum, weighted_voxel_mean
from medtextseg.losses.deep_supervision import downsample_weight
from medtextseg.utils.errors import MedTextSegError

if TYPE_CHECKING:  # type hints only: the loss terms sit below the config and the models (docs/architecture.md)
    from medtextseg.models.output import ModelOutput

Resize = Literal["target", "map"]


def similarity_maps(output: ModelOutput, term: str) -> list[Tensor]:
    """The model's similarity maps [B, 1, *spatial_s], float32.

    Raises:
        MedTextSegError: the model has none (a config asks for the term without a ``similarity`` block).
    """
    if not output.similarity:
        raise MedTextSegError(f"{term} needs pixel-text similarity maps: add the similarity block, "
                              "e.g. --set model.blocks.similarity.levels=[3] (the bottleneck of a 4-stage U-Net)")
    return [output.similarity[name].float() for name in sorted(output.similarity)]


def area_target(target: Tensor, size: tuple[int, ...]) -> Tensor:
    """target: [B, 1, *spatial] in [0, 1] -> [B, 1, *size] {0, 1}: the covered fraction, thresholded at 0.5."""
    if tuple(target.shape[2:]) == tuple(size):
        return (target >= 0.5).float()
    pool = {4: F.adaptive_avg_pool2d, 5: F.adaptive_avg_pool3d}[target.ndim]
    return (pool(target.float(), size) >= 0.5).float()


def upsample_map(logits: Tensor, size: tuple[int, ...]) -> Tensor:
    """[B, 1, *spatial_s] -> [B, 1, *size] by (bi/tri)linear interpolation of the logits."""
    if tuple(logits.shape[2:]) == tuple(size):
        return logits
    mode = "trilinear" if logits.ndim == 5 else "bilinear"
    return F.interpolate(logits, size=size, mode=mode, align_corners=False)


class PixelTextBCELoss(OutputLossTerm):
    """BCE of the similarity maps against the mask, per sample, summed over the maps.

    Args:
        resize: ``"target"``: the target is area-resized to each map (TextBCS); ``"map"``: each map is
            interpolated up to the target (Align-then-Refine's heatmap).

    Returns [B] >= 0.
    """

    scope = "pixel"

    def __init__(self, resize: Resize = "target") -> None:
        super().__init__()
        if resize not in ("target", "map"):
            raise MedTextSegError(f"{type(self).__name__}: resize must be 'target' or 'map', got {resize!r}")
        self.resize = resize

    def forward(self, output: ModelOutput, target: Tensor, weight: Tensor | None = None) -> Tensor:
        total = target.new_zeros(target.shape[0], dtype=torch.float32)
        for logits in similarity_maps(output, type(self).__name__):
            if self.resize == "map":
                logits = upsample_map(logits, tuple(target.shape[2:]))
                level_target, level_weight = target.float(), weight
            else:
                size = tuple(logits.shape[2:])
                level_target = area_target(target, size)
                level_weight = None if weight is None else downsample_weight(weight, target.shape, size)
            logits, level_target, level_weight = check_inputs(logits, level_target, level_weight)
            voxel = F.binary_cross_entropy_with_logits(logits, level_target, reduction="none")
            total = total + weighted_voxel_mean(voxel, level_weight)
        return total


class PixelTextHeatmapLoss(PixelTextBCELoss):
    """``PixelTextBCELoss`` with the maps brought up to the target (Align-then-Refine's heatmap loss)."""

    def __init__(self, resize: Resize = "map") -> None:
        super().__init__(resize)


class PixelTextAlignLoss(OutputLossTerm):
    """``1 - sum w H y / (sum w y + eps)`` with ``H = sigmoid`` of each map brought up to the target, summed over
    the maps. Returns [B] in [0, 1] per map."""

    scope = "region"

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, output: ModelOutput, target: Tensor, weight: Tensor | None = None) -> Tensor:
        total = target.new_zeros(target.shape[0], dtype=torch.float32)
        for logits in similarity_maps(output, type(self).__name__):
            heat, level_target, level_weight = check_inputs(upsample_map(logits, tuple(target.shape[2:])),
                                                            target, weight)
            covered = spatial_sum(torch.sigmoid(heat) * level_target, level_weight)
            total = total + 1 - covered / (spatial_sum(level_target, level_weight) + self.eps)
        return total
