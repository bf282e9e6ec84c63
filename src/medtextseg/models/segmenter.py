"""``TextGuidedUNet``: the segmenter of every single-network preset, a U-Net conditioned on the prompt."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtextseg.config import ModelConfig
from medtextseg.models.backbone import UNetDecoder, UNetEncoder
from medtextseg.models.conditioning.film import FiLM
from medtextseg.models.conditioning.fusion import ConcatFusion, FusionChain, ResidualConditionalBatchNorm
from medtextseg.models.conditioning.text_summary import TextSummary
from medtextseg.models.output import ModelOutput
from medtextseg.models.presence import topk_presence
from medtextseg.text.batch import TextBatch


def build_conditioners(config: ModelConfig, text_dim: int) -> nn.ModuleDict:
    """Map decoder level -> module ``(features [B, C, *sp], text [B, text_dim]) -> features``.

    Levels count from 0 (full resolution) to L-1 (bottleneck); levels without an entry are not conditioned.
    """
    dims, channels = config.spatial_dims, config.channels
    bottleneck = len(channels) - 1
    if config.conditioning == "none":
        return nn.ModuleDict()
    if config.conditioning == "film":
        axes = dims if config.spatial_film else 0
        return nn.ModuleDict({str(level): FiLM(text_dim, c, coordinate_axes=axes) for level, c in enumerate(channels)})
    if config.conditioning == "concat":
        return nn.ModuleDict({str(bottleneck): ConcatFusion(dims, text_dim, channels[bottleneck])})
    modules: dict[str, nn.Module] = {str(bottleneck): FusionChain(
        dims, text_dim, channels[bottleneck], se=config.fusion_se,
        cbn=config.fusion_cbn and config.cbn_position in ("bottleneck", "both"))}
    if config.fusion_cbn and config.cbn_position in ("decoder", "both"):
        level = min(1, bottleneck - 1)  # the paper's 128-channel layer: one stage above full resolution
        modules[str(level)] = ResidualConditionalBatchNorm(dims, text_dim, channels[level])
    return nn.ModuleDict(modules)


class TextGuidedUNet(nn.Module):
    """U-Net + text conditioning where ``config.conditioning`` says + a presence logit read from the mask.

    The conditioners read a ``TextSummary`` of the prompt: the sentence embedding, plus attention reads of
    its tokens when ``config.text_tokens``. With ``conditioning='none'`` the same network ignores the text:
    the image-only baseline.

    Args:
        config: the model section (spatial_dims, in_channels, channels, strides, conditioning, ...).
        text_dim: D of the pooled text embedding.
    """

    def __init__(self, config: ModelConfig, text_dim: int) -> None:
        super().__init__()
        self.config = config
        in_channels = config.in_channels + (config.spatial_dims if config.coordinates else 0)
        self.encoder = UNetEncoder(config.spatial_dims, in_channels, config.channels, config.strides, config.norm,
                                   downsample=config.downsample, attention=config.block_attention,
                                   dropout=config.dropout, negative_slope=config.negative_slope)
        self.decoder = UNetDecoder(config.spatial_dims, config.channels, config.strides, 1, config.norm,
                                   attention=config.block_attention, negative_slope=config.negative_slope)
        conditioned = config.conditioning != "none"
        self.text_summary = TextSummary(text_dim, use_tokens=config.text_tokens) if conditioned else None
        self.conditioners = build_conditioners(config, self.text_summary.out_dim if conditioned else text_dim)

    def _coordinates(self, image: Tensor, shapes: list[torch.Size]) -> list[Tensor]:
        """The whole-image coordinate input channels averaged down to every level's grid (spatial FiLM)."""
        if not (self.config.spatial_film and self.config.conditioning == "film" and self.config.coordinates):
            return []
        coordinates = image[:, -self.config.spatial_dims:]
        return [F.adaptive_avg_pool3d(coordinates, shape) if len(shape) == 3 else
                F.adaptive_avg_pool2d(coordinates, shape) for shape in shapes]

    def forward(self, image: Tensor, text: TextBatch, image_index: Tensor | None = None) -> ModelOutput:
        """Segment what each prompt names.

        Args:
            image: [N, C_in (+ spatial_dims coordinate channels when ``config.coordinates``), *spatial]
                z-scored images (RAS voxel order).
            text: B encoded prompts.
            image_index: [B] long, the image row of each prompt (default: prompt b <-> image b). The
                encoder runs once per image, however many prompts it has.

        Returns:
            ModelOutput with logits [B, 1, *spatial] and presence [B] (or None).
        """
        skips = self.encoder(image)
        coordinates = self._coordinates(image, [s.shape[2:] for s in skips])
        if image_index is not None:
            skips = [s[image_index] for s in skips]
            coordinates = [c[image_index] for c in coordinates] if coordinates else coordinates
        if skips[0].shape[0] != len(text):
            raise ValueError(f"{len(text)} prompts for {skips[0].shape[0]} images: pass image_index "
                             "to say which image each prompt is for")
        summary = self.text_summary(text.to(skips[0].device)).to(skips[0].dtype) if self.text_summary else None

        def modulate(level: int, features: Tensor) -> Tensor:
            if str(level) not in self.conditioners:
                return features
            if coordinates:
                return self.conditioners[str(level)](features, summary, coordinates[level])
            return self.conditioners[str(level)](features, summary)

        logits = self.decoder(skips, modulate)
        presence = topk_presence(logits, self.config.presence_topk) if self.config.presence else None
        return ModelOutput(logits=logits, presence=presence)
