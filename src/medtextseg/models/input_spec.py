"""What a segmenter reads and answers with, declared by the segmenter, so that whoever feeds it (the sliding
window, an ensemble) need not read its config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from medtextseg.config import ModelConfig


@dataclass(frozen=True)
class InputSpec:
    """A segmenter's input and output.

    Attributes:
        spatial_dims: 2 or 3: windows are [N, C, *spatial] with that many spatial axes.
        in_channels: the image channels of a window (one per sequence; times 2k+1 slices for a 2.5D model).
        coordinates: ``spatial_dims`` whole-image coordinate channels follow the image channels (the caller
            appends them, so that a window knows where in the image it lies).
        head: ``"sigmoid"`` (logits) or ``"evidential"`` (logits and Dirichlet evidence [B, 2, *spatial]).
    """

    spatial_dims: int
    in_channels: int
    coordinates: bool = False
    head: Literal["sigmoid", "evidential"] = "sigmoid"

    @classmethod
    def of(cls, config: ModelConfig) -> InputSpec:
        return cls(config.spatial_dims, config.in_channels, config.coordinates, config.head)

    @property
    def channels(self) -> int:
        """Channels of a window as the network takes it: image channels, then coordinate channels."""
        return self.in_channels + (self.spatial_dims if self.coordinates else 0)


__all__ = ["InputSpec"]
