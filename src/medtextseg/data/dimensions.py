"""Whether an image file is a 2D slice, a 3D volume or more, checked against the model before it sees a voxel.

A 2D model segments single axial slices (files of shape X x Y or X x Y x 1, or any voxel order whose affine
puts the single voxel along superior-inferior, e.g. 48 x 1 x 48: RAS orientation moves that axis last, where
training and prediction squeeze it, and the inversion puts it back in the file's place); a 3D model segments
volumes (three axes longer than one voxel). A file with a fourth axis longer than one (channels or time points
in one file, or a vector pixel) is neither: medtextseg takes one file per channel. Without these checks a
volume given to a 2D model failed in a reshape after prediction, a 4D file reached the first convolution with
too many channels, and a slice given to a 3D model was segmented without a word. A slice that is not axial
(48 x 1 x 48 with an axial affine, or a sagittal 48 x 48 x 1) would have been squeezed along the wrong axis:
it is refused. A 2D model also takes a volume (``slices_of_volumes``): it segments it slice by slice along
superior-inferior (``data.slices``), the masks coming back on the volume's grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtextseg.data.dicom_series import is_dicom_series, series_geometry
from medtextseg.data.io import Geometry, declared_affines, is_nifti, load_nifti
from medtextseg.utils.errors import MedTextSegError


def file_shape(path: str | Path) -> tuple[int, ...]:
    """The whole voxel shape a file's header declares, in file order (a DICOM series: X, Y, slices).

    Unlike ``read_geometry``, which keeps three axes, axes beyond the third are kept, and a vector pixel's
    components count as a last axis (an RGB PNG of 64 x 64 -> (64, 64, 3)).

    Raises:
        MedTextSegError: the file is missing or its header cannot be read.
    """
    path = Path(path)
    if is_dicom_series(path):
        return tuple(series_geometry(path).shape)
    if not path.is_file():
        raise MedTextSegError(f"{path}: file not found")
    try:
        if is_nifti(path):
            return tuple(int(s) for s in load_nifti(path).shape)
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        components = reader.GetNumberOfComponents()
        return tuple(int(s) for s in reader.GetSize()) + ((components,) if components > 1 else ())
    except MedTextSegError:
        raise
    except Exception as error:  # nibabel/ITK raise many types for corrupt files
        raise MedTextSegError(f"{path}: cannot read image header ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'corrupt file'})") from None


def _fmt(shape: tuple[int, ...]) -> str:
    return " x ".join(str(s) for s in shape)


def slice_normal_axis(affine: np.ndarray) -> int:
    """The voxel axis that runs closest to superior-inferior: the one a 2D slice has a single voxel along.

    RAS orientation puts it last, so the in-plane axes are the others, in file order: what a 2D model sees,
    and what measurements on the file's grid keep."""
    from nibabel.orientations import io_orientation

    return int(np.flatnonzero(io_orientation(affine)[:, 0] == 2)[0])


