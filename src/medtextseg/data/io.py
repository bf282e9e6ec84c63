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

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtextseg.data.dicom_series import is_dicom_series, read_series, series_geometry
from medtextseg.data.sitk_reader import itk_frame, itk_to_ras_affine
from medtextseg.utils.atomic import atomic_path
from medtextseg.utils.errors import MedTextSegError

NIFTI_ENDINGS = (".nii", ".nii.gz")
NIFTI_HEADER_SIZES = (348, 540)  # NIfTI-1, NIfTI-2: the first field (sizeof_hdr) says which
INCOMPLETE = "the file is incomplete (an interrupted copy or download?): copy it again from its source"


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_ENDINGS)


def _is_gzip(path: Path) -> bool:
    return str(path).lower().endswith(".gz")


def _header_sizes(head: bytes) -> set[int]:
    """The NIfTI header sizes the first field (sizeof_hdr) of ``head`` names, in either byte order."""
    return {int.from_bytes(head[:4], order) for order in ("little", "big")} & set(NIFTI_HEADER_SIZES)


def _check_nifti_header_complete(path: Path) -> None:
    """Refuse a NIfTI file whose header is cut short, or whose gzip stream ends inside it (reads <= 540 bytes)."""
    try:
        with (gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")) as handle:
            head = handle.read(max(NIFTI_HEADER_SIZES))
    except EOFError:  # the gzip stream ends before the header does
        raise MedTextSegError(f"{path}: cut short: its gzip stream ends inside the NIfTI header; "
                              f"{INCOMPLETE}") from None
    except (gzip.BadGzipFile, zlib.error):
        with open(path, "rb") as handle:
            if _header_sizes(handle.read(4)):
                raise MedTextSegError(f"{path}: an uncompressed NIfTI file named .gz; rename it .nii") from None
        return  # not gzip, not NIfTI: nibabel says what it cannot read
    sizes = _header_sizes(head)
    needed = min(sizes) if sizes else NIFTI_HEADER_SIZES[0]
    if len(head) < 4 or (sizes and len(head) < needed):
        raise MedTextSegError(f"{path}: the NIfTI header is cut short ({len(head)} of {needed} bytes); {INCOMPLETE}")
    # another first field: not NIfTI at all, which nibabel says


def _gzip_content(path: Path) -> tuple[int, bool]:
    """How many bytes a gzip file decompresses to, and whether its last stream ends with its end marker.
    Streams through the file (bounded memory); only run when the trailer's size disagrees with the header."""
    total, ended = 0, False
    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            while chunk:
                if ended:  # another gzip member follows the one that ended
                    decompressor, ended = zlib.decompressobj(zlib.MAX_WBITS | 16), False
                total += len(decompressor.decompress(chunk, 1 << 24))
                ended = decompressor.eof
                chunk = decompressor.unused_data if ended else decompressor.unconsumed_tail
    return total, ended


def _check_nifti_data_complete(path: Path, image: Any) -> None:
    """Refuse a NIfTI file with fewer voxel bytes than its header's shape and data type need.

    Cheap: an uncompressed file's size; a gzip file's trailer (its uncompressed size modulo 2**32), the whole
    stream read only when the trailer disagrees (a stream cut short, several members, trailing bytes)."""
    header = image.header
    shape = tuple(int(s) for s in header.get_data_shape())
    dtype = header.get_data_dtype()
    fmt = " x ".join(str(s) for s in shape)
    if 0 in shape:
        raise MedTextSegError(f"{path}: its header declares no voxels (shape {fmt}); the header is broken: export "
                              "the image again")
    offset = int(getattr(image.dataobj, "offset", header.get_data_offset()))  # where the voxels are read from
    if offset < header.sizeof_hdr + 4:  # a .nii holds header, 4 extension bytes, then the voxels
        raise MedTextSegError(f"{path}: its header puts the voxels at byte {offset} (vox_offset), inside the "
                              f"header; the voxels of a .nii file start at byte {header.sizeof_hdr + 4} or later: "
                              "the header is broken: export the image again")
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if _is_gzip(path):
        with open(path, "rb") as handle:
            handle.seek(-4, 2)
            if int.from_bytes(handle.read(4), "little") == (offset + needed) % 2**32:
                return
        try:
            size, ended = _gzip_content(path)
        except zlib.error as error:
            raise MedTextSegError(f"{path}: corrupt gzip stream ({error}); {INCOMPLETE}") from None
        if not ended:
            raise MedTextSegError(f"{path}: cut short: its gzip stream ends before its end marker; {INCOMPLETE}")
    else:
        size = path.stat().st_size
    if size < offset + needed:
        raise MedTextSegError(f"{path}: the voxel data is cut short ({max(size - offset, 0)} of the {needed} bytes "
                              f"that shape {fmt} of {dtype.name} needs); {INCOMPLETE}")


def load_nifti(path: str | Path) -> Any:
    """``nibabel.load`` of a NIfTI file, refused first when it is incomplete: a gzip stream, header or voxel
    data cut short (headers and file sizes only, voxels are not read, unless a gzip trailer disagrees).

    Raises:
        MedTextSegError: naming the file and what is cut short. (nibabel's own errors pass through.)
    """
    import nibabel as nib

    path = Path(path)
    _check_nifti_header_complete(path)
    with np.errstate(all="ignore"):  # an affine of NaN or inf warns as it is built; check_affine says so instead
        image = nib.load(str(path))
    _check_nifti_data_complete(path, image)
    return image


def nifti_affines(path: str | Path, image: Any) -> dict[str, np.ndarray]:
    """Every voxel-to-world affine a NIfTI file may be read with, each checked (``check_affine``): the sform and
    the qform when their codes are above 0, else the one built from the voxel sizes (pixdim), and the one
    MONAI's reader takes. nibabel, and so ``read_geometry``, takes the sform first; MONAI's reader (training and
    prediction) takes the qform instead when only the qform agrees with the voxel sizes, whatever its code.
    All must be usable, or the model would see the image on another grid than its masks are measured on.

    Raises:
        MedTextSegError: a declared affine that cannot be built (a quaternion longer than 1) or is degenerate.
    """
    header = image.header
    found = {}
    for name in ("sform", "qform"):
        code = int(header[f"{name}_code"])
        if code > 0:
            try:
                with np.errstate(all="ignore"):
                    built = header.get_sform() if name == "sform" else header.get_qform()
                found[name] = np.asarray(built, dtype=float)
            except ValueError as error:  # nibabel: the quaternion (b, c, d) is longer than 1
                raise MedTextSegError(f"{path}: its {name} ({name}_code {code}) cannot be built ({error}); fix "
                                      f"it, or set {name}_code to 0 if the other transform is right") from None
    if not found:
        found["pixdim, no sform or qform"] = np.asarray(image.affine, dtype=float)
    for name, affine in found.items():
        check_affine(path, affine, name)
    reader = _reader_affine(Path(path))
    if not (np.all(np.isfinite(reader)) and any(np.allclose(reader, affine) for affine in found.values())):
        found["qform, which MONAI's reader takes as the voxel sizes (pixdim) disagree with the sform"] = reader
        check_affine(path, reader, next(reversed(found)))
    return found


def _reader_affine(path: Path) -> np.ndarray:
    """The affine MONAI's NibabelReader orients and resamples by: nibabel's, unless the voxel sizes (pixdim)
    disagree with it; then whichever of sform and qform agrees with them, even a qform whose code is 0
    (``monai.data.utils.correct_nifti_header_if_necessary``, called here as the reader calls it)."""
    import nibabel as nib
    from monai.data.utils import correct_nifti_header_if_necessary

    try:
        with np.errstate(all="ignore"):
            return np.asarray(correct_nifti_header_if_necessary(nib.load(str(path))).affine, dtype=float)
    except ValueError as error:  # nibabel cannot build the qform MONAI turns to: its reader would fail
        raise MedTextSegError(f"{path}: its voxel sizes (pixdim) disagree with its affine, and the qform MONAI's "
                              f"reader then takes cannot be built ({error}); fix the header") from None


def declared_affines(path: str | Path) -> dict[str, np.ndarray]:
    """The voxel-to-world affines an image file declares, by the header fields they come from (a NIfTI file's
    sform and qform, see ``nifti_affines``; another file's one), each checked.

    Raises:
        MedTextSegError: an unreadable header or a degenerate affine.
    """
    if is_nifti(path) and not is_dicom_series(path):
        read_geometry(path)  # the file's own checks, named as read_geometry names them
        return nifti_affines(path, load_nifti(path))
    return {"affine": read_geometry(path).affine}


VOXEL_MM = (1e-5, 1e5)  # voxel sizes a medical image can have (10 nm to 100 m); beyond, arithmetic breaks first
ORIGIN_MM = 1e8  # 100 km


def check_affine(path: str | Path, affine: np.ndarray, source: str) -> None:
    """Refuse a degenerate voxel-to-world affine: NaN or infinite values, a voxel axis of zero length or of a
    size no image has (``VOXEL_MM``), an origin beyond ``ORIGIN_MM``, or voxel axes that do not span space (a
    singular matrix). Such an image has no place in the world: it cannot be
    oriented or resampled, and its masks would have no volume.

    Raises:
        MedTextSegError: naming the file, the header fields (``source``) and the fault.
    """
    where = f"{path}: its voxel-to-world affine ({source})"
    fix = "the image has no valid position in space: fix its header or export it again"
    affine = np.asarray(affine, dtype=float)
    if not np.all(np.isfinite(affine)):
        raise MedTextSegError(f"{where} holds NaN or infinite values; {fix}")
    matrix = affine[:3, :3]
    lengths = np.linalg.norm(matrix, axis=0)
    zero = [axis for axis, length in enumerate(lengths) if length == 0]
    if zero:
        raise MedTextSegError(f"{where} gives voxel axis {zero[0]} zero length (a voxel size of 0); {fix}")
    odd = [axis for axis, length in enumerate(lengths) if not VOXEL_MM[0] <= length <= VOXEL_MM[1]]
    if odd:
        raise MedTextSegError(f"{where} gives voxel axis {odd[0]} a size of {lengths[odd[0]]:.3g} mm, outside "
                              f"{VOXEL_MM[0]:g} to {VOXEL_MM[1]:g} mm; {fix}")
    if np.abs(affine[:3, 3]).max() > ORIGIN_MM:
        raise MedTextSegError(f"{where} puts the image {np.abs(affine[:3, 3]).max():.3g} mm from the origin, "
                              f"beyond {ORIGIN_MM:g} mm; {fix}")
    if abs(np.linalg.det(matrix)) <= 1e-6 * float(np.prod(lengths)):
        raise MedTextSegError(f"{where} is singular: its voxel axes do not span 3D space (two point the same "
                              f"way); {fix}")


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
            image = load_nifti(path)
            shape = tuple(int(s) for s in image.shape[:3])
            nifti_affines(path, image)  # nibabel's affine is one of them: checked
            return Geometry(shape, np.asarray(image.affine, dtype=float), nifti_header=image.header.copy())
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        image = sitk.Image([1] * reader.GetDimension(), sitk.sitkUInt8)
        image.SetSpacing(reader.GetSpacing())
        image.SetOrigin(reader.GetOrigin())
        image.SetDirection(reader.GetDirection())
        affine = itk_to_ras_affine(image)
        check_affine(path, affine, "spacing and direction")
        return Geometry(tuple(int(s) for s in reader.GetSize()), affine,
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
            return np.asanyarray(load_nifti(path).dataobj)
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        return array.transpose(tuple(reversed(range(array.ndim))))
    except MedTextSegError:
        raise
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
