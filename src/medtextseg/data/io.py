"""Image files with their geometry: read headers and voxels, write masks on exactly a reference's grid.

NIfTI goes through nibabel (which keeps qform/sform and codes); MHA, NRRD and other ITK formats through
SimpleITK; a DICOM series (a folder of slice files, or ``FOLDER/SERIES_UID``) through
:mod:`medtextseg.data.dicom_series`. Arrays are always in the file's voxel order (i, j, k), as MONAI's readers
return them; for a DICOM series that is (row direction, column direction, slice normal), slices sorted by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtextseg.data.dicom_series import is_dicom_series, read_series, series_geometry
from medtextseg.data.sitk_reader import itk_to_ras_affine
from medtextseg.utils.atomic import atomic_path
from medtextseg.utils.errors import MedTextSegError

NIFTI_ENDINGS = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_ENDINGS)


@dataclass(frozen=True)
class Geometry:
    """Shape (voxels, file order) and the 4x4 voxel-to-world affine (RAS+ mm, nibabel convention)."""

    shape: tuple[int, ...]
    affine: np.ndarray

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
        return Geometry(geometry.shape, geometry.affine.copy())
    if not path.is_file():
        raise MedTextSegError(f"{path}: file not found")
    try:
        if is_nifti(path):
            import nibabel as nib

            image = nib.load(str(path))
            shape = tuple(int(s) for s in image.shape[:3])
            return Geometry(shape, np.asarray(image.affine, dtype=float))
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        image = sitk.Image([1] * reader.GetDimension(), sitk.sitkUInt8)
        image.SetSpacing(reader.GetSpacing())
        image.SetOrigin(reader.GetOrigin())
        image.SetDirection(reader.GetDirection())
        return Geometry(tuple(int(s) for s in reader.GetSize()), itk_to_ras_affine(image))
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
    """Write ``array`` (file voxel order, the reference's shape) with exactly the reference's geometry.

    uint8 arrays are written as masks; floating arrays as float32 maps. The file is written atomically. A DICOM
    series reference gives its grid to a NIfTI (or other ITK-format) destination; DICOM is never written.

    Raises:
        MedTextSegError: when the array's shape differs from the reference's.
    """
    reference, destination = Path(reference), Path(destination)
    geometry = read_geometry(reference)
    if tuple(array.shape) != geometry.shape:
        raise MedTextSegError(f"{destination}: array shape {tuple(array.shape)} differs from the "
                              f"reference {reference} shape {geometry.shape}")
    dtype = np.uint8 if array.dtype in (np.uint8, np.bool_) else np.float32
    array = array.astype(dtype)
    with atomic_path(destination) as tmp:
        if is_dicom_series(reference):
            _write_on_series_grid(array, reference, destination, tmp)
        elif is_nifti(destination) and is_nifti(reference):
            import nibabel as nib

            ref = nib.load(str(reference))
            header = ref.header.copy()
            header.set_data_dtype(dtype)
            out = nib.Nifti1Image(array, ref.affine, header=header)
            out.header.set_slope_inter(1, 0)  # no intensity scaling of masks or probabilities
            nib.save(out, str(tmp))
        else:
            import SimpleITK as sitk

            ref_image = sitk.ReadImage(str(reference))
            out = sitk.GetImageFromArray(array.transpose(tuple(reversed(range(array.ndim)))))
            out.CopyInformation(ref_image)
            sitk.WriteImage(out, str(tmp), useCompression=True)
    return destination


def _write_on_series_grid(array: np.ndarray, reference: Path, destination: Path, tmp: Path) -> None:
    """Write ``array`` on a DICOM series' grid: NIfTI through nibabel (its exact affine), else through SimpleITK."""
    geometry = series_geometry(reference)
    if is_nifti(destination):
        import nibabel as nib

        out = nib.Nifti1Image(array, geometry.affine)
        out.header.set_xyzt_units("mm")
        out.set_qform(geometry.affine, code=1)
        out.set_sform(geometry.affine, code=1)
        out.header.set_slope_inter(1, 0)
        nib.save(out, str(tmp))
        return
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(array.transpose(tuple(reversed(range(array.ndim)))))
    out.SetOrigin(geometry.origin)
    out.SetSpacing(geometry.spacing)
    out.SetDirection(geometry.direction)
    sitk.WriteImage(out, str(tmp), useCompression=True)
