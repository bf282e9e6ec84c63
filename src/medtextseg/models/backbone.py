"""An N-D U-Net built from MONAI's residual blocks, with a hook after every decoder stage.

The encoder does not see the text, so when one image comes with several prompts its features are
computed once and shared (``image_index``), which is how training and prediction stay cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.networks.blocks import Convolution, UnetOutBlock, UnetResBlock, UnetUpBlock
from monai.networks.layers.factories import Pool
from torch import Tensor, nn

from medtextseg.models.blocks.refinement import stage_refinement


def _norm_name(norm: str) -> str | tuple:
    return ("group", {"num_groups": 8}) if norm == "group" else norm


def _activation(negative_slope: float) -> tuple:
    return ("leakyrelu", {"negative_slope": negative_slope, "inplace": True})


class UNetEncoder(nn.Module):
    """Residual encoder: stage s downsamples by ``strides[s]``, applies a ``UnetResBlock`` (conv-norm-act-
    conv-norm + shortcut, act), then the optional refinement (SE, CBAM, dropout).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (sequences).
        channels: feature channels per stage, e.g. [16, 32, 64, 128].
        strides: per stage, the stride per spatial axis (first stage usually all ones).
        norm: MONAI norm name ("instance", "batch", "group").
        downsample: "conv" (the block's first convolution is strided) or "maxpool" (max-pooling, then an
            unstrided block, as the classic U-Net).
        attention: refinement blocks after every stage, in order, from ("se", "cbam").
        dropout: channel-dropout probability after every stage.
        negative_slope: of the LeakyReLU activations.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int],
                 strides: Sequence[Sequence[int]], norm: str = "instance", downsample: str = "conv",
                 attention: Sequence[str] = (), dropout: float = 0.0, negative_slope: float = 0.01) -> None:
        super().__init__()
        if downsample not in ("conv", "maxpool"):
            raise ValueError(f"downsample must be 'conv' or 'maxpool', got {downsample!r}")
        pooled = downsample == "maxpool"
        inputs = [in_channels, *channels[:-1]]
        self.stages = nn.ModuleList(
            UnetResBlock(spatial_dims, cin, cout, kernel_size=3, stride=1 if pooled else stride,
                         norm_name=_norm_name(norm), act_name=_activation(negative_slope))
            for cin, cout, stride in zip(inputs, channels, strides, strict=True))
        self.pools = nn.ModuleList(
            Pool[Pool.MAX, spatial_dims](kernel_size=stride, stride=stride)
            if pooled and any(s != 1 for s in stride) else nn.Identity() for stride in strides)
        self.refinements = nn.ModuleList(stage_refinement(spatial_dims, c, attention, dropout) for c in channels)

    def forward(self, image: Tensor, after_stage: Callable[[int, Tensor], Tensor] | None = None) -> list[Tensor]:
        """image: [N, C_in, *spatial]. Returns per-stage features, highest resolution first.

        ``after_stage(level, features)``, when given, is applied to every stage's output before it becomes the
        skip and the next stage's input (encoder-side text conditioning); it may change the batch size.
        """
        features = []
        x = image
        for level, (pool, stage, refinement) in enumerate(zip(self.pools, self.stages, self.refinements,
                                                               strict=True)):
            x = refinement(stage(pool(x)))
            if after_stage is not None:
                x = after_stage(level, x)
            features.append(x)
        return features


