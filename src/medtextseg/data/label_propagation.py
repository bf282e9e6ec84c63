"""Label propagation from one annotated slice to a whole volume (DeSCO's offline densification, METHODS.md 2.4).

Starting at the annotated slice, each next slice outward is registered onto its neighbour already labelled
(2D deformable registration, SimpleITK's symmetric-forces demons), the neighbour's label is warped onto it with
nearest-neighbour interpolation, then opened and closed (5 x 5 box). Errors accumulate with the distance from the
annotated slice, which is why the trainer weighs a propagated voxel by ``alpha ** distance``
(:func:`slice_distance`). DeSCO registers with ANTs' SyNRA (rigid + affine + SyN); adjacent slices of one volume
barely move, and demons needs no extra dependency.
"""

from __future__ import annotations

import numpy as np


def _register_and_warp(fixed: np.ndarray, moving: np.ndarray, moving_label: np.ndarray, iterations: int,
                       smoothing: float, radius: int) -> np.ndarray:
    """Warp ``moving_label`` [H, W] from the grid of ``moving`` onto ``fixed`` (both [H, W] float)."""
    import SimpleITK as sitk

    fixed_image = sitk.GetImageFromArray(np.ascontiguousarray(fixed, dtype=np.float32))
    moving_image = sitk.GetImageFromArray(np.ascontiguousarray(moving, dtype=np.float32))
    label_image = sitk.GetImageFromArray(np.ascontiguousarray(moving_label, dtype=np.uint8))
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(iterations)
    demons.SetSmoothDisplacementField(True)
    demons.SetStandardDeviations(smoothing)
    field = demons.Execute(fixed_image, moving_image)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    warped = sitk.Resample(label_image, fixed_image, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if radius > 0:
        kernel = [radius, radius]
        warped = sitk.BinaryMorphologicalOpening(warped, kernel, sitk.sitkBox, 0, 1)
        warped = sitk.BinaryMorphologicalClosing(warped, kernel, sitk.sitkBox, 1)
    return sitk.GetArrayFromImage(warped).astype(bool)


def propagate_slice_label(image: np.ndarray, label_slice: np.ndarray, axis: int, index: int,
                          iterations: int = 40, smoothing: float = 1.5, radius: int = 2) -> np.ndarray:
    """A dense binary label of ``image`` from the label of its slice ``index`` along ``axis``.

    Args:
        image: [X, Y, Z] float, one channel (the registration's intensities).
        label_slice: the annotated slice's binary label, ``image`` without ``axis``.
        axis, index: where the annotated slice is.
        iterations, smoothing: demons iterations and displacement smoothing (voxels).
        radius: of the opening and closing box (2 -> 5 x 5, as DeSCO).

    Returns:
        [X, Y, Z] bool; the annotated slice holds ``label_slice`` unchanged.
    """
    volume = np.moveaxis(np.asarray(image, dtype=np.float32), axis, 0)
    result = np.zeros(volume.shape, dtype=bool)
    result[index] = np.asarray(label_slice, dtype=bool)
    for step in (1, -1):
        previous = index
        for current in range(index + step, volume.shape[0] if step > 0 else -1, step):
            if not result[previous].any():  # nothing left to carry: the structure has ended
                break
            result[current] = _register_and_warp(volume[current], volume[previous], result[previous],
                                                 iterations, smoothing, radius)
            previous = current
    return np.moveaxis(result, 0, axis)


def slice_distance(shape: tuple[int, ...], axis: int, index: int) -> np.ndarray:
    """[*shape] int: each voxel's distance in slices from slice ``index`` along ``axis``."""
    distance = np.abs(np.arange(shape[axis]) - index)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.broadcast_to(distance.reshape(view), shape).copy()


__all__ = ["propagate_slice_label", "slice_distance"]
