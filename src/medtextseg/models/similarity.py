"""Pixel-text similarity: how much each voxel's features look like the prompt, as a logit map.

One head serves two methods (METHODS.md 5, item 6): TextBCS's stage-wise pixel-text contrastive loss (learnable
temperature per stage, GT brought down to each stage) and Align-then-Refine's heatmap and alignment losses (fixed
temperature at the bottleneck, map brought up to the GT). Both are losses on ``sigmoid(cos(v_j, t) / tau)``; the
model returns ``cos / tau`` (a logit, so the loss can use the numerically stable BCE-with-logits) and the losses
in :mod:`medtextseg.losses.similarity` decide how to compare it with the mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import Tensor, nn


class PixelTextSimilarity(nn.Module):
    """``cos(P_v(F)_j, P_t(t)) / tau`` for every voxel j of a feature map.

    Args:
        spatial_dims: 2 or 3.
        channels: C of the feature map.
        text_dim: D of the text vector.
        dim: d of the shared space both are projected to (a 1x1 convolution for the voxels, a linear map
            without bias for the text, as in both papers).
        temperature: tau at initialisation (TextBCS: 0.07; Align-then-Refine: 1.0).
        learnable_temperature: learn ``log tau`` (TextBCS) or keep tau fixed (Align-then-Refine).
    """

    def __init__(self, spatial_dims: int, channels: int, text_dim: int, dim: int = 64, temperature: float = 0.07,
                 learnable_temperature: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.pixel_projection = Conv[Conv.CONV, spatial_dims](channels, dim, kernel_size=1)
        self.text_projection = nn.Linear(text_dim, dim, bias=False)
        log_tau = torch.tensor(math.log(temperature))
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_temperature", log_tau)

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.exp())

    def forward(self, features: Tensor, text: Tensor) -> Tensor:
        """features: [B, C, *spatial]; text: [B, D]. Returns similarity logits [B, 1, *spatial] in
        [-1/tau, 1/tau]."""
        pixels = F.normalize(self.pixel_projection(features), dim=1)  # [B, d, *spatial]
        words = F.normalize(self.text_projection(text.to(pixels.dtype)), dim=1)  # [B, d]
        cosine = torch.einsum("bd...,bd->b...", pixels, words).unsqueeze(1)
        return cosine / self.log_temperature.exp()
