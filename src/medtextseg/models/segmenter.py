"""``TextGuidedUNet``: the segmenter of every single-network preset, a U-Net conditioned on the prompt."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtextseg.config import ModelConfig
from medtextseg.models.backbone import MultiSequenceEncoder, UNetDecoder, UNetEncoder
from medtextseg.models.conditioning.bidirectional_attention import VisionLanguageStage
from medtextseg.models.conditioning.dynamic_head import RegionAwareFusion, SemanticDynamicBias
from medtextseg.models.conditioning.film import FiLM
from medtextseg.models.conditioning.fusion import ConcatFusion, FusionChain, ResidualConditionalBatchNorm
from medtextseg.models.conditioning.text_summary import TextSummary
from medtextseg.models.evidential import evidence_from_logits, evidential_logits
from medtextseg.models.output import ModelOutput
from medtextseg.models.presence import topk_presence
from medtextseg.models.refiner import ConfidenceGatedRefiner
from medtextseg.models.similarity import PixelTextSimilarity
from medtextseg.text.batch import TextBatch


def build_conditioners(config: ModelConfig, text_dim: int) -> nn.ModuleDict:
    """Map decoder level -> module ``(features [B, C, *sp], text [B, text_dim]) -> features``.

    Levels count from 0 (full resolution) to L-1 (bottleneck); levels without an entry are not conditioned.
    """
    dims, channels = config.spatial_dims, config.channels
    bottleneck = len(channels) - 1
    if config.conditioning in ("none", "dynamic_head"):  # the dynamic head is not a per-stage conditioner
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


def build_vision_language_stages(config: ModelConfig, text_dim: int) -> nn.ModuleDict:
    """Encoder level -> ``VisionLanguageStage``; each takes the word states of the one before (D at the first)."""
    stages, text_in = {}, text_dim
    for level in sorted(config.vision_language_levels):
        stages[str(level)] = VisionLanguageStage(config.channels[level], text_in)
        text_in = config.channels[level]
    return nn.ModuleDict(stages)


def masked_mean(words: Tensor, mask: Tensor) -> Tensor:
    """words: [B, T, C]; mask: [B, T] bool. Returns the mean of the real tokens' states [B, C]."""
    weights = mask.to(words.dtype).unsqueeze(-1)
    return (words * weights).sum(1) / weights.sum(1).clamp(min=1)


