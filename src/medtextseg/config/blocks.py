"""The text blocks a model section lists (``model.blocks``): every way the text enters the U-Net, one typed section
per kind, with where it sits.

A config writes them by kind, each with its options::

    model:
      blocks:
        film: {spatial: true, text: {tokens: true, whitening: true}}
        similarity: {levels: [3], temperature: 1.0}

``--set model.blocks.film.spatial=false`` edits one option, ``--set model.blocks.similarity=null`` removes a kind a
base preset lists, and ``medtextseg presets --blocks`` shows every preset's blocks. A value left ``null`` (FiLM's
``levels``, the fusion chain's ``level``, ...) is set from the U-Net the block sits in (:meth:`BlockOptions.resolved`).

The modules each kind builds are in ``models/conditioning/catalogue.py``, registered under the same names; this file
holds only what a config says, so that the config checks it without importing torch.

Sites (levels count from 0 = full resolution to L-1 = bottleneck):

* ``encoder L``: after encoder stage L (the features become the skip and the next stage's input);
* ``decoder L``: on the bottleneck (L-1) and after every decoder stage;
* ``head``: the last decoder features, before the output convolution;
* ``logits``: the logits after the output convolution;
* ``readout L``: extra outputs read from encoder stage L (``ModelOutput.similarity``).
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from medtextseg.config import ModelConfig


class Site(NamedTuple):
    """Where a block acts: ``where`` and, for the stage sites, the level (0 = full resolution)."""

    where: Literal["encoder", "decoder", "head", "logits", "readout"]
    level: int | None = None

    def __str__(self) -> str:
        return self.where if self.level is None else f"{self.where} {self.level}"


class TextReading(BaseModel):
    """What the decoder blocks read of a prompt (``TextSummary``): the sentence embedding, plus attention reads of
    its tokens (``tokens``), both whitened over the training prompts (``whitening``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tokens: bool = Field(True, description="also read the prompt's token states (attention pooling), not only "
                         "the sentence embedding")
    whitening: bool = Field(False, description="whiten the text features over the training prompts (fitted "
                            "before step 1), so that faint but decisive words such as left / right stand out")


BLOCK_KINDS: dict[str, type[BlockOptions]] = {}  # kind -> its options, in construction order (below)


class BlockOptions(BaseModel):
    """The typed section of one block kind. A subclass sets ``kind`` (which registers it), its fields, ``sites``
    and, where a value depends on the U-Net or on another block, ``resolved``; ``check`` refuses a model section
    the block cannot sit in.

    Subclasses are registered in the order the segmenter creates their modules, which fixes the weights a seed
    gives: a new kind goes last.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str]
    site_fields: ClassVar[frozenset[str]] = frozenset({"level", "levels"})  # shown as sites

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            if cls.kind in BLOCK_KINDS:
                raise ValueError(f"block kind {cls.kind!r} is registered twice")
            BLOCK_KINDS[cls.kind] = cls

    def sites(self) -> tuple[Site, ...]:
        """Where the block acts (on resolved options)."""
        raise NotImplementedError

    def resolved(self, model: ModelConfig) -> BlockOptions:
        """These options with every value left to the U-Net set (e.g. FiLM's ``levels``: every level)."""
        return self

    def check(self, model: ModelConfig) -> None:
        """Raise ValueError, naming the fields, when the model section cannot hold this block."""

    @property
    def whitens_text(self) -> bool:
        """Whether the block whitens the text over the training prompts (fitted before step 1)."""
        return False

    def describe(self) -> str:
        """``kind @ sites (options)`` in one line, e.g. ``film @ decoder 0,1,2,3 (spatial=True, ...)``."""
        levels: dict[str, list[str]] = {}
        for site in self.sites():
            levels.setdefault(site.where, []).extend([] if site.level is None else [str(site.level)])
        sites = "; ".join(" ".join([where, ",".join(found)]).strip() for where, found in levels.items())
        values = ", ".join(f"{name}={value}" for name, value in _flat(self.model_dump()).items()
                           if name not in self.site_fields)
        return f"{self.kind} @ {sites}" + (f" ({values})" if values else "")


class TextReadingBlock(BlockOptions):
    """A block that reads the prompt through a ``TextSummary`` (FiLM, the fusion chain, concatenation, the prompt
    head): its ``text`` field (a ``TextReading``, its last option) says how."""

    @property
    def whitens_text(self) -> bool:
        # each subclass declares ``text`` last, after its own options (a field here would come first)
        return self.text.whitening  # type: ignore[attr-defined]


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested option dicts as dotted names: ``{"text": {"tokens": True}}`` -> ``{"text.tokens": True}``."""
    flat: dict[str, Any] = {}
    for name, value in values.items():
        flat |= _flat(value, f"{prefix}{name}.") if isinstance(value, dict) else {f"{prefix}{name}": value}
    return flat


def _check_levels(model: ModelConfig, field: str, levels: tuple[int, ...]) -> None:
    stages = len(model.channels)
    if any(not 0 <= level < stages for level in levels) or len(set(levels)) != len(levels):
        raise ValueError(f"model.blocks.{field} {list(levels)} must be distinct stage numbers in 0..{stages - 1}")


def _every_level(model: ModelConfig) -> tuple[int, ...]:
    return tuple(range(len(model.channels)))


# ------------------------------------------------------------------ FiLM
class FiLMOptions(TextReadingBlock):
    """FiLM (``x (1 + gamma(t)) + beta(t)``) at decoder ``levels`` (null: the bottleneck and every decoder stage);
    ``spatial``: plus a per-channel ramp along each whole-image axis, set by the text (needs the coordinate
    channels). The default's block."""

    kind = "film"
    levels: tuple[int, ...] | None = Field(None, description="decoder levels; null: every level")
    spatial: bool = Field(False, description="the text also sets a per-channel ramp along each whole-image axis "
                          "(a handle for left / right words; needs model.coordinates)")
    text: TextReading = TextReading()

    def sites(self) -> tuple[Site, ...]:
        return tuple(Site("decoder", level) for level in self.levels or ())

    def resolved(self, model: ModelConfig) -> FiLMOptions:
        return self if self.levels is not None else self.model_copy(update={"levels": _every_level(model)})

    def check(self, model: ModelConfig) -> None:
        if self.spatial and not model.coordinates:
            raise ValueError("model.blocks.film.spatial needs model.coordinates=true (the ramps run along the "
                             "whole-image coordinate channels)")
        if self.levels is not None:
            _check_levels(model, "film.levels", self.levels)


class AtOneDecoderLevel(TextReadingBlock):
    """A text-reading block at one decoder ``level``, the bottleneck unless the config names another."""

    level: int | None = Field(None, description="decoder level; null: the bottleneck")

    def resolved(self, model: ModelConfig) -> AtOneDecoderLevel:
        return self if self.level is not None else self.model_copy(update={"level": len(model.channels) - 1})

    def check(self, model: ModelConfig) -> None:
        if self.level is not None:
            _check_levels(model, f"{self.kind}.level", (self.level,))


# ------------------------------------------------------------------ fusion chain
class FusionOptions(AtOneDecoderLevel):
    """The FiLM -> SE -> CBN -> residual -> L2 chain at decoder ``level`` (null: the bottleneck; ``se`` and
    ``cbn`` switch its links), and, with ``cbn`` and ``cbn_position`` decoder or both, a residual CBN one stage
    above full resolution (the paper's 128-channel layer): the FiLM/CBN method."""

    kind = "fusion"
    se: bool = Field(True, description="squeeze-and-excitation after FiLM")
    cbn: bool = Field(True, description="conditional batch norm (where cbn_position says)")
    cbn_position: Literal["bottleneck", "decoder", "both"] = Field(
        "bottleneck", description="bottleneck: in the chain; decoder: a residual CBN at the second-highest-"
        "resolution decoder stage; both")
    text: TextReading = TextReading()

    @property
    def chain_cbn(self) -> bool:
        """Whether the chain itself has its CBN link."""
        return self.cbn and self.cbn_position in ("bottleneck", "both")

    @property
    def cbn_level(self) -> int | None:
        """The decoder level of the residual CBN, or None."""
        if not (self.cbn and self.cbn_position in ("decoder", "both")) or self.level is None:
            return None
        return min(1, self.level - 1)

    def sites(self) -> tuple[Site, ...]:
        return (Site("decoder", self.level),) + (() if self.cbn_level is None else (Site("decoder", self.cbn_level),))


# ------------------------------------------------------------------ concatenation
class ConcatOptions(AtOneDecoderLevel):
    """The text tiled over space and concatenated at decoder ``level`` (null: the bottleneck), mixed back by a 1x1
    convolution: the FiLM/CBN ablation's baseline."""

    kind = "concat"
    text: TextReading = TextReading()

    def sites(self) -> tuple[Site, ...]:
        return (Site("decoder", self.level),)


# ------------------------------------------------------------------ SVLI (TextBCS)
class SVLIOptions(BlockOptions):
    """Bidirectional pixel-word cross-attention after encoder ``levels``, the word states carried from one to the
    next (TextBCS's SVLI); from the first of them on, the encoder runs once per prompt."""

    kind = "svli"
    levels: tuple[int, ...] = Field(description="encoder stages (0 = full resolution) followed by the attention")

    def sites(self) -> tuple[Site, ...]:
        return tuple(Site("encoder", level) for level in self.levels)

    def resolved(self, model: ModelConfig) -> SVLIOptions:
        # in encoder order: each stage reads the word states of the one before
        return self.model_copy(update={"levels": tuple(sorted(self.levels))})

    def check(self, model: ModelConfig) -> None:
        _check_levels(model, "svli.levels", self.levels)
        if not self.levels:
            raise ValueError("model.blocks.svli.levels is empty; remove the block with model.blocks.svli=null")
        if model.encoders > 1:
            raise ValueError("model.blocks.svli needs model.encoders=1 (the attention's output feeds the next "
                             "stage of one encoder)")


# ------------------------------------------------------------------ refiner (Align-then-Refine)
class RefinerOptions(BlockOptions):
    """The confidence-gated text cross-attention refiner on the logits (Align-then-Refine stage 2): voxels whose
    base probability exceeds ``gate`` move ``blend`` of the way to the refined logits. ``inference.refiner=false``
    switches it off when predicting."""

    kind = "refiner"
    tokens: bool = Field(False, description="attend over the prompt's tokens, not one pooled embedding")
    gate: float = Field(0.44, gt=0, lt=1, description="refine voxels whose base probability exceeds this")
    blend: float = Field(0.12, ge=0, le=1, description="how far the refined logits move the base ones")

    def sites(self) -> tuple[Site, ...]:
        return (Site("logits"),)

    def check(self, model: ModelConfig) -> None:
        if model.head != "sigmoid":
            raise ValueError("model.blocks.refiner needs model.head=sigmoid")


# ------------------------------------------------------------------ dynamic head (SGTC / RADA)
class DynamicHeadOptions(BlockOptions):
    """A per-sample bias from the prompt embedding and the bottleneck, added before the output convolution
    (SGTC/RADA); with ``region_dim`` > 0 the embedding is first fused with a region-aware image prototype of that
    width (residual ratio ``region_rho``; RADA, 1280 for EfficientNet-Lite0)."""

    kind = "dynamic_head"
    region_dim: int = Field(0, ge=0, description="width of the region-aware image prototype; 0 = text only")
    region_rho: float = Field(0.2, ge=0, le=1, description="residual ratio of the region-text fusion adapter")

    def sites(self) -> tuple[Site, ...]:
        return (Site("head"),)


# ------------------------------------------------------------------ similarity maps (TextBCS, Align-then-Refine)
class SimilarityOptions(BlockOptions):
    """Pixel-text similarity maps ``cos / tau`` read from encoder ``levels`` (for the contrastive, heatmap and
    alignment losses), in a ``dim``-wide space; the text side is the SVLI word states' mean at the ``word_levels``
    (null: where SVLI sits), the sentence embedding elsewhere."""

    kind = "similarity"
    levels: tuple[int, ...] = Field(description="encoder stages whose features give a map")
    word_levels: tuple[int, ...] | None = Field(None, description="levels whose text side is the SVLI word "
                                                "states; null: the svli block's levels")
    dim: int = Field(64, ge=1, description="width of the shared pixel-text space")
    temperature: float = Field(0.07, gt=0, description="tau of cos / tau at initialisation")
    learnable_temperature: bool = Field(True, description="learn tau (TextBCS) or keep it fixed "
                                        "(Align-then-Refine)")

    def sites(self) -> tuple[Site, ...]:
        return tuple(Site("readout", level) for level in self.levels)

    def resolved(self, model: ModelConfig) -> SimilarityOptions:
        if self.word_levels is not None:
            return self
        svli = model.blocks.get(SVLIOptions.kind)
        return self.model_copy(update={"word_levels": tuple(sorted(svli.levels)) if svli is not None else ()})

    def check(self, model: ModelConfig) -> None:
        _check_levels(model, "similarity.levels", self.levels)
        if not self.levels:
            raise ValueError("model.blocks.similarity.levels is empty; remove the block with "
                             "model.blocks.similarity=null")


# ------------------------------------------------------------------ prompt head (a decoder the prompts share)
class PromptHeadOptions(TextReadingBlock):
    """Per-prompt 1x1 convolutions (``hidden`` wide) on the last decoder features, their weights set by the
    text summary, added to the shared output convolution's logits; ``coordinates``: they also read the
    whole-image coordinate channels (null: when the model has them). No text enters before it, so the decoder runs
    once per image for all of its prompts."""

    kind = "prompt_head"
    hidden: int = Field(16, ge=1, description="width of the head's two hidden layers")
    coordinates: bool | None = Field(None, description="read the coordinate channels; null: model.coordinates")
    text: TextReading = TextReading()

    def sites(self) -> tuple[Site, ...]:
        return (Site("logits"),)

    def resolved(self, model: ModelConfig) -> PromptHeadOptions:
        return self if self.coordinates is not None else self.model_copy(update={"coordinates": model.coordinates})

    def check(self, model: ModelConfig) -> None:
        if model.head != "sigmoid" or RefinerOptions.kind in model.blocks:
            raise ValueError("model.blocks.prompt_head needs model.head=sigmoid and no refiner (it adds its logits "
                             "to the single sigmoid logit, after every other block)")
        if self.coordinates and not model.coordinates:
            raise ValueError("model.blocks.prompt_head.coordinates needs model.coordinates=true")


def parse_blocks(raw: Any) -> dict[str, BlockOptions]:
    """``model.blocks`` as written (kind -> options mapping, or None to leave a kind out) -> kind -> typed options,
    in construction order. Raises ValueError naming the kind and the option."""
    if not isinstance(raw, dict):
        raise ValueError(f"model.blocks must map block kinds to their options, got {raw!r}")
    parsed: dict[str, BlockOptions] = {}
    for kind, value in raw.items():
        if kind not in BLOCK_KINDS:
            hint = difflib.get_close_matches(str(kind), list(BLOCK_KINDS), n=1)
            raise ValueError(f"unknown block kind {kind!r} in model.blocks" + (f" (did you mean {hint[0]!r}?)"
                             if hint else "") + f"; kinds: {', '.join(BLOCK_KINDS)}")
        if value is None:
            continue
        options = BLOCK_KINDS[kind]
        if isinstance(value, options):
            parsed[kind] = value
            continue
        try:
            parsed[kind] = options.model_validate(value)
        except ValidationError as error:
            raise ValueError("; ".join(_explain_option(kind, options, item) for item in error.errors())) from None
    return {kind: parsed[kind] for kind in BLOCK_KINDS if kind in parsed}


def _explain_option(kind: str, options: type[BlockOptions], item: Any) -> str:
    field = ".".join(["model.blocks", kind, *map(str, item["loc"])])
    if item["type"] == "extra_forbidden":
        hint = difflib.get_close_matches(str(item["loc"][-1]), list(options.model_fields), n=1)
        return (f"unknown option {field!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; {kind} has {', '.join(options.model_fields)}")
    return f"{field}: {item['msg']} (got {item.get('input')!r})"


__all__ = ["BLOCK_KINDS", "BlockOptions", "ConcatOptions", "DynamicHeadOptions", "FiLMOptions", "FusionOptions",
           "PromptHeadOptions", "RefinerOptions", "SVLIOptions", "Site", "SimilarityOptions", "TextReading",
           "TextReadingBlock", "parse_blocks"]
