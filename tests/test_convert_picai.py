"""The PI-CAI converter on a tiny mimic of the public layout: .mha images (T2W on a fine grid, ADC and HBV on a
coarser one with the same extent), picai_labels lesion and gland maps, a marksheet; then read back and checked.

Every grid is oblique and flipped (direction = a 10 degree rotation about z times a flip of x, so voxel i grows
toward the patient's Right): a converter that drops the direction, or mixes ITK's LPS world with RAS, puts the
lesions on the wrong side or the images off the grid.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medtextseg.cli import app
from medtextseg.converters.picai import OPTIONS, Lesion, convert_picai, describe_lesions
from medtextseg.converters.registry import get_converter
from medtextseg.data.layout import load_dataset, verify_dataset
from medtextseg.utils.errors import MedTextSegError

runner = CliRunner()
T2W_SIZE, T2W_SPACING = (24, 24, 6), (0.5, 0.5, 3.0)
COARSE_SIZE, COARSE_SPACING = (12, 12, 6), (1.0, 1.0, 3.0)  # ADC and HBV: the same extent, twice the voxel size
_C, _S = np.cos(np.radians(10.0)), np.sin(np.radians(10.0))
DIRECTION = np.array([[_C, -_S, 0.0], [_S, _C, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([-1.0, 1.0, 1.0])
TWO, NEGATIVE, NO_HBV, FOLD = "10000_1000000", "10001_1000001", "10002_1000002", "10003_1000003"
CASES = (TWO, NEGATIVE, NO_HBV, FOLD)
LESION_DIR = "csPCa_lesion_delineations/human_expert/resampled"
GLAND_DIR = "anatomical_delineations/whole_gland/AI/Bosma22b"
MARKSHEET = ("patient_id,study_id,patient_age,psa,case_ISUP,case_csPCa,center\n"
             "10000,1000000,66,7.5,3,YES,RUMC\n10001,1000001,59,4.1,0,NO,ZGT\n10003,1000003,71,,2,YES,PCNN\n")
# TWO: lesion A at small i (patient Left): two blocks that touch only at a corner (one lesion with 26-connectivity),
# value 1, 22 voxels; lesion B at large i (patient Right), value 3 (ISUP-like), 8 voxels; voxel = 0.75 mm3.
LESION_A = [(slice(5, 8), slice(8, 11), slice(2, 4)), (slice(8, 10), slice(11, 13), slice(4, 5))]
LESION_B = (slice(16, 18), slice(8, 10), slice(2, 4))
GLAND = (slice(4, 20), slice(4, 20), slice(1, 5))
# FOLD: one lesion drawn on the coarse grid at i 9-10, j 5-6: the T2W voxels nearest to it are i 18-21, j 10-13.
FOLD_LESION_COARSE = (slice(9, 11), slice(5, 7), slice(2, 4))
FOLD_LESION_T2W = (slice(18, 22), slice(10, 14), slice(2, 4))


def number(case: str) -> int:
    """0 for patient 10000, 1 for 10001, ..."""
    return int(case.partition("_")[0]) - 10000


def origin(case: str) -> np.ndarray:
    """Each study at its own place, in ITK (LPS) millimetres."""
    return np.array([10.0 + 3.3 * number(case), -20.7, 5.25 + number(case)])


def coarse_origin(case: str) -> np.ndarray:
    """The coarse grid's first voxel centre: half a fine voxel inside, so that both grids have the same extent."""
    return origin(case) + DIRECTION @ (np.array(T2W_SPACING) * [0.5, 0.5, 0.0])


def ras_affine(case: str) -> np.ndarray:
    """The T2W's voxel -> RAS affine, built from the ITK geometry by hand (LPS -> RAS: negate x and y)."""
    affine = np.eye(4)
    affine[:3, :3] = DIRECTION * np.array(T2W_SPACING)[None, :]
    affine[:3, 3] = origin(case)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def t2w_array(case: str) -> np.ndarray:
    return np.arange(np.prod(T2W_SIZE), dtype=np.float32).reshape(T2W_SIZE) + 10000 * number(case)


def offset(case: str) -> float:
    return 1000.0 * number(case)


