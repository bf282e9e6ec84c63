"""Prediction from files or images in memory: image prepared once for all its prompts, outputs on exactly its grid.

Files (or in-memory images, :mod:`medtextseg.data.image_input`) -> ``preparation`` (RAS, spacing, z-score) ->
sliding window for all prompts at once -> ``Invertd`` back to the input's grid -> threshold (+ optional
small-component removal) -> ``Segmentation``, which carries that grid and saves without the input.

A 2D model takes single slices and volumes alike: the prepared image [C, X, Y, Z] (Z = 1 for a slice) is segmented
slice by slice along its last axis, RAS superior (:mod:`medtextseg.data.slices`; a 2.5D model reads
``data.slice_context`` neighbours of each slice as channels and is given volumes only), and the stacked maps
[P, X, Y, Z] go back to the input's grid like a 3D model's.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from medtextseg.config import Config
from medtextseg.data.dimensions import check_image_dims, check_shape_dims, file_shape
from medtextseg.data.image_input import InMemoryImage, in_memory_image, is_path
from medtextseg.data.io import Geometry, read_geometry, write_on_grid
from medtextseg.data.prompts import swap_left_right, validate_prompt
from medtextseg.data.transforms import preparation
from medtextseg.inference.inversion import reused_sampling_grids
from medtextseg.inference.memory import (
    GB,
    LARGE_BYTES,
    MemoryPlan,
    available_memory,
    network_bytes_per_voxel,
    resampled_shape,
)
from medtextseg.inference.postprocessing import remove_small_components
from medtextseg.inference.sliding import iter_prompt_maps, window_count
from medtextseg.models.trained import load_trained_model
from medtextseg.text.cache import TextEmbeddingCache, cached_text_encoder
from medtextseg.utils.errors import MedTextSegError

Progress = Callable[[int, int], None]  # (windows done, windows in all) of one prediction


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
        refiner: use the model's refiner (``model.blocks.refiner``); None: as ``inference.refiner`` of its config says.
        mirror_axes: mirror test-time augmentation along these spatial axes, or "all"; None:
            ``inference.mirror_axes``.
        threshold: the probability above which a voxel is in the mask, in (0, 1); None: ``inference.threshold``.

    Raises:
        MedTextSegError: no readable checkpoint there, a device torch does not know or this machine lacks, a
            threshold outside (0, 1).

    ``progress``: a bar over windows x passes on stderr (True), none (False), or one when stderr is a terminal
    (None, the default); with it, or for a large input, the memory estimate is printed before the run.
    """

    progress: bool | None = None

    def __init__(self, checkpoint: str | Path, device: str | torch.device | None = None,
                 refiner: bool | None = None, mirror_axes: list[int] | str | None = None,
                 threshold: float | None = None) -> None:
        if threshold is not None and not 0 < threshold < 1:
            raise MedTextSegError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
        self.device = _device(device)
        trained = load_trained_model(checkpoint, self.device)
        self.checkpoint: Path = trained.checkpoint
        self.model = trained.network
        inference = trained.config.inference.model_dump()
        if refiner is not None:
            inference["refiner"] = bool(refiner)
        if mirror_axes is not None:
            inference["mirror_axes"] = (list(range(trained.config.model.spatial_dims)) if mirror_axes == "all"
                                        else list(mirror_axes))
        if threshold is not None:
            inference["threshold"] = float(threshold)
        self.config = (trained.config if inference == trained.config.inference.model_dump()
                       else Config.from_dict({**trained.config.model_dump(), "inference": inference}))
        self.channel_names: list[str] = list(trained.channel_names)
        cache_dir = self.config.text.cache_dir if self.config.text.cache_dir is not None else "default"
        self.text: TextEmbeddingCache = cached_text_encoder(self.config.text.encoder, self.config.text.max_tokens,
                                                            cache_dir, self.config.text.memory_prompts,
                                                            self.config.text.encoder_kind)
        self.text_dim, self.trained_encoder = trained.text_dim, trained.text_encoder
        if self.trained_encoder not in (None, self.text.encoder_name):
            # a local folder's name carries a hash of its path: the same model moved elsewhere differs here too
            warnings.warn(f"{checkpoint}: trained with text encoder {self.trained_encoder!r}, predicting with "
                          f"{self.text.encoder_name!r}; the answers are only right if it is the same model",
                          stacklevel=2)

    @property
    def sources(self) -> list[tuple[Path, Config]]:
        """(checkpoint file, config) of each model behind the answers: this one's; every member's of an ensemble
        (:class:`~medtextseg.inference.ensemble.EnsemblePredictor`)."""
        return [(self.checkpoint, self.config)]

    def _check_context(self, shape: tuple[int, ...], name: str) -> None:
        """Refuse a single slice to a 2.5D model (``data.slice_context`` > 0): it reads neighbouring slices."""
        context = self.config.data.slice_context
        if context and sum(s > 1 for s in shape[:3]) < 3:
            raise MedTextSegError(f"{name}: a single slice (shape {' x '.join(map(str, shape))}) but the model "
                                  f"reads {2 * context + 1} neighbouring slices of each channel "
                                  f"(data.slice_context={context}); give the whole volume")

    def check_inputs(self, image_paths: list[Path]) -> None:
        """Refuse, before any voxel is read, files the model cannot take: a slice for a 3D or 2.5D model, a 4D
        file, another number of files than channels, channels on different grids (headers only). A 2D model
        takes slices and volumes (slice by slice)."""
        for path in image_paths:  # first: one 4D file of three channels is better told so than "got 1 file"
            check_image_dims(path, self.config.model.spatial_dims, "the model", "or use a {dims}D model",
                             slices_of_volumes=True)
            if self.config.data.slice_context:
                self._check_context(file_shape(path), str(path))
        expected = self.config.image_channels
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
        """Refuse an in-memory image the model cannot take: a slice for a 3D or 2.5D model, another number of
        channels than the model's."""
        check_shape_dims(given.geometry.shape, given.name, self.config.model.spatial_dims, "the model",
                         "or use a {dims}D model", unit="array", affines={"affine": given.geometry.affine},
                         slices_of_volumes=True)
        self._check_context(tuple(given.geometry.shape), given.name)
        expected = self.config.image_channels
        if given.image.shape[0] != expected:
            names = f" ({', '.join(self.channel_names)})" if self.channel_names else ""
            raise MedTextSegError(f"the model takes {expected} channel(s){names}, one image per channel (a "
                                  f"MetaTensor may hold them all, channel first), in that order; got "
                                  f"{given.image.shape[0]}")

    def set_inference(self, overrides: Sequence[str]) -> None:
        """Change inference settings of the loaded model: ``inference.KEY=VALUE`` items (the value read as YAML,
        as ``--set`` reads it), e.g. ``["inference.sw_batch_size=4", "inference.autocast=bf16"]``.

        Raises:
            MedTextSegError: a key outside ``inference``, an unknown key or a value its field refuses (one line).
        """
        from medtextseg.config import apply_override

        raw = self.config.model_dump()
        for override in overrides:
            key = override.partition("=")[0].strip()
            if not key.startswith("inference."):
                raise MedTextSegError(f"--set {override!r}: prediction takes inference.* settings only (e.g. "
                                      "inference.sw_batch_size=4); the model's other settings are its training's")
            apply_override(raw, override)
        self.config = Config.from_dict(raw)

    @torch.no_grad()
    def predict(self, images: Any, prompts: str | Sequence[str], uncertainty: bool = True, *,
                affine: Any = None, spacing: Sequence[float] | None = None, origin: Sequence[float] | None = None,
                direction: Any = None, on_progress: Progress | None = None) -> list[Segmentation]:
        """One ``Segmentation`` per prompt for one image, all prompts in one sliding-window pass.

        Every answer is returned, so memory holds P probability maps on the input's grid:
        :meth:`iter_predict` gives them one at a time (and ``medtextseg predict`` writes them so).

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
            on_progress: called as the sliding windows run with (windows done, windows in all), each window once
                per pass of ``inference.prompt_chunk`` prompts (a server reports it while a job runs).

        Raises:
            MedTextSegError: no prompt or a malformed one; inputs the model cannot take (type, dimensions,
                channels, grids, NaN voxels), each in one line; a prediction whose memory estimate exceeds the
                memory available (or ``inference.memory_limit_gb``), naming the setting that makes it fit.
        """
        return list(self._segmentations(images, prompts, uncertainty, True, affine=affine, spacing=spacing,
                                        origin=origin, direction=direction, on_progress=on_progress))

    def iter_predict(self, images: Any, prompts: str | Sequence[str], uncertainty: bool = True, *,
                     affine: Any = None, spacing: Sequence[float] | None = None, origin: Sequence[float] | None = None,
                     direction: Any = None, on_progress: Progress | None = None) -> Iterator[Segmentation]:
        """:meth:`predict`'s answers one at a time, in prompt order: memory holds ``inference.prompt_chunk``
        prompts' maps on the model's grid and a few on the input's grid, whatever the number of prompts, as long
        as the caller lets each answer go (write it, keep what it needs). The answers equal :meth:`predict`'s.

        Everything :meth:`predict` refuses is refused here, before the first answer (the inputs are read and
        prepared when this is called; the sliding windows run as the answers are drawn).
        """
        return self._segmentations(images, prompts, uncertainty, False, affine=affine, spacing=spacing,
                                   origin=origin, direction=direction, on_progress=on_progress)

    def _segmentations(self, images: Any, prompts: str | Sequence[str], uncertainty: bool, hold_all: bool, *,
                       affine: Any, spacing: Sequence[float] | None, origin: Sequence[float] | None,
                       direction: Any, on_progress: Progress | None = None) -> Iterator[Segmentation]:
        """Check, estimate the memory, read and prepare (now); then a generator of the answers."""
        items = list(images) if isinstance(images, list | tuple) else [images]
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        prompts = [validate_prompt(p, f"prompt {i + 1}") for i, p in enumerate(prompts)]
        if not prompts:
            raise MedTextSegError("no prompt given: pass at least one, e.g. -p 'the prostate gland'")
        if self.config.inference.autocast == "fp16" and self.device.type == "cpu":
            raise MedTextSegError("inference.autocast fp16 runs on a GPU; on the CPU use bf16, auto or none")
        normalization = self.config.data.normalization
        grid = self.config.inference.spacing or self.config.data.spacing
        if items and all(is_path(item) for item in items):
            if any(value is not None for value in (affine, spacing, origin, direction)):
                raise MedTextSegError("affine/spacing/origin/direction apply to numpy arrays; files carry their "
                                      "own grid")
            paths = [Path(p) for p in items]
            self.check_inputs(paths)
            geometry, name, reference = read_geometry(paths[0]), str(paths[0]), paths[0]
            self._check_memory(geometry, len(paths), len(prompts), uncertainty, hold_all, name)
            transform = preparation(grid, normalization=normalization)
            image: MetaTensor = transform({"image": [str(p) for p in paths]})["image"]
        else:
            given = in_memory_image(items, affine, spacing, origin, direction)
            self.check_in_memory(given)
            geometry, name, reference = given.geometry, given.name, None
            self._check_memory(geometry, given.image.shape[0], len(prompts), uncertainty, hold_all, name)
            transform = preparation(grid, normalization=normalization, load=False)
            image = transform({"image": given.image})["image"]
            del given
        if not torch.isfinite(image.as_tensor()).all():
            raise MedTextSegError(f"{name}: the image has NaN or infinite voxels")
        text, mirrored = self._text(prompts)
        model_input = image.as_tensor()  # [C, X, Y, Z]: a 2D model's windows are its slices (Z = 1 for a slice)
        # what Invertd reads of the prepared image: its recorded operations and meta, not its voxels
        trace = MetaTensor(torch.zeros(1), meta=image.meta)
        trace.applied_operations = image.applied_operations
        return self._answers(model_input.float(), trace, transform, prompts, text, mirrored, uncertainty, geometry,
                             reference, on_progress)

    def _check_memory(self, geometry: Geometry, channels: int, prompts: int, uncertainty: bool, hold_all: bool,
                      name: str) -> MemoryPlan:
        """Estimate the prediction's memory before any voxel is read; refuse it (one line naming the setting
        that makes it fit) above ``inference.memory_limit_gb`` or the memory available; print it on stderr for
        a large input (or whenever the progress bar shows)."""
        inference, model = self.config.inference, self.config.model
        grid = inference.spacing or self.config.data.spacing
        try:
            shape = resampled_shape(geometry.shape, geometry.affine, grid)
        except (ValueError, IndexError):  # an affine nibabel cannot read an orientation from: the file's grid
            shape = tuple(geometry.shape)
        # a 2D model's windows are slices: its maps hold every slice, a window one of them
        patch = (*self.config.data.patch_size, *[1] * (len(shape) - model.spatial_dims))
        spacing = tuple(grid) if grid is not None else geometry.spacing[: model.spatial_dims]
        plan = MemoryPlan(tuple(geometry.shape), channels, shape, spacing, patch, prompts,
                          inference.prompt_chunk, inference.sw_batch_size,
                          # input channels besides the image's: coordinates, and a 2.5D model's neighbouring slices
                          (model.spatial_dims if model.coordinates else 0) + model.in_channels
                          - self.config.image_channels,
                          network_bytes_per_voxel(model.channels, model.strides), uncertainty,
                          model.head == "evidential", hold_all)
        if inference.memory_limit_gb is not None:
            bound, where = inference.memory_limit_gb * GB, "inference.memory_limit_gb allows"
        else:
            bound, where = available_memory()
        refusal = plan.refusal(name, bound, where)
        if refusal:
            raise MedTextSegError(refusal)
        if self._progress_shown() or plan.total >= LARGE_BYTES:
            windows = window_count(shape, self.config.data.patch_size, inference.overlap)
            from tqdm import tqdm

            # through tqdm: a bar already on stderr (predict's bar over cases) is redrawn below the line
            tqdm.write(plan.line(bound, where, windows, -(-prompts // inference.prompt_chunk)), file=sys.stderr)
        return plan

    def _progress_shown(self) -> bool:
        """``progress`` when set, else whether stderr is a terminal."""
        if self.progress is not None:
            return bool(self.progress)
        return bool(getattr(sys.stderr, "isatty", lambda: False)())

    def _text(self, prompts: list[str]) -> tuple[Any, Any]:
        """The prompts' embeddings (and their left-right swaps for mirroring along axis 0)."""
        text = self.text(prompts)
        if text.pooled.shape[-1] != self.text_dim:
            raise MedTextSegError(f"the model was trained with {self.trained_encoder} ({self.text_dim}-d prompt "
                                  f"embeddings) but its text encoder {self.config.text.encoder!r} now gives "
                                  f"{text.pooled.shape[-1]}-d ones; point text.encoder at the model it was "
                                  "trained with")
        mirrored = self.text([swap_left_right(p) for p in prompts]) if 0 in self.config.inference.mirror_axes else None
        return text, mirrored

    @torch.no_grad()
    def _answers(self, model_input: torch.Tensor, trace: MetaTensor, transform: Any, prompts: list[str], text: Any,
                 mirrored: Any, uncertainty: bool, geometry: Geometry, reference: Path | None,
                 on_progress: Progress | None = None) -> Iterator[Segmentation]:
        """The sliding windows, ``prompt_chunk`` prompts a pass; each pass's maps back on the input's grid a
        group at a time (``Invertd``: MONAI replays the recorded orientation/spacing operations in reverse),
        thresholded, yielded."""
        inference = self.config.inference
        windows = window_count(model_input.shape[1:], self.config.data.patch_size, inference.overlap)
        passes = -(-len(prompts) // inference.prompt_chunk)
        bar = None
        if self._progress_shown():
            from tqdm import tqdm

            bar = tqdm(total=windows * passes, desc=f"{len(prompts)} prompt(s)", unit="window", file=sys.stderr,
                       leave=False, dynamic_ncols=True, delay=0 if self.progress else 2)
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if bar is not None:
                bar.update(count)
            if on_progress is not None:
                on_progress(done, windows * passes)

        maps = iter_prompt_maps(self.model, model_input, text, self.config.data.patch_size, inference.overlap,
                                inference.presence_threshold, inference.prompt_chunk, inference.mirror_axes,
                                mirrored, inference.sw_batch_size, uncertainty, inference.autocast,
                                advance if bar is not None or on_progress is not None else None,
                                self.config.data.slice_context, refine=inference.refiner, network=inference.network)
        del model_input
        grids: dict[Any, torch.Tensor] = {}  # the input grid's sampling grid, computed once for every group
        try:
            for rows, chunk in maps:
                group = MemoryPlan(geometry.shape, 1, (1,), (1.0,), (1,), len(rows), len(rows), 1, 0, 0.0,
                                   uncertainty).invert_group()
                for start in range(0, len(rows), group):
                    count = min(group, len(rows) - start)
                    probability = chunk.probability[start: start + count]
                    stacked = torch.cat([probability, chunk.uncertainty[start: start + count]]) if uncertainty \
                        else probability
                    inverted = self._invert(stacked, trace, transform, grids)  # [K, *input_shape]
                    for offset in range(count):
                        # each answer owns its maps (not views of the group's): holding one holds one prompt's
                        probability_map = self._clipped(inverted[offset], geometry)
                        uncertainty_map = self._clipped(inverted[count + offset], geometry) if uncertainty else None
                        mask = remove_small_components(probability_map > inference.threshold,
                                                       inference.min_component_voxels)
                        yield Segmentation(prompts[rows[start + offset]], mask.astype(np.uint8), probability_map,
                                           geometry, uncertainty_map, chunk.uncertainty_kind, reference)
                    del inverted, stacked, probability
                del chunk  # before the next pass runs: one pass's maps at a time
        finally:
            if bar is not None:
                bar.close()

    def _invert(self, stacked: torch.Tensor, trace: MetaTensor, transform: Any,
                grids: dict[Any, torch.Tensor]) -> np.ndarray:
        """Maps [K, X, Y, Z] on the model's grid -> [K, *input_grid] on the input's grid, as MONAI resampled them
        (float64); ``grids``: the sampling grids of earlier groups of the same image (:func:`reused_sampling_grids`)."""
        prediction = MetaTensor(stacked, meta=trace.meta)
        prediction.applied_operations = trace.applied_operations
        with reused_sampling_grids(grids):
            inverted = Invertd("prediction", transform, orig_keys="image", nearest_interp=False)(
                {"prediction": prediction, "image": trace})["prediction"]
        return inverted.as_tensor().numpy()

    @staticmethod
    def _clipped(inverted: np.ndarray, geometry: Geometry) -> np.ndarray:
        """One inverted map as its own float32 array in [0, 1], shaped as the input (a 2D input may carry a
        trailing singleton axis)."""
        own = inverted.astype(np.float32)  # a copy whatever the type MONAI resampled in
        return np.clip(own, 0.0, 1.0, out=own).reshape(geometry.shape)
