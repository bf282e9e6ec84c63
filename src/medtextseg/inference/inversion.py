"""One sampling grid for every group of maps brought back to an input's grid.

``Invertd`` resamples the model-grid maps to the input's grid with ``torch.nn.functional.affine_grid`` and
``grid_sample`` (MONAI's ``AffineTransform``). The grid depends on the two grids only, not on the maps, yet MONAI
builds it anew on each call: on a 1 mm brain volume that took 0.32 s against 0.14 s to sample one map, so
inverting one prompt (or a few) at a time, which keeps memory flat, would double the inversion's time. Within
:func:`reused_sampling_grids`, ``affine_grid`` answers a call it has answered before from the given dictionary:
the same tensor it computed then, so the results are bit for bit those of a fresh grid. A new 3D grid is computed
a slab at a time, as torch computes it but without its whole-volume base grid.

``torch.nn.functional.affine_grid`` is wrapped once (on first use) by a function that calls the original
unless the calling context has a dictionary set: other code, other threads and gradients are untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

_GRIDS: ContextVar[dict[Any, torch.Tensor] | None] = ContextVar("medtextseg_sampling_grids", default=None)
_ORIGINAL = torch.nn.functional.affine_grid


def _affine_grid(theta: torch.Tensor, size: list[int], align_corners: bool | None = None) -> torch.Tensor:
    grids = _GRIDS.get()
    if grids is None or theta.requires_grad:
        return _ORIGINAL(theta, size, align_corners=align_corners)
    # the grid is [N, *spatial, dims]: it does not depend on the channels, size[1]
    key = (theta.detach().cpu().numpy().tobytes(), theta.dtype, str(theta.device), int(size[0]),
           tuple(int(s) for s in size[2:]), align_corners)  # MONAI passes the sizes as 0-d tensors
    if key not in grids:
        grids.clear()  # one grid at a time: another input grid replaces it
        grids[key] = _slab_grid(theta, size, align_corners) if len(size) == 5 and theta.ndim == 3 else \
            _ORIGINAL(theta, size, align_corners=align_corners)
    return grids[key]


def _steps(count: int, align_corners: bool | None, like: torch.Tensor) -> torch.Tensor:
    """torch's normalised coordinates of ``count`` voxels along an axis (``linspace_from_neg_one``)."""
    if count <= 1:
        return torch.zeros(1, dtype=like.dtype, device=like.device)
    steps = torch.linspace(-1, 1, count, dtype=like.dtype, device=like.device)
    return steps if align_corners else steps * (count - 1) / count


def _slab_grid(theta: torch.Tensor, size: list[int], align_corners: bool | None,
               slab_bytes: int = 64 * 1024**2) -> torch.Tensor:
    """``affine_grid`` of a 3D grid as torch computes it (a homogeneous base grid times theta), a slab of the first
    axis at a time: the 4-vector base grid of the whole volume (a third more than the grid itself, 2.5 GB on a
    512 x 512 x 300 volume in float64) is never held. The same values (tests/test_prediction_memory.py)."""
    batch, _, depth, height, width = (int(s) for s in size)
    grid = torch.empty(batch, depth, height, width, 3, dtype=theta.dtype, device=theta.device)
    xs, ys, zs = (_steps(n, align_corners, theta) for n in (width, height, depth))
    rows = max(1, slab_bytes // (height * width * 4 * theta.element_size()))
    for start in range(0, depth, rows):
        stop = min(depth, start + rows)
        base = torch.empty(batch, stop - start, height, width, 4, dtype=theta.dtype, device=theta.device)
        base.select(-1, 0).copy_(xs)
        base.select(-1, 1).copy_(ys.unsqueeze(-1))
        base.select(-1, 2).copy_(zs[start:stop].unsqueeze(-1).unsqueeze(-1))
        base.select(-1, 3).fill_(1)
        grid[:, start:stop] = base.view(batch, -1, 4).bmm(theta.transpose(1, 2)).view(batch, stop - start, height,
                                                                                      width, 3)
    return grid


@contextmanager
def reused_sampling_grids(grids: dict[Any, torch.Tensor]) -> Iterator[None]:
    """Within the block, ``affine_grid`` keeps its grid in ``grids`` and answers the same call from there."""
    if torch.nn.functional.affine_grid is not _affine_grid:
        torch.nn.functional.affine_grid = _affine_grid
    token = _GRIDS.set(grids)
    try:
        yield
    finally:
        _GRIDS.reset(token)
