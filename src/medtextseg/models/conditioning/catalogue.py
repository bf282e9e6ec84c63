"""The built-in conditioning blocks: FiLM, the fusion chain, concatenation, SVLI, the refiner, the dynamic head,
the similarity maps and the prompt head: the modules each builds from its typed options (``config/blocks.py``,
which also say where it sits), registered under its kind (``registry.py`` says how).

They are registered in the order the segmenter has always created their modules, which fixes the weights a seed
gives and the state-dict names (``text_summary``, ``conditioners``, ``vision_language``, ``refiner``,
``dynamic_bias``, ``region_fusion``, ``similarity``, ``prompt_head``) that saved checkpoints carry.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtextseg.config.blocks import (
    BlockOptions,
    ConcatOptions,
    DynamicHeadOptions,
    FiLMOptions,
    FusionOptions,
    PromptHeadOptions,
    RefinerOptions,
    SimilarityOptions,
    SVLIOptions,
)
from medtextseg.models.conditioning.bidirectional_attention import VisionLanguageStage
from medtextseg.models.conditioning.dynamic_head import RegionAwareFusion, SemanticDynamicBias
from medtextseg.models.conditioning.film import FiLM
from medtextseg.models.conditioning.fusion import ConcatFusion, FusionChain, ResidualConditionalBatchNorm
from medtextseg.models.conditioning.prompt_head import PromptHead
from medtextseg.models.conditioning.registry import ForwardState, TextBlock, UNetShape, register_block
from medtextseg.models.conditioning.text_summary import TextSummary
from medtextseg.models.refiner import ConfidenceGatedRefiner
from medtextseg.models.similarity import PixelTextSimilarity
from medtextseg.text.batch import TextBatch

DECODER_PARTS = {"text_summary": None, "conditioners": nn.ModuleDict}


def masked_mean(words: Tensor, mask: Tensor) -> Tensor:
    """words: [B, T, C]; mask: [B, T] bool. Returns the mean of the real tokens' states [B, C]."""
    weights = mask.to(words.dtype).unsqueeze(-1)
    return (words * weights).sum(1) / weights.sum(1).clamp(min=1)


def _pooled_to(coordinates: Tensor, shape: tuple[int, ...]) -> Tensor:
    """[N, A, *spatial] coordinate maps averaged down to ``shape``."""
    return F.adaptive_avg_pool3d(coordinates, shape) if len(shape) == 3 else F.adaptive_avg_pool2d(coordinates, shape)


class DecoderConditioning(TextBlock):
    """A module per decoder level ``(features [B, C, *sp], summary [B, D'] (, coordinates [B, A, *sp])) -> features``
    (part ``conditioners``, keyed by level), all reading one ``TextSummary`` of the prompt (part ``text_summary``).
    FiLM, the fusion chain and concatenation are this block with other modules.

    Args:
        options: the kind's options (sites: one ``decoder`` site per module).
        summary: the text reader.
        modules: level -> conditioner, in construction order.
        coordinate_axes: A > 0: the modules also read the whole-image coordinate channels (the input's last A),
            averaged down to their level (spatial FiLM).
    """

    def __init__(self, options: BlockOptions, summary: TextSummary, modules: dict[int, nn.Module],
                 coordinate_axes: int = 0) -> None:
        super().__init__(options)
        self.summary = summary
        self.conditioners = nn.ModuleDict({str(level): module for level, module in modules.items()})
        self.coordinate_axes = coordinate_axes

    def parts(self) -> dict[str, nn.Module | None]:
        return {"text_summary": self.summary, "conditioners": self.conditioners}

    def fit_text(self, text: TextBatch | Iterable[TextBatch]) -> None:
        self.summary.fit_whitening(text)

    def prepare(self, state: ForwardState) -> None:
        coordinates = []
        if self.coordinate_axes:
            whole_image = state.image[:, -self.coordinate_axes:]
            coordinates = [_pooled_to(whole_image, tuple(skip.shape[2:])) for skip in state.skips]
            if state.image_index is not None:
                coordinates = [c.index_select(0, state.image_index) for c in coordinates]
        state.scratch[self.kind] = (self.summary(state.text).to(state.skips[0].dtype), coordinates)

    def decoder(self, level: int, features: Tensor, state: ForwardState) -> Tensor:
        summary, coordinates = state.scratch[self.kind]
        if coordinates:
            return self.conditioners[str(level)](features, summary, coordinates[level])
        return self.conditioners[str(level)](features, summary)


