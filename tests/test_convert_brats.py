"""The BraTS converter on a tiny mimic of both public layouts side by side: BraTS 2021
(``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``, labels 1, 2, 4) and BraTS 2023
(``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``, labels 1, 2, 3), with validation cases
(no seg), a missing sequence, a label value of another edition and an unsupported cohort; converted through the
command line and read back."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from converter_cli import convert_made_source, printed
from medtextseg.converters.brats import convert_brats
from medtextseg.data.layout import load_dataset

SHAPE = (16, 16, 6)  # 240 x 240 x 155 in the release
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 15.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])  # BraTS's LPS-like grid
TRAIN21 = "RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021"
TRAIN23 = "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
VALID23 = "ASNR-MICCAI-BraTS2023-GLI-Challenge-ValidationData"
# a distinct offset per sequence, so that the channel order can be checked: T1, T1CE, T2, FLAIR
OFFSET = {"T1": 1000.0, "T1CE": 2000.0, "T2": 3000.0, "FLAIR": 4000.0}
NAMES_2021 = {"T1": "t1", "T1CE": "t1ce", "T2": "t2", "FLAIR": "flair"}
NAMES_2023 = {"T1": "t1n", "T1CE": "t1c", "T2": "t2w", "FLAIR": "t2f"}


def sequence(channel: str, case: int) -> np.ndarray:
    return np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) + OFFSET[channel] + 10.0 * case


def tumour(oedema: int, core: int, enhancing: int | None) -> np.ndarray:
    """Nested regions: oedema around a core (necrosis / NETC) holding the enhancing part (when given)."""
    seg = np.zeros(SHAPE, np.uint8)
    seg[2:14, 2:14, 1:5] = oedema
    seg[5:11, 5:11, 2:4] = core
    if enhancing is not None:
        seg[6:9, 6:9, 2:4] = enhancing
    return seg


def save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))


def write_case(folder: Path, case: str, case_number: int, names: dict[str, str], separator: str,
               seg: np.ndarray | None, skip: tuple[str, ...] = ()) -> None:
    for channel, name in names.items():
        if name not in skip:
            save(sequence(channel, case_number), folder / case / f"{case}{separator}{name}.nii.gz")
    if seg is not None:
        save(seg, folder / case / f"{case}{separator}seg.nii.gz")


def make_source(root: Path) -> Path:
    src = root / "brats"
    write_case(src / TRAIN21, "BraTS2021_00000", 0, NAMES_2021, "_", tumour(2, 1, 4))
    write_case(src / TRAIN21, "BraTS2021_00002", 2, NAMES_2021, "_", tumour(2, 1, None))  # no enhancing tumour
    write_case(src / TRAIN21, "BraTS2021_00003", 3, NAMES_2021, "_", tumour(2, 1, 4), skip=("flair",))
    write_case(src / TRAIN23, "BraTS-GLI-00000-000", 5, NAMES_2023, "-", tumour(2, 1, 3))
    write_case(src / TRAIN23, "BraTS-GLI-00001-000", 6, NAMES_2023, "-", tumour(2, 4, 3))  # 4: not a 2023 label
    write_case(src / VALID23, "BraTS-GLI-00150-000", 7, NAMES_2023, "-", None)
    write_case(src / "BraTS-PEDs2023_Training", "BraTS-PED-00001-000", 8, NAMES_2023, "-", tumour(2, 1, 3))
    (src / TRAIN21 / "BraTS2021_00000" / "notes.txt").write_text("not an image")
    return src


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return convert_made_source(tmp_path_factory, "brats", make_source)


def test_both_editions_become_four_channels_in_one_order_and_one_labelling(converted):
    _, dst, result = converted
    assert result.exit_code == 0, result.output
    assert f"3 cases in {dst} (3 converted, 0 already done); 4 skipped" in printed(result)
    layout = load_dataset(dst)
    assert sorted(layout.cases) == ["BraTS-GLI-00000-000", "BraTS2021_00000", "BraTS2021_00002"]
    assert layout.channel_names == ["T1", "T1CE", "T2", "FLAIR"]
    assert layout.labels == {"background": 0, "non_enhancing_tumour": 1, "oedema": 2, "enhancing_tumour": 3}
    assert json.loads((dst / "dataset.json").read_text())["name"] == "BraTS"
    for case, number, seg in [("BraTS2021_00000", 0, tumour(2, 1, 3)), ("BraTS2021_00002", 2, tumour(2, 1, None)),
                              ("BraTS-GLI-00000-000", 5, tumour(2, 1, 3))]:
        record = layout.cases[case]
        for path, channel in zip(record.image_paths, ["T1", "T1CE", "T2", "FLAIR"], strict=True):
            written = nib.load(str(path))
            assert written.shape == SHAPE and np.allclose(written.affine, AFFINE, atol=1e-6)
            assert np.array_equal(np.asarray(written.dataobj), sequence(channel, number)), (case, channel)
        label = nib.load(str(record.label_path))
        assert label.shape == SHAPE and np.allclose(label.affine, AFFINE, atol=1e-6)
        assert np.array_equal(np.asarray(label.dataobj), seg), case  # 2021's enhancing 4 is now 3


def test_nested_regions_and_sub_regions_are_separate_targets(converted):
    _, dst, _ = converted
    layout = load_dataset(dst)
    full = {p.class_name: p for p in layout.cases["BraTS2021_00000"].prompts}
    assert [(name, p.prompt, p.target, p.kind) for name, p in full.items()] == [
        ("whole_tumour", "segment the whole tumour", (1, 2, 3), "anatomy"),
        ("tumour_core", "segment the tumour core", (1, 3), "anatomy"),
        ("enhancing_tumour", "segment the enhancing tumour", (3,), "anatomy"),
        ("non_enhancing_tumour", "segment the non-enhancing tumour core", (1,), "anatomy"),
        ("oedema", "segment the peritumoural oedema", (2,), "anatomy")]
    no_enhancing = {p.class_name: p for p in layout.cases["BraTS2021_00002"].prompts}
    assert (no_enhancing["enhancing_tumour"].target, no_enhancing["enhancing_tumour"].kind) == ((), "absent")
    assert no_enhancing["tumour_core"].target == (1, 3) and no_enhancing["tumour_core"].kind == "anatomy"
    assert {p.class_name: p.target for p in layout.cases["BraTS-GLI-00000-000"].prompts}["whole_tumour"] == (1, 2, 3)
    assert "necrotic tumour core" in layout.vocabulary.synonyms["non_enhancing_tumour"]


def test_cases_without_labels_or_files_are_skipped_with_the_reason(converted):
    _, dst, _ = converted
    skipped = json.loads((dst / "conversion_summary.json").read_text())["skipped"]
    assert skipped["BraTS-GLI-00150-000"] == ("no segmentation BraTS-GLI-00150-000-seg.nii.gz (validation or test "
                                              "data: its labels are not published)")
    assert skipped["BraTS2021_00003"] == "missing sequence BraTS2021_00003_flair.nii.gz"
    assert skipped["BraTS-GLI-00001-000"] == ("BraTS-GLI-00001-000-seg.nii.gz: label value 4 is not declared (this "
                                              "layout's label values: 0, 1, 2, 3)")
    assert skipped["BraTS-PED-00001-000"].startswith("BraTS 2023 cohort PED is not supported")


def test_one_edition_names_the_dataset_and_classes_can_be_renamed(converted, tmp_path):
    src, _, _ = converted
    dst = tmp_path / "out"
    summary = convert_brats(src / TRAIN21, dst, rename="non_enhancing_tumour:necrosis")
    assert summary.converted == ["BraTS2021_00000", "BraTS2021_00002"] and list(summary.skipped) == ["BraTS2021_00003"]
    layout = load_dataset(dst)
    assert json.loads((dst / "dataset.json").read_text())["name"] == "BraTS2021"
    assert layout.labels["necrosis"] == 1
    prompt = {p.class_name: p for p in layout.cases["BraTS2021_00000"].prompts}["necrosis"]
    assert (prompt.prompt, prompt.target) == ("segment the non-enhancing tumour core", (1,))
