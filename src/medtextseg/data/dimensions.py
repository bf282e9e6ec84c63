"""Whether an image file is a 2D slice, a 3D volume or more, checked against the model before it sees a voxel.

A 2D model segments single slices (files of shape X x Y or X x Y x 1); a 3D model segments volumes (three
axes longer than one voxel). A file with a fourth axis longer than one (channels or time points in one file,
or a vector pixel) is neither: medtextseg takes one file per channel. Without these checks a volume given to a
2D model failed in a reshape after prediction, a 4D file reached the first convolution with too many channels,
and a slice given to a 3D model was segmented without a word.
"""

from __future__ import annotations

from pathlib import Path

from medtextseg.data.dicom_series import is_dicom_series, series_geometry
from medtextseg.data.io import is_nifti, load_nifti
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


def check_image_dims(path: str | Path, spatial_dims: int, subject: str, other_dims_fix: str) -> None:
    """Raise unless ``path`` holds one image of ``spatial_dims`` spatial axes (see :func:`check_shape_dims`).

    Args:
        path: an image file or DICOM series folder.
        spatial_dims: 2 (a slice: at most two axes longer than one voxel, e.g. 48 x 48 x 1) or 3 (a volume:
            three axes longer than one voxel).
        subject: what expects them, for the message, e.g. "the model" or "the dataset".
        other_dims_fix: how to work with an image of the other kind, ``{dims}`` standing for its number of
            axes, e.g. "or use a {dims}D model".

    Raises:
        MedTextSegError: naming the file, its shape and the fix.
    """
    check_shape_dims(file_shape(path), str(path), spatial_dims, subject, other_dims_fix)


def check_shape_dims(shape: tuple[int, ...], name: str, spatial_dims: int, subject: str, other_dims_fix: str,
                     unit: str = "file") -> None:
    """Raise unless ``shape`` (of the image called ``name``; one channel) has ``spatial_dims`` spatial axes.

    ``unit`` is what holds one channel, for the message: "file", or "array" for an image in memory.

    Raises:
        MedTextSegError: naming the image, its shape and the fix.
    """
    extra = [s for s in shape[3:] if s > 1]
    if extra:
        raise MedTextSegError(f"{name}: a {3 + len(extra)}D image (shape {_fmt(shape)}) but {subject} takes one "
                              f"{spatial_dims}D image per {unit}: save each channel (or time point) as a {unit} of "
                              "its own, in the channel order")
    long_axes = sum(s > 1 for s in shape[:3])
    if spatial_dims == 2 and long_axes == 3:
        raise MedTextSegError(f"{name}: a 3D image (shape {_fmt(shape)}) but {subject} is 2D (one slice per {unit}, "
                              f"X x Y x 1): give a single slice, {other_dims_fix.format(dims=3)}")
    if spatial_dims == 3 and long_axes < 3:
        raise MedTextSegError(f"{name}: a 2D image (shape {_fmt(shape)}) but {subject} is 3D (a volume per {unit}): "
                              f"give the whole volume, {other_dims_fix.format(dims=2)}")
