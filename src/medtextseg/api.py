"""The Python API a notebook user calls.

>>> from medtextseg import load_model, segment  # doctest: +SKIP
>>> model = load_model("runs/text")  # a run folder or a checkpoint file
>>> [gland] = segment(["t2w.nii.gz", "adc.nii.gz", "hbv.nii.gz"], ["the prostate gland"], model)
>>> gland.save("gland.nii.gz")  # exactly the input's shape, spacing, origin and direction
"""

from __future__ import annotations

from pathlib import Path

import torch

from medtextseg.inference.predictor import Predictor, Segmentation


def load_model(run_or_checkpoint: str | Path, device: str | torch.device | None = None,
               refiner: bool | None = None, mirror_axes: list[int] | str | None = None,
               threshold: float | None = None) -> Predictor:
    """A trained model ready to segment: a run folder (its ``best.pt``) or a checkpoint file. ``device`` picks
    where it runs (default: CUDA when available), ``refiner`` switches a refiner model's refiner on or off,
    ``mirror_axes`` sets the mirror test-time augmentation and ``threshold`` the mask's probability cut-off
    (None: as its config says)."""
    return Predictor(run_or_checkpoint, device, refiner, mirror_axes, threshold)


def segment(image_paths: str | Path | list[str | Path], prompts: str | list[str],
            model: Predictor | str | Path) -> list[Segmentation]:
    """Segment what each prompt names in one image (one file per channel, in the model's channel order).

    Returns one :class:`~medtextseg.inference.predictor.Segmentation` per prompt, on the input's grid.
    """
    if not isinstance(model, Predictor):
        model = load_model(model)
    paths = [image_paths] if isinstance(image_paths, str | Path) else list(image_paths)
    return model.predict(paths, [prompts] if isinstance(prompts, str) else list(prompts))
