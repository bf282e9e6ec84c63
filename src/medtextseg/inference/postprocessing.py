"""Post-processing of thresholded masks, shared by prediction and validation."""

from __future__ import annotations

import numpy as np


def remove_small_components(mask: np.ndarray, min_voxels: int, keep_largest: bool = False) -> np.ndarray:
    """Drop connected components (full connectivity) smaller than ``min_voxels``. mask: bool [*spatial].

    ``keep_largest``: the largest component stays whatever its size (Align-then-Refine's post-processing: the
    largest component plus those of at least ``min_voxels``).

    The components are labelled inside the mask's bounding box only: a structure of a large volume costs what
    its box costs, with the same answer.
    """
    if min_voxels <= 0 or not mask.any():
        return mask
    from scipy import ndimage

    box = tuple(slice(int(np.flatnonzero(hits)[0]), int(np.flatnonzero(hits)[-1]) + 1)
                for hits in (mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis))
                             for axis in range(mask.ndim)))
    labels, count = ndimage.label(mask[box], structure=np.ones((3,) * mask.ndim))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    if keep_largest:
        keep[1 + int(np.argmax(sizes[1:]))] = True
    keep[0] = False
    kept = np.zeros(mask.shape, dtype=bool)
    kept[box] = keep[labels]
    return kept
