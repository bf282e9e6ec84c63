"""The registry of conditioning blocks: every way the text enters the U-Net, by name, with its options and sites.

A block kind is registered once (``register_block``) with a pydantic options model and a builder. The options say
what the block is and where it sits (``BlockOptions.sites``); ``from_model_config`` reads them off the flat
``model`` section of a config (the keys users write: ``model.conditioning``, ``model.fusion_se``, ...), so that
section stays the one front and the registry turns it into typed block configs (``block_options``). The builder
makes a ``TextBlock``: the modules it owns (``parts``, registered on the model under these names, which are the
state-dict prefixes checkpoints carry) and what it does at each of its sites. ``TextGuidedUNet.forward`` loops
over sites and asks the blocks sitting there; it does not know the kinds.

Sites (levels count from 0 = full resolution to L-1 = bottleneck):

* ``encoder L``: after encoder stage L (the features become the skip and the next stage's input);
* ``decoder L``: on the bottleneck (L-1) and after every decoder stage;
* ``head``: the last decoder features, before the output convolution;
* ``logits``: the logits after the output convolution;
* ``readout L``: extra outputs read from encoder stage L (``ModelOutput.similarity``).

The kinds are listed with wildcards, as timm lists its models: ``block_kinds("f*")`` -> ``["film", "fusion"]``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from medtextseg.config import ModelConfig
from medtextseg.text.batch import TextBatch


class Site(NamedTuple):
    """Where a block acts: ``where`` and, for the stage sites, the level (0 = full resolution)."""

    where: Literal["encoder", "decoder", "head", "logits", "readout"]
    level: int | None = None

    def __str__(self) -> str:
        return self.where if self.level is None else f"{self.where} {self.level}"


class BlockOptions(BaseModel):
    """The typed config of one block kind. Subclasses set ``kind``, their fields, ``sites`` and
    ``from_model_config``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str]

    def sites(self) -> tuple[Site, ...]:
        raise NotImplementedError

    @classmethod
    def from_model_config(cls, config: ModelConfig) -> BlockOptions | None:
        """This block's options as the flat model section states them, or None when it has no such block."""
        raise NotImplementedError

    def describe(self) -> str:
        """``kind @ sites (options)`` in one line, e.g. ``film @ decoder 0,1,2,3 (spatial=True, ...)``."""
        levels: dict[str, list[str]] = {}
        for site in self.sites():
            levels.setdefault(site.where, []).extend([] if site.level is None else [str(site.level)])
        sites = "; ".join(" ".join([where, ",".join(found)]).strip() for where, found in levels.items())
        values = ", ".join(f"{name}={value}" for name, value in _flat(self.model_dump()).items()
                           if name not in self.site_fields)
        return f"{self.kind} @ {sites}" + (f" ({values})" if values else "")

    site_fields: ClassVar[frozenset[str]] = frozenset({"level", "levels", "cbn_level"})  # shown as sites


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested option dicts as dotted names: ``{"text": {"tokens": True}}`` -> ``{"text.tokens": True}``."""
    flat: dict[str, Any] = {}
    for name, value in values.items():
        flat |= _flat(value, f"{prefix}{name}.") if isinstance(value, dict) else {f"{prefix}{name}": value}
    return flat


@dataclass(frozen=True)
class UNetShape:
    """What a builder needs to know of the U-Net around its block."""

    spatial_dims: int
    channels: tuple[int, ...]  # per level, 0 = full resolution
    text_dim: int


@dataclass
class ForwardState:
    """What the blocks of one forward call share.

    Attributes:
        image: [N, C_in, *spatial] the model's input.
        text: B encoded prompts, on the image's device.
        image_index: [B] long, the image row of each prompt, or None (prompt b <-> image b).
        per_prompt_from: the first encoder level whose features have one row per prompt (the first level with an
            encoder-site block; L when none: the whole encoder runs once per image).
        refine: whether ``logits``-site blocks that refine (the refiner) act (``inference.refiner``).
        skips: the encoder's features per level, set after the encoder.
        words: [B, T, C] the current word states (the encoder-site blocks carry them on).
        stage_words: level -> word states after that encoder level.
        head: the output convolution (``logits``-site blocks may apply it again).
        scratch: block kind -> what its ``prepare`` computed for this call.
    """

    image: Tensor
    text: TextBatch
    image_index: Tensor | None
    per_prompt_from: int
    refine: bool = True
    skips: list[Tensor] = field(default_factory=list)
    words: Tensor | None = None
    stage_words: dict[int, Tensor] = field(default_factory=dict)
    head: nn.Module | None = None
    scratch: dict[str, Any] = field(default_factory=dict)

    def per_prompt(self, level: int, features: Tensor) -> Tensor:
        """An image-level tensor at ``level`` -> one row per prompt. index_select rather than
        ``features[image_index]``: its backward (index_add_) is much faster on the CPU than index_put_'s."""
        if self.image_index is None or level >= self.per_prompt_from:
            return features
        return features.index_select(0, self.image_index)


