"""``SegmenterEnsemble``: several trained segmenters (e.g. the k fold runs of a cross-validation) as one model.

Each member reads the same windows and prompts; the ensemble answers with the mean of the members' foreground
probabilities, the mean of their presence probabilities, and the mean of their Dirichlet evidence when they
have an evidential head. Averaged per window, before the sliding window's Gaussian blending and the inversion to
the input's grid: both are linear, so the maps that come out are the mean of the members' own maps (up to
float rounding), as nnU-Net averages its folds' softmax maps. The presence gate then closes on the mean
presence (:mod:`medtextseg.inference.ensemble` states the threshold).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medtextseg.models.input_spec import InputSpec
from medtextseg.models.output import ModelOutput
from medtextseg.text.batch import TextBatch


def _mean_logit(probabilities: list[Tensor]) -> Tensor:
    """The logit of the members' mean probability, in float64 so that ``sigmoid`` gives the mean back to float32
    precision (0 and 1 become -inf and inf, which ``sigmoid`` maps back to 0 and 1 exactly)."""
    return torch.logit(torch.stack(probabilities).double().mean(0)).float()


class SegmenterEnsemble(nn.Module):
    """Trained segmenters answering as one: ``forward`` as ``TextGuidedUNet.forward``.

    Args:
        members: the segmenters, in eval mode, each declaring the same ``input_spec`` (channels, coordinates,
            head), which the ensemble declares in turn.

    Raises:
        ValueError: no members, or members that read or answer differently.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        specs = {member.input_spec for member in members}
        if len(specs) > 1:
            raise ValueError(f"the members read different inputs ({sorted(map(str, specs))}); an ensemble's members "
                             "take the same windows")
        self.members = nn.ModuleList(members)
        self.input_spec: InputSpec = members[0].input_spec

    def forward(self, image: Tensor, text: TextBatch, image_index: Tensor | None = None, *, refine: bool = True,
                network: int | None = None) -> ModelOutput:
        """image [N, C, *window], text B prompts, image_index [B] -> ``ModelOutput``: logits [B, 1, *window] =
        the logit of the members' mean probability; presence [B] = the logit of their mean presence probability
        (None unless every member has one); evidence [B, 2, *window] = their mean evidence (evidential heads).
        One member answers exactly as itself; ``refine`` and ``network`` are passed to every member."""
        if len(self.members) == 1:
            return self.members[0](image, text, image_index, refine=refine, network=network)
        outputs = [member(image, text, image_index, refine=refine, network=network) for member in self.members]
        presence = None
        if all(o.presence is not None for o in outputs):
            presence = _mean_logit([torch.sigmoid(o.presence.float()) for o in outputs])
        evidence = None
        if all(o.evidence is not None for o in outputs):
            evidence = torch.stack([o.evidence.float() for o in outputs]).mean(0)
        return ModelOutput(logits=_mean_logit([torch.sigmoid(o.logits.float()) for o in outputs]),
                           presence=presence, evidence=evidence)


__all__ = ["SegmenterEnsemble"]