def metric_grid(geometry: Geometry, spatial_dims: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The shape and spacing (mm) a mask of this file is scored on: the file's three axes for 3D; for a 2D
    slice its two in-plane axes, in file order (the single-voxel one, see ``slice_normal_axis``, dropped)."""
    axes = list(range(3))
    if spatial_dims == 2:
        normal = slice_normal_axis(geometry.affine)
        axes = [axis for axis in axes if axis != normal]
    shape = (*geometry.shape, 1, 1)
    lengths = np.linalg.norm(geometry.affine[:3, :3], axis=0)
    return tuple(shape[a] for a in axes), tuple(float(lengths[a]) for a in axes)


def _check_axial(name: str, shape: tuple[int, ...], affines: dict[str, np.ndarray], subject: str) -> None:
    """Refuse a 2D image whose single-voxel axis is not the superior-inferior one (e.g. 48 x 1 x 48 with an
    axial affine, or a sagittal 48 x 48 x 1): after RAS orientation its slice would not lie in the last axis,
    where 2D training and prediction take it. Any voxel order is fine when the affine says it is axial."""
    full = (*shape[:3], *[1] * (3 - len(shape[:3])))
    for source, affine in affines.items():  # a NIfTI sform and qform must both say so
        normal = slice_normal_axis(affine)
        if full[normal] == 1:
            continue
        single = next((f"voxel axis {axis}" for axis in range(3) if full[axis] == 1), "no axis")
        raise MedTextSegError(f"{name}: a 2D image (shape {_fmt(shape)}) that is not an axial slice: its {source} "
                              f"runs voxel axis {normal} superior-inferior ({full[normal]} voxels) and {single} "
                              f"is the single-voxel one, but {subject} is 2D on axial slices (one voxel along "
                              "superior-inferior): reslice it, or correct its affine if the slice is axial")


def check_image_dims(path: str | Path, spatial_dims: int, subject: str, other_dims_fix: str, *,
                     slices_of_volumes: bool = False) -> None:
    """Raise unless ``path`` holds one image of ``spatial_dims`` spatial axes (see :func:`check_shape_dims`).

    Args:
        path: an image file or DICOM series folder.
        spatial_dims: 2 (an axial slice: at most two axes longer than one voxel, the single-voxel one running
            superior-inferior, e.g. 48 x 48 x 1) or 3 (a volume: three axes longer than one voxel).
        subject: what expects them, for the message, e.g. "the model" or "the dataset".
        other_dims_fix: how to work with an image of the other kind, ``{dims}`` standing for its number of
            axes, e.g. "or use a {dims}D model".
        slices_of_volumes: a 2D subject that also takes a volume, slice by slice (a 2D model predicting).

    Raises:
        MedTextSegError: naming the file, its shape and the fix.
    """
    check_shape_dims(file_shape(path), str(path), spatial_dims, subject, other_dims_fix,
                     affines=declared_affines(path) if spatial_dims == 2 else None,
                     slices_of_volumes=slices_of_volumes)


def check_shape_dims(shape: tuple[int, ...], name: str, spatial_dims: int, subject: str, other_dims_fix: str,
                     unit: str = "file", affines: dict[str, np.ndarray] | None = None, *,
                     slices_of_volumes: bool = False) -> None:
    """Raise unless ``shape`` (of the image called ``name``; one channel) has ``spatial_dims`` spatial axes.

    ``unit`` is what holds one channel, for the message: "file", or "array" for an image in memory.
    ``affines`` (source -> 4x4 voxel-to-world, e.g. a NIfTI's sform and qform) lets a 2D image be checked to be an
    axial slice in any voxel order. ``slices_of_volumes``: a 2D subject also takes a volume (three axes longer
    than one voxel), which it segments slice by slice.

    Raises:
        MedTextSegError: naming the image, its shape and the fix.
    """
    extra = [s for s in shape[3:] if s > 1]
    if extra:
        raise MedTextSegError(f"{name}: a {3 + len(extra)}D image (shape {_fmt(shape)}) but {subject} takes one "
                              f"{spatial_dims}D image per {unit}: save each channel (or time point) as a {unit} of "
                              "its own, in the channel order")
    long_axes = sum(s > 1 for s in shape[:3])
    if spatial_dims == 2 and long_axes == 3 and slices_of_volumes:
        return
    if spatial_dims == 2 and long_axes == 3:
        raise MedTextSegError(f"{name}: a 3D image (shape {_fmt(shape)}) but {subject} is 2D (one slice per {unit}, "
                              f"X x Y x 1): give a single slice, {other_dims_fix.format(dims=3)}")
    if spatial_dims == 2 and affines:
        _check_axial(name, shape, affines, subject)
    if spatial_dims == 3 and long_axes < 3:
        raise MedTextSegError(f"{name}: a 2D image (shape {_fmt(shape)}) but {subject} is 3D (a volume per {unit}): "
                              f"give the whole volume, {other_dims_fix.format(dims=2)}")
