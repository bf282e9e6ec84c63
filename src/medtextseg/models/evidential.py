"""Evidential output (Sensoy et al. 2018; TextBCS, METHODS.md 4.3): per-voxel Dirichlet over {background, target}.

The head's two channels are evidence ``e = softplus(z)``; ``alpha = e + 1``, ``S = sum_c alpha_c``. The expected
probability of the target is ``alpha_1 / S``, the belief masses ``e_c / S`` and the uncertainty mass ``u = 2 / S``
(they sum to 1). Little total evidence means high uncertainty, whatever the two classes' balance.

The rest of medtextseg reads a one-channel sigmoid logit, so the head also returns
``log alpha_1 - log alpha_0``, whose sigmoid is exactly the expected probability ``alpha_1 / S``: prediction,
thresholds, the presence logit and the region losses work unchanged on an evidential model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CLASSES = 2


def evidence_from_logits(raw: Tensor) -> Tensor:
    """raw: [B, 2, *spatial] head outputs. Returns the non-negative evidence softplus(raw), same shape."""
    return F.softplus(raw.float())


def evidential_logits(evidence: Tensor) -> Tensor:
    """evidence: [B, 2, *spatial]. Returns [B, 1, *spatial] ``log alpha_1 - log alpha_0``, the logit of the
    expected target probability."""
    alpha = evidence + 1
    return (torch.log(alpha[:, 1:2]) - torch.log(alpha[:, 0:1]))


def dirichlet_uncertainty(evidence: Tensor) -> Tensor:
    """evidence: [B, 2, *spatial]. Returns the uncertainty mass u = K / S in (0, 1], [B, 1, *spatial]."""
    return CLASSES / (evidence.float() + 1).sum(1, keepdim=True)


def dirichlet_belief(evidence: Tensor) -> Tensor:
    """evidence: [B, 2, *spatial]. Returns belief masses e_c / S [B, 2, *spatial]; they sum with u to 1."""
    evidence = evidence.float()
    return evidence / (evidence + 1).sum(1, keepdim=True)
