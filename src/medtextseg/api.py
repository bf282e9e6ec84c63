"""The Python API a notebook user calls.

>>> from medtextseg import load_model, segment  # doctest: +SKIP
>>> model = load_model("runs/text")  # a run folder, a checkpoint file or a model .zip (medtextseg export)
>>> [gland] = segment(["t2w.nii.gz", "adc.nii.gz", "hbv.nii.gz"], ["the prostate gland"], model)
>>> gland.save("gland.nii.gz")  # exactly the input's shape, spacing, origin and direction
>>> [gland] = segment(volume, "the prostate gland", model, affine=affine)  # a numpy array [i, j, k] in memory
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medtextseg.inference.ensemble import load_predictor
from medtextseg.inference.predictor import Predictor, Segmentation


def load_model(run_or_checkpoint: str | Path | Sequence[str | Path], device: str | torch.device | None = None,
               refiner: bool | None = None, mirror_axes: list[int] | str | None = None,
               threshold: float | None = None) -> Predictor:
    """A trained model ready to segment: a run folder (its ``best.pt``), a checkpoint file or a model package
    (``.zip``, ``medtextseg export``; read in place, checked first). ``device`` picks
    where it runs (default: CUDA when available), ``refiner`` switches a refiner model's refiner on or off,
    ``mirror_axes`` sets the mirror test-time augmentation and ``threshold`` the mask's probability cut-off
    (None: as its config says).

    A list of them, or a folder of runs (``FOLDS/fold_0`` ...), loads an ensemble that answers with the mean of
    their probabilities (:mod:`medtextseg.inference.ensemble`: what they must share, the thresholds' rule)."""
    return load_predictor(run_or_checkpoint, device, refiner, mirror_axes, threshold)


def segment(images: Any, prompts: str | Sequence[str], model: Predictor | str | Path | Sequence[str | Path], *,
            affine: Any = None, spacing: Sequence[float] | None = None, origin: Sequence[float] | None = None,
            direction: Any = None) -> list[Segmentation]:
    """Segment what each prompt names in one image; all prompts in one sliding-window pass.

    ``images`` are its channels in the model's channel order (one item alone stands for a list of one): file
    paths, or images in memory: numpy arrays [*spatial] in nibabel's voxel order (``get_fdata()``'s: the
    ``affine`` maps (i, j, k) to RAS+ mm), with ``affine`` or SimpleITK's ``spacing``/``origin``/``direction``;
    nibabel images; SimpleITK images; a MONAI MetaTensor [C, *spatial] (channel first; it may hold every channel).
    See :mod:`medtextseg.data.image_input`.

    Returns one :class:`~medtextseg.inference.predictor.Segmentation` per prompt, on the input's grid; it keeps
    that grid, so it prints and saves without the input.

    Raises:
        MedTextSegError: an input of another type (named), or one the model cannot take, in one line.
    """
    if not isinstance(model, Predictor):
        model = load_model(model)
    return model.predict(images, prompts, affine=affine, spacing=spacing, origin=origin, direction=direction)
