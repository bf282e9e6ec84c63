"""The training loss: weighted loss terms from the config + BCE on the presence logit, with deep supervision.

The default (``loss.terms: {dice: 1, bce: 1}``, ``presence_weight: 0.5``) is Dice over prompts with a target
+ BCE over every voxel + BCE on the presence logit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtextseg.losses.base import LossTerm, OutputLossTerm
from medtextseg.losses.deep_supervision import downsample_target, downsample_weight, level_weights
from medtextseg.losses.registry import create_loss_term

if TYPE_CHECKING:  # type hints only: the loss terms sit below the config and the models (docs/architecture.md)
    from medtextseg.config import LossConfig
    from medtextseg.models.output import ModelOutput


class PromptSegmentationLoss(nn.Module):
    """Loss of B (image, prompt) samples with binary targets [B, 1, *spatial] (2D or 3D).

    * Region terms (Dice, Jaccard, Tversky, focal-Tversky, Hausdorff) are averaged over the samples whose
      target is not empty: they are undefined on an empty target, and a pooled "batch Dice" would let large
      targets (the gland) drown small lesions.
    * Pixel-wise terms (BCE, focal, Top-K BCE) are averaged over all samples: they are what teach an absent
      target -> an empty mask. With a weight map, samples whose weights are all 0 are left out.
    * A compound term (``dice_bce``) contributes its components, each by its own rule, under the names
      ``"<term>.<component>"``.
    * Terms on more of the output (``OutputLossTerm``: similarity maps, evidence) are computed once, on the
      full-resolution target, by the same sample rules.
    * ``factors``: a term listed there has its weight scaled by that factor (``loss.schedules``, computed by the
      trainer's ``LossWeightSchedule``); the others count fully.
    * BCE of the presence logit against "target not empty", when the model has one and ``presence_weight > 0``.
    * Deep supervision: when ``output.deep_supervision`` has maps and ``deep_supervision_weights`` is set, every
      term is summed over the resolutions with those weights, the targets max-pooled (and weight maps
      average-pooled) to each map's size; presence is counted once.

    A sample's target is "not empty" when it has a foreground voxel of positive weight (any foreground voxel
    without a weight map). Terms of weight 0 are not computed.

    Returns ``(total, parts)``: the scalar loss to back-propagate, and each term's value (before its weight and
    factor, after the deep-supervision sum) as floats for the log, so that total = sum(weight * factor * part) +
    presence part.
    """

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.config = config
        self.names: list[str] = []  # the parts' names in the log, one per module of ``terms``
        self.weights: list[float] = []
        self.terms = nn.ModuleList()
        for name, weight in config.terms.items():
            if weight == 0:
                continue
            term = create_loss_term(name, **config.params.get(name, {}))
            # a compound term enters as its components, so each is averaged over the samples it applies to
            parts = {f"{name}.{part}": module for part, module in term.components().items()} \
                if term.scope == "compound" else {name: term}
            for part_name, module in parts.items():
                self.names.append(part_name)
                self.weights.append(weight)
                self.terms.append(module)

    def term(self, name: str) -> LossTerm:
        """The term (or compound component, ``"<term>.<component>"``) logged as ``name``."""
        return self.terms[self.names.index(name)]

    def forward(self, output: ModelOutput, targets: Tensor, weight: Tensor | None = None,
                factors: Mapping[str, float] | None = None) -> tuple[Tensor, dict[str, float]]:
        """
        Args:
            output: the model's output; ``logits`` [B, 1, *spatial] (any float dtype), ``presence`` [B] logits or
                None, ``deep_supervision`` lower-resolution logits [B, 1, *spatial_k], full resolution first.
            targets: [B, 1, *spatial] binary masks in {0, 1}; an all-zero mask is an absent target.
            weight: optional non-negative voxel weights broadcastable to ``targets`` (0 = unlabelled voxel),
                passed to every term.
            factors: term name -> factor on its weight (a scheduled term; absent names count fully).

        Raises:
            MedTextSegError: shapes do not match, a negative weight, or ``deep_supervision_weights`` does not
                have one weight per output.
        """
        logits = output.logits.float()
        foreground = targets > 0 if weight is None else (targets > 0) & (weight > 0)
        present = foreground.flatten(1).any(1)  # [B]
        counted = present.new_ones(present.shape) if weight is None else \
            (torch.broadcast_to(weight, targets.shape).flatten(1) > 0).any(1)  # samples with any labelled voxel
        levels = [logits]
        if output.deep_supervision and self.config.deep_supervision_weights is not None:
            levels += [level.float() for level in output.deep_supervision]
            level_weight = level_weights(len(levels), self.config.deep_supervision_weights)
        else:
            level_weight = [1.0]

        def samples(term: LossTerm) -> Tensor:
            return present if term.scope == "region" else counted

        values: dict[str, Tensor] = {}
        for name, term in zip(self.names, self.terms, strict=True):
            if isinstance(term, OutputLossTerm):
                values[name] = _masked_mean(term(output, targets, weight), samples(term))
        for factor, level_logits in zip(level_weight, levels, strict=True):
            size = level_logits.shape[2:]
            level_targets = downsample_target(targets, size)
            level_map = None if weight is None else downsample_weight(weight, targets.shape, size)
            for name, term in zip(self.names, self.terms, strict=True):
                if isinstance(term, OutputLossTerm):
                    continue
                value = factor * _masked_mean(term(level_logits, level_targets, level_map), samples(term))
                values[name] = values[name] + value if name in values else value

        total = logits.sum() * 0.0  # keeps the graph when every term is off
        factors = factors or {}
        for name, term_weight in zip(self.names, self.weights, strict=True):
            total = total + term_weight * factors.get(name.split(".")[0], 1.0) * values[name]
        parts = {name: float(value.detach()) for name, value in values.items()}
        if output.presence is not None and self.config.presence_weight > 0:
            presence = F.binary_cross_entropy_with_logits(output.presence.float(), present.float())
            total = total + self.config.presence_weight * presence
            parts["presence"] = float(presence.detach())
        return total, parts


def _masked_mean(per_sample: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``per_sample`` [B] over ``mask`` [B]; 0 (with the graph kept) when the mask is empty.

    ``torch.where`` rather than indexing: no host sync, and the terms' smoothing keeps the masked-out values
    finite, so no NaN gradient leaks through.
    """
    return torch.where(mask, per_sample, 0.0).sum() / mask.sum().clamp(min=1)


def build_loss(config: LossConfig) -> PromptSegmentationLoss:
    """The training loss a ``LossConfig`` describes (see ``PromptSegmentationLoss``).

    Raises:
        MedTextSegError: an unknown term or parameter (normally caught already when the config is loaded).
    """
    return PromptSegmentationLoss(config)


__all__ = ["LossTerm", "PromptSegmentationLoss", "build_loss"]
