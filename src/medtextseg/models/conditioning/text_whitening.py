"""Whitening of text features over the training prompts, so the words that decide a prompt are not drowned.

A frozen sentence encoder spends most of its variance on how a prompt is phrased and little on what decides
its target: for MiniLM, "the lesion in the left peripheral zone" and "... right ..." have cosine similarity
0.975 (their "left" / "right" token states 0.84), while two phrasings of one request are at 0.41-0.68. A
network reading these features must first find the faint left/right direction; gradient descent on inputs
with such an uneven spread is slow on the faint directions. ZCA whitening, fitted once on the training
prompts (all of them are known before step 1), gives the directions of their spread equal variance, as
z-scoring does for image intensities; a shrinkage term keeps the directions they hardly vary along from being
blown up. The statistics are buffers, saved with the weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TextWhitening(nn.Module):
    """``(x - mean) @ W`` with ``W = U diag((lambda + eps)^-1/2) U^T`` from the features' covariance.

    Until ``fit`` is called it is the identity. ``shrinkage`` sets ``eps`` as a share of the mean eigenvalue,
    so directions the training prompts hardly vary along are not amplified without bound.

    Args:
        dim: D, the feature width.
        shrinkage: eps / mean eigenvalue.
    """

    def __init__(self, dim: int, shrinkage: float = 0.1) -> None:
        super().__init__()
        self.shrinkage = shrinkage
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("transform", torch.eye(dim))

    @torch.no_grad()
    def fit(self, features: Tensor) -> None:
        """features: [N, D] samples (N >= 2). Sets the mean and the whitening transform."""
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"TextWhitening.fit needs [N >= 2, D] features, got {list(features.shape)}")
        samples = features.double()
        mean = samples.mean(0)
        covariance = torch.cov((samples - mean).T)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        eigenvalues = eigenvalues.clamp(min=0) + self.shrinkage * eigenvalues.clamp(min=0).mean()
        transform = eigenvectors @ torch.diag(eigenvalues.rsqrt()) @ eigenvectors.T
        self.mean.copy_(mean.to(self.mean.dtype))
        self.transform.copy_(transform.to(self.transform.dtype))

    def forward(self, features: Tensor) -> Tensor:
        """features: [..., D]. Returns the whitened features [..., D]."""
        return (features - self.mean.to(features.dtype)) @ self.transform.to(features.dtype)
