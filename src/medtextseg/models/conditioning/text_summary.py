"""What the conditioning layers see of a prompt: the sentence embedding plus learned views of its tokens.

A mean-pooled sentence embedding blurs the words that decide a referring prompt: for MiniLM, "the lesion
in the left peripheral zone" and "... right ..." have cosine similarity 0.975. The token states keep the
difference, so learned queries attend over them (``nn.MultiheadAttention``) and learn which words matter.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medtextseg.text.batch import TextBatch


class TextSummary(nn.Module):
    """[B, D] sentence embedding + Q learned attention reads of the tokens -> [B, out_dim].

    Args:
        text_dim: D of the text encoder.
        use_tokens: False -> the sentence embedding alone (``out_dim = D``).
        queries: Q learned queries.
        dim: width of the attention.
        heads: attention heads.
    """

    def __init__(self, text_dim: int, use_tokens: bool = True, queries: int = 4, dim: int = 128,
                 heads: int = 4) -> None:
        super().__init__()
        self.use_tokens = use_tokens
        self.out_dim = text_dim + (queries * dim if use_tokens else 0)
        if use_tokens:
            self.norm = nn.LayerNorm(text_dim)
            self.project = nn.Linear(text_dim, dim)
            self.queries = nn.Parameter(torch.randn(queries, dim) * 0.02)
            self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, text: TextBatch) -> Tensor:
        """Returns [B, out_dim]."""
        pooled = text.pooled
        if not self.use_tokens:
            return pooled
        tokens = self.project(self.norm(text.tokens.to(pooled.dtype)))  # [B, T, dim]
        queries = self.queries.expand(tokens.shape[0], -1, -1)  # [B, Q, dim]
        read, _ = self.attention(queries, tokens, tokens, key_padding_mask=~text.mask, need_weights=False)
        return torch.cat([pooled, read.flatten(1)], dim=1)
