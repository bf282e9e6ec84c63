"""One sampling grid for every group of maps brought back to an input's grid.

``Invertd`` resamples the model-grid maps to the input's grid with ``torch.nn.functional.affine_grid`` and
``grid_sample`` (MONAI's ``AffineTransform``). The grid depends on the two grids only, not on the maps, yet MONAI
builds it anew on each call: on a 1 mm brain volume that took 0.32 s against 0.14 s to sample one map, so
inverting one prompt (or a few) at a time, which keeps memory flat, would double the inversion's time. Within
:func:`reused_sampling_grids`, ``affine_grid`` answers a call it has answered before from the given dictionary:
the same tensor it computed then, so the results are bit for bit those of a fresh grid.

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
        grids[key] = _ORIGINAL(theta, size, align_corners=align_corners)
    return grids[key]


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