class MultiSequenceEncoder(nn.Module):
    """One ``UNetEncoder`` per group of input channels (e.g. per MRI sequence), fused at every stage by
    concatenation + a 3x3(x3) convolution-norm-activation (Align-then-Refine's multi-encoder backbone).

    Each sequence keeps its own filters down to the bottleneck, so a sequence-specific pattern (a dark ADC spot)
    is not averaged away in the first convolution; the decoder sees the fused features as skips.

    Args:
        groups: input channels of each encoder, in the input's channel order (their sum: the image channels).
        shared_channels: trailing input channels every encoder also gets (the coordinate channels).
        spatial_dims, channels, strides, norm, downsample, attention, dropout, negative_slope: as for
            ``UNetEncoder``.
    """

    def __init__(self, spatial_dims: int, groups: Sequence[int], shared_channels: int, channels: Sequence[int],
                 strides: Sequence[Sequence[int]], norm: str = "instance", downsample: str = "conv",
                 attention: Sequence[str] = (), dropout: float = 0.0, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.groups = list(groups)
        self.shared_channels = shared_channels
        self.encoders = nn.ModuleList(
            UNetEncoder(spatial_dims, size + shared_channels, channels, strides, norm, downsample, attention,
                        dropout, negative_slope) for size in self.groups)
        self.fusions = nn.ModuleList(
            Convolution(spatial_dims, len(self.groups) * c, c, kernel_size=3, norm=_norm_name(norm),
                        act=_activation(negative_slope)) for c in channels)

    def forward(self, image: Tensor, after_stage: Callable[[int, Tensor], Tensor] | None = None) -> list[Tensor]:
        """image: [N, sum(groups) + shared_channels, *spatial]. Returns fused per-stage features, highest resolution
        first; ``after_stage`` (as for ``UNetEncoder``) applies to the fused features only."""
        sequences = image[:, : sum(self.groups)].split(self.groups, dim=1)
        shared = image[:, sum(self.groups):]
        per_encoder = [encoder(torch.cat([sequence, shared], dim=1))
                       for encoder, sequence in zip(self.encoders, sequences, strict=True)]
        fused = []
        for level, (fusion, features) in enumerate(zip(self.fusions, zip(*per_encoder, strict=True), strict=True)):
            x = fusion(torch.cat(features, dim=1))
            fused.append(after_stage(level, x) if after_stage is not None else x)
        return fused


class UNetDecoder(nn.Module):
    """Transposed-conv upsampling + skip concatenation + conv block (+ refinement) per stage.

    ``modulate(level, features)`` is called on the bottleneck (level = number of stages - 1) and after
    every decoder stage (levels L-2 .. 0); it is where text conditioning enters.

    Args:
        spatial_dims, channels, strides, norm, attention, negative_slope: as for ``UNetEncoder``.
        out_channels: K of the output logits.
        deep_supervision: also return logits of 1x1 heads after the decoder stages below full resolution
            (levels 1 .. L-2; not the bottleneck, as nnU-Net).
    """

    def __init__(self, spatial_dims: int, channels: Sequence[int], strides: Sequence[Sequence[int]],
                 out_channels: int, norm: str = "instance", attention: Sequence[str] = (),
                 negative_slope: float = 0.01, deep_supervision: bool = False) -> None:
        super().__init__()
        levels = list(reversed(range(len(channels) - 1)))
        self.ups = nn.ModuleList(
            UnetUpBlock(spatial_dims, channels[level + 1], channels[level], kernel_size=3,
                        stride=strides[level + 1], upsample_kernel_size=strides[level + 1],
                        norm_name=_norm_name(norm), act_name=_activation(negative_slope))
            for level in levels)
        self.refinements = nn.ModuleList(stage_refinement(spatial_dims, channels[level], attention)
                                         for level in levels)
        self.head = UnetOutBlock(spatial_dims, channels[0], out_channels)
        self.deep_heads = nn.ModuleDict({str(level): UnetOutBlock(spatial_dims, channels[level], out_channels)
                                         for level in range(1, len(channels) - 1)} if deep_supervision else {})

    def forward(self, skips: list[Tensor], modulate: Callable[[int, Tensor], Tensor],
                gather: Callable[[int, Tensor], Tensor] | None = None) -> tuple[Tensor, list[Tensor], Tensor]:
        """skips: encoder features, one row per sample, or per image with ``gather(level, t)`` picking each
        sample's image rows (rows of ``t`` at that level -> [B, ...]). Returns logits [B, out_channels, *spatial],
        the deep-supervision logits [B, out_channels, *spatial_level], highest resolution first (empty without),
        and the last stage's features [B, channels[0], *spatial] that the head read."""
        level = len(skips) - 1
        x = modulate(level, skips[level] if gather is None else gather(level, skips[level]))
        deep = []
        for up, refinement in zip(self.ups, self.refinements, strict=True):
            level -= 1
            stage = up(x, skips[level]) if gather is None else _up_with_shared_skip(up, x, skips[level],
                                                                                    lambda t, lv=level: gather(lv, t))
            x = modulate(level, refinement(stage))
            if str(level) in self.deep_heads:
                deep.insert(0, self.deep_heads[str(level)](x))
        return self.head(x), deep, x


def _up_with_shared_skip(up: UnetUpBlock, x: Tensor, skip: Tensor, gather: Callable[[Tensor], Tensor]) -> Tensor:
    """``up(x, gather(skip))`` with the skip's share of the first convolution computed before the gather.

    x: [B, C_in, *spatial_in] (one row per prompt); skip: [N, C, *spatial] (one row per image); gather picks
    each prompt's image row. The convolution is linear and the gather only copies rows, so convolving the
    image's skip once and copying the result equals convolving every copy (``test_model`` checks outputs and
    gradients). The rest is ``UnetBasicBlock.forward`` (conv-norm-act twice), which has no hook for this.
    """
    out = up.transp_conv(x)
    block, conv = up.conv_block, up.conv_block.conv1.conv
    split = out.shape[1]  # UnetUpBlock concatenates (upsampled, skip) in this order
    y = conv._conv_forward(out, conv.weight[:, :split], conv.bias) + gather(
        conv._conv_forward(skip, conv.weight[:, split:], None))
    return block.lrelu(block.norm2(block.conv2(block.lrelu(block.norm1(y)))))
