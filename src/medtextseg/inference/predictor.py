"""Prediction from files or images in memory: image prepared once for all its prompts, outputs on exactly its grid.

Files (or in-memory images, :mod:`medtextseg.data.image_input`) -> ``preparation`` (RAS, spacing, z-score) ->
sliding window for all prompts at once -> ``Invertd`` back to the input's grid -> threshold (+ optional
small-component removal) -> ``Segmentation``, which carries that grid and saves without the input.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from medtextseg.config import Config
from medtextseg.data.dimensions import check_image_dims, check_shape_dims
from medtextseg.data.image_input import InMemoryImage, in_memory_image, is_path
from medtextseg.data.io import Geometry, read_geometry, write_on_grid
from medtextseg.data.prompts import swap_left_right, validate_prompt
from medtextseg.data.transforms import preparation
from medtextseg.inference.postprocessing import remove_small_components
from medtextseg.inference.sliding import prompt_maps
from medtextseg.models.factory import create_model
from medtextseg.text.cache import TextEmbeddingCache, cached_text_encoder
from medtextseg.training.checkpoint import checkpoint_file, load_checkpoint
from medtextseg.utils.errors import MedTextSegError


@dataclass
class Segmentation:
    """The answer to one prompt, on the input's grid (it keeps that grid: it prints and saves without the input).

    Attributes:
        prompt: the prompt as given.
        mask: [*input_shape] uint8 in {0, 1}, the input's voxel order.
        probability: [*input_shape] float32 in [0, 1].
        geometry: the input's grid: shape, RAS affine, and its header (NIfTI) or ITK frame when it had one.
        uncertainty: [*input_shape] float32 in [0, 1], or None.
        uncertainty_kind: "dirichlet" (an evidential model's uncertainty mass) or "entropy" (the binary
            entropy of the probability, in bits, for a sigmoid model).
        reference: the first channel file, when the input was files (for information only).
    """

    prompt: str
    mask: np.ndarray
    probability: np.ndarray
    geometry: Geometry
    uncertainty: np.ndarray | None = None
    uncertainty_kind: str = "entropy"
    reference: Path | None = None

    @property
    def affine(self) -> np.ndarray:
        """4x4, voxel (i, j, k) -> RAS+ mm."""
        return self.geometry.affine

    @property
    def spacing(self) -> tuple[float, ...]:
        return self.geometry.spacing

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())

    @property
    def volume_ml(self) -> float:
        return self.voxels * float(np.prod(self.geometry.spacing)) / 1000.0

    def save(self, mask_path: str | Path, probability_path: str | Path | None = None,
             uncertainty_path: str | Path | None = None) -> None:
        """Write the mask (and the probability and uncertainty maps) on exactly the input's grid (format by
        ending: NIfTI, MHA, NRRD, ...)."""
        source = str(self.reference) if self.reference is not None else "input"
        write_on_grid(self.mask, self.geometry, mask_path, source)
        if probability_path is not None:
            write_on_grid(self.probability.astype(np.float32), self.geometry, probability_path, source)
        if uncertainty_path is not None:
            if self.uncertainty is None:
                raise MedTextSegError(f"no uncertainty map for prompt {self.prompt!r}")
            write_on_grid(self.uncertainty.astype(np.float32), self.geometry, uncertainty_path, source)

    def __repr__(self) -> str:
        spacing = ", ".join(f"{s:.3g}" for s in self.spacing)
        return (f"Segmentation(prompt={self.prompt!r}, shape={self.mask.shape}, spacing=({spacing}) mm, "
                f"voxels={self.voxels}, volume={self.volume_ml:.2f} ml)")


def _check_weights(path: Path, weights: Any, expected: dict[str, torch.Tensor]) -> None:
    """Refuse weights that ``load_state_dict`` would reject with a many-line RuntimeError, naming the first key."""
    if not isinstance(weights, dict):
        raise MedTextSegError(f"{path}: its 'model' entry is not a dict of weights; not a checkpoint medtextseg "
                              "train wrote")
    problems = [f"missing {key}" for key in expected if key not in weights]
    problems += [f"unexpected {key}" for key in weights if key not in expected]
    shapes = {key: (list(getattr(weights[key], "shape", [])), list(getattr(value, "shape", [])))
              for key, value in expected.items() if key in weights}
    problems += [f"{key} has shape {found}, the model {wanted}" for key, (found, wanted) in shapes.items()
                 if found != wanted]
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise MedTextSegError(f"{path}: its weights do not fit the model its config describes ({problems[0]}{more}); "
                              "use the file medtextseg train wrote, unchanged")


def _device(device: str | torch.device | None) -> torch.device:
    """The device to run on: ``device``, else CUDA when available, else the CPU.

    Raises:
        MedTextSegError: a name torch does not know, or a CUDA device this machine does not have.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise MedTextSegError(f"device {str(device)!r}: not a device name; use cpu, cuda, cuda:N or mps") from None
    if chosen.type == "cuda" and (not torch.cuda.is_available()
                                  or (chosen.index or 0) >= torch.cuda.device_count()):
        found = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
        raise MedTextSegError(f"device {str(device)!r}: this machine has {found}; use cpu or a CUDA device it has")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise MedTextSegError(f"device {str(device)!r}: MPS is not available on this machine; use cpu")
    return chosen


