"""Squeeze-and-excitation (Hu et al., CVPR 2018) sized for narrow stages, and the width rule it shares with CBAM."""

from __future__ import annotations

from monai.networks.blocks import ChannelSELayer
from torch import nn


def attention_hidden_units(channels: int, reduction: int = 16) -> int:
    """Hidden width of an SE / CBAM channel MLP: C / reduction, but at least min(4, C). A CPU-sized stage
    of 16 channels would otherwise get a single hidden unit, which one unlucky initialisation kills."""
    return max(min(4, channels), channels // reduction)


def squeeze_excitation(spatial_dims: int, channels: int, reduction: int = 16) -> nn.Module:
    """MONAI's ``ChannelSELayer`` (squeeze-and-excitation, Hu et al. 2018) with a LeakyReLU(0.1) hidden layer:
    with a ReLU, the few hidden units of a narrow stage can all start negative on every image, and then
    never get a gradient (seen at 16 channels); the published SE uses a ReLU."""
    return ChannelSELayer(spatial_dims, channels, r=max(1, channels // attention_hidden_units(channels, reduction)),
                          acti_type_1=("leakyrelu", {"negative_slope": 0.1, "inplace": True}))
