"""Probabilities (and uncertainty) for several prompts of one image in one sliding-window pass (MONAI's inferer).

The prompts ride along as channels: the predictor returns [1, P, *window] for a window (2P with the uncertainty
of an evidential head), so MONAI's Gaussian blending stitches all prompts at once and the image encoder runs
once per window.

A 2D model given a volume (an image with one more spatial axis than the window) segments it slice by slice: every
axial slice (with ``slice_context`` neighbours on either side as channels, :mod:`medtextseg.data.slices`) is one
image of the batch MONAI's inferer runs over, ``sw_batch_size`` windows of any slices per network call, and the
slices' maps are stacked back into the volume: [P, X, Y, Z].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from monai.inferers import sliding_window_inference
from torch import Tensor, nn

from medtextseg.data.slices import slice_stack
from medtextseg.data.transforms import coordinate_channels
from medtextseg.models.evidential import dirichlet_uncertainty
from medtextseg.text.batch import TextBatch
from medtextseg.utils.precision import autocast, inference_dtype


class PromptMaps(NamedTuple):
    """Per-prompt maps of one image: ``probability`` and ``uncertainty``, each [P, *spatial] float32 in [0, 1].

    ``uncertainty_kind``: ``"dirichlet"`` (the uncertainty mass 2 / S of an evidential head) or ``"entropy"``
    (the binary entropy of the probability, in bits, for a sigmoid head, which has no uncertainty of its own).
    ``uncertainty`` is None when it was not asked for.
    """

    probability: Tensor
    uncertainty: Tensor | None
    uncertainty_kind: str


def binary_entropy(probability: Tensor) -> Tensor:
    """Entropy in bits of Bernoulli(p), elementwise, in [0, 1] (1 at p = 0.5)."""
    p = probability.clamp(1e-7, 1 - 1e-7)
    return -(p * torch.log(p) + (1 - p) * torch.log(1 - p)) / math.log(2)


def windows_by_prompts(model: nn.Module, windows: Tensor, prompts: TextBatch, refine: bool = True,
                       network: int | None = None):
    """One network call for W windows x P prompts: windows [W, C, *window]; returns the model's output with W * P
    rows, window-major (row w * P + p: prompt p in window w). ``refine`` and ``network`` are the model's
    (``inference.refiner``, ``inference.network``).

    MONAI hands the predictor ``sw_batch_size`` windows at a time: several fill a GPU. On a 2-core CPU they
    did not pay (24 prompts of a brain volume: 2.0 s of CPU time with 1, 2 or 4 windows per call).
    """
    count = len(prompts)
    index = torch.arange(windows.shape[0], device=windows.device).repeat_interleave(count)
    return model(windows, prompts.index(list(range(count)) * windows.shape[0]), index, refine=refine,
                 network=network)


def autocast_context(device: torch.device, kind: str = "auto"):
    """The network's precision while predicting: ``"auto"`` (:func:`~medtextseg.utils.precision.inference_dtype`),
    ``"none"`` (float32), ``"bf16"`` or ``"fp16"`` autocast.

    Probabilities are still blended, averaged and returned in float32: only the network's convolutions and matrix
    products run in the lower precision.

    Raises:
        ValueError: an unknown kind, or fp16 on a CPU.
    """
    return autocast(device, inference_dtype(kind, device))


def check_mirrored_text(mirror_axes: Sequence[int], mirrored_text: TextBatch | None) -> None:
    """Refuse, before any window, a left-right mirror (axis 0) without the prompts with the sides swapped."""
    if 0 in mirror_axes and mirrored_text is None:
        raise ValueError("mirroring along axis 0 (left-right) needs mirrored_text, the prompts with the sides swapped")


def mirrored_mean(answer: Callable[[Tensor, TextBatch], Tensor], windows: Tensor, image_channels: int,
                  text: TextBatch, mirrored_text: TextBatch, mirror_axes: Sequence[int]) -> Tensor:
    """``answer(windows, text)`` averaged with its answers to the windows flipped along each of ``mirror_axes``,
    flipped back (mirror test-time augmentation). Along axis 0, the patient's left-right, the flipped windows are
    read with ``mirrored_text`` (left and right swapped, as training's flip does); the channels after
    ``image_channels`` (whole-image coordinates) are never flipped: they say where the patient's right is.

    ``answer`` maps windows [W, C, *window] to [W * P, K, *window]; so does the mean."""
    total = answer(windows, text)
    for axis in mirror_axes:
        dim = 2 + axis
        flipped = torch.cat([windows[:, :image_channels].flip(dim), windows[:, image_channels:]], dim=1)
        total = total + answer(flipped, mirrored_text if axis == 0 else text).flip(dim)
    return total / (1 + len(mirror_axes))


def is_slicewise(spatial_shape: Sequence[int], patch_size: Sequence[int]) -> bool:
    """Whether an image of ``spatial_shape`` is a volume for a 2D window: one spatial axis more than the window,
    segmented slice by slice along its last axis (RAS: inferior -> superior)."""
    return len(spatial_shape) == len(patch_size) + 1


def window_batch(image: Tensor, patch_size: Sequence[int], slice_context: int = 0,
                 coordinates: bool = False) -> tuple[Tensor, int]:
    """The batch MONAI's sliding window runs over, and how many of its channels are the image's.

    Args:
        image: [C, *spatial]; a volume [C, X, Y, Z] with a 2D ``patch_size`` is taken slice by slice.
        patch_size: the window size.
        slice_context: a slice-by-slice model's neighbouring slices on either side (``data.slice_context``).
        coordinates: append whole-image (whole-slice) coordinate channels, as the model was trained with.

    Returns:
        ([1, C (+ S), *spatial], C) for an image of the window's dimensions; for a volume
        ([Z, C * (2k + 1) (+ 2), X, Y], C * (2k + 1)), row z being slice z.

    Raises:
        ValueError: a slice context for an image that is not a volume (it has no neighbouring slices).
    """
    if is_slicewise(image.shape[1:], patch_size):
        batch = slice_stack(image, slice_context)
    elif slice_context:
        raise ValueError(f"slice_context={slice_context} reads neighbouring slices, but the image [C, "
                         f"{', '.join(map(str, image.shape[1:]))}] is not a volume for a {len(patch_size)}D window")
    else:
        batch = image[None]
    channels = batch.shape[1]
    if coordinates:
        grid = coordinate_channels(batch.shape[2:]).to(batch.dtype)
        batch = torch.cat([batch, grid[None].expand(len(batch), *grid.shape)], dim=1)
    return batch, channels


def from_batch(blended: Tensor, spatial_shape: Sequence[int], patch_size: Sequence[int]) -> Tensor:
    """The sliding window's output [N, M, *window dims] as maps [M, *spatial] of the image
    :func:`window_batch` took: row 0 of an image's batch, or the slices stacked back into the volume."""
    if is_slicewise(spatial_shape, patch_size):
        return blended.movedim(0, -1).contiguous()
    return blended[0]


def window_count(spatial_shape: Sequence[int], patch_size: Sequence[int], overlap: float) -> int:
    """The number of windows MONAI's sliding window visits on an image of ``spatial_shape`` (padded to the patch
    where smaller), with its own scan interval; on a volume with a 2D patch, those of one slice x the slices."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    if is_slicewise(spatial_shape, patch_size):
        return window_count(spatial_shape[:-1], patch_size, overlap) * int(spatial_shape[-1])

    size = [max(int(s), int(p)) for s, p in zip(spatial_shape, patch_size, strict=True)]
    interval = _get_scan_interval(size, list(patch_size), len(size), [overlap] * len(size))
    return len(dense_patch_slices(size, list(patch_size), interval))


@torch.no_grad()
def prompt_probabilities(model: nn.Module, image: Tensor, text: TextBatch, patch_size: Sequence[int],
                         overlap: float = 0.25, presence_threshold: float = 0.5, prompt_chunk: int = 16,
                         sw_batch_size: int = 1, slice_context: int = 0, refine: bool = True,
                         network: int | None = None, autocast: str = "auto") -> Tensor:
    """``prompt_maps(...).probability``: [P, *spatial]; see :func:`prompt_maps`."""
    return prompt_maps(model, image, text, patch_size, overlap, presence_threshold, prompt_chunk,
                       sw_batch_size=sw_batch_size, uncertainty=False, autocast=autocast,
                       slice_context=slice_context, refine=refine, network=network).probability


@torch.no_grad()
def prompt_maps(model: nn.Module, image: Tensor, text: TextBatch, patch_size: Sequence[int],
                overlap: float = 0.25, presence_threshold: float = 0.5, prompt_chunk: int = 16,
                mirror_axes: Sequence[int] = (), mirrored_text: TextBatch | None = None,
                sw_batch_size: int = 1, uncertainty: bool = True, autocast: str = "auto",
                progress: Callable[[int], None] | None = None, slice_context: int = 0, refine: bool = True,
                network: int | None = None) -> PromptMaps:
    """Probability that each voxel belongs to what each prompt names, and how uncertain that is.

    All P prompts' maps at once: [P, *spatial] each (memory grows with P); :func:`iter_prompt_maps` gives them
    ``prompt_chunk`` prompts at a time. Arguments as there.

    Returns:
        ``PromptMaps`` with [P, *spatial] float32 probability and uncertainty maps in [0, 1] (uncertainty None
        when ``uncertainty`` is False).
    """
    chunks = [maps for _, maps in iter_prompt_maps(model, image, text, patch_size, overlap, presence_threshold,
                                                   prompt_chunk, mirror_axes, mirrored_text, sw_batch_size,
                                                   uncertainty, autocast, progress, slice_context, refine,
                                                   network)]
    return PromptMaps(torch.cat([c.probability for c in chunks]),
                      torch.cat([c.uncertainty for c in chunks]) if uncertainty else None,
                      chunks[0].uncertainty_kind)


@torch.no_grad()
def iter_prompt_maps(model: nn.Module, image: Tensor, text: TextBatch, patch_size: Sequence[int],
                     overlap: float = 0.25, presence_threshold: float = 0.5, prompt_chunk: int = 16,
                     mirror_axes: Sequence[int] = (), mirrored_text: TextBatch | None = None,
                     sw_batch_size: int = 1, uncertainty: bool = True, autocast: str = "auto",
                     progress: Callable[[int], None] | None = None, slice_context: int = 0,
                     refine: bool = True, network: int | None = None) -> Iterator[tuple[list[int], PromptMaps]]:
    """Probability that each voxel belongs to what each prompt names, and how uncertain that is, ``prompt_chunk``
    prompts at a time: one sliding-window pass per chunk (the image encoder runs once per window and chunk),
    whose maps are yielded before the next pass starts, so memory holds one chunk's maps, not P.

    Mirror test-time augmentation (``mirror_axes``): every window is also predicted flipped along each listed
    spatial axis and flipped back, and the answers are averaged. Axis 0 is the patient's left-right axis (RAS):
    mirrored there, "left" in a prompt names the other side, so that pass reads ``mirrored_text``, the prompts with
    left and right swapped, exactly as the flip augmentation of training does; the coordinate channels are never
    flipped (they say where the patient's right is).

    When the model has a presence logit, a window whose presence probability is below
    ``presence_threshold`` contributes zeros: the target is not there. The gate is a hard decision, not a
    product, because multiplying by a presence of, say, 0.8 would shave every boundary voxel off a mask
    the model got right.

    Args:
        model: a segmenter (``forward(image, text, image_index, refine=, network=) -> ModelOutput``) declaring
            its ``input_spec`` (:class:`~medtextseg.models.input_spec.InputSpec`), in eval mode.
        image: [C, *spatial] z-scored, model space (RAS); coordinate channels are appended here when the
            model's input spec asks for them, so windows see whole-image positions. A volume [C, X, Y, Z] for a 2D
            ``patch_size`` is segmented slice by slice (:func:`window_batch`; the maps are [P, X, Y, Z]).
        text: P encoded prompts (on the model's device).
        patch_size: the window size; images smaller than it are padded by MONAI.
        overlap: window overlap fraction.
        presence_threshold: below it, a window's answer is empty.
        prompt_chunk: prompts decoded together (bounds memory for long prompt lists).
        mirror_axes: spatial axes of the mirror test-time augmentation (none by default).
        mirrored_text: the P prompts with left and right swapped; required when ``0 in mirror_axes``.
        sw_batch_size: windows per network call (MONAI's ``sw_batch_size``); memory grows with
            ``sw_batch_size x prompt_chunk``.
        uncertainty: False leaves the uncertainty maps out (None): an evidential head's is then not blended.
        autocast: the network's precision, ``"auto"``, ``"none"``, ``"bf16"`` or ``"fp16"``
            (:func:`autocast_context`).
        progress: called with the number of windows of each network call (a progress bar's ``update``).
        slice_context: slice by slice, the neighbouring slices on either side read as channels (2.5D).
        refine: run the model's refiner, when it has one (``inference.refiner``).
        network: a co-trained model's member to answer alone (``inference.network``); None: all of them.

    Yields:
        (the chunk's prompt indices, ``PromptMaps`` with [chunk, *spatial] float32 probability and uncertainty
        maps in [0, 1]), in prompt order.
    """
    spec = model.input_spec
    evidential = spec.head == "evidential"
    blend_uncertainty = evidential and uncertainty
    device = next(model.parameters()).device
    precision = autocast_context(device, autocast)  # refuses an unknown kind before any window
    spatial_shape = tuple(image.shape[1:])
    if any(not 0 <= axis < len(patch_size) for axis in mirror_axes):
        raise ValueError(f"mirror_axes {list(mirror_axes)} must be spatial axes 0..{len(patch_size) - 1}")
    check_mirrored_text(mirror_axes, mirrored_text)
    inputs, image_channels = window_batch(image, patch_size, slice_context, spec.coordinates)
    inputs = inputs.to(device)
    del image
    for start in range(0, len(text), prompt_chunk):
        rows = list(range(start, min(start + prompt_chunk, len(text))))
        chunk = text.index(rows).to(device)
        swapped = mirrored_text.index(rows).to(device) if mirrored_text is not None else chunk

        def answer(windows: Tensor, prompts: TextBatch) -> Tensor:
            with precision:
                out = windows_by_prompts(model, windows, prompts, refine, network)
            probability = torch.sigmoid(out.logits.float())  # [W * P, 1, *window]
            if out.presence is not None:
                present = torch.sigmoid(out.presence.float()) >= presence_threshold  # [W * P]
                probability = probability * present.view(-1, 1, *[1] * (windows.ndim - 2))
            if blend_uncertainty:  # [W * P, 2, *window]: the uncertainty is blended like the probability
                probability = torch.cat([probability, dirichlet_uncertainty(out.evidence.float())], dim=1)
            return probability

        def predict(windows: Tensor, chunk: TextBatch = chunk, swapped: TextBatch = swapped) -> Tensor:
            average = mirrored_mean(answer, windows, image_channels, chunk, swapped, mirror_axes)
            average = average.unflatten(0, (windows.shape[0], len(chunk)))
            if progress is not None:
                progress(windows.shape[0])
            return average.transpose(1, 2).flatten(1, 2)  # [W, P or 2P, *window]: maps first, then uncertainty

        blended = sliding_window_inference(inputs, roi_size=list(patch_size), sw_batch_size=sw_batch_size,
                                           predictor=predict, overlap=overlap, mode="gaussian")
        blended = from_batch(blended.float().cpu(), spatial_shape, patch_size)
        blended = blended.as_tensor() if hasattr(blended, "as_tensor") else blended
        if blend_uncertainty:
            yield rows, PromptMaps(blended[: len(rows)], blended[len(rows):], "dirichlet")
        elif evidential:
            yield rows, PromptMaps(blended, None, "dirichlet")
        else:
            yield rows, PromptMaps(blended, binary_entropy(blended) if uncertainty else None, "entropy")
        del blended


@torch.no_grad()
def gated_probabilities(model: nn.Module, image: Tensor, text: TextBatch, patch_size: Sequence[int],
                        presence_thresholds: Sequence[float], overlap: float = 0.25,
                        sw_batch_size: int = 1, slice_context: int = 0, refine: bool = True,
                        network: int | None = None, autocast: str = "auto", mirror_axes: Sequence[int] = (),
                        mirrored_text: TextBatch | None = None) -> Tensor:
    """The probability maps :func:`prompt_maps` gives at each of several presence thresholds, in one pass.

    The gate closes per window, so the maps of two thresholds differ in which windows are blended as zeros; the
    predictor returns every gated version of each window as channels and MONAI blends them together: the
    network runs once per window whatever the number of thresholds (a threshold of 0 never closes the gate).

    Args:
        model: a segmenter with a presence logit, in eval mode.
        image: [C, *spatial] z-scored, model space (a volume for a 2D window: slice by slice).
        text: P encoded prompts (on the model's device).
        patch_size: the window size.
        presence_thresholds: T thresholds in [0, 1).
        overlap: window overlap fraction.
        sw_batch_size: windows per network call.
        slice_context: slice by slice, the neighbouring slices read as channels (2.5D).
        refine, network, autocast, mirror_axes, mirrored_text: as :func:`iter_prompt_maps` (each mirrored
            pass gated by its own presence, as there).

    Returns:
        [T, P, *spatial] float32 probabilities, row t gated at ``presence_thresholds[t]``.
    """
    device = next(model.parameters()).device
    precision = autocast_context(device, autocast)
    spatial_shape = tuple(image.shape[1:])
    check_mirrored_text(mirror_axes, mirrored_text)
    inputs, image_channels = window_batch(image, patch_size, slice_context, model.input_spec.coordinates)
    thresholds = torch.tensor(list(presence_thresholds), dtype=torch.float32, device=device)  # [T]
    prompts = text.to(device)
    swapped = mirrored_text.to(device) if mirrored_text is not None else prompts

    def gated(windows: Tensor, prompts: TextBatch) -> Tensor:  # [W, C, *window] -> [W, T * P, *window]
        with precision:
            out = windows_by_prompts(model, windows, prompts, refine, network)
        if out.presence is None:
            raise ValueError("gated_probabilities needs a model with a presence logit")
        spatial = out.logits.shape[2:]
        probability = torch.sigmoid(out.logits.float()).view(len(windows), 1, len(prompts), *spatial)
        open_gate = torch.sigmoid(out.presence.float()).view(len(windows), 1, -1) >= thresholds[:, None]  # [W, T, P]
        return (probability * open_gate.view(*open_gate.shape, *[1] * len(spatial))).flatten(1, 2)

    def predict(windows: Tensor) -> Tensor:
        return mirrored_mean(gated, windows, image_channels, prompts, swapped, mirror_axes)

    blended = sliding_window_inference(inputs.to(device), roi_size=list(patch_size), sw_batch_size=sw_batch_size,
                                       predictor=predict, overlap=overlap, mode="gaussian")
    blended = from_batch(blended.float().cpu(), spatial_shape, patch_size)
    blended = blended.as_tensor() if hasattr(blended, "as_tensor") else blended
    return blended.unflatten(0, (len(thresholds), len(prompts)))
