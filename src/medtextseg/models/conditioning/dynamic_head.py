"""The semantic-conditioned dynamic head of SGTC, kept by RADA (METHODS.md 2.5).

The embedding of the task (text, or text fused with a region-aware image prototype) and a global summary of the
bottleneck give a per-sample bias that is added to the last decoder features before the output convolution:
the prompt shifts the whole head, not each stage as FiLM does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def bottleneck_adapter(dim: int, reduction: int = 4) -> nn.Sequential:
    """``ReLU(W2 ReLU(W1 e))`` without biases, D -> D / reduction -> D (CLIP-Adapter style)."""
    hidden = max(1, dim // reduction)
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.ReLU())


class SemanticDynamicBias(nn.Module):
    """``theta = Phi([g; tau])`` with ``g`` from the bottleneck and ``tau`` from the task embedding.

    * ``g = W_g GAP(ReLU(GN(x_bottleneck)))``;
    * ``tau = ReLU(W_tau Adapter(e) + b)``;
    * ``Phi``: four stacked linear maps without a nonlinearity between them, as SGTC's code has.

    Args:
        bottleneck_channels: C of the bottleneck features.
        embed_dim: D of the task embedding ``e``.
        out_channels: C of the decoder features the bias is added to.
        groups: of the group norm (reduced to divide ``bottleneck_channels``).
    """

    def __init__(self, bottleneck_channels: int, embed_dim: int, out_channels: int, groups: int = 16) -> None:
        super().__init__()
        groups = next(g for g in range(min(groups, bottleneck_channels), 0, -1) if bottleneck_channels % g == 0)
        self.norm = nn.GroupNorm(groups, bottleneck_channels)
        self.context = nn.Linear(bottleneck_channels, bottleneck_channels)
        self.adapter = bottleneck_adapter(embed_dim)
        self.task = nn.Linear(embed_dim, bottleneck_channels)
        widths = [2 * bottleneck_channels, bottleneck_channels, max(bottleneck_channels // 2, out_channels),
                  max(bottleneck_channels // 4, out_channels), out_channels]
        self.controller = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)))

    def forward(self, bottleneck: Tensor, embedding: Tensor) -> Tensor:
        """bottleneck: [B, C_b, *spatial]; embedding: [B, D]. Returns theta [B, out_channels]."""
        context = self.context(F.relu(self.norm(bottleneck)).flatten(2).mean(2))
        task = F.relu(self.task(self.adapter(embedding.to(context.dtype))))
        return self.controller(torch.cat([context, task], dim=1))


class RegionAwareFusion(nn.Module):
    """RADA's fusion of a region-aware image prototype with the text embedding (our reading, METHODS.md 2.6).

    ``zeta = [v / |v|; u / |u|]``, ``zeta' = rho Adapter(zeta) + (1 - rho) zeta``, ``e = W_f zeta'``.
    The prototype ``v`` is a buffer set once from annotated slices (``set_prototype``) and saved with the
    weights, so prediction needs no mask.

    Args:
        text_dim: D of the text embedding ``u`` (and of the output ``e``).
        region_dim: width of the image prototype ``v``.
        rho: residual ratio of the adapter.
    """

    def __init__(self, text_dim: int, region_dim: int, rho: float = 0.2) -> None:
        super().__init__()
        self.rho = rho
        self.register_buffer("prototype", torch.zeros(region_dim))
        self.adapter = bottleneck_adapter(text_dim + region_dim)
        self.project = nn.Linear(text_dim + region_dim, text_dim)

    @torch.no_grad()
    def set_prototype(self, prototype: Tensor) -> None:
        """prototype: [region_dim], e.g. the mean region embedding of the annotated slices."""
        if prototype.shape != self.prototype.shape:
            raise ValueError(f"region prototype of shape {tuple(prototype.shape)}, expected "
                             f"{tuple(self.prototype.shape)}")
        self.prototype.copy_(prototype)

    def forward(self, text: Tensor) -> Tensor:
        """text: [B, text_dim] pooled embeddings. Returns the fused embedding [B, text_dim]."""
        region = F.normalize(self.prototype, dim=0, eps=1e-6).to(text.dtype).expand(text.shape[0], -1)
        zeta = torch.cat([region, F.normalize(text, dim=1, eps=1e-6)], dim=1)
        return self.project(self.rho * self.adapter(zeta) + (1 - self.rho) * zeta)


__all__ = ["RegionAwareFusion", "SemanticDynamicBias", "bottleneck_adapter"]