class TextGuidedUNet(nn.Module):
    """U-Net + text conditioning where the config says + a presence logit read from the mask.

    Where the text enters:

    * decoder (``config.conditioning``): the conditioners read a ``TextSummary`` of the prompt, the sentence
      embedding plus attention reads of its tokens when ``config.text_tokens``;
    * encoder (``config.vision_language_levels``): bidirectional pixel-word cross-attention after those stages,
      the word states carried from stage to stage (TextBCS). From the first such stage on, the encoder runs
      once per prompt rather than once per image;
    * before the output convolution (``config.conditioning='dynamic_head'``): a per-sample bias from the prompt
      (fused with a region-aware image prototype when ``config.region_dim``) and the bottleneck (SGTC/RADA);
    * after the decoder (``config.refiner``): the confidence-gated cross-attention refiner edits the logits where
      the base model is confident (Align-then-Refine stage 2).

    With none, the same network ignores the text: the image-only baseline. ``config.similarity_levels`` adds
    pixel-text similarity maps (for the contrastive, heatmap and alignment losses); ``config.head='evidential'``
    makes the head output Dirichlet evidence (``ModelOutput.evidence``) besides the usual logit.

    Args:
        config: the model section (spatial_dims, in_channels, channels, strides, conditioning, ...).
        text_dim: D of the pooled text embedding.
    """

    def __init__(self, config: ModelConfig, text_dim: int) -> None:
        super().__init__()
        self.config = config
        coordinate_channels = config.spatial_dims if config.coordinates else 0
        stages = {"downsample": config.downsample, "attention": config.block_attention, "dropout": config.dropout,
                  "negative_slope": config.negative_slope}
        if config.encoders == 1:
            self.encoder = UNetEncoder(config.spatial_dims, config.in_channels + coordinate_channels, config.channels,
                                       config.strides, config.norm, **stages)
        else:
            self.encoder = MultiSequenceEncoder(config.spatial_dims, [config.in_channels // config.encoders]
                                                * config.encoders, coordinate_channels, config.channels,
                                                config.strides, config.norm, **stages)
        head_channels = 2 if config.head == "evidential" else 1
        self.decoder = UNetDecoder(config.spatial_dims, config.channels, config.strides, head_channels,
                                   config.norm, attention=config.block_attention,
                                   negative_slope=config.negative_slope, deep_supervision=config.deep_supervision)
        conditioned = config.conditioning not in ("none", "dynamic_head")
        self.text_summary = TextSummary(text_dim, use_tokens=config.text_tokens,
                                        whiten=config.text_whitening) if conditioned else None
        self.conditioners = build_conditioners(config, self.text_summary.out_dim if conditioned else text_dim)
        self.vision_language = build_vision_language_stages(config, text_dim)
        self.refiner = ConfidenceGatedRefiner(config.spatial_dims, config.channels[0], text_dim,
                                              gate=config.refiner_gate, blend=config.refiner_blend,
                                              tokens=config.refiner_tokens) if config.refiner else None
        self.use_refiner = True  # prediction may switch the refiner off (inference.refiner)
        self.dynamic_bias = SemanticDynamicBias(config.channels[-1], text_dim, config.channels[0]) \
            if config.conditioning == "dynamic_head" else None
        self.region_fusion = RegionAwareFusion(text_dim, config.region_dim, config.region_rho) \
            if config.region_dim else None
        self.similarity = nn.ModuleDict({
            str(level): PixelTextSimilarity(
                config.spatial_dims, config.channels[level],
                config.channels[level] if str(level) in self.vision_language else text_dim,
                config.similarity_dim, config.similarity_temperature, config.similarity_learnable_temperature)
            for level in config.similarity_levels})

    def fit_text_statistics(self, text: TextBatch | Iterable[TextBatch]) -> None:
        """Fit what the text path normalises by (``config.text_whitening``) on the encoded training prompts:
        one batch, or chunks of them (streamed: memory does not grow with their number)."""
        if self.text_summary is not None:
            self.text_summary.fit_whitening(text)

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
            ModelOutput with logits [B, 1, *spatial], presence [B] (or None), similarity maps
            ``"encoder_{level}"`` [B, 1, *spatial_level] and evidence [B, 2, *spatial] (evidential head).
        """
        rows = image.shape[0] if image_index is None else len(image_index)
        if rows != len(text):
            raise ValueError(f"{len(text)} prompts for {rows} images: pass image_index "
                             "to say which image each prompt is for")
        text = text.to(image.device)
        # the encoder is shared by an image's prompts up to the first stage that reads the text
        per_prompt_from = min((int(k) for k in self.vision_language), default=len(self.config.channels))
        words, stage_words = text.tokens, {}

        def attend(level: int, features: Tensor) -> Tensor:
            nonlocal words
            if level == per_prompt_from and image_index is not None:
                features = features.index_select(0, image_index)
            if str(level) not in self.vision_language:
                return features
            features, words = self.vision_language[str(level)](features, words, text.mask)
            stage_words[level] = words
            return features

        skips = self.encoder(image, attend if self.vision_language else None)  # per image below per_prompt_from
        coordinates = self._coordinates(image, [s.shape[2:] for s in skips])

        def per_prompt(level: int, features: Tensor) -> Tensor:
            """An image-level tensor at ``level`` -> one row per prompt. index_select rather than
            ``features[image_index]``: its backward (index_add_) is much faster on the CPU than index_put_'s."""
            if image_index is None or level >= per_prompt_from:
                return features
            return features.index_select(0, image_index)

        if image_index is not None:
            coordinates = [c.index_select(0, image_index) for c in coordinates]
        summary = self.text_summary(text).to(skips[0].dtype) if self.text_summary else None
        head_bias = None
        if self.dynamic_bias is not None:
            embedding = self.region_fusion(text.pooled) if self.region_fusion is not None else text.pooled
            head_bias = self.dynamic_bias(per_prompt(len(skips) - 1, skips[-1]), embedding)

        def modulate(level: int, features: Tensor) -> Tensor:
            if level == 0 and head_bias is not None:  # the last decoder features, before the output convolution
                features = features + head_bias.reshape(*head_bias.shape, *([1] * (features.ndim - 2)))
            if str(level) not in self.conditioners:
                return features
            if coordinates:
                return self.conditioners[str(level)](features, summary, coordinates[level])
            return self.conditioners[str(level)](features, summary)

        logits, deep_supervision, features = self.decoder(skips, modulate,
                                                          per_prompt if image_index is not None else None)
        if self.refiner is not None and self.use_refiner:
            logits = self.refiner(features, logits, self.decoder.head, text)
        evidence = None
        if self.config.head == "evidential":
            evidence = evidence_from_logits(logits)
            logits = evidential_logits(evidence)
        similarity = {
            f"encoder_{level}": head(per_prompt(int(level), skips[int(level)]),
                                     masked_mean(stage_words[int(level)], text.mask)
                                     if int(level) in stage_words else text.pooled)
            for level, head in self.similarity.items()}
        presence = topk_presence(logits, self.config.presence_topk) if self.config.presence else None
        return ModelOutput(logits=logits, presence=presence, deep_supervision=deep_supervision,
                           similarity=similarity, evidence=evidence)