# ------------------------------------------------------------------ FiLM
@register_block(FiLMOptions, DECODER_PARTS)
def build_film(options: FiLMOptions, shape: UNetShape) -> TextBlock:
    """FiLM at every decoder stage and the bottleneck, reading the text summary (and coordinate ramps)."""
    summary = TextSummary(shape.text_dim, use_tokens=options.text.tokens, whiten=options.text.whitening)
    axes = shape.spatial_dims if options.spatial else 0
    modules = {level: FiLM(summary.out_dim, shape.channels[level], coordinate_axes=axes) for level in options.levels}
    return DecoderConditioning(options, summary, modules, coordinate_axes=axes)


# ------------------------------------------------------------------ fusion chain
@register_block(FusionOptions, DECODER_PARTS)
def build_fusion(options: FusionOptions, shape: UNetShape) -> TextBlock:
    """The FiLM/CBN method's fusion chain at the bottleneck (and a residual CBN in the decoder)."""
    summary = TextSummary(shape.text_dim, use_tokens=options.text.tokens, whiten=options.text.whitening)
    modules: dict[int, nn.Module] = {options.level: FusionChain(shape.spatial_dims, summary.out_dim,
                                                                 shape.channels[options.level], se=options.se,
                                                                 cbn=options.chain_cbn)}
    if options.cbn_level is not None:
        modules[options.cbn_level] = ResidualConditionalBatchNorm(shape.spatial_dims, summary.out_dim,
                                                                  shape.channels[options.cbn_level])
    return DecoderConditioning(options, summary, modules)


# ------------------------------------------------------------------ concatenation
@register_block(ConcatOptions, DECODER_PARTS)
def build_concat(options: ConcatOptions, shape: UNetShape) -> TextBlock:
    """Concatenation of the tiled text summary at the bottleneck."""
    summary = TextSummary(shape.text_dim, use_tokens=options.text.tokens, whiten=options.text.whitening)
    return DecoderConditioning(options, summary, {options.level: ConcatFusion(
        shape.spatial_dims, summary.out_dim, shape.channels[options.level])})


# ------------------------------------------------------------------ SVLI (TextBCS)
class VisionLanguageBlock(TextBlock):
    """Part ``vision_language``: level -> ``VisionLanguageStage``; each reads the word states of the one before."""

    def __init__(self, options: SVLIOptions, stages: nn.ModuleDict) -> None:
        super().__init__(options)
        self.stages = stages

    def parts(self) -> dict[str, nn.Module | None]:
        return {"vision_language": self.stages}

    def encoder(self, level: int, features: Tensor, state: ForwardState) -> Tensor:
        features, state.words = self.stages[str(level)](features, state.words, state.text.mask)
        state.stage_words[level] = state.words
        return features


@register_block(SVLIOptions, {"vision_language": nn.ModuleDict})
def build_svli(options: SVLIOptions, shape: UNetShape) -> TextBlock:
    """SVLI stages after encoder stages; the encoder runs once per prompt from the first of them on."""
    stages, text_in = {}, shape.text_dim
    for level in options.levels:
        stages[str(level)] = VisionLanguageStage(shape.channels[level], text_in)
        text_in = shape.channels[level]
    return VisionLanguageBlock(options, nn.ModuleDict(stages))


# ------------------------------------------------------------------ refiner (Align-then-Refine)
class RefinerBlock(TextBlock):
    """Part ``refiner``: ``ConfidenceGatedRefiner`` over the last decoder features and the output convolution."""

    def __init__(self, options: RefinerOptions, refiner: ConfidenceGatedRefiner) -> None:
        super().__init__(options)
        self.refiner = refiner

    def parts(self) -> dict[str, nn.Module | None]:
        return {"refiner": self.refiner}

    def logits(self, logits: Tensor, features: Tensor, state: ForwardState) -> Tensor:
        return self.refiner(features, logits, state.head, state.text) if state.refine else logits


@register_block(RefinerOptions, {"refiner": None})
def build_refiner(options: RefinerOptions, shape: UNetShape) -> TextBlock:
    """Align-then-Refine's stage-2 refiner on the logits."""
    return RefinerBlock(options, ConfidenceGatedRefiner(shape.spatial_dims, shape.channels[0], shape.text_dim,
                                                        gate=options.gate, blend=options.blend,
                                                        tokens=options.tokens))


