"""Image files with their geometry: read headers and voxels, write masks on exactly a reference's grid.

NIfTI goes through nibabel (which keeps qform/sform and codes); MHA, NRRD and other ITK formats through
SimpleITK; a DICOM series (a folder of slice files, or ``FOLDER/SERIES_UID``) through
:mod:`medtextseg.data.dicom_series`. Arrays are always in the file's voxel order (i, j, k), as MONAI's readers
return them; for a DICOM series that is (row direction, column direction, slice normal), slices sorted by position.

A :class:`Geometry` keeps what a writer needs to put an array on its grid (the source's NIfTI header, or its ITK
origin, spacing and direction), so outputs can be written after the source file is gone, or for an image that was
never a file (:mod:`medtextseg.data.image_input`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtextseg.data.dicom_series import is_dicom_series, read_series, series_geometry
from medtextseg.data.sitk_reader import itk_frame, itk_to_ras_affine
from medtextseg.utils.atomic import atomic_path
from medtextseg.utils.errors import MedTextSegError

NIFTI_ENDINGS = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_ENDINGS)


@dataclass(frozen=True)
class Geometry:
    """Shape (voxels, file order) and the 4x4 voxel-to-world affine (RAS+ mm, nibabel convention).

    ``nifti_header`` (a NIfTI source's header: qform/sform codes, units) and ``itk_frame`` (an ITK source's
    ``(origin, spacing, direction)``, LPS as ITK keeps them) let a writer reproduce the source's header exactly;
    without them outputs are written from ``affine`` alone.
    """

    shape: tuple[int, ...]
    affine: np.ndarray
    nifti_header: Any = field(default=None, compare=False, repr=False)
    itk_frame: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]] | None = field(
        default=None, compare=False, repr=False)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0)[: len(self.shape)])

    def same_grid(self, other: Geometry, tolerance_mm: float = 1e-3) -> bool:
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=tolerance_mm))


def read_geometry(path: str | Path) -> Geometry:
    """The grid of an image file or DICOM series, from its header(s) only (voxels are not read)."""
    path = Path(path)
    if is_dicom_series(path):
        geometry = series_geometry(path)
        return Geometry(geometry.shape, geometry.affine.copy(),
                        itk_frame=(geometry.origin, geometry.spacing, geometry.direction))
    if not path.is_file():
        raise MedTextSegError(f"{path}: file not found")
    try:
        if is_nifti(path):
            import nibabel as nib

            image = nib.load(str(path))
            shape = tuple(int(s) for s in image.shape[:3])
            return Geometry(shape, np.asarray(image.affine, dtype=float), nifti_header=image.header.copy())
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        image = sitk.Image([1] * reader.GetDimension(), sitk.sitkUInt8)
        image.SetSpacing(reader.GetSpacing())
        image.SetOrigin(reader.GetOrigin())
        image.SetDirection(reader.GetDirection())
        return Geometry(tuple(int(s) for s in reader.GetSize()), itk_to_ras_affine(image),
                        itk_frame=(reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection()))
    except MedTextSegError:
        raise
    except Exception as error:  # nibabel/ITK raise many types for corrupt files
        raise MedTextSegError(f"{path}: cannot read image header ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'corrupt file'})") from None


def read_array(path: str | Path) -> np.ndarray:
    """All voxels of an image file or DICOM series, in file voxel order."""
    path = Path(path)
    if is_dicom_series(path):
        return read_series(path).array
    try:
        if is_nifti(path):
            import nibabel as nib

            return np.asanyarray(nib.load(str(path)).dataobj)
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        return array.transpose(tuple(reversed(range(array.ndim))))
    except Exception as error:
        raise MedTextSegError(f"{path}: cannot read voxels ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'corrupt file'})") from None


def write_like(array: np.ndarray, reference: str | Path, destination: str | Path) -> Path:
    """Write ``array`` (file voxel order, the reference's shape) with exactly the reference file's geometry.

    See :func:`write_on_grid`; the reference is read (headers only) first.
    """
    return write_on_grid(array, read_geometry(reference), destination, source=str(reference))


def write_on_grid(array: np.ndarray, geometry: Geometry, destination: str | Path, source: str = "the reference",
                  label_map: bool = False) -> Path:
    """Write ``array`` ([*geometry.shape], file voxel order) on ``geometry``'s grid, atomically.

    bool and uint8 arrays are written as uint8 masks, uint16 arrays as uint16 labels, anything else as float32
    maps. A NIfTI destination is written by nibabel: with the source's header when it was NIfTI (codes, units kept),
    else from the affine (qform and sform, scanner code). Other formats (MHA, NRRD, ...) by SimpleITK, with the
    source's ITK origin, spacing and direction (from the affine when the source had none). DICOM is never written.
    ``label_map`` marks a NIfTI file as a label map (intent ``NIFTI_INTENT_LABEL``), so viewers show it as labels.

    Raises:
        MedTextSegError: when the array's shape differs from the grid's (``source`` names the grid's image).
    """
    destination = Path(destination)
    if tuple(array.shape) != geometry.shape:
        raise MedTextSegError(f"{destination}: array shape {tuple(array.shape)} differs from the "
                              f"reference {source} shape {geometry.shape}")
    dtype = np.uint8 if array.dtype in (np.uint8, np.bool_) else np.uint16 if array.dtype == np.uint16 else np.float32
    array = array.astype(dtype)
    with atomic_path(destination) as tmp:
        if is_nifti(destination):
            import nibabel as nib

            if geometry.nifti_header is not None:
                header = geometry.nifti_header.copy()
                header.set_data_dtype(dtype)
                out = nib.Nifti1Image(array, geometry.affine, header=header)
            else:
                out = nib.Nifti1Image(array, geometry.affine)
                out.header.set_xyzt_units("mm")
                out.set_qform(geometry.affine, code=1)
                out.set_sform(geometry.affine, code=1)
            out.header.set_slope_inter(1, 0)  # no intensity scaling of masks or probabilities
            if label_map:
                out.header.set_intent("label")
            nib.save(out, str(tmp))
        else:
            import SimpleITK as sitk

            origin, spacing, direction = geometry.itk_frame or itk_frame(geometry.affine, array.ndim)
            out = sitk.GetImageFromArray(array.transpose(tuple(reversed(range(array.ndim)))))
            out.SetOrigin(origin)
            out.SetSpacing(spacing)
            out.SetDirection(direction)
            sitk.WriteImage(out, str(tmp), useCompression=True)
    return destination