class Predictor:
    """Segments images from files with a trained model.

    Args:
        checkpoint: a checkpoint file, a run folder (its ``best.pt``) or a model package ``.zip``
            (:mod:`medtextseg.training.model_package`).
        device: where to run (default: CUDA when available).
        refiner: use the model's refiner (``model.refiner``); None: as ``inference.refiner`` of its config says.
        mirror_axes: mirror test-time augmentation along these spatial axes, or "all"; None:
            ``inference.mirror_axes``.
        threshold: the probability above which a voxel is in the mask, in (0, 1); None: ``inference.threshold``.

    Raises:
        MedTextSegError: no readable checkpoint there, a device torch does not know or this machine lacks, a
            threshold outside (0, 1).
    """

    def __init__(self, checkpoint: str | Path, device: str | torch.device | None = None,
                 refiner: bool | None = None, mirror_axes: list[int] | str | None = None,
                 threshold: float | None = None) -> None:
        if threshold is not None and not 0 < threshold < 1:
            raise MedTextSegError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
        self.device = _device(device)
        path = checkpoint_file(checkpoint)
        self.checkpoint: Path = path
        state = load_checkpoint(path)
        if type(state.get("text_dim")) is not int:
            raise MedTextSegError(f"{path}: no 'text_dim' (the prompt feature size the model was trained with); "
                                  "not a checkpoint medtextseg train wrote")
        try:
            self.config = Config.from_dict(state.get("config"))
        except MedTextSegError as error:  # name the file: the config came with it
            raise MedTextSegError(f"{path}: its config: {error}") from None
        inference = self.config.inference.model_dump()
        if mirror_axes is not None:
            inference["mirror_axes"] = (list(range(self.config.model.spatial_dims)) if mirror_axes == "all"
                                        else list(mirror_axes))
        if threshold is not None:
            inference["threshold"] = float(threshold)
        if inference != self.config.inference.model_dump():
            self.config = Config.from_dict({**self.config.model_dump(), "inference": inference})
        self.channel_names: list[str] = list(state.get("channel_names", []))
        cache_dir = self.config.text.cache_dir if self.config.text.cache_dir is not None else "default"
        self.text: TextEmbeddingCache = cached_text_encoder(self.config.text.encoder, self.config.text.max_tokens,
                                                            cache_dir, self.config.text.memory_prompts,
                                                            self.config.text.encoder_kind)
        self.text_dim, self.trained_encoder = int(state["text_dim"]), state.get("text_encoder")
        if self.trained_encoder not in (None, self.text.encoder_name):
            # a local folder's name carries a hash of its path: the same model moved elsewhere differs here too
            warnings.warn(f"{checkpoint}: trained with text encoder {self.trained_encoder!r}, predicting with "
                          f"{self.text.encoder_name!r}; the answers are only right if it is the same model",
                          stacklevel=2)
        self.model = create_model(self.config.model, self.text_dim)
        _check_weights(path, state["model"], self.model.state_dict())
        self.model.load_state_dict(state["model"])
        self.model.to(self.device).eval()
        self.model.use_refiner = self.config.inference.refiner if refiner is None else refiner
        if self.config.model.networks > 1:
            self.model.active = self.config.inference.network

    def check_inputs(self, image_paths: list[Path]) -> None:
        """Refuse, before any voxel is read, files the model cannot take: a volume for a 2D model, a slice for
        a 3D one, a 4D file, another number of files than channels, channels on different grids (headers only)."""
        for path in image_paths:  # first: one 4D file of three channels is better told so than "got 1 file"
            check_image_dims(path, self.config.model.spatial_dims, "the model", "or use a {dims}D model")
        expected = self.config.model.in_channels
        if len(image_paths) != expected:
            names = f" ({', '.join(self.channel_names)})" if self.channel_names else ""
            raise MedTextSegError(f"the model takes {expected} image file(s){names}, one per channel, in that "
                                  f"order; got {len(image_paths)}")
        reference = read_geometry(image_paths[0])
        for path in image_paths[1:]:
            if not read_geometry(path).same_grid(reference):
                raise MedTextSegError(f"{path}: not on the grid of {image_paths[0]}; the channels of one "
                                      "image must be co-registered on one grid")

    def check_in_memory(self, given: InMemoryImage) -> None:
        """Refuse an in-memory image the model cannot take: a volume for a 2D model, a slice for a 3D one, another
        number of channels than the model's."""
        check_shape_dims(given.geometry.shape, given.name, self.config.model.spatial_dims, "the model",
                         "or use a {dims}D model", unit="array", affines={"affine": given.geometry.affine})
        expected = self.config.model.in_channels
        if given.image.shape[0] != expected:
            names = f" ({', '.join(self.channel_names)})" if self.channel_names else ""
            raise MedTextSegError(f"the model takes {expected} channel(s){names}, one image per channel (a "
                                  f"MetaTensor may hold them all, channel first), in that order; got "
                                  f"{given.image.shape[0]}")

    @torch.no_grad()
    def predict(self, images: Any, prompts: str | Sequence[str], uncertainty: bool = True, *,
                affine: Any = None, spacing: Sequence[float] | None = None, origin: Sequence[float] | None = None,
                direction: Any = None) -> list[Segmentation]:
        """One ``Segmentation`` per prompt for one image, all prompts in one sliding-window pass.

        Args:
            images: the image's channels in the model's channel order: file paths (or DICOM series folders), or
                images in memory (:mod:`medtextseg.data.image_input`): numpy arrays [*spatial] in nibabel's voxel
                order (i, j, k), nibabel images, SimpleITK images, a MONAI MetaTensor [C, *spatial]. One item
                alone stands for a list of one.
            prompts: what to segment (one string or several).
            uncertainty: False skips bringing the uncertainty maps back to the input's grid (half the inversion
                work); the results' ``uncertainty`` is then None.
            affine: for numpy arrays: 4x4, voxel (i, j, k) -> RAS+ mm (nibabel's convention).
            spacing, origin, direction: for numpy arrays, instead of ``affine``: SimpleITK's (LPS; origin 0 and
                identity direction by default).

        Raises:
            MedTextSegError: no prompt or a malformed one; inputs the model cannot take (type, dimensions,
                channels, grids, NaN voxels), each in one line.
        """
        items = list(images) if isinstance(images, list | tuple) else [images]
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        prompts = [validate_prompt(p, f"prompt {i + 1}") for i, p in enumerate(prompts)]
        if not prompts:
            raise MedTextSegError("no prompt given: pass at least one, e.g. -p 'the prostate gland'")
        normalization = self.config.data.normalization
        if items and all(is_path(item) for item in items):
            if any(value is not None for value in (affine, spacing, origin, direction)):
                raise MedTextSegError("affine/spacing/origin/direction apply to numpy arrays; files carry their "
                                      "own grid")
            paths = [Path(p) for p in items]
            self.check_inputs(paths)
            transform = preparation(self.config.data.spacing, normalization=normalization)
            image: MetaTensor = transform({"image": [str(p) for p in paths]})["image"]
            geometry, name, reference = read_geometry(paths[0]), str(paths[0]), paths[0]
        else:
            given = in_memory_image(items, affine, spacing, origin, direction)
            self.check_in_memory(given)
            transform = preparation(self.config.data.spacing, normalization=normalization, load=False)
            image = transform({"image": given.image})["image"]
            geometry, name, reference = given.geometry, given.name, None
        if not torch.isfinite(image.as_tensor()).all():
            raise MedTextSegError(f"{name}: the image has NaN or infinite voxels")
        probabilities, uncertainties, kind = self._maps(image, transform, prompts, uncertainty)
        if probabilities.shape[1:] != geometry.shape:  # 2D inputs may carry a trailing singleton axis
            probabilities = probabilities.reshape((len(prompts), *geometry.shape))
            if uncertainties is not None:
                uncertainties = [u.reshape(geometry.shape) for u in uncertainties]
        results = []
        for prompt, probability, uncertainty_map in zip(prompts, probabilities, uncertainties or [None] * len(prompts),
                                                        strict=True):
            mask = remove_small_components(probability > self.config.inference.threshold,
                                           self.config.inference.min_component_voxels)
            results.append(Segmentation(prompt, mask.astype(np.uint8), probability, geometry, uncertainty_map, kind,
                                        reference))
        return results

    def _maps(self, image: MetaTensor, transform: Any, prompts: list[str],
              uncertainty: bool) -> tuple[np.ndarray, list[np.ndarray] | None, str]:
        """Probability maps [P, *input_shape] (and P uncertainty maps) of the prepared ``image``, back on the
        input's grid through ``transform``'s recorded operations; and the uncertainty kind."""
        spatial_dims = self.config.model.spatial_dims
        model_input = image.as_tensor()[..., 0] if spatial_dims == 2 else image.as_tensor()
        text = self.text(prompts)
        if text.pooled.shape[-1] != self.text_dim:
            raise MedTextSegError(f"the model was trained with {self.trained_encoder} ({self.text_dim}-d prompt "
                                  f"embeddings) but its text encoder {self.config.text.encoder!r} now gives "
                                  f"{text.pooled.shape[-1]}-d ones; point text.encoder at the model it was "
                                  "trained with")
        mirror_axes = self.config.inference.mirror_axes
        mirrored = self.text([swap_left_right(p) for p in prompts]) if 0 in mirror_axes else None
        maps = prompt_maps(self.model, model_input.float(), text, self.config.data.patch_size,
                           self.config.inference.overlap, self.config.inference.presence_threshold,
                           mirror_axes=mirror_axes, mirrored_text=mirrored,
                           sw_batch_size=self.config.inference.sw_batch_size)
        # [2P or P, *spatial]: both maps inverted in one pass
        stacked = torch.cat([maps.probability, maps.uncertainty]) if uncertainty else maps.probability
        if spatial_dims == 2:
            stacked = stacked[..., None]
        # back to the input's grid: MONAI replays the recorded orientation/spacing operations in reverse
        prediction = MetaTensor(stacked, meta=image.meta)
        prediction.applied_operations = image.applied_operations
        inverted = Invertd("prediction", transform, orig_keys="image", nearest_interp=False)(
            {"prediction": prediction, "image": image})["prediction"]
        inverted = np.clip(inverted.as_tensor().numpy().astype(np.float32), 0.0, 1.0)
        count = len(prompts)
        return inverted[:count], list(inverted[count:]) if uncertainty else None, maps.uncertainty_kind
