"""Validation during training: Dice per prompt kind on whole validation images."""

from __future__ import annotations

from collections import defaultdict

import torch
from monai.metrics import compute_dice
from torch import nn

from medtextseg.data.dataset import PreparedCase
from medtextseg.data.preprocessed import CachedCase
from medtextseg.inference.postprocessing import remove_small_components
from medtextseg.inference.sliding import prompt_probabilities
from medtextseg.text.cache import TextEmbeddingCache


def validation_dice(model: nn.Module, cases: list[PreparedCase | CachedCase], text: TextEmbeddingCache,
                    patch_size: list[int], threshold: float = 0.5, presence_threshold: float = 0.5,
                    min_component_voxels: int = 0, slice_context: int = 0, autocast: str = "auto"
                    ) -> dict[str, float]:
    """Mean Dice per prompt kind and over all prompts (``val_dice``), on whole images, with the same
    post-processing as prediction (presence gate, small-component removal), so ``best.pt`` is chosen on
    the masks users get.

    ``cases`` may be references to the preprocessed cache: each is loaded in turn, one in memory at a time.
    Volumes scored by a 2D model (a 2D ``patch_size``) are predicted slice by slice, with ``slice_context``
    neighbouring slices as channels, and scored as volumes. The network runs in the precision prediction uses
    (``autocast``, the run's ``inference.autocast``).

    Convention: an absent target answered with an empty mask scores 1, with anything else 0
    (MONAI's ``ignore_empty=False``).
    """
    was_training = model.training
    model.eval()
    scores: dict[str, list[float]] = defaultdict(list)
    overall: list[float] = []  # kept apart: "all" is also a prompt kind ("segment all lesions")
    for reference in cases:
        case = reference.load()
        prompts = [p.prompt for p in case.prompts]
        probabilities = prompt_probabilities(model, case.image, text(prompts), patch_size,
                                             presence_threshold=presence_threshold, slice_context=slice_context,
                                             autocast=autocast)
        prediction = torch.stack([torch.from_numpy(remove_small_components(p.numpy(), min_component_voxels))
                                  for p in probabilities > threshold])[:, None]
        target = torch.stack([case.target(p) for p in case.prompts])[:, None]
        dice = compute_dice(prediction.float(), target.float(), include_background=True, ignore_empty=False)
        for prompt, value in zip(case.prompts, dice[:, 0].tolist(), strict=True):
            scores[prompt.kind].append(value)
            overall.append(value)
    model.train(was_training)
    result = {f"val_dice_{kind}": sum(v) / len(v) for kind, v in sorted(scores.items())}
    result["val_dice"] = sum(overall) / max(len(overall), 1)
    return result
