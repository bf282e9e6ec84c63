"""What the conditioning layers see of a prompt: the sentence embedding plus learned views of its tokens.

A mean-pooled sentence embedding blurs the words that decide a referring prompt: for MiniLM, "the lesion
in the left peripheral zone" and "... right ..." have cosine similarity 0.975. The token states keep the
difference, so learned queries attend over them (``nn.MultiheadAttention``) and learn which words matter.
With ``whiten``, both are first whitened over the training prompts (``TextWhitening``), which enlarges that
difference against the variation in phrasing.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from medtextseg.models.conditioning.text_whitening import FeatureMoments, TextWhitening
from medtextseg.text.batch import TextBatch


class TextSummary(nn.Module):
    """[B, D] sentence embedding + Q learned attention reads of the tokens -> [B, out_dim].

    Args:
        text_dim: D of the text encoder.
        use_tokens: False -> the sentence embedding alone (``out_dim = D``).
        queries: Q learned queries.
        dim: width of the attention.
        heads: attention heads.
        whiten: whiten the sentence embedding and the token states (call ``fit_whitening`` before training).
    """

    def __init__(self, text_dim: int, use_tokens: bool = True, queries: int = 4, dim: int = 128,
                 heads: int = 4, whiten: bool = False) -> None:
        super().__init__()
        self.use_tokens = use_tokens
        self.pooled_whitening = TextWhitening(text_dim) if whiten else None
        self.token_whitening = TextWhitening(text_dim) if whiten and use_tokens else None
        self.out_dim = text_dim + (queries * dim if use_tokens else 0)
        if use_tokens:
            self.norm = nn.LayerNorm(text_dim)
            self.project = nn.Linear(text_dim, dim)
            self.queries = nn.Parameter(torch.randn(queries, dim) * 0.02)
            self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)

    def fit_whitening(self, text: TextBatch | Iterable[TextBatch]) -> None:
        """Fit the whitening on the encoded training prompts, one batch or chunks of them (no-op without
        ``whiten``): the sentence embeddings [B, D] and every real token state (``tokens[mask]``, [n, D])."""
        if self.pooled_whitening is None:
            return
        dim = self.pooled_whitening.mean.shape[0]
        pooled, tokens = FeatureMoments(dim), FeatureMoments(dim)
        for batch in [text] if isinstance(text, TextBatch) else text:
            pooled.update(batch.pooled)
            if self.token_whitening is not None:
                tokens.update(batch.tokens[batch.mask])
        self.pooled_whitening.fit_moments(pooled)
        if self.token_whitening is not None:
            self.token_whitening.fit_moments(tokens)

    def forward(self, text: TextBatch) -> Tensor:
        """Returns [B, out_dim]."""
        pooled = text.pooled if self.pooled_whitening is None else self.pooled_whitening(text.pooled)
        if not self.use_tokens:
            return pooled
        tokens = text.tokens.to(pooled.dtype)
        if self.token_whitening is not None:
            tokens = self.token_whitening(tokens)
        tokens = self.project(self.norm(tokens))  # [B, T, dim]
        queries = self.queries.expand(tokens.shape[0], -1, -1)  # [B, Q, dim]
        read, _ = self.attention(queries, tokens, tokens, key_padding_mask=~text.mask, need_weights=False)
        return torch.cat([pooled, read.flatten(1)], dim=1)
