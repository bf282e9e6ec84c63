"""The KiTS19 converter on a tiny mimic of the public repository: ``data/case_XXXXX/imaging.nii.gz`` and
``segmentation.nii.gz`` stored slices first (``[slice, row, column]``) with KiTS19's permuted, flipped affine
(the first voxel axis along inferior-superior), test cases without segmentation; converted in 3D through the command
line (geometry kept exactly) and in 2D (slices taken along the first axis, each with its own affine)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from converter_cli import convert_made_source, printed
from medtextseg.converters.kits19 import convert_kits19, read_kits19_source
from medtextseg.data.layout import load_dataset, verify_dataset

SHAPE = (6, 16, 16)  # [slice, row, column], as (num_slices, 512, 512) in the release


def kits_affine(thickness: float, pixel: float) -> np.ndarray:
    """KiTS19's affine: voxel axis 0 (slices) along -S, axis 1 (rows) along -A, axis 2 (columns) along -R."""
    return np.array([[0.0, 0.0, -pixel, 0.0], [0.0, -pixel, 0.0, 0.0], [-thickness, 0.0, 0.0, 0.0], [0, 0, 0, 1]])


AFFINES = {"case_00000": kits_affine(3.0, 0.78125), "case_00001": kits_affine(5.0, 0.919921875)}


def ct(case: int) -> np.ndarray:
    return (np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) - 1024.0 + 7.0 * case)


def segmentation(case: int) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[1:5, 3:8, 9:14] = 1  # a kidney over slices 1-4
    if case == 0:
        label[2:4, 4:6, 10:12] = 2  # its tumour, inside it
    return label


def save(array: np.ndarray, path: Path, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def make_repository(root: Path) -> Path:
    src = root / "kits19"
    data = src / "data"
    for case in (0, 1):
        name = f"case_{case:05d}"
        save(ct(case), data / name / "imaging.nii.gz", AFFINES[name])
        save(segmentation(case), data / name / "segmentation.nii.gz", AFFINES[name])
    save(ct(2), data / "case_00002" / "imaging.nii.gz", AFFINES["case_00000"])
    save(segmentation(2)[:5], data / "case_00002" / "segmentation.nii.gz", AFFINES["case_00000"])  # a slice short
    save(segmentation(3), data / "case_00003" / "segmentation.nii.gz", AFFINES["case_00000"])  # imaging not fetched
    save(ct(210), data / "case_00210" / "imaging.nii.gz", AFFINES["case_00000"])  # a test case
    (data / "kits.json").write_text("[]")
    (src / "starter_code").mkdir()
    return src


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return convert_made_source(tmp_path_factory, "kits19", make_repository)


def test_volumes_keep_their_slices_first_grid_exactly(converted):
    _, dst, result = converted
    assert result.exit_code == 0, result.output
    assert f"2 cases in {dst} (2 converted, 0 already done); 3 skipped" in printed(result)
    layout = load_dataset(dst)
    assert layout.channel_names == ["CT"]
    assert layout.labels == {"background": 0, "kidney": 1, "kidney_tumour": 2}
    for case in (0, 1):
        name = f"case_{case:05d}"
        image, label = (nib.load(str(p)) for p in (layout.cases[name].image_paths[0], layout.cases[name].label_path))
        for written in (image, label):
            assert written.shape == SHAPE
            assert np.allclose(written.affine, AFFINES[name], atol=1e-6)
            assert nib.aff2axcodes(written.affine) == ("I", "P", "L")  # nothing reoriented
        assert np.array_equal(np.asarray(image.dataobj), ct(case))
        assert np.array_equal(np.asarray(label.dataobj), segmentation(case))


def test_kidney_contains_its_tumour_and_a_missing_tumour_is_absent(converted):
    _, dst, _ = converted
    layout = load_dataset(dst)
    with_tumour = {p.class_name: p for p in layout.cases["case_00000"].prompts}
    assert (with_tumour["kidney"].prompt, with_tumour["kidney"].target, with_tumour["kidney"].kind) == (
        "segment the kidney", (1, 2), "anatomy")
    assert (with_tumour["kidney_tumour"].prompt, with_tumour["kidney_tumour"].target) == (
        "segment the kidney tumour", (2,))
    without = {p.class_name: p for p in layout.cases["case_00001"].prompts}
    assert without["kidney"].target == (1, 2) and without["kidney_tumour"].kind == "absent"
    assert without["kidney_tumour"].target == ()
    assert layout.vocabulary.synonyms["kidney_tumour"][0] == "kidney tumour"


def test_test_cases_and_broken_cases_are_skipped_with_the_reason(converted):
    _, dst, _ = converted
    skipped = json.loads((dst / "conversion_summary.json").read_text())["skipped"]
    assert skipped["case_00210"] == ("no segmentation.nii.gz in case_00210 (a KiTS19 test case: its segmentation "
                                     "was not published)")
    assert skipped["case_00003"] == ("no imaging.nii.gz in case_00003 (download the imaging with "
                                     "starter_code/get_imaging.py)")
    assert skipped["case_00002"] == "segmentation.nii.gz: shape (5, 16, 16) differs from the image's (6, 16, 16)"


def test_two_dimensional_slices_are_axial_slices_along_the_first_axis(converted, tmp_path):
    src, _, _ = converted
    dst = tmp_path / "out2d"
    summary = convert_kits19(src, dst, spatial_dims=2)
    assert summary.converted == [f"case_{c:05d}_z{k:03d}" for c in (0, 1) for k in range(1, 5)]
    layout = load_dataset(dst)
    verify_dataset(layout)
    affine = AFFINES["case_00000"]
    for k in (1, 3):
        record = layout.cases[f"case_00000_z{k:03d}"]
        image, label = (nib.load(str(p)) for p in (record.image_paths[0], record.label_path))
        assert image.shape == (16, 16, 1) and label.shape == (16, 16, 1)
        assert np.array_equal(np.asarray(image.dataobj)[:, :, 0], ct(0)[k])
        assert np.array_equal(np.asarray(label.dataobj)[:, :, 0], segmentation(0)[k])
        for row, column in [(0, 0), (3, 11), (15, 2)]:  # the same place in the world as in the source volume
            assert np.allclose(image.affine @ [row, column, 0, 1], affine @ [k, row, column, 1], atol=1e-5)
        assert np.allclose(image.affine, label.affine, atol=1e-6)
    prompts = {p.class_name: p for p in layout.cases["case_00000_z001"].prompts}
    assert prompts["kidney"].kind == "anatomy" and prompts["kidney_tumour"].kind == "absent"  # tumour: slices 2-3
    assert prompts["kidney"].meta == {"source_case": "case_00000", "slice": 1}
    assert {p.class_name: p.kind for p in layout.cases["case_00000_z002"].prompts}["kidney_tumour"] == "anatomy"


def test_src_may_be_the_repository_or_its_data_folder(converted):
    src, _, _ = converted
    assert read_kits19_source(src / "data").cases == read_kits19_source(src).cases
