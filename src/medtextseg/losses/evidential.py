"""Evidential losses on the Dirichlet evidence of an evidential head (Sensoy et al. 2018; TextBCS Eqs. 12-13).

With ``alpha = evidence + 1`` over the classes {background, target}, ``S = sum_c alpha_c`` and y one-hot:

* ``evidential_ce``: the expected cross-entropy under the Dirichlet, ``sum_c y_c (digamma(S) - digamma(alpha_c))``;
* ``evidential_kl``: ``KL(Dir(alpha~) || Dir(1))`` with ``alpha~ = y + (1 - y) alpha``: the evidence for the
  wrong class is pushed to 0 (the true class's is removed first, so it is not penalised). TextBCS anneals its
  weight, ``0.01 min(1, epoch / 10)``: here ``loss.schedules: {evidential_kl: {ramp_steps: N}}``.

Both are per-voxel, averaged (with the voxel weights) per sample: pixel-wise terms, defined on empty targets.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from medtextseg.losses.base import OutputLossTerm, check_inputs, weighted_voxel_mean
from medtextseg.utils.errors import MedTextSegError

if TYPE_CHECKING:  # type hints only: the loss terms sit below the config and the models (docs/architecture.md)
    from medtextseg.models.output import ModelOutput


def evidence_and_onehot(output: ModelOutput, target: Tensor, weight: Tensor | None,
                        term: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """The evidence [B, 2, *spatial] and the one-hot target [B, 2, *spatial] (float64), and the checked weight map.

    Raises:
        MedTextSegError: the model has no evidential head, or shapes disagree.
    """
    if output.evidence is None:
        raise MedTextSegError(f"{term} needs Dirichlet evidence: set model.head=evidential")
    _, target, weight = check_inputs(output.evidence[:, 1:2].float(), target, weight)
    # float64: lgamma(S) - lgamma(alpha) cancels catastrophically in float32 once the evidence is large
    return output.evidence.double(), torch.cat([1 - target, target], dim=1).double(), weight


class EvidentialCrossEntropyLoss(OutputLossTerm):
    """``sum_c y_c (digamma(S) - digamma(alpha_c))`` per voxel, weighted mean per sample. Returns [B] >= 0."""

    scope = "pixel"

    def forward(self, output: ModelOutput, target: Tensor, weight: Tensor | None = None) -> Tensor:
        evidence, onehot, weight = evidence_and_onehot(output, target, weight, type(self).__name__)
        alpha = evidence + 1
        strength = alpha.sum(1, keepdim=True)
        voxel = (onehot * (torch.digamma(strength) - torch.digamma(alpha))).sum(1, keepdim=True)
        return weighted_voxel_mean(voxel, weight).float()


class EvidentialKLLoss(OutputLossTerm):
    """``KL(Dir(alpha~) || Dir(1, .., 1))`` per voxel with misleading evidence only, weighted mean per sample.

    KL = lgamma(S~) - lgamma(K) - sum_c lgamma(alpha~_c) + sum_c (alpha~_c - 1)(digamma(alpha~_c) - digamma(S~)).
    Returns [B] >= 0 (0 when the wrong class has no evidence).
    """

    scope = "pixel"

    def forward(self, output: ModelOutput, target: Tensor, weight: Tensor | None = None) -> Tensor:
        evidence, onehot, weight = evidence_and_onehot(output, target, weight, type(self).__name__)
        alpha = onehot + (1 - onehot) * (evidence + 1)
        strength = alpha.sum(1, keepdim=True)
        classes = alpha.shape[1]
        voxel = (torch.lgamma(strength) - math.lgamma(classes) - torch.lgamma(alpha).sum(1, keepdim=True)
                 + ((alpha - 1) * (torch.digamma(alpha) - torch.digamma(strength))).sum(1, keepdim=True))
        return weighted_voxel_mean(voxel, weight).float()