def write_image(array: np.ndarray, path: Path, spacing: tuple[float, ...], where: np.ndarray) -> None:
    """Write ``array`` ``[X, Y, Z]`` with SimpleITK (``.mha`` or ``.nii.gz``) on an oblique, flipped grid."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetOrigin(tuple(float(v) for v in where))
    image.SetDirection(tuple(float(v) for v in DIRECTION.ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def write_study(folder: Path, case: str, sequences: tuple[str, ...] = ("t2w", "adc", "hbv")) -> None:
    i, j, _ = np.indices(COARSE_SIZE)
    arrays = {"t2w": (t2w_array(case), T2W_SPACING, origin(case)),
              "adc": (np.where(i < 6, 100.0, 300.0).astype(np.float32) + offset(case), COARSE_SPACING,
                      coarse_origin(case)),
              "hbv": ((10.0 * j).astype(np.float32) + offset(case), COARSE_SPACING, coarse_origin(case))}
    for sequence in sequences:
        array, spacing, where = arrays[sequence]
        write_image(array, folder / f"{case}_{sequence}.mha", spacing, where)


def expected_label(case: str) -> np.ndarray:
    label = np.zeros(T2W_SIZE, np.uint8)
    if case == TWO:
        label[GLAND] = 1
        for block in LESION_A:
            label[block] = 2
        label[LESION_B] = 3
    elif case == FOLD:
        label[FOLD_LESION_T2W] = 2
    return label


def make_source(root: Path) -> tuple[Path, Path]:
    """A PI-CAI folder (``images/``) and a picai_labels folder beside it; returns (src, labels)."""
    src, labels = root / "picai", root / "picai_labels"
    images = src / "images"
    write_study(images / "10000", TWO)
    write_image(t2w_array(TWO), images / "10000" / f"{TWO}_cor.mha", T2W_SPACING, origin(TWO))  # ignored
    write_study(images / "10001", NEGATIVE)
    write_study(images / "10002", NO_HBV, ("t2w", "adc"))
    write_study(images / "picai_public_images_fold1" / "10003", FOLD)  # an archive's fold folder
    lesions = np.zeros(T2W_SIZE, np.int16)
    for block in LESION_A:
        lesions[block] = 1
    lesions[LESION_B] = 3
    write_image(lesions, labels / LESION_DIR / f"{TWO}.nii.gz", T2W_SPACING, origin(TWO))
    gland = np.zeros(T2W_SIZE, np.uint8)
    gland[GLAND] = 1
    write_image(gland, labels / GLAND_DIR / f"{TWO}.nii.gz", T2W_SPACING, origin(TWO))
    write_image(np.ones(T2W_SIZE, np.int16), labels / LESION_DIR / f"{NO_HBV}.nii.gz", T2W_SPACING, origin(NO_HBV))
    coarse = np.zeros(COARSE_SIZE, np.int16)
    coarse[FOLD_LESION_COARSE] = 1
    write_image(coarse, labels / LESION_DIR / f"{FOLD}.nii.gz", COARSE_SPACING, coarse_origin(FOLD))
    (labels / "clinical_information").mkdir(parents=True)
    (labels / "clinical_information" / "marksheet.csv").write_text(MARKSHEET)
    return src, labels


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, Path, Path, object]:
    root = tmp_path_factory.mktemp("picai")
    src, labels = make_source(root)
    dst = root / "out"
    return src, labels, dst, convert_picai(src, dst, labels=str(labels), large_ml="0.01")


def prompts_by_kind(layout, case: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for prompt in layout.cases[case].prompts:
        found.setdefault(prompt.kind, []).append(prompt)
    return found


# ------------------------------------------------------------------------ images, grid and labels
def test_studies_are_written_on_the_t2w_grid_with_resampled_adc_and_hbv(converted):
    _, _, dst, summary = converted
    assert summary.converted == [TWO, NEGATIVE, FOLD] and list(summary.skipped) == [NO_HBV]
    layout = load_dataset(dst)
    verify_dataset(layout)
    assert layout.channel_names == ["T2W", "ADC", "HBV"]
    assert layout.labels["prostate"] == 1 and layout.labels["lesion_1"] == 2 and layout.labels["lesion_10"] == 11
    interior = np.arange(1, 23)  # HBV's ramp is exact away from the clamped border
    for case in (TWO, NEGATIVE, FOLD):
        record = layout.cases[case]
        for path in [*record.image_paths, record.label_path]:
            written = nib.load(str(path))
            assert written.shape == T2W_SIZE
            assert np.allclose(written.affine, ras_affine(case), atol=1e-5), path.name
        t2w, adc, hbv = (np.asarray(nib.load(str(p)).dataobj) for p in record.image_paths)
        assert np.array_equal(t2w, t2w_array(case))
        # T2W voxel i lies at ADC index i / 2 - 1/4: 100 up to i = 9, 300 from i = 14, linear in between
        assert np.allclose(adc[:10], 100 + offset(case)) and np.allclose(adc[14:], 300 + offset(case))
        assert np.allclose(adc[11], 150 + offset(case)) and np.allclose(adc[12], 250 + offset(case))
        assert np.allclose(hbv[:, interior], (5.0 * interior - 2.5)[None, :, None] + offset(case), atol=1e-4)
        assert np.array_equal(np.asarray(nib.load(str(record.label_path)).dataobj), expected_label(case)), case
    assert not any(path.name.startswith(NO_HBV) for path in (dst / "imagesTr").iterdir())
    assert sorted(c for split in layout.splits.values() for c in split) == [TWO, NEGATIVE, FOLD]
    meta = json.loads((dst / "dataset.json").read_text())["medtextseg"]
    assert meta["converter"] == "picai" and meta["lesion_set"] == "human_expert"


def test_lesions_are_components_named_by_side_and_prompted(converted):
    _, _, dst, _ = converted
    # the test's own premise: lesion A (small i) lies at the patient's left (smaller RAS x) of lesion B
    affine = ras_affine(TWO)
    centre_a = np.argwhere(expected_label(TWO) == 2).mean(0)
    centre_b = np.argwhere(expected_label(TWO) == 3).mean(0)
    assert (affine[:3, :3] @ centre_a)[0] < (affine[:3, :3] @ centre_b)[0]
    layout = load_dataset(dst)
    two = prompts_by_kind(layout, TWO)
    assert [(p.prompt, p.target) for p in two["single"]] == [
        ("segment the lesion in the left prostate", (2,)), ("segment the lesion in the right prostate", (3,))]
    left, right = (p.meta for p in two["single"])
    assert (left["side"], left["size"], left["label"], left["source_value"]) == ("left", "large", 2, 1)
    assert (right["side"], right["size"], right["label"], right["source_value"]) == ("right", "small", 3, 3)
    assert left["volume_ml"] == pytest.approx(22 * 0.75 / 1000) and right["volume_ml"] == pytest.approx(0.006)
    assert left["n_lesions"] == 2 and left["side_reference"] == "gland" and left["mentioned"] == ["side"]
    assert left["clinical"] == {"patient_age": 66, "psa": 7.5, "case_ISUP": 3, "case_csPCa": "YES", "center": "RUMC"}
    assert [(p.prompt, p.target) for p in two["all"]] == [("segment all clinically significant lesions", (2, 3))]
    assert "absent" not in two  # a lesion on each side
    anatomy = two["anatomy"][0]
    assert (anatomy.prompt, anatomy.target, anatomy.class_name) == ("segment the prostate gland", (1, 2, 3), "prostate")

    negative = prompts_by_kind(layout, NEGATIVE)
    assert set(negative) == {"all", "absent"} and negative["all"][0].target == ()
    assert [(p.prompt, p.target, p.meta["side"]) for p in negative["absent"]] == [
        ("segment the lesion in the left prostate", (), "left"),
        ("segment the lesion in the right prostate", (), "right")]
    assert negative["all"][0].meta["n_lesions"] == 0 and negative["all"][0].meta["clinical"]["case_csPCa"] == "NO"

    fold = prompts_by_kind(layout, FOLD)  # no gland: the side is taken from the image centre
    single = fold["single"][0]
    assert (single.prompt, single.target, single.meta["side_reference"]) == (
        "segment the lesion in the right prostate", (2,), "image_centre")
    assert single.meta["size"] == "large" and single.meta["clinical"]["psa"] is None
    assert [(p.prompt, p.target) for p in fold["absent"]] == [("segment the lesion in the left prostate", ())]
    assert "anatomy" not in fold
    assert layout.vocabulary is not None and "prostate" in layout.vocabulary


def test_describe_lesions_adds_size_then_rank_when_the_side_is_shared():
    lesions = [Lesion(2, 900, 0.9, "left", "large", 1), Lesion(3, 300, 0.3, "left", "small", 1),
               Lesion(4, 200, 0.2, "right", "small", 1), Lesion(5, 100, 0.1, "right", "small", 1),
               Lesion(6, 50, 0.05, "left", "small", 1)]
    describe_lesions(lesions)
    assert [lesion.text for lesion in lesions] == [
        "segment the large lesion in the left prostate", "segment the second largest lesion in the left prostate",
        "segment the largest lesion in the right prostate", "segment the second largest lesion in the right prostate",
        "segment the third largest lesion in the left prostate"]
    assert lesions[0].mentioned == ("side", "size") and lesions[2].mentioned == ("side", "rank")


# ------------------------------------------------------------------------ resuming and bad studies
def test_missing_sequence_is_skipped_by_name_and_other_options_are_refused(converted):
    src, labels, dst, summary = converted
    assert "missing sequence hbv: no 10002_1000002_hbv.mha" in summary.skipped[NO_HBV]
    saved = json.loads((dst / "conversion_summary.json").read_text())
    assert "10002_1000002_hbv.mha" in saved["skipped"][NO_HBV]
    with pytest.raises(MedTextSegError, match=r"other picai options \(large_ml differ\)"):
        convert_picai(src, dst, labels=str(labels))


def test_bad_studies_are_skipped_with_the_file_named(tmp_path):
    src, labels = make_source(tmp_path)
    images = src / "images"
    write_study(images / "10004", "10004_1000004")
    (images / "10004" / "10004_1000004_t2w.mha").write_bytes(b"not an image at all" * 10)  # corrupt
    write_study(images / "10005", "10005_1000005", ("t2w", "hbv"))
    write_image(np.ones(COARSE_SIZE, np.float32), images / "10005" / "10005_1000005_adc.mha", COARSE_SPACING,
                origin(TWO) + 500.0)  # far away: nothing to resample
    write_study(images / "10006", "10006_1000006")  # positive in the marksheet, but no delineation
    with (labels / "clinical_information" / "marksheet.csv").open("a") as handle:
        handle.write("10006,1000006,70,9.9,2,YES,RUMC\n")
    summary = convert_picai(src, tmp_path / "out", labels=str(labels))
    assert summary.converted == [TWO, NEGATIVE, FOLD]
    skipped = summary.skipped
    assert skipped["10004_1000004"].startswith("10004_1000004_t2w.mha: cannot read (Unable to determine ImageIO")
    assert "10005_1000005_adc.mha: does not overlap the T2W grid" in skipped["10005_1000005"]
    assert (f"no lesion delineation {LESION_DIR}/10006_1000006.nii.gz, although marksheet.csv says case_csPCa=YES"
            in skipped["10006_1000006"])
    verify_dataset(load_dataset(tmp_path / "out"))


def test_options_are_checked_and_the_labels_folder_is_found(tmp_path):
    src, labels = make_source(tmp_path)
    with pytest.raises(MedTextSegError, match=r"--option lesion_sets: unknown option \(did you mean 'lesion_set'\?\); "
                                              r"the picai converter takes " + ", ".join(OPTIONS)):
        convert_picai(src, tmp_path / "out", labels=str(labels), lesion_sets="AI")
    for options, message in [({"lesion_set": "expert"}, "option lesion_set must be one of human_expert, AI, got 'ex"),
                             ({"large_ml": "big"}, "picai converter: option large_ml must be a number"),
                             ({"max_lesions": "0"}, "picai converter: option max_lesions must be an integer >= 1"),
                             ({"include_negative": "maybe"}, "option include_negative must be true or"),
                             ({"lesion_set": "AI"}, "AI/Bosma22a: folder not found")]:
        with pytest.raises(MedTextSegError, match=message):
            convert_picai(src, tmp_path / "out", labels=str(labels), **options)
    with pytest.raises(MedTextSegError, match=r"no picai_labels folder found .* pass --option labels=PATH"):
        convert_picai(src, tmp_path / "out")
    with pytest.raises(MedTextSegError, match=r"--spatial-dims 2 is not supported yet"):
        convert_picai(src, tmp_path / "out", spatial_dims=2, labels=str(labels))
    shutil.move(str(labels), str(src / "picai_labels"))  # the default place
    summary = convert_picai(src, tmp_path / "out", max_lesions="1", gland="false", include_negative="false")
    assert summary.converted == [FOLD]
    assert "2 lesions (connected components), more than max_lesions=1" in summary.skipped[TWO]
    assert summary.skipped[NEGATIVE] == (f"no lesion delineation {LESION_DIR}/{NEGATIVE}.nii.gz "
                                         "(include_negative=false)")
    layout = load_dataset(tmp_path / "out")
    assert layout.labels == {"background": 0, "lesion_1": 2}


def test_registered_and_run_from_the_command_line(tmp_path):
    assert get_converter("picai") is convert_picai
    src, labels = make_source(tmp_path)
    dst = tmp_path / "cli"
    result = runner.invoke(app, ["convert", "picai", "--src", str(src), "--dst", str(dst), "--option",
                                 f"labels={labels}"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"3 cases in {dst} (3 converted, 0 already done); 1 skipped: {NO_HBV}: missing sequence hbv" in text
    verify_dataset(load_dataset(dst))
    result = runner.invoke(app, ["convert", "picai", "--src", str(src), "--dst", str(dst), "--option", "colour=red"])
    assert result.exit_code == 2 and "error: --option colour: unknown option" in result.output
