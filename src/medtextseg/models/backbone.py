"""An N-D U-Net built from MONAI's residual blocks, with a hook after every decoder stage.

The encoder does not see the text, so when one image comes with several prompts its features are
computed once and shared (``image_index``), which is how training and prediction stay cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.networks.blocks import UnetOutBlock, UnetResBlock, UnetUpBlock
from torch import Tensor, nn


class UNetEncoder(nn.Module):
    """Residual encoder: stage s applies a strided ``UnetResBlock`` (stride ``strides[s]``).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (sequences).
        channels: feature channels per stage, e.g. [16, 32, 64, 128].
        strides: per stage, the stride per spatial axis (first stage usually all ones).
        norm: MONAI norm name ("instance", "batch", "group").
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int],
                 strides: Sequence[Sequence[int]], norm: str = "instance") -> None:
        super().__init__()
        norm_name = ("group", {"num_groups": 8}) if norm == "group" else norm
        inputs = [in_channels, *channels[:-1]]
        self.stages = nn.ModuleList(
            UnetResBlock(spatial_dims, cin, cout, kernel_size=3, stride=stride, norm_name=norm_name,
                         act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}))
            for cin, cout, stride in zip(inputs, channels, strides, strict=True))

    def forward(self, image: Tensor) -> list[Tensor]:
        """image: [N, C_in, *spatial]. Returns per-stage features, highest resolution first."""
        features = []
        x = image
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class UNetDecoder(nn.Module):
    """Transposed-conv upsampling + skip concatenation + conv block per stage, back to full resolution.

    ``modulate(level, features)`` is called on the bottleneck (level = number of stages - 1) and after
    every decoder stage (levels L-2 .. 0); it is where text conditioning enters.
    """

    def __init__(self, spatial_dims: int, channels: Sequence[int], strides: Sequence[Sequence[int]],
                 out_channels: int, norm: str = "instance") -> None:
        super().__init__()
        norm_name = ("group", {"num_groups": 8}) if norm == "group" else norm
        self.ups = nn.ModuleList(
            UnetUpBlock(spatial_dims, channels[level + 1], channels[level], kernel_size=3,
                        stride=strides[level + 1], upsample_kernel_size=strides[level + 1],
                        norm_name=norm_name)
            for level in reversed(range(len(channels) - 1)))
        self.head = UnetOutBlock(spatial_dims, channels[0], out_channels)

    def forward(self, skips: list[Tensor], modulate: Callable[[int, Tensor], Tensor]) -> Tensor:
        """skips: encoder features (one row per sample). Returns logits [B, out_channels, *spatial]."""
        level = len(skips) - 1
        x = modulate(level, skips[level])
        for up in self.ups:
            level -= 1
            x = modulate(level, up(x, skips[level]))
        return self.head(x)
