"""``TextBatch``: what a model sees of its prompts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PromptEmbedding:
    """One prompt encoded: ``pooled`` [D] (L2-normalised) and ``tokens`` [T, D] (T = its own token count)."""

    pooled: Tensor
    tokens: Tensor


@dataclass
class TextBatch:
    """Encoded prompts of a batch.

    Attributes:
        pooled: [B, D] sentence embeddings, L2-normalised.
        tokens: [B, T, D] token states, zero-padded to the longest prompt of the batch.
        mask: [B, T] bool, True where ``tokens`` holds a real token.
    """

    pooled: Tensor
    tokens: Tensor
    mask: Tensor

    @classmethod
    def stack(cls, embeddings: list[PromptEmbedding]) -> TextBatch:
        if not embeddings:
            raise ValueError("TextBatch.stack needs at least one prompt embedding")
        length = max(e.tokens.shape[0] for e in embeddings)
        dim = embeddings[0].pooled.shape[-1]
        tokens = torch.zeros(len(embeddings), length, dim, dtype=embeddings[0].tokens.dtype)
        mask = torch.zeros(len(embeddings), length, dtype=torch.bool)
        for row, embedding in enumerate(embeddings):
            count = embedding.tokens.shape[0]
            tokens[row, :count] = embedding.tokens
            mask[row, :count] = True
        return cls(torch.stack([e.pooled for e in embeddings]), tokens, mask)

    def to(self, device: torch.device | str) -> TextBatch:
        return TextBatch(self.pooled.to(device), self.tokens.to(device), self.mask.to(device))

    def index(self, rows: Tensor | list[int]) -> TextBatch:
        """The sub-batch of the given rows (e.g. the rows one distributed rank trains on)."""
        return TextBatch(self.pooled[rows], self.tokens[rows], self.mask[rows])

    def __len__(self) -> int:
        return self.pooled.shape[0]

    def __repr__(self) -> str:
        return (f"TextBatch(prompts={len(self)}, dim={self.pooled.shape[-1]}, "
                f"max_tokens={self.tokens.shape[1]})")
