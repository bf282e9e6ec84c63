"""CBAM: channel then spatial attention on a feature map (Woo et al., ECCV 2018), N-D."""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import Tensor, nn

from medtextseg.models.blocks.squeeze_excitation import attention_hidden_units


class CBAM(nn.Module):
    """Channel attention (a shared MLP over average- and max-pooled channels), then spatial attention (a
    7-wide convolution over the channel-wise average and maximum maps); each multiplies the features by a
    sigmoid gate.

    Args:
        spatial_dims: 2 or 3.
        channels: C of the feature map.
        reduction: MLP bottleneck ratio (hidden width ``attention_hidden_units(C, reduction)``; LeakyReLU, as
            our SE, so that a narrow MLP cannot die).
        kernel_size: of the spatial-attention convolution.
        channel_attention: False gives the spatial-only variant (METHODS.md 3.9 item 3).
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 16, kernel_size: int = 7,
                 channel_attention: bool = True) -> None:
        super().__init__()
        hidden = attention_hidden_units(channels, reduction)
        self.mlp = (nn.Sequential(nn.Linear(channels, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, channels))
                    if channel_attention else None)
        self.spatial = Conv[Conv.CONV, spatial_dims](2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, features: Tensor) -> Tensor:
        """features: [B, C, *spatial]. Returns the gated features, same shape."""
        if self.mlp is not None:
            flat = features.flatten(2)
            gate = torch.sigmoid(self.mlp(flat.mean(2)) + self.mlp(flat.amax(2)))  # [B, C]
            features = features * gate.reshape(*gate.shape, *([1] * (features.ndim - 2)))
        pooled = torch.cat([features.mean(1, keepdim=True), features.amax(1, keepdim=True)], dim=1)
        return features * torch.sigmoid(self.spatial(pooled))
