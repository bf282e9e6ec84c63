"""Conditional batch normalisation (de Vries et al., NeurIPS 2017): text-predicted scale and shift."""

from __future__ import annotations

from monai.networks.layers.factories import Norm
from torch import Tensor, nn


class ConditionalBatchNorm(nn.Module):
    """``(1 + gamma'(t)) * BN(x) + beta'(t)``: batch statistics (running averages in eval), no affine of its
    own; the per-channel affine comes from the text. gamma', beta' start at zero.

    Args:
        spatial_dims: 2 or 3.
        text_dim: D of the text vector.
        channels: C of the feature map.
    """

    def __init__(self, spatial_dims: int, text_dim: int, channels: int) -> None:
        super().__init__()
        self.norm = Norm[Norm.BATCH, spatial_dims](channels, affine=False)
        self.affine = nn.Linear(text_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, features: Tensor, text: Tensor) -> Tensor:
        """features: [B, C, *spatial]; text: [B, D]. Returns [B, C, *spatial]."""
        gamma, beta = self.affine(text).chunk(2, dim=-1)
        shape = (*gamma.shape, *([1] * (features.ndim - 2)))
        return self.norm(features) * (1 + gamma.reshape(shape)) + beta.reshape(shape)
