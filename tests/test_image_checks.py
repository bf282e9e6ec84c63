"""Incomplete NIfTI files and degenerate affines are refused from headers and file sizes, before any transform
sees them; complete files in every variant (plain, gzip, several gzip members, NIfTI-2, q-only) still read."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medtextseg.data.io import check_affine, load_nifti, read_array, read_geometry
from medtextseg.utils.errors import MedTextSegError

INCOMPLETE = "the file is incomplete (an interrupted copy or download?): copy it again from its source"


def write(path: Path, image_class=nib.Nifti1Image, shape=(6, 5, 4)) -> np.ndarray:
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    nib.save(image_class(data, np.diag([0.8, 0.9, 3.0, 1.0])), path)
    return data


@pytest.mark.parametrize("name, image_class", [("a.nii", nib.Nifti1Image), ("a.nii.gz", nib.Nifti1Image),
                                               ("a.nii.gz", nib.Nifti2Image), ("a.nii", nib.Nifti2Image)])
def test_complete_files_read(tmp_path, name, image_class):
    data = write(tmp_path / name, image_class)
    assert np.array_equal(read_array(tmp_path / name), data)
    assert read_geometry(tmp_path / name).shape == data.shape


def test_several_gzip_members_read(tmp_path):
    """The gzip trailer then gives the last member's size only: the whole stream is counted instead."""
    data = write(tmp_path / "a.nii.gz")
    raw = gzip.decompress((tmp_path / "a.nii.gz").read_bytes())
    (tmp_path / "a.nii.gz").write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    assert np.array_equal(read_array(tmp_path / "a.nii.gz"), data)


def test_uncompressed_voxels_cut_short(tmp_path):
    write(tmp_path / "a.nii")
    (tmp_path / "a.nii").write_bytes((tmp_path / "a.nii").read_bytes()[:-7])
    with pytest.raises(MedTextSegError) as error:
        load_nifti(tmp_path / "a.nii")
    assert str(error.value) == (f"{tmp_path / 'a.nii'}: the voxel data is cut short (233 of the 240 bytes that "
                                f"shape 6 x 5 x 4 of int16 needs); {INCOMPLETE}")


def test_gzip_stream_ending_inside_the_header(tmp_path):
    write(tmp_path / "a.nii.gz")
    (tmp_path / "a.nii.gz").write_bytes((tmp_path / "a.nii.gz").read_bytes()[:40])
    with pytest.raises(MedTextSegError, match=r"cut short: its gzip stream ends inside the NIfTI header; "):
        read_geometry(tmp_path / "a.nii.gz")


def test_nifti2_header_cut_short(tmp_path):
    write(tmp_path / "a.nii", nib.Nifti2Image)
    (tmp_path / "a.nii").write_bytes((tmp_path / "a.nii").read_bytes()[:400])
    with pytest.raises(MedTextSegError, match=r"the NIfTI header is cut short \(400 of 540 bytes\)"):
        read_geometry(tmp_path / "a.nii")


def test_uncompressed_data_named_gz(tmp_path):
    write(tmp_path / "a.nii")
    (tmp_path / "a.nii").rename(tmp_path / "b.nii.gz")
    with pytest.raises(MedTextSegError, match=r"b.nii.gz: an uncompressed NIfTI file named .gz; rename it .nii$"):
        read_geometry(tmp_path / "b.nii.gz")


def test_a_qform_only_affine_is_checked_and_named(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((4, 4, 4))
    header.set_data_dtype(np.int16)
    header.set_qform(np.eye(4), code=1)
    header["qoffset_y"] = np.nan
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), None, header=header), tmp_path / "q.nii.gz")
    with pytest.raises(MedTextSegError, match=r"q.nii.gz: its voxel-to-world affine \(qform\) holds NaN"):
        read_geometry(tmp_path / "q.nii.gz")


@pytest.mark.parametrize("matrix, fault", [
    (np.diag([1.0, 1.0, 0.0]), "gives voxel axis 2 zero length"),
    ([[1, 1, 0], [0, 0, 0], [0, 0, 1]], "is singular"),
    ([[1, 1, 0], [0, 1e-9, 0], [0, 0, 1]], "is singular"),  # two axes a billionth of a radian apart
    (np.diag([1.0, np.inf, 1.0]), "holds NaN or infinite values"),
    (np.diag([1.0, 1e30, 1.0]), "gives voxel axis 1 a size of 1e\\+30 mm, outside 1e-05 to 100000 mm"),
    (np.diag([1e-30, 1.0, 1.0]), "gives voxel axis 0 a size of 1e-30 mm, outside 1e-05 to 100000 mm"),
])
def test_degenerate_affines_are_refused(matrix, fault):
    affine = np.eye(4)
    affine[:3, :3] = matrix
    with pytest.raises(MedTextSegError, match=f"x.nii: its voxel-to-world affine \\(sform\\) {fault}"):
        check_affine("x.nii", affine, "sform")


def test_an_origin_beyond_100_km_is_refused():
    affine = np.eye(4)
    affine[0, 3] = 1e30
    with pytest.raises(MedTextSegError, match=r"puts the image 1e\+30 mm from the origin, beyond 1e\+08 mm"):
        check_affine("x.nii", affine, "sform")


def test_a_qform_that_cannot_be_built_is_named(tmp_path):
    """nibabel cannot build a quaternion longer than 1; MONAI's reader then fell back on another reader."""
    header = nib.Nifti1Header()
    header.set_data_shape((4, 4, 4))
    header.set_sform(np.eye(4), code=1)
    header["qform_code"], header["quatern_b"], header["quatern_c"] = 1, 0.9, 0.9
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), None, header=header), tmp_path / "q.nii.gz")
    assert np.array_equal(nib.load(tmp_path / "q.nii.gz").affine, np.eye(4))  # nibabel reads it by its sform
    with pytest.raises(MedTextSegError, match=r"q.nii.gz: its qform \(qform_code 1\) cannot be built \(w2 should "
                                              r"be positive.*\); fix it, or set qform_code to 0"):
        read_geometry(tmp_path / "q.nii.gz")


@pytest.mark.parametrize("matrix", [np.diag([0.01, 0.01, 50.0]), np.diag([-1.0, 1.0, 1.0]),
                                    [[0.7, -0.7, 0], [0.7, 0.7, 0], [0, 0.1, 3]], [[0, 0, 2], [1, 0, 0], [0, 1, 0]]])
def test_tiny_flipped_oblique_and_permuted_affines_pass(matrix):
    affine = np.eye(4)
    affine[:3, :3] = matrix
    check_affine("x.nii", affine, "sform")
