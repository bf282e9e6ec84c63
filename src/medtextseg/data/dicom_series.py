"""DICOM series: a folder of slice files -> voxels in (i, j, k) order and a RAS affine, as NIfTI files give them.

A series is read with SimpleITK's ``ImageSeriesReader`` (GDCM groups the files of a folder by SeriesInstanceUID
and sorts them by position along the slice normal). The geometry is computed here, from every slice's header:

* voxel axis i runs along a row (DICOM column index), j down a column (row index), k along the slice normal
  (row cosine x column cosine), the slices sorted by ascending position on it;
* the affine is the nibabel one (RAS+ world, mm) of the same image saved as NIfTI: ``diag(-1, -1, 1) @ LPS``;
* the slices must share their orientation, be evenly spaced and be stacked along their normal: a missing slice,
  two volumes in one series (time points, echoes) or a gantry tilt is an error naming the folder, never a
  silently wrong affine.

A path names a series in two ways: a folder holding exactly one series, or ``FOLDER/SERIES_INSTANCE_UID`` (that
path does not exist; its parent is the folder) to pick one of several series. A folder with several series and
no UID is an error listing them.

>>> volume = read_series("CT/DICOM_anon")  # doctest: +SKIP
>>> volume.array.shape, nib.aff2axcodes(volume.affine)  # doctest: +SKIP
((512, 512, 95), ('L', 'P', 'S'))
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medtextseg.utils.errors import MedTextSegError

UID_PATTERN = re.compile(r"^\d+(\.\d+)+$")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: slice positions may deviate from even spacing by this fraction of the spacing (scanner rounding)
SPACING_TOLERANCE = 0.01
#: slice origins may leave the line along the normal by this fraction of the in-plane spacing
TILT_TOLERANCE = 0.1


@dataclass(frozen=True)
class SliceHeader:
    """What one slice file says about its place: ``origin`` (LPS mm of its first voxel), ``direction`` (3 x 3,
    columns: row cosine, column cosine, normal), ``spacing`` (mm: along i, along j, and the file's slice spacing),
    ``size`` (columns, rows), and the tags used to group and order slices."""

    path: Path
    origin: np.ndarray
    direction: np.ndarray
    spacing: tuple[float, float, float]
    size: tuple[int, int]
    series_uid: str = ""
    description: str = ""
    series_number: str = ""
    instance: int | None = None
    temporal: tuple[float, ...] = ()  # TemporalPositionIdentifier, AcquisitionTime, TriggerTime (those present)
    has_position: bool = True

    @property
    def position(self) -> float:
        """Distance (mm) of the slice along its normal."""
        return float(self.origin @ self.direction[:, 2])


@dataclass(frozen=True)
class SeriesGeometry:
    """The grid of a series: slice files in voxel-k order, shape ``(X, Y, Z)``, RAS affine, and the ITK view of it
    (``origin`` LPS mm, ``spacing`` mm, ``direction`` 3 x 3) to build a SimpleITK image on exactly this grid."""

    files: tuple[Path, ...]
    shape: tuple[int, int, int]
    affine: np.ndarray
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]
    series_uid: str = ""
    description: str = ""


@dataclass
class DicomVolume:
    """A series' voxels ``array`` ``[X, Y, Z]`` (file dtype after the rescale slope and intercept) and its grid."""

    array: np.ndarray
    geometry: SeriesGeometry = field(repr=False)

    @property
    def affine(self) -> np.ndarray:
        return self.geometry.affine

    def __repr__(self) -> str:
        spacing = ", ".join(f"{s:.3g}" for s in self.geometry.spacing)
        return f"DicomVolume(shape={self.array.shape}, spacing=({spacing}) mm, series={self.geometry.series_uid!r})"


# -------------------------------------------------------------------- naming a series
def series_reference(path: str | Path) -> tuple[Path, str | None] | None:
    """``(folder, series UID or None)`` when ``path`` names a DICOM series (see the module docstring), else None.

    Only the form is checked: a folder, or a non-existent ``FOLDER/UID`` whose parent is a folder.
    """
    path = Path(path)
    if path.is_dir():
        return path, None
    if not path.exists() and UID_PATTERN.match(path.name) and path.parent.is_dir():
        return path.parent, path.name
    return None


def is_dicom_series(path: str | Path) -> bool:
    """True when ``path`` names a DICOM series: a folder, or ``FOLDER/SERIES_INSTANCE_UID``."""
    return series_reference(path) is not None


# -------------------------------------------------------------------- headers
def _meta(reader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_header(path: str | Path) -> SliceHeader:
    """The header of one slice file (pixels are not read).

    Raises:
        MedTextSegError: not a readable DICOM image, or a multi-component (colour) image.
    """
    import SimpleITK as sitk

    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        detail = next((line for line in str(error).splitlines() if line.strip()), "unreadable")
        raise MedTextSegError(f"{path}: not a readable DICOM image ({detail.strip()[:120]})") from None
    if reader.GetNumberOfComponents() != 1:
        raise MedTextSegError(f"{path}: a {reader.GetNumberOfComponents()}-component (colour) DICOM image; only "
                              "grey-level series are supported")
    size = reader.GetSize()
    if len(size) > 2 and size[2] != 1:
        raise MedTextSegError(f"{path}: a multi-frame DICOM file ({size[2]} frames); only one slice per file is "
                              "supported")
    instance = _number(_meta(reader, "0020|0013"))
    temporal = tuple(v for v in (_number(_meta(reader, key)) for key in ("0020|0100", "0008|0032", "0018|1060"))
                     if v is not None)
    return SliceHeader(
        path=path,
        origin=np.array(reader.GetOrigin()[:3], dtype=float),
        direction=np.array(reader.GetDirection(), dtype=float).reshape(3, 3),
        spacing=tuple(float(s) for s in reader.GetSpacing()[:3]),
        size=(int(size[0]), int(size[1])),
        series_uid=_meta(reader, "0020|000e"),
        description=_meta(reader, "0008|103e"),
        series_number=_meta(reader, "0020|0011"),
        instance=None if instance is None else int(instance),
        temporal=temporal,
        has_position=reader.HasMetaDataKey("0020|0032"),
    )


def read_headers(files: Sequence[str | Path]) -> list[SliceHeader]:
    """The headers of ``files``, in the given order."""
    return [read_header(path) for path in files]


def _where(headers: Sequence[SliceHeader], where: str | Path | None) -> str:
    return str(where) if where is not None else str(headers[0].path.parent)


def split_volumes(headers: Sequence[SliceHeader]) -> list[list[SliceHeader]]:
    """Split slices that hold several volumes at the same positions (DCE time points, echoes) into volumes.

    Slices are grouped by position (to 0.01 mm); every position must hold the same number ``n`` of slices. The
    ``t``-th slice of each position (ordered by temporal position, acquisition time, trigger time, then instance
    number) goes to volume ``t``. One volume (every position once) comes back as ``[headers]``.

    Raises:
        MedTextSegError: positions holding different numbers of slices.
    """
    groups: dict[float, list[SliceHeader]] = {}
    for header in headers:
        groups.setdefault(round(header.position, 2), []).append(header)
    counts = {len(members) for members in groups.values()}
    if counts == {1}:
        return [list(headers)]
    if len(counts) > 1:
        raise MedTextSegError(f"{_where(headers, None)}: positions hold {min(counts)} to {max(counts)} slices each; "
                              "cannot split the series into volumes (a slice is missing or duplicated)")

    def order(header: SliceHeader) -> tuple:
        return (*header.temporal, header.instance if header.instance is not None else 0, header.path.name)

    ordered = [sorted(members, key=order) for _, members in sorted(groups.items())]
    return [[members[t] for members in ordered] for t in range(counts.pop())]


def geometry_from_headers(headers: Sequence[SliceHeader], where: str | Path | None = None) -> SeriesGeometry:
    """The grid of one volume's slices (any order): sorted by position along the normal, with the checks of the
    module docstring.

    Raises:
        MedTextSegError: no slice, slices of different size or orientation, a slice without position, two slices at
            one position, uneven spacing (a missing slice) or slices not stacked along their normal (gantry tilt);
            the message names ``where`` (default: the first file's folder).
    """
    if not headers:
        raise MedTextSegError(f"{where}: no DICOM slice")
    place = _where(headers, where)
    first = headers[0]
    for header in headers[1:]:
        if header.size != first.size:
            raise MedTextSegError(f"{place}: slices of different sizes ({first.path.name} {first.size[0]}x"
                                  f"{first.size[1]}, {header.path.name} {header.size[0]}x{header.size[1]})")
        if not np.allclose(header.direction, first.direction, atol=1e-3):
            raise MedTextSegError(f"{place}: slices of different orientations (ImageOrientationPatient of "
                                  f"{first.path.name} and {header.path.name} differ)")
    if len(headers) > 1 and not all(h.has_position for h in headers):
        missing = next(h for h in headers if not h.has_position)
        raise MedTextSegError(f"{place}: {missing.path.name} has no ImagePositionPatient; cannot order the slices")
    ordered = sorted(headers, key=lambda h: (h.position, h.path.name))
    direction = first.direction
    spacing_i, spacing_j, spacing_k = first.spacing
    if len(ordered) > 1:
        positions = np.array([h.position for h in ordered])
        steps = np.diff(positions)
        if steps.min() < 1e-3:
            index = int(np.argmin(steps))
            raise MedTextSegError(f"{place}: {ordered[index].path.name} and {ordered[index + 1].path.name} lie at "
                                  "the same position; the series holds several volumes (time points, echoes): "
                                  "give each volume's files on their own")
        spacing_k = float(steps.mean())
        if np.abs(steps - spacing_k).max() > SPACING_TOLERANCE * spacing_k:
            index = int(np.argmax(np.abs(steps - spacing_k)))
            raise MedTextSegError(f"{place}: uneven slice spacing ({steps.min():.4g} to {steps.max():.4g} mm, e.g. "
                                  f"between {ordered[index].path.name} and {ordered[index + 1].path.name}): a slice "
                                  "is missing or the series mixes stacks")
        offsets = np.array([h.origin - ordered[0].origin for h in ordered])
        sideways = offsets - (offsets @ direction[:, 2])[:, None] * direction[:, 2][None, :]
        if np.linalg.norm(sideways, axis=1).max() > TILT_TOLERANCE * min(spacing_i, spacing_j):
            angle = np.degrees(np.arctan2(np.linalg.norm(sideways[-1]), positions[-1] - positions[0]))
            raise MedTextSegError(f"{place}: slices are not stacked along their normal (gantry tilt of about "
                                  f"{angle:.2g} degrees); resample the series to an orthogonal grid first")
    lps = np.eye(4)
    lps[:3, :3] = direction * np.array([spacing_i, spacing_j, spacing_k])[None, :]
    lps[:3, 3] = ordered[0].origin
    affine = LPS_TO_RAS @ lps
    affine.setflags(write=False)  # geometries are cached and shared: never changed in place
    return SeriesGeometry(
        files=tuple(h.path for h in ordered),
        shape=(first.size[0], first.size[1], len(ordered)),
        affine=affine,
        origin=tuple(float(v) for v in ordered[0].origin),
        spacing=(float(spacing_i), float(spacing_j), float(spacing_k)),
        direction=tuple(float(v) for v in direction.ravel()),
        series_uid=first.series_uid,
        description=first.description,
    )


# -------------------------------------------------------------------- series in a folder
def list_series(folder: str | Path) -> dict[str, list[Path]]:
    """Every series of ``folder`` (not its subfolders): SeriesInstanceUID -> its files, as GDCM sorts them."""
    import SimpleITK as sitk

    folder = Path(folder)
    if not folder.is_dir():
        raise MedTextSegError(f"{folder}: folder not found")
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    return {uid: [Path(name) for name in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)]
            for uid in uids}


def _describe(uid: str, files: list[Path]) -> str:
    header = read_header(files[0])
    label = " ".join(part for part in (f"#{header.series_number}" if header.series_number else "",
                                       f"{header.description!r}" if header.description else "") if part)
    return f"{uid} ({len(files)} slices{', ' + label if label else ''})"


def series_files(folder: str | Path, series_uid: str | None = None) -> list[Path]:
    """The files of the one series of ``folder``, or of the series ``series_uid``.

    Raises:
        MedTextSegError: no DICOM file in the folder; several series and no ``series_uid`` (listing them); an unknown
            ``series_uid``.
    """
    folder = Path(folder)
    found = list_series(folder)
    if not found:
        raise MedTextSegError(f"{folder}: no DICOM files found (subfolders are not searched)")
    if series_uid is None:
        if len(found) > 1:
            listing = "; ".join(_describe(uid, files) for uid, files in found.items())
            raise MedTextSegError(f"{folder}: holds {len(found)} DICOM series; pick one as {folder}/SERIES_UID "
                                  f"(SeriesInstanceUID): {listing}")
        return next(iter(found.values()))
    if series_uid not in found:
        raise MedTextSegError(f"{folder}: no DICOM series {series_uid}; its series: {', '.join(found)}")
    return found[series_uid]


def _signature(folder: Path) -> tuple:
    """What changes when a file of the folder does: names, sizes and modification times."""
    with os.scandir(folder) as entries:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries if e.is_file()))


