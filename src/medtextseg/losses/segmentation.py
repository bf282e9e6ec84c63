"""The default loss: Dice over prompts with a target + BCE over every voxel + BCE on the presence logit."""

from __future__ import annotations

import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor

from medtextseg.config import LossConfig
from medtextseg.models.output import ModelOutput


class PromptSegmentationLoss:
    """Loss of B (image, prompt) samples with binary targets [B, 1, *spatial].

    * Dice (MONAI, per sample, sigmoid) averaged over the samples whose target is not empty: Dice of an
      empty target is undefined, and a pooled "batch Dice" would let large targets (the gland) drown
      small lesions.
    * Binary cross-entropy over all voxels of all samples: it is what teaches an absent target -> empty.
    * Binary cross-entropy of the presence logit against "target not empty", when the model has one.
    """

    def __init__(self, config: LossConfig) -> None:
        self.config = config
        self.dice = DiceLoss(sigmoid=True, batch=False, reduction="none", smooth_nr=1e-5, smooth_dr=1e-5)

    def __call__(self, output: ModelOutput, targets: Tensor) -> tuple[Tensor, dict[str, float]]:
        logits = output.logits.float()
        present = targets.flatten(1).amax(1) > 0  # [B]
        bce = F.binary_cross_entropy_with_logits(logits, targets)
        if present.any():
            dice = self.dice(logits[present], targets[present]).mean()
        else:
            dice = logits.sum() * 0.0
        total = self.config.dice_weight * dice + self.config.bce_weight * bce
        parts = {"dice_loss": float(dice.detach()), "bce": float(bce.detach())}
        if output.presence is not None and self.config.presence_weight > 0:
            presence = F.binary_cross_entropy_with_logits(output.presence.float(), present.float())
            total = total + self.config.presence_weight * presence
            parts["presence"] = float(presence.detach())
        return total, parts

