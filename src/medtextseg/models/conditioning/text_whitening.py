"""Whitening of text features over the training prompts, so the words that decide a prompt are not drowned.

A frozen sentence encoder spends most of its variance on how a prompt is phrased and little on what decides
its target: for MiniLM, "the lesion in the left peripheral zone" and "... right ..." have cosine similarity
0.975 (their "left" / "right" token states 0.84), while two phrasings of one request are at 0.41-0.68. A
network reading these features must first find the faint left/right direction; gradient descent on inputs
with such an uneven spread is slow on the faint directions. ZCA whitening, fitted once on the training
prompts (all of them are known before step 1), gives the directions of their spread equal variance, as
z-scoring does for image intensities; a shrinkage term keeps the directions they hardly vary along from being
blown up. The statistics are buffers, saved with the weights. They are fitted from running moments
(``FeatureMoments``), so every training text counts while memory stays that of a D x D matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FeatureMoments:
    """Count, mean [D] and centred scatter [D, D] of feature rows, in float64, merged chunk by chunk (Chan, Golub
    and LeVeque's pairwise update): the covariance of any number of rows in O(D^2) memory, equal to that of the
    rows concatenated (no sum-of-squares cancellation, as each chunk is centred on its own mean first).

    Args:
        dim: D, the feature width.
    """

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.scatter = torch.zeros(dim, dim, dtype=torch.float64)

    @torch.no_grad()
    def update(self, features: Tensor) -> None:
        """features: [N, D] more rows (N may be 0)."""
        if features.ndim != 2 or features.shape[1] != self.mean.shape[0]:
            raise ValueError(f"FeatureMoments.update needs [N, {self.mean.shape[0]}] features, "
                             f"got {list(features.shape)}")
        if features.shape[0] == 0:
            return
        rows = features.detach().double()
        self.mean, self.scatter = self.mean.to(rows.device), self.scatter.to(rows.device)
        count = rows.shape[0]
        mean = rows.mean(0)
        centred = rows - mean
        total = self.count + count
        delta = mean - self.mean
        self.scatter += centred.T @ centred + torch.outer(delta, delta) * (self.count * count / total)
        self.mean += delta * (count / total)
        self.count = total

    def covariance(self) -> Tensor:
        """[D, D] the unbiased covariance (as ``torch.cov``), float64."""
        return self.scatter / (self.count - 1)


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
        """features: [N, D] samples (N >= 2), all at once. Sets the mean and the whitening transform."""
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"TextWhitening.fit needs [N >= 2, D] features, got {list(features.shape)}")
        samples = features.double()
        mean = samples.mean(0)
        self._set(mean, torch.cov((samples - mean).T))

    @torch.no_grad()
    def fit_moments(self, moments: FeatureMoments) -> None:
        """The same fit from running moments (``moments.count >= 2``): streamed over chunks of samples."""
        if moments.count < 2:
            raise ValueError(f"TextWhitening.fit_moments needs moments of >= 2 samples, got {moments.count}")
        self._set(moments.mean, moments.covariance())

    def _set(self, mean: Tensor, covariance: Tensor) -> None:
        """mean [D], covariance [D, D] (float64) -> the buffers."""
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        eigenvalues = eigenvalues.clamp(min=0) + self.shrinkage * eigenvalues.clamp(min=0).mean()
        transform = eigenvectors @ torch.diag(eigenvalues.rsqrt()) @ eigenvectors.T
        self.mean.copy_(mean.to(self.mean.dtype))
        self.transform.copy_(transform.to(self.transform.dtype))

    def forward(self, features: Tensor) -> Tensor:
        """features: [..., D]. Returns the whitened features [..., D]."""
        return (features - self.mean.to(features.dtype)) @ self.transform.to(features.dtype)
