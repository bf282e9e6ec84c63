"""A 2D model on volumes: axial slices drawn for training, and every slice stacked for prediction.

A 2D model reads one axial slice at a time, as nnU-Net's ``2d`` configuration and BiomedParse do. After the
preparation (``transforms.preparation``: RAS orientation) the last spatial axis runs inferior -> superior, so
slice z of a prepared volume [C, X, Y, Z] is ``volume[..., z]``. With a slice context k (``data.slice_context``,
2.5D) the model also reads the k slices on either side as channels: [C * (2k + 1), X, Y], channel-major (channel
c's slices z-k .. z+k, then channel c+1's), so that ``model.encoders`` groups of channels stay one sequence each.
At the volume's first and last slices the missing neighbours repeat the edge slice.

Training draws one slice per item (:func:`draw_slice`): two draws in three are a slice of one prompt's target
(the prompt drawn among those whose target the volume holds, the slice by a random voxel of it, as the crop of
``dataset.PromptSampleDataset`` and nnU-Net oversample foreground), the third any slice. A prompt whose target
misses the drawn slice is trained with the slice's target, empty: on that slice it is an absent prompt, which is
what slice-by-slice prediction asks of the model on every slice the target does not reach.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: share of training slices drawn through a prompt's target (the crop's pos / (pos + neg) = 2 / 3)
FOREGROUND_SLICES = 2.0 / 3.0


def context_indices(slices: int, context: int) -> Tensor:
    """[Z, 2k+1] long: row z is the slices z-k .. z+k a 2.5D model reads for slice z, clamped to 0 .. Z-1."""
    offsets = torch.arange(-context, context + 1)
    return (torch.arange(slices)[:, None] + offsets[None]).clamp(0, slices - 1)


def slice_stack(volume: Tensor, context: int = 0) -> Tensor:
    """Every axial slice of a volume with its context, as a batch of 2D images.

    Args:
        volume: [C, X, Y, Z] (RAS: Z runs inferior -> superior).
        context: k neighbouring slices on either side (0: the slice alone).

    Returns:
        [Z, C * (2k + 1), X, Y]; row z is :func:`axial_slice` ``(volume, z, context)``.
    """
    channels, *plane, slices = volume.shape
    gathered = volume[..., context_indices(slices, context)]  # [C, X, Y, Z, 2k+1]
    return gathered.permute(3, 0, 4, 1, 2).reshape(slices, channels * (2 * context + 1), *plane)


def axial_slice(volume: Tensor, index: int, context: int = 0) -> Tensor:
    """Slice ``index`` of a volume [C, X, Y, Z] with its context: [C * (2k + 1), X, Y], channel-major."""
    channels, *plane, slices = volume.shape
    rows = context_indices(slices, context)[index]  # [2k+1]
    return volume[..., rows].permute(0, 3, 1, 2).reshape(channels * (2 * context + 1), *plane)


def draw_slice(targets: Tensor, rng: np.random.Generator, foreground: float = FOREGROUND_SLICES) -> int:
    """The axial slice a training item shows, drawn with foreground oversampling.

    With probability ``foreground``, and when any target is non-empty, one prompt is drawn among those whose
    target the volume holds, and the slice of a random voxel of that target (slices weighted by the target's
    voxels in them); otherwise a slice uniformly.

    Args:
        targets: [K, X, Y, Z], the K prompts' targets (non-zero = inside).
        rng: the item's generator.
        foreground: share of draws through a target.

    Returns:
        the slice index z in 0 .. Z-1.
    """
    voxels = (targets != 0).flatten(1, -2).sum(1).double()  # [K, Z] target voxels per prompt and slice
    present = [k for k in range(voxels.shape[0]) if voxels[k].any()]
    if present and rng.random() < foreground:
        chosen = voxels[present[int(rng.integers(len(present)))]].numpy()
        return int(rng.choice(len(chosen), p=chosen / chosen.sum()))
    return int(rng.integers(voxels.shape[1]))
