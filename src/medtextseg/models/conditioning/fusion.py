"""Text-image fusion at one feature map: the FiLM -> SE -> CBN -> residual -> L2 chain, and concatenation.

The chain is the bottleneck fusion of the FiLM/CBN method (METHODS.md 3.4, Eqs. 6-15); each link can be
switched off, which is how its ablation steps (FiLM only, +CBN, +SE) are expressed as config overrides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import Tensor, nn

from medtextseg.models.blocks.squeeze_excitation import squeeze_excitation
from medtextseg.models.conditioning.cbn import ConditionalBatchNorm
from medtextseg.models.conditioning.film import FiLM


class FusionChain(nn.Module):
    """``F -> FiLM(F, t) -> SE -> CBN(., t) -> + F -> / ||.||_2 over channels``.

    Args:
        spatial_dims: 2 or 3.
        text_dim: D of the text vector.
        channels: C of the feature map.
        se: squeeze-and-excitation after FiLM.
        cbn: conditional batch norm after SE.
        residual: add the input features back (Eq. 14).
        l2_normalize: divide by the channel-wise L2 norm (Eq. 15), clamped at 1e-6.
    """

    def __init__(self, spatial_dims: int, text_dim: int, channels: int, se: bool = True, cbn: bool = True,
                 residual: bool = True, l2_normalize: bool = True, se_reduction: int = 16) -> None:
        super().__init__()
        self.film = FiLM(text_dim, channels)
        self.se = squeeze_excitation(spatial_dims, channels, se_reduction) if se else None
        self.cbn = ConditionalBatchNorm(spatial_dims, text_dim, channels) if cbn else None
        self.residual = residual
        self.l2_normalize = l2_normalize

    def forward(self, features: Tensor, text: Tensor) -> Tensor:
        """features: [B, C, *spatial]; text: [B, D]. Returns [B, C, *spatial]."""
        fused = self.film(features, text)
        if self.se is not None:
            fused = self.se(fused)
        if self.cbn is not None:
            fused = self.cbn(fused, text)
        if self.residual:
            fused = fused + features
        if self.l2_normalize:
            fused = F.normalize(fused, dim=1, eps=1e-6)
        return fused


class ConcatFusion(nn.Module):
    """The ablation baseline "prompt concatenation, no fusion": the text vector tiled over space, concatenated
    to the features and mixed back to C channels by a 1x1 convolution.

    Args:
        spatial_dims: 2 or 3.
        text_dim: D of the text vector.
        channels: C of the feature map.
    """

    def __init__(self, spatial_dims: int, text_dim: int, channels: int) -> None:
        super().__init__()
        self.mix = Conv[Conv.CONV, spatial_dims](channels + text_dim, channels, kernel_size=1)

    def forward(self, features: Tensor, text: Tensor) -> Tensor:
        """features: [B, C, *spatial]; text: [B, D]. Returns [B, C, *spatial]."""
        tiled = text.reshape(*text.shape, *([1] * (features.ndim - 2))).expand(-1, -1, *features.shape[2:])
        return self.mix(torch.cat([features, tiled.to(features.dtype)], dim=1))


class ResidualConditionalBatchNorm(nn.Module):
    """``F + CBN(F, t)``: the second CBN placement the paper states (a decoder layer); residual, so the decoder
    keeps its own features and the text adds a normalised, text-scaled copy of them."""

    def __init__(self, spatial_dims: int, text_dim: int, channels: int) -> None:
        super().__init__()
        self.cbn = ConditionalBatchNorm(spatial_dims, text_dim, channels)

    def forward(self, features: Tensor, text: Tensor) -> Tensor:
        return features + self.cbn(features, text)
