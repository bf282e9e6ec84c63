"""The LiTS converter on a tiny mimic of the public release: ``Training Batch 1``/``Training Batch 2`` folders of
uncompressed ``volume-{i}.nii`` + ``segmentation-{i}.nii`` (one segmentation stored as float, one with an affine
a float rounding away from its volume's), test volumes without segmentation; converted through the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from converter_cli import convert_made_source, printed
from medtextseg.converters.lits import convert_lits, read_lits_source
from medtextseg.data.layout import load_dataset

SHAPE = (16, 16, 6)


def lits_affine(number: int) -> np.ndarray:
    """Axial CT, x and y flipped, each volume at its own place and slice spacing."""
    return np.array([[-0.703125, 0, 0, 172.5 + number], [0, -0.703125, 0, 179.25], [0, 0, 1.0 + 0.5 * number, -368.0],
                     [0, 0, 0, 1]])


def volume(number: int) -> np.ndarray:
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 400 - 100 + number).astype(np.int16)


def segmentation(number: int) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[2:12, 3:13, 1:5] = 1  # liver
    if number != 1:
        label[5:8, 6:9, 2:4] = 2  # a tumour inside it
    return label


def save(array: np.ndarray, path: Path, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def make_release(root: Path) -> Path:
    src = root / "LiTS17"
    first, second = src / "Training Batch 1", src / "Training Batch 2"
    for number, folder in [(0, first), (1, first), (28, second)]:
        save(volume(number), folder / f"volume-{number}.nii", lits_affine(number))
    save(segmentation(0), first / "segmentation-0.nii", lits_affine(0))
    save(segmentation(1).astype(np.float32), first / "segmentation-1.nii", lits_affine(1))  # stored as float
    save(segmentation(28), second / "segmentation-28.nii", lits_affine(28) + 1e-5)  # within the tolerance
    save(volume(29), second / "volume-29.nii", lits_affine(29))  # no segmentation
    save(segmentation(30), second / "segmentation-30.nii", lits_affine(30))  # no volume
    save(volume(31), second / "volume-31.nii", lits_affine(31))
    save(segmentation(31) * np.float32(0.5), second / "segmentation-31.nii", lits_affine(31))  # not integers
    save(volume(40), src / "Test Data" / "test-volume-0.nii", lits_affine(40))
    (src / "__MACOSX" / "Training Batch 1").mkdir(parents=True)
    (src / "__MACOSX" / "Training Batch 1" / "volume-0.nii").write_bytes(b"\x00\x05\x16\x07")
    return src


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return convert_made_source(tmp_path_factory, "lits", make_release)


def test_volumes_keep_their_grid_and_labels(converted):
    _, dst, result = converted
    assert result.exit_code == 0, result.output
    assert f"3 cases in {dst} (3 converted, 0 already done); 4 skipped" in printed(result)
    layout = load_dataset(dst)
    assert sorted(layout.cases) == ["lits_000", "lits_001", "lits_028"]
    assert layout.channel_names == ["CT"] and layout.labels == {"background": 0, "liver": 1, "liver_tumour": 2}
    for number in (0, 1, 28):
        record = layout.cases[f"lits_{number:03d}"]
        image, label = (nib.load(str(p)) for p in (record.image_paths[0], record.label_path))
        assert image.shape == SHAPE and label.shape == SHAPE
        assert np.allclose(image.affine, lits_affine(number), atol=1e-6)  # the volume's, also for the label
        assert np.allclose(label.affine, lits_affine(number), atol=1e-6)
        assert np.array_equal(np.asarray(image.dataobj), volume(number))
        assert np.array_equal(np.asarray(label.dataobj), segmentation(number))
        assert np.asarray(label.dataobj).dtype == np.uint8


def test_liver_contains_its_tumours_and_a_missing_tumour_is_absent(converted):
    _, dst, _ = converted
    layout = load_dataset(dst)
    prompts = {p.class_name: p for p in layout.cases["lits_000"].prompts}
    assert (prompts["liver"].prompt, prompts["liver"].target, prompts["liver"].kind) == (
        "segment the liver", (1, 2), "anatomy")
    assert (prompts["liver_tumour"].prompt, prompts["liver_tumour"].target) == ("segment the liver tumour", (2,))
    no_tumour = {p.class_name: p for p in layout.cases["lits_001"].prompts}
    assert (no_tumour["liver_tumour"].target, no_tumour["liver_tumour"].kind) == ((), "absent")
    assert no_tumour["liver"].target == (1, 2)
    assert "hepatic tumour" in layout.vocabulary.synonyms["liver_tumour"]


def test_unpaired_and_broken_files_are_skipped_by_name(converted):
    _, dst, _ = converted
    skipped = json.loads((dst / "conversion_summary.json").read_text())["skipped"]
    assert skipped == {
        "lits_029": "no segmentation-29.nii for Training Batch 2/volume-29.nii",
        "lits_030": "Training Batch 2/segmentation-30.nii: no volume-30.nii beside it",
        "lits_031": "segmentation-31.nii: label map has non-integer values",
        "lits_test_000": "Test Data/test-volume-0.nii: a LiTS test volume, its segmentation was not published"}


def test_volumes_and_segmentations_in_separate_folders_are_paired(converted, tmp_path):
    src, _, _ = converted
    mirror = tmp_path / "mirror"
    (mirror / "volume_pt1").mkdir(parents=True)
    (mirror / "segmentations").mkdir()
    shutil.copy(src / "Training Batch 1" / "volume-0.nii", mirror / "volume_pt1")
    shutil.copy(src / "Training Batch 1" / "segmentation-0.nii", mirror / "segmentations")
    nib.save(nib.Nifti1Image(segmentation(0), lits_affine(0)), str(mirror / "segmentations" / "segmentation-0.nii.gz"))
    [case] = read_lits_source(mirror).cases
    assert (case.case, case.problem) == ("lits_000", "found more than once: segmentations/segmentation-0.nii, "
                                                     "segmentations/segmentation-0.nii.gz")
    (mirror / "segmentations" / "segmentation-0.nii.gz").unlink()
    summary = convert_lits(mirror, tmp_path / "out", spatial_dims=2)
    assert summary.converted == [f"lits_000_z{k:03d}" for k in range(1, 5)] and not summary.skipped
