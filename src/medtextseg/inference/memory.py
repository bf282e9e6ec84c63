"""How much memory a prediction will need, estimated before any voxel is read, and the bound it must fit.

The estimate follows the prediction's phases (:mod:`medtextseg.inference.predictor`), float32 throughout:

* preparation: the channels read on the file's grid, then resampled to the planned spacing and normalised;
* maps: the model input with its coordinate channels, one pass's ``prompt_chunk`` blended maps (MONAI's output
  and count map), and the network's activations for ``sw_batch_size`` windows x ``prompt_chunk`` prompts;
* inversion: while a pass's maps are held, a group of prompts is brought back to the file's grid (MONAI's
  resampling in float64, with its sampling grid) and thresholded; what is still held of the answers: a few when
  they are streamed (``Predictor.iter_predict``, the command line), all P when ``Predictor.predict`` returns
  them.

The peak is the largest phase. Its constants follow the arrays each phase holds, checked against measured peak
RSS (docs/prediction_profile.md), with a margin of a fifth and 128 MB for what the libraries set up on a first
prediction; the bound is ``inference.memory_limit_gb`` or else the memory available when the prediction starts
(``MemAvailable``, a cgroup's limit when lower).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

GB = 1024**3
FLOAT, DOUBLE = 4, 8
#: probability (+ uncertainty) maps of a group inverted together are kept under this many bytes
INVERT_GROUP_BYTES = 64 * 1024**2
#: an input whose estimate reaches this is "large": the estimate is printed before it runs
LARGE_BYTES = 1 * GB
#: measured peaks (docs/prediction_profile.md) were up to a fifth above the phases' sums (allocator, temporaries)
MARGIN = 1.2
#: what a process's first prediction adds besides its arrays (kernels, buffers and modules set up on first use)
FIRST_USE = 128 * 1024**2


def resampled_shape(shape: Sequence[int], affine: np.ndarray, spacing: Sequence[float] | None) -> tuple[int, ...]:
    """The RAS grid a file of ``shape`` and ``affine`` has after orientation to RAS and resampling to ``spacing``
    (mm; None keeps the file's; a 2D spacing keeps the third axis)."""
    import nibabel as nib

    dims = min(len(shape), 3)
    matrix = np.asarray(affine, dtype=float)[:dims, :dims]
    zooms = np.linalg.norm(matrix, axis=0)
    order = nib.orientations.io_orientation(np.asarray(affine, dtype=float)[: dims + 1, : dims + 1]
                                            if dims < 3 else np.asarray(affine, dtype=float))
    out = [0] * dims
    for axis in range(dims):
        ras = int(order[axis, 0]) if not np.isnan(order[axis, 0]) else axis
        target = spacing[ras] if spacing is not None and ras < len(spacing) and spacing[ras] > 0 else zooms[axis]
        out[ras] = max(1, int(round((shape[axis] - 1) * zooms[axis] / target + 1)))  # as MONAI: corner to corner
    return tuple(out) + tuple(int(s) for s in shape[dims:])


@dataclass(frozen=True)
class MemoryPlan:
    """The figures of one prediction that decide its memory, and the estimate (bytes) they give."""

    input_shape: tuple[int, ...]
    channels: int
    model_shape: tuple[int, ...]
    spacing: tuple[float, ...]
    patch: tuple[int, ...]
    prompts: int
    prompt_chunk: int
    sw_batch_size: int
    coordinate_channels: int
    network_bytes_per_voxel: float  # activations of one window and prompt, per window voxel
    uncertainty: bool = False
    evidential: bool = False
    hold_all: bool = False  # predict() returns every prompt's maps; iter_predict streams them

    @property
    def chunk(self) -> int:
        return min(self.prompts, self.prompt_chunk)

    def parts(self) -> dict[str, float]:
        """Bytes of each phase, the margin included (the peak is the largest)."""
        file_voxels, model_voxels = math.prod(self.input_shape), math.prod(self.model_shape)
        patch_voxels = math.prod(self.patch)
        maps = 1 + (1 if self.uncertainty else 0)  # probability (+ uncertainty) per prompt
        # each channel read as float32, resampled in float64; on the model's grid: MONAI's output, the normalised
        # copy, and its float64 sampling grid (a 4-vector a voxel while made, 3 coordinates after)
        preparation = (self.channels * (file_voxels * (FLOAT + DOUBLE) + model_voxels * 4 * FLOAT)
                       + model_voxels * 7 * DOUBLE)
        model_input = FLOAT * model_voxels * (self.channels + self.coordinate_channels)
        chunk_maps = FLOAT * model_voxels * self.chunk * maps
        blending = FLOAT * model_voxels * (self.chunk * (2 if self.evidential and self.uncertainty else 1) + 2)
        network = self.sw_batch_size * patch_voxels * self.network_bytes_per_voxel * (self.chunk + 1)
        group = self.invert_group()
        answer = FLOAT * file_voxels * maps + file_voxels  # its own float32 maps and its mask
        held = answer * (self.prompts if self.hold_all else 2)  # streamed: the caller's last answer and this one
        # back on the file's grid: the float64 sampling grid (3 coordinates a voxel, made a slab at a time and kept
        # for every group), a group's float64 resampled maps and their re-oriented copy, the threshold's temporaries
        inversion = file_voxels * (3 * DOUBLE + group * maps * 2 * DOUBLE + 2) + INVERT_GROUP_BYTES + held
        return {name: MARGIN * value + FIRST_USE for name, value in (
            ("preparation", preparation),
            ("maps", model_input + chunk_maps + blending + network + (held if self.hold_all else 0)),
            ("inversion", model_input + chunk_maps + inversion))}

    def invert_group(self) -> int:
        """Prompts brought back to the file's grid together: as many as fit ``INVERT_GROUP_BYTES`` (float32)."""
        per_prompt = FLOAT * math.prod(self.input_shape) * (2 if self.uncertainty else 1)
        return max(1, min(self.chunk, INVERT_GROUP_BYTES // max(per_prompt, 1)))

    @property
    def total(self) -> float:
        return max(self.parts().values())

    def describe(self) -> str:
        shape = " x ".join(map(str, self.input_shape))
        model = " x ".join(map(str, self.model_shape))
        spacing = " x ".join(f"{s:.3g}" for s in self.spacing)
        return (f"{self.channels} channel(s) of {shape} resampled to {model} at {spacing} mm, {self.prompts} "
                f"prompt(s), {self.chunk} per pass")

    def refusal(self, name: str, bound: float, where: str) -> str | None:
        """None when the estimate fits ``bound``; else one line: what is needed, what there is, and the setting
        that makes it fit (fewer prompts per pass, one window per call, a coarser grid) or that nothing does."""
        if self.total <= bound:
            return None
        fix = None
        for chunk in (8, 4, 2, 1):
            if chunk < self.chunk and replace(self, prompt_chunk=chunk).total <= bound:
                fix = (f"--set inference.prompt_chunk={chunk} (about {replace(self, prompt_chunk=chunk).total / GB:.3g}"
                       " GB)")
                break
        lean = replace(self, prompt_chunk=1, sw_batch_size=1)
        if fix is None and self.sw_batch_size > 1 and lean.total <= bound:
            fix = f"--set inference.prompt_chunk=1 --set inference.sw_batch_size=1 (about {lean.total / GB:.3g} GB)"
        if fix is None and self.hold_all and replace(lean, hold_all=False).total <= bound:
            fix = ("write the answers as they come (Predictor.iter_predict, or medtextseg predict) instead of "
                   "holding all of them")
        if fix is None:
            for factor in (1.25, 1.5, 2.0, 3.0, 4.0):
                spacing = tuple(s * factor for s in self.spacing)
                # a 2D model's slices keep their spacing (a 2D inference.spacing): only the plane coarsens
                shape = tuple(max(1, int(round(n / factor))) if axis < len(self.spacing) else n
                              for axis, n in enumerate(self.model_shape))
                coarser = replace(lean, hold_all=False, spacing=spacing, model_shape=shape)
                if coarser.total <= bound:
                    values = ",".join(f"{s:.3g}" for s in spacing)
                    fix = (f"predict on a coarser grid: --set inference.spacing=[{values}] (about "
                           f"{coarser.total / GB:.3g} GB; the masks still come back on the file's grid)")
                    break
        if fix is None:
            fix = "the file alone does not fit: crop it, or predict on a machine with more memory"
        return (f"{name}: predicting needs about {self.total / GB:.3g} GB ({self.describe()}), more than the "
                f"{bound / GB:.3g} GB {where}; {fix}")

    def line(self, bound: float, where: str, windows: int, passes: int) -> str:
        return (f"memory estimate: about {self.total / GB:.3g} GB of {bound / GB:.3g} GB {where} ({self.describe()}; "
                f"{windows} windows x {passes} pass(es))")


def network_bytes_per_voxel(channels: Sequence[int], strides: Sequence[Sequence[int]]) -> float:
    """Activation bytes per window voxel and prompt of the U-Net decoder (and, once per window, of the encoder):
    each level's channels at its resolution, a few tensors alive at a time (convolution, normalisation,
    activation, the skip joined in)."""
    total, scale = 0.0, 1.0
    for width, stride in zip(channels, strides, strict=False):
        scale *= math.prod(stride)
        total += width / scale
    return FLOAT * 12 * total


def available_memory() -> tuple[float, str]:
    """(bytes, where they are): the memory available now (``MemAvailable``; psutil or ``sysconf`` elsewhere), or a
    cgroup's remaining limit when lower."""
    available, where = None, "available"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = float(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        try:
            import psutil

            available = float(psutil.virtual_memory().available)
        except ImportError:
            try:
                available = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
            except (ValueError, OSError, AttributeError):
                available = math.inf
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            current = float(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            if float(limit) - current < available:
                available, where = float(limit) - current, "left under this cgroup's memory.max"
    except (OSError, ValueError):
        pass
    return available, where