class TextBlock:
    """A built block: its modules (``parts``: model attribute -> module) and its hooks, one per site kind.

    Hooks not overridden pass their input through. A block acts only at the sites its options name.
    """

    def __init__(self, options: BlockOptions) -> None:
        self.options = options
        self.kind = options.kind
        self.sites = options.sites()

    def parts(self) -> dict[str, nn.Module | None]:
        raise NotImplementedError

    def fit_text(self, text: TextBatch | Iterable[TextBatch]) -> None:
        """Fit what the block normalises the text by on the training prompts (default: nothing)."""

    def prepare(self, state: ForwardState) -> None:
        """After the encoder, before the decoder: compute what the block's sites read (into ``state.scratch``)."""

    def encoder(self, level: int, features: Tensor, state: ForwardState) -> Tensor:
        return features

    def decoder(self, level: int, features: Tensor, state: ForwardState) -> Tensor:
        return features

    def head(self, features: Tensor, state: ForwardState) -> Tensor:
        return features

    def logits(self, logits: Tensor, features: Tensor, state: ForwardState) -> Tensor:
        return logits

    def readout(self, state: ForwardState) -> dict[str, Tensor]:
        return {}


@dataclass(frozen=True)
class BlockKind:
    """One registered kind: its options model, builder, and the parts its blocks own with their empty value
    (None, or an empty container that code may iterate)."""

    name: str
    options: type[BlockOptions]
    build: Callable[[Any, UNetShape], TextBlock]
    parts: dict[str, type[nn.Module] | None]


_KINDS: dict[str, BlockKind] = {}


def register_block(options: type[BlockOptions], parts: dict[str, type[nn.Module] | None]
                   ) -> Callable[[Callable[[Any, UNetShape], TextBlock]], Callable[[Any, UNetShape], TextBlock]]:
    """Register a builder ``(options, shape) -> TextBlock`` for ``options.kind``.

    Registration order is construction order, and so the order parameters are initialised from the seed in and
    listed in: a new kind goes last, so that the weights a seed gives the existing ones do not change.
    """
    def decorator(build: Callable[[Any, UNetShape], TextBlock]) -> Callable[[Any, UNetShape], TextBlock]:
        if options.kind in _KINDS:
            raise ValueError(f"block kind {options.kind!r} is registered twice")
        _KINDS[options.kind] = BlockKind(options.kind, options, build, dict(parts))
        return build
    return decorator


def _kinds() -> dict[str, BlockKind]:
    return _KINDS  # the built-in kinds registered when the package was imported (conditioning/__init__.py)


def block_kinds(pattern: str | Sequence[str] = "*") -> list[str]:
    """Registered kinds whose name matches a wildcard pattern (or any of several), in registration order."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return [name for name in _kinds() if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def block_kind(name: str) -> BlockKind:
    kinds = _kinds()
    if name not in kinds:
        raise ValueError(f"unknown block kind {name!r}; registered: {', '.join(kinds)}")
    return kinds[name]


def block_options(config: ModelConfig) -> list[BlockOptions]:
    """The typed configs of the blocks a model section describes, in registration order."""
    found = (kind.options.from_model_config(config) for kind in _kinds().values())
    return [options for options in found if options is not None]


def model_parts() -> dict[str, type[nn.Module] | None]:
    """Every registered part name -> its empty value, in registration order (the model's attribute order)."""
    parts: dict[str, type[nn.Module] | None] = {}
    for kind in _kinds().values():
        for name, empty in kind.parts.items():
            parts.setdefault(name, empty)
    return parts


def build_blocks(config: ModelConfig, text_dim: int) -> list[TextBlock]:
    """Build the blocks of a model section for a text encoder of width ``text_dim``."""
    shape = UNetShape(config.spatial_dims, tuple(config.channels), text_dim)
    return [block_kind(options.kind).build(options, shape) for options in block_options(config)]
