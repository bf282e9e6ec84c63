"""DICOM series folders: voxels and RAS affine as for the same image saved as NIfTI, series picking, clear errors,
and ``medtextseg predict`` on a series folder writing NIfTI outputs on the series' grid.

``write_series`` (also used by the CHAOS and Duke converter tests) writes a series from pydicom's bundled
``CT_small.dcm``: one file per slice with its own ImagePositionPatient, InstanceNumber and SOPInstanceUID.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medtextseg.cli import app
from medtextseg.data.dicom_series import read_files, read_headers, read_series, series_geometry, split_volumes
from medtextseg.data.io import read_array, read_geometry, write_like
from medtextseg.utils.errors import MedTextSegError

ROW, COLUMN = (0.0, 0.96592583, -0.25881905), (0.0, 0.25881905, 0.96592583)  # an oblique sagittal plane


def series_affine(origin: Sequence[float], spacing: Sequence[float], row: Sequence[float] = (1.0, 0.0, 0.0),
                  column: Sequence[float] = (0.0, 1.0, 0.0)) -> np.ndarray:
    """The RAS affine the DICOM standard defines for a stack (LPS axes: row, column, their normal)."""
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(row) * spacing[0]
    lps[:3, 1] = np.asarray(column) * spacing[1]
    lps[:3, 2] = np.cross(row, column) * spacing[2]
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def write_series(folder: Path, volume: np.ndarray, *, origin: Sequence[float] = (-20.0, -30.0, 40.0),
                 spacing: Sequence[float] = (0.8, 0.7, 2.5), row: Sequence[float] = (1.0, 0.0, 0.0),
                 column: Sequence[float] = (0.0, 1.0, 0.0), series_uid: str | None = None, description: str = "",
                 series_number: int = 1, name: Callable[[int], str] = lambda k: f"slice_{k:03d}.dcm",
                 tags: Callable[[int, pydicom.Dataset], None] | None = None) -> list[Path]:
    """Write ``volume`` ``[X, Y, Z]`` (int16) as one file per slice k (``name(k)``); returns the files in k order.

    Slice k lies at ``origin + k * spacing[2] * normal`` (LPS mm); pixel (row j, column i) is ``volume[i, j, k]``.
    """
    template = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    normal = np.cross(row, column)
    paths = []
    for k in range(volume.shape[2]):
        slice_ = template.copy()
        slice_.Columns, slice_.Rows = volume.shape[0], volume.shape[1]
        slice_.PixelData = np.ascontiguousarray(volume[:, :, k].T.astype(np.int16)).tobytes()
        slice_.PixelSpacing = [spacing[1], spacing[0]]  # DICOM: between rows, then between columns
        slice_.SliceThickness = spacing[2]
        slice_.ImageOrientationPatient = [*map(float, row), *map(float, column)]
        slice_.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * spacing[2] * normal]
        slice_.RescaleIntercept, slice_.RescaleSlope = 0, 1
        slice_.InstanceNumber = k + 1
        slice_.SOPInstanceUID = generate_uid()
        slice_.SeriesInstanceUID = series_uid
        slice_.SeriesDescription = description
        slice_.SeriesNumber = series_number
        if tags is not None:
            tags(k, slice_)
        paths.append(folder / name(k))
        slice_.save_as(paths[-1])
    return paths


def ramp(shape: tuple[int, int, int] = (7, 6, 5)) -> np.ndarray:
    """Every voxel different, so that a flip or transposition cannot pass."""
    return np.arange(np.prod(shape), dtype=np.int16).reshape(shape)


# -------------------------------------------------------------------- reading
def test_series_matches_the_same_image_saved_as_nifti(tmp_path):
    volume = ramp()
    # file names run against the slice order: sorting must follow the positions
    write_series(tmp_path / "series", volume, row=ROW, column=COLUMN, name=lambda k: f"IMG{9 - k}.dcm")
    read = read_series(tmp_path / "series")
    np.testing.assert_array_equal(read.array, volume)
    expected = series_affine((-20.0, -30.0, 40.0), (0.8, 0.7, 2.5), ROW, COLUMN)
    np.testing.assert_allclose(read.affine, expected, atol=1e-6)
    # the same series converted by SimpleITK and saved as NIfTI gives the same grid through data/io.py
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    sitk.WriteImage(reader.Execute(), str(tmp_path / "series.nii.gz"))
    nifti = read_geometry(tmp_path / "series.nii.gz")
    assert read_geometry(tmp_path / "series").shape == nifti.shape == volume.shape
    np.testing.assert_allclose(read_geometry(tmp_path / "series").affine, nifti.affine, atol=1e-4)
    np.testing.assert_array_equal(read_array(tmp_path / "series"), read_array(tmp_path / "series.nii.gz"))


def test_explicit_files_of_several_series_uids_read_as_one_volume(tmp_path):
    volume = ramp((5, 4, 3))
    files = write_series(tmp_path / "mixed", volume, tags=lambda k, ds: setattr(ds, "SeriesInstanceUID",
                                                                             generate_uid()))
    read = read_files(files[::-1])
    np.testing.assert_array_equal(read.array, volume)
    assert read.geometry.files == tuple(files)


def test_several_series_are_listed_and_one_is_picked_by_uid(tmp_path):
    first = write_series(tmp_path / "study", ramp(), series_uid="1.2.3.4", description="ax dyn pre",
                         name=lambda k: f"a{k}.dcm")
    write_series(tmp_path / "study", ramp() + 100, series_uid="1.2.3.5", description="ax dyn 1st pass",
                 series_number=7, name=lambda k: f"b{k}.dcm")
    with pytest.raises(MedTextSegError, match=r"study: holds 2 DICOM series; pick one as .*/SERIES_UID") as error:
        read_geometry(tmp_path / "study")
    message = str(error.value)
    assert "1.2.3.4 (5 slices, #1 'ax dyn pre')" in message and "1.2.3.5 (5 slices, #7 'ax dyn 1st pass')" in message
    assert "\n" not in message
    np.testing.assert_array_equal(read_array(tmp_path / "study" / "1.2.3.5"), ramp() + 100)
    assert series_geometry(tmp_path / "study", "1.2.3.4").files == tuple(first)
    with pytest.raises(MedTextSegError, match=r"study: no DICOM series 1.2.3.9; its series: 1.2.3.4, 1.2.3.5"):
        read_geometry(tmp_path / "study" / "1.2.3.9")


def test_folder_without_dicom_is_a_one_line_error_naming_it(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    with pytest.raises(MedTextSegError, match=rf"^{tmp_path}/notes: no DICOM files found") as error:
        read_array(tmp_path / "notes")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("drop", "shift", "message"), [
    (2, 0.0, r"uneven slice spacing \(2.5 to 5 mm, e.g. between slice_001.dcm and slice_003.dcm\)"),
    (None, 1.0, r"not stacked along their normal \(gantry tilt of about"),
])
def test_missing_slice_or_tilt_is_refused(tmp_path, drop, shift, message):
    files = write_series(tmp_path / "bad", ramp(), tags=lambda k, ds: setattr(
        ds, "ImagePositionPatient", [-20.0 + shift * k, -30.0, 40.0 + 2.5 * k]))
    if drop is not None:
        files[drop].unlink()
    with pytest.raises(MedTextSegError, match=message):
        read_geometry(tmp_path / "bad")


def test_repeated_positions_are_split_into_volumes_in_time_order(tmp_path):
    def phase(k: int, ds: pydicom.Dataset) -> None:  # slices 0-2: second time point; 3-5: first
        ds.ImagePositionPatient = [-20.0, -30.0, 40.0 + 2.5 * (k % 3)]
        ds.TemporalPositionIdentifier = 2 - k // 3

    files = write_series(tmp_path / "dyn", ramp((4, 4, 6)), tags=phase)
    with pytest.raises(MedTextSegError, match=r"lie at the same position; the series holds several volumes"):
        read_geometry(tmp_path / "dyn")
    volumes = split_volumes(read_headers(files))
    assert [[h.path for h in volume] for volume in volumes] == [files[3:], files[:3]]


# -------------------------------------------------------------------- writing on the series' grid
def test_write_like_a_series_gives_nifti_and_itk_files_its_grid(tmp_path):
    write_series(tmp_path / "series", ramp(), row=ROW, column=COLUMN)
    mask = (ramp() % 3 == 0).astype(np.uint8)
    write_like(mask, tmp_path / "series", tmp_path / "mask.nii.gz")
    written = nib.load(str(tmp_path / "mask.nii.gz"))
    np.testing.assert_allclose(written.affine, read_geometry(tmp_path / "series").affine, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), mask)
    write_like(mask.astype(np.float32) / 2, tmp_path / "series", tmp_path / "probability.mha")
    geometry = read_geometry(tmp_path / "probability.mha")
    np.testing.assert_allclose(geometry.affine, read_geometry(tmp_path / "series").affine, atol=1e-5)


def test_predict_on_a_dicom_folder_writes_nifti_on_the_series_grid(tmp_path):
    from test_predictor_geometry import make_checkpoint

    rng = np.random.default_rng(0)
    volume = (rng.normal(100, 30, size=(16, 14, 6))).astype(np.int16)
    write_series(tmp_path / "CT", volume, row=ROW, column=COLUMN, name=lambda k: f"i{k:04d},0000b.dcm")
    checkpoint = make_checkpoint(tmp_path, ["model.in_channels=1"])
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", "-m", str(checkpoint), "-i", str(tmp_path / "CT"), "-p", "the liver",
                                      "-o", str(out), "--probabilities", "--uncertainty"])
    assert result.exit_code == 0, result.output
    (item,) = json.loads((out / "prompts.json").read_text())
    assert item["mask"] == "mask_00.nii.gz" and item["probability"] == "probability_00.nii.gz"
    expected = series_affine((-20.0, -30.0, 40.0), (0.8, 0.7, 2.5), ROW, COLUMN)
    for key in ("mask", "probability", "uncertainty"):
        written = nib.load(str(out / item[key]))
        assert written.shape == volume.shape
        np.testing.assert_allclose(written.affine, expected, atol=1e-5)
    assert (out / item["overlay"]).is_file()
