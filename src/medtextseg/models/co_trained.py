"""``CoTrainedSegmenters``: the networks of a co-training preset (RADA) as one model for prediction."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medtextseg.config import ModelConfig
from medtextseg.models.input_spec import InputSpec
from medtextseg.models.output import ModelOutput
from medtextseg.models.segmenter import TextGuidedUNet
from medtextseg.text.batch import TextBatch


class CoTrainedSegmenters(nn.Module):
    """``config.networks`` independently initialised ``TextGuidedUNet``s.

    The co-trainer updates each member with its own optimiser; prediction averages their foreground
    probabilities (RADA reports each network and the average, METHODS.md 2.9), or asks one member
    (``network``, from ``inference.network``).
    """

    def __init__(self, config: ModelConfig, text_dim: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(TextGuidedUNet(config, text_dim) for _ in range(config.networks))
        self.input_spec = InputSpec.of(config)

    def forward(self, image: Tensor, text: TextBatch, image_index: Tensor | None = None, *, refine: bool = True,
                network: int | None = None) -> ModelOutput:
        """As ``TextGuidedUNet.forward``; logits [B, 1, *spatial] = logit of the members' mean probability, or
        member ``network``'s own output."""
        if network is not None:
            if not 0 <= network < len(self.members):
                raise ValueError(f"network {network}: the model has networks 0..{len(self.members) - 1}")
            return self.members[network](image, text, image_index, refine=refine)
        outputs = [member(image, text, image_index, refine=refine) for member in self.members]
        probability = torch.stack([torch.sigmoid(o.logits.float()) for o in outputs]).mean(0)
        presence = None
        if all(o.presence is not None for o in outputs):
            presence = torch.stack([o.presence.float() for o in outputs]).mean(0)
        return ModelOutput(logits=torch.logit(probability, eps=1e-6), presence=presence)


__all__ = ["CoTrainedSegmenters"]
