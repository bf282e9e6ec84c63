"""FiLM: feature-wise linear modulation of image features by a text embedding (Perez et al., AAAI 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FiLM(nn.Module):
    """``x * (1 + gamma(t)) + beta(t)`` per channel, with gamma and beta from a small MLP of the text.

    With ``coordinate_axes = A > 0`` the text also gets a spatial handle: ``+ sum_a delta_a(t) * coord_a``,
    a per-channel ramp along each whole-image coordinate axis. Plain FiLM is spatially constant, so a prompt
    can only pick *what* to look for; "left" or "right" must then be learnt as a feature of its own. The
    ramp lets the words push a channel up on the named side and down on the other.

    The last layer starts at zero, so an untrained FiLM is the identity and the image path trains from
    the first step as if unconditioned.

    Args:
        text_dim: D, the size of the pooled text embedding.
        channels: C, the feature channels modulated.
        hidden: width of the MLP.
        coordinate_axes: A, the number of coordinate maps given to ``forward`` (0: plain FiLM).
    """

    def __init__(self, text_dim: int, channels: int, hidden: int = 128, coordinate_axes: int = 0) -> None:
        super().__init__()
        self.coordinate_axes = coordinate_axes
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, (2 + coordinate_axes) * channels))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: Tensor, text: Tensor, coordinates: Tensor | None = None) -> Tensor:
        """features: [B, C, *spatial]; text: [B, D] pooled embedding; coordinates: [B, A, *spatial] in [-1, 1]
        (required when ``coordinate_axes > 0``). Returns [B, C, *spatial]."""
        batch, channels = features.shape[:2]
        params = self.mlp(text).reshape(batch, 2 + self.coordinate_axes, channels)
        shape = (batch, channels, *([1] * (features.ndim - 2)))
        out = features * (1 + params[:, 0].reshape(shape)) + params[:, 1].reshape(shape)
        if self.coordinate_axes:
            if coordinates is None or coordinates.shape[1] != self.coordinate_axes:
                raise ValueError(f"FiLM with coordinate_axes={self.coordinate_axes} needs coordinates "
                                 f"[B, {self.coordinate_axes}, *spatial]")
            out = out + torch.einsum("bac,ba...->bc...", params[:, 2:], coordinates.to(features.dtype))
        return out
