"""The registry of conditioning blocks: the modules each kind of text block builds, by the kind's name.

What a block is and where it sits is its typed section of the config (``model.blocks``, ``config/blocks.py``:
``BlockOptions``, ``Site``). A kind is registered here once (``register_block``) with those options and a builder
that makes a ``TextBlock``: the modules it owns (``parts``, registered on the model under these names, which are
the state-dict prefixes checkpoints carry) and what it does at each of its sites. ``TextGuidedUNet.forward`` loops
over sites and asks the blocks sitting there; it does not know the kinds.

The kinds are listed with wildcards, as timm lists its models: ``block_kinds("f*")`` -> ``["film", "fusion"]``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from medtextseg.config import ModelConfig
from medtextseg.config.blocks import BLOCK_KINDS, BlockOptions
from medtextseg.text.batch import TextBatch


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
        if options.kind in _KINDS or BLOCK_KINDS.get(options.kind) is not options:
            raise ValueError(f"block kind {options.kind!r} is registered twice, or its options are not the "
                             "config's (config/blocks.py)")
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
    """The blocks a model section lists, resolved against its U-Net, in construction order."""
    return config.text_blocks()


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