@functools.lru_cache(maxsize=32)
def _cached_geometry(folder: str, series_uid: str | None, signature: tuple) -> SeriesGeometry:
    files = series_files(folder, series_uid)
    return geometry_from_headers(read_headers(files), f"{folder}/{series_uid}" if series_uid else folder)


def _resolve(path: str | Path, series_uid: str | None) -> tuple[Path, str | None]:
    reference = series_reference(path)
    if reference is None:
        raise MedTextSegError(f"{path}: not a DICOM series folder (nor FOLDER/SERIES_UID of one)")
    folder, uid = reference
    return folder, series_uid or uid


def series_geometry(path: str | Path, series_uid: str | None = None) -> SeriesGeometry:
    """The grid of a series (headers only; cached until a file of the folder changes).

    Args:
        path: a folder holding one series, or ``FOLDER/SERIES_UID``.
        series_uid: picks a series of the folder (overrides one in ``path``).
    """
    folder, uid = _resolve(path, series_uid)
    return _cached_geometry(str(folder), uid, _signature(folder))


# -------------------------------------------------------------------- voxels
def _read_pixels(geometry: SeriesGeometry, where: str | Path) -> np.ndarray:
    """``[X, Y, Z]`` voxels of the geometry's files, read by SimpleITK in voxel-k order."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(path) for path in geometry.files])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        detail = next((line for line in str(error).splitlines() if line.strip()), "unreadable")
        raise MedTextSegError(f"{where}: cannot read the DICOM pixels ({detail.strip()[:120]})") from None
    array = sitk.GetArrayFromImage(image)  # (k, j, i)
    if array.ndim == 2:
        array = array[None]
    array = array.transpose(2, 1, 0)
    if array.shape != geometry.shape:
        raise MedTextSegError(f"{where}: the pixels have shape {array.shape}, the headers say {geometry.shape}")
    return array


def read_files(files: Sequence[str | Path], where: str | Path | None = None) -> DicomVolume:
    """One volume from explicit slice files (any order, any SeriesInstanceUID): sorted by position.

    For layouts whose slices do not share a series UID, or a folder of one volume among other files.

    Raises:
        MedTextSegError: see :func:`geometry_from_headers`; an unreadable file.
    """
    return volume_from_headers(read_headers(files), where)


def volume_from_headers(headers: Sequence[SliceHeader], where: str | Path | None = None) -> DicomVolume:
    """One volume from slice headers already read (any order): :func:`geometry_from_headers`, then the pixels."""
    place = where if where is not None else (headers[0].path.parent if headers else where)
    geometry = geometry_from_headers(headers, place)
    return DicomVolume(_read_pixels(geometry, place), geometry)


def read_series(path: str | Path, series_uid: str | None = None) -> DicomVolume:
    """The voxels ``[X, Y, Z]`` and grid of a series (a folder with one series, or ``FOLDER/SERIES_UID``)."""
    geometry = series_geometry(path, series_uid)
    return DicomVolume(_read_pixels(geometry, path), geometry)


def series_image(path: str | Path, series_uid: str | None = None):
    """The series as a SimpleITK image on exactly :func:`series_geometry`'s grid (for ITK-based readers)."""
    return as_sitk_image(read_series(path, series_uid))


def as_sitk_image(volume: DicomVolume):
    """A volume as a SimpleITK image on exactly its grid (LPS origin, spacing, direction)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))
    image.SetOrigin(volume.geometry.origin)
    image.SetSpacing(volume.geometry.spacing)
    image.SetDirection(volume.geometry.direction)
    return image


__all__ = ["DicomVolume", "SeriesGeometry", "SliceHeader", "as_sitk_image", "geometry_from_headers",
           "is_dicom_series", "list_series", "read_files", "read_header", "read_headers", "read_series",
           "series_files", "series_geometry", "series_image", "series_reference", "split_volumes",
           "volume_from_headers"]
