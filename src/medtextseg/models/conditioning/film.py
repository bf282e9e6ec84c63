"""FiLM: feature-wise linear modulation of image features by a text embedding (Perez et al., AAAI 2018)."""

from __future__ import annotations

from torch import Tensor, nn


class FiLM(nn.Module):
    """``x * (1 + gamma(t)) + beta(t)`` per channel, with gamma and beta from a small MLP of the text.

    The last layer starts at zero, so an untrained FiLM is the identity and the image path trains from
    the first step as if unconditioned.

    Args:
        text_dim: D, the size of the pooled text embedding.
        channels: C, the feature channels modulated.
        hidden: width of the MLP.
    """

    def __init__(self, text_dim: int, channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, 2 * channels))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: Tensor, text: Tensor) -> Tensor:
        """features: [B, C, *spatial]; text: [B, D] pooled embedding. Returns [B, C, *spatial]."""
        gamma, beta = self.mlp(text).chunk(2, dim=-1)
        shape = (*gamma.shape, *([1] * (features.ndim - 2)))
        return features * (1 + gamma.reshape(shape)) + beta.reshape(shape)