# ------------------------------------------------------------------ dynamic head (SGTC / RADA)
class DynamicHeadBlock(TextBlock):
    """Parts ``dynamic_bias`` (``SemanticDynamicBias``) and ``region_fusion`` (``RegionAwareFusion`` or None)."""

    def __init__(self, options: DynamicHeadOptions, bias: SemanticDynamicBias,
                 region_fusion: RegionAwareFusion | None) -> None:
        super().__init__(options)
        self.bias, self.region_fusion = bias, region_fusion

    def parts(self) -> dict[str, nn.Module | None]:
        return {"dynamic_bias": self.bias, "region_fusion": self.region_fusion}

    def prepare(self, state: ForwardState) -> None:
        pooled = state.text.pooled
        embedding = self.region_fusion(pooled) if self.region_fusion is not None else pooled
        bottleneck = len(state.skips) - 1
        state.scratch[self.kind] = self.bias(state.per_prompt(bottleneck, state.skips[bottleneck]), embedding)

    def head(self, features: Tensor, state: ForwardState) -> Tensor:
        bias = state.scratch[self.kind]  # [B, C_0]
        return features + bias.reshape(*bias.shape, *([1] * (features.ndim - 2)))


@register_block(DynamicHeadOptions, {"dynamic_bias": None, "region_fusion": None})
def build_dynamic_head(options: DynamicHeadOptions, shape: UNetShape) -> TextBlock:
    """SGTC/RADA's semantic dynamic head (with RADA's region-text fusion when region_dim > 0)."""
    bias = SemanticDynamicBias(shape.channels[-1], shape.text_dim, shape.channels[0])
    region = RegionAwareFusion(shape.text_dim, options.region_dim, options.region_rho) if options.region_dim else None
    return DynamicHeadBlock(options, bias, region)


# ------------------------------------------------------------------ similarity maps (TextBCS, Align-then-Refine)
class SimilarityBlock(TextBlock):
    """Part ``similarity``: level -> ``PixelTextSimilarity``; outputs ``encoder_{level}`` [B, 1, *spatial_level]."""

    def __init__(self, options: SimilarityOptions, heads: nn.ModuleDict) -> None:
        super().__init__(options)
        self.heads = heads

    def parts(self) -> dict[str, nn.Module | None]:
        return {"similarity": self.heads}

    def readout(self, state: ForwardState) -> dict[str, Tensor]:
        maps = {}
        for name, head in self.heads.items():
            level = int(name)
            text = masked_mean(state.stage_words[level], state.text.mask) if level in state.stage_words \
                else state.text.pooled
            maps[f"encoder_{level}"] = head(state.per_prompt(level, state.skips[level]), text)
        return maps


@register_block(SimilarityOptions, {"similarity": nn.ModuleDict})
def build_similarity(options: SimilarityOptions, shape: UNetShape) -> TextBlock:
    """Pixel-text similarity heads at encoder stages."""
    return SimilarityBlock(options, nn.ModuleDict({
        str(level): PixelTextSimilarity(shape.spatial_dims, shape.channels[level],
                                        shape.channels[level] if level in options.word_levels else shape.text_dim,
                                        options.dim, options.temperature, options.learnable_temperature)
        for level in options.levels}))


# ------------------------------------------------------------------ prompt head (a decoder the prompts share)
class PromptHeadBlock(TextBlock):
    """Parts ``text_summary`` (the text reader) and ``prompt_head`` (``PromptHead``)."""

    def __init__(self, options: PromptHeadOptions, summary: TextSummary, head: PromptHead,
                 coordinate_axes: int) -> None:
        super().__init__(options)
        self.summary, self.prompt_head, self.coordinate_axes = summary, head, coordinate_axes

    def parts(self) -> dict[str, nn.Module | None]:
        return {"text_summary": self.summary, "prompt_head": self.prompt_head}

    def fit_text(self, text: TextBatch | Iterable[TextBatch]) -> None:
        self.summary.fit_whitening(text)

    def prepare(self, state: ForwardState) -> None:
        coordinates = state.image[:, state.image.shape[1] - self.coordinate_axes:]  # [N, A, *spatial]
        if state.image_index is not None:
            coordinates = coordinates.index_select(0, state.image_index)
        state.scratch[self.kind] = (self.summary(state.text), coordinates)

    def logits(self, logits: Tensor, features: Tensor, state: ForwardState) -> Tensor:
        summary, coordinates = state.scratch[self.kind]
        read = torch.cat([features, coordinates.to(features.dtype)], dim=1)  # [B, C_0 + A, *spatial]
        return logits + self.prompt_head(read, summary).to(logits.dtype)


@register_block(PromptHeadOptions, {"text_summary": None, "prompt_head": None})
def build_prompt_head(options: PromptHeadOptions, shape: UNetShape) -> TextBlock:
    """The prompt head on the last decoder features (and the coordinate channels)."""
    summary = TextSummary(shape.text_dim, use_tokens=options.text.tokens, whiten=options.text.whitening)
    axes = shape.spatial_dims if options.coordinates else 0
    return PromptHeadBlock(options, summary, PromptHead(summary.out_dim, shape.channels[0] + axes, options.hidden),
                           axes)


__all__ = ["DecoderConditioning", "masked_mean"]
