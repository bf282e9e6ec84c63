"""The per-stage refinement applied after a U-Net block: SE, CBAM and dropout, each optional."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.layers.factories import Dropout
from torch import nn

from medtextseg.models.blocks.cbam import CBAM
from medtextseg.models.blocks.squeeze_excitation import squeeze_excitation

ATTENTION_BLOCKS = ("se", "cbam")


def stage_refinement(spatial_dims: int, channels: int, attention: Sequence[str] = (), dropout: float = 0.0,
                     reduction: int = 16) -> nn.Module:
    """``attention`` in order (e.g. ``["se", "cbam"]``), then channel dropout; ``nn.Identity`` if none.

    SE is :func:`squeeze_excitation`, CBAM is :class:`~medtextseg.models.blocks.cbam.CBAM`.
    """
    layers: list[nn.Module] = []
    for name in attention:
        if name == "se":
            layers.append(squeeze_excitation(spatial_dims, channels, reduction))
        elif name == "cbam":
            layers.append(CBAM(spatial_dims, channels, reduction))
        else:
            raise ValueError(f"unknown attention block {name!r}; choose from {', '.join(ATTENTION_BLOCKS)}")
    if dropout > 0:
        layers.append(Dropout[Dropout.DROPOUT, spatial_dims](dropout))
    return nn.Sequential(*layers) if layers else nn.Identity()
