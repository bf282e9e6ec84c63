"""The CHAOS converter on a tiny mimic of ``CHAOS_Train_Sets``: DICOM slices (``i0000,0000b.dcm`` numbered head to
feet for CT, ``IMG-0002-00001.dcm`` for MR) with their PNG masks (CT liver 255; MR grey levels by range), converted
through the command line and read back: the grid is the series', each mask lands on its own file's slice."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from converter_cli import cli_convert, printed
from medtextseg.converters.chaos import convert_chaos
from medtextseg.data.layout import hash_split, load_dataset, verify_dataset
from medtextseg.utils.errors import MedTextSegError
from test_dicom_series import series_affine, write_series

SHAPE = (16, 14, 6)  # [X = columns, Y = rows, Z] (512 x 512 x ~90 CT, 256 x 256 x ~30 MR in the release)
CT_ORIGIN, MR_ORIGIN = (-180.0, -200.0, -300.0), (-150.0, -120.0, 20.0)  # LPS mm of the lowest slice
CT_SPACING, MR_SPACING = (0.7, 0.7, 3.0), (1.5, 1.5, 6.0)
GREY = {1: 63, 2: 126, 3: 189, 4: 252}  # liver, right kidney, left kidney, spleen


def image(seed: int) -> np.ndarray:
    return ((np.arange(np.prod(SHAPE)) * 7 + seed * 13) % 997).astype(np.int16).reshape(SHAPE)


def organs(n: int, spleen: bool = True) -> np.ndarray:
    """The label ``[X, Y]`` of the mask with name index ``n``: boxes that differ per slice and along x and y."""
    label = np.zeros(SHAPE[:2], dtype=np.int64)
    label[2:5 + n, 1:4] = 1
    label[9:12, 2:2 + n] = 2
    label[12:15, 8:10] = 3
    if spleen and n % 2:
        label[6:8, 9:13] = 4
    return label


def write_png(label: np.ndarray, path: Path, levels: dict[int, int]) -> None:
    """``label`` ``[X, Y]`` as a grey PNG ``[rows, columns]`` with ``levels[value]`` grey levels."""
    grey = np.zeros(label.T.shape, dtype=np.uint8)
    for value, level in levels.items():
        grey[label.T == value] = level
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(path))


def make_release(root: Path) -> Path:
    src = root / "CHAOS_Train_Sets"
    ct = src / "Train_Sets" / "CT"
    for patient in ("1", "2"):  # files numbered head to feet: i0000 is the highest slice
        write_series(ct / patient / "DICOM_anon", image(int(patient)), origin=CT_ORIGIN, spacing=CT_SPACING,
                     name=lambda k: f"i{SHAPE[2] - 1 - k:04d},0000b.dcm")
        for n in range(SHAPE[2] - (patient == "2")):  # patient 2 misses a mask
            write_png(organs(n) == 1, ct / patient / "Ground" / f"liver_GT_{n:03d}.png", {1: 255})
    mr = src / "Train_Sets" / "MR"
    for patient, spleen in (("3", True), ("5", False)):
        base = mr / patient
        write_series(base / "T2SPIR" / "DICOM_anon", image(int(patient)), origin=MR_ORIGIN, spacing=MR_SPACING,
                     name=lambda k: f"IMG-0002-{k + 1:05d}.dcm")
        for n in range(SHAPE[2]):
            levels = {**GREY, 1: 60 if n == 2 else 63}  # grey levels anywhere in a range name the organ
            write_png(organs(n, spleen), base / "T2SPIR" / "Ground" / f"IMG-0002-{n + 1:05d}.png", levels)
        for phase, first in (("InPhase", 2), ("OutPhase", 1)):
            write_series(base / "T1DUAL" / "DICOM_anon" / phase, image(10 + first), origin=MR_ORIGIN,
                         spacing=MR_SPACING, name=lambda k, first=first: f"IMG-0004-{2 * k + first:05d}.dcm")
        for n in range(SHAPE[2]):
            write_png(organs(n, spleen), base / "T1DUAL" / "Ground" / f"IMG-0004-{2 * n + 2:05d}.png", GREY)
    write_png(organs(0), mr / "5" / "T2SPIR" / "Ground" / "IMG-0002-00001.png", {**GREY, 3: 90})  # unknown grey
    (mr / "7" / "T2SPIR" / "DICOM_anon").mkdir(parents=True)  # a case without masks, as in the test set
    (src / "__MACOSX").mkdir()
    return src


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("chaos"))


@pytest.fixture(scope="module")
def ct(release, tmp_path_factory):
    dst = tmp_path_factory.mktemp("out") / "chaos_ct"
    return dst, cli_convert("chaos", release, dst, modality="CT")


def test_ct_keeps_the_series_grid_and_pairs_masks_by_file_name(ct):
    dst, result = ct
    assert result.exit_code == 0, result.output
    assert f"1 cases in {dst} (1 converted, 0 already done); 1 skipped" in printed(result)
    layout = load_dataset(dst)
    verify_dataset(layout)
    assert layout.channel_names == ["CT"] and layout.labels == {"background": 0, "liver": 1}
    record = layout.cases["chaos_ct_01"]
    written, label = nib.load(str(record.image_paths[0])), nib.load(str(record.label_path))
    expected = series_affine(CT_ORIGIN, CT_SPACING)
    assert written.shape == label.shape == SHAPE
    np.testing.assert_allclose(written.affine, expected, atol=1e-5)
    np.testing.assert_allclose(label.affine, expected, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(written.dataobj), image(1))
    # voxel slice k (by position) is file i{5-k}, whose mask is liver_GT_{5-k}: the head-to-feet quirk undone
    liver = np.stack([organs(SHAPE[2] - 1 - k) == 1 for k in range(SHAPE[2])], axis=2)
    np.testing.assert_array_equal(np.asarray(label.dataobj), liver.astype(np.uint8))
    [prompt] = record.prompts
    assert (prompt.prompt, prompt.target, prompt.kind, prompt.class_name) == ("segment the liver", (1,), "anatomy",
                                                                              "liver")


def test_a_case_whose_masks_do_not_match_its_slices_is_skipped_by_name(ct, release):
    dst, _ = ct
    skipped = json.loads((dst / "conversion_summary.json").read_text())["skipped"]
    ground = release / "Train_Sets" / "CT" / "2" / "Ground"
    assert skipped == {"chaos_ct_02": f"{ground}: 5 PNG masks for 6 DICOM slices in {ground.parent}/DICOM_anon"}


def test_src_may_be_train_sets_the_modality_in_any_case_and_another_modality_is_refused(ct, release):
    dst, _ = ct
    result = cli_convert("chaos", release / "Train_Sets", dst, modality="ct")
    assert result.exit_code == 0, result.output
    assert f"1 cases in {dst} (0 converted, 1 already done); 1 skipped" in printed(result)
    result = cli_convert("chaos", release, dst, modality="T2SPIR")
    assert result.exit_code == 2 and "was converted with other chaos options (modality differ)" in result.output


def test_mr_grey_levels_become_four_organs_with_absent_prompts(release, tmp_path):
    summary = convert_chaos(release / "Train_Sets" / "MR", tmp_path / "t2", modality="T2SPIR")
    png = release / "Train_Sets" / "MR" / "5" / "T2SPIR" / "Ground" / "IMG-0002-00001.png"
    assert summary.converted == ["chaos_mr_03"]
    assert summary.skipped == {
        "chaos_mr_05": f"{png}: grey level 90 is none of the CHAOS organ ranges (liver 55-70, right kidney 110-135, "
                       "left kidney 175-200, spleen 240-255)",
        "chaos_mr_07": f"no mask folder {release}/Train_Sets/MR/7/T2SPIR/Ground (a test-set case?)"}
    layout = load_dataset(tmp_path / "t2")
    assert layout.labels == {"background": 0, "liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4}
    label = nib.load(str(layout.cases["chaos_mr_03"].label_path))
    np.testing.assert_allclose(label.affine, series_affine(MR_ORIGIN, MR_SPACING), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(label.dataobj), np.stack([organs(n) for n in range(SHAPE[2])], 2))
    texts = {p.class_name: (p.prompt, p.target, p.kind) for p in layout.cases["chaos_mr_03"].prompts}
    assert texts["kidney_right"] == ("segment the right kidney", (2,), "anatomy")
    assert texts["spleen"] == ("segment the spleen", (4,), "anatomy")
    assert layout.vocabulary.synonyms["kidney_left"][0] == "left kidney"


def test_t1dual_gives_two_phases_on_one_grid_and_slices_in_2d(release, tmp_path):
    summary = convert_chaos(release, tmp_path / "t1", modality="T1DUAL")
    assert summary.converted == ["chaos_mr_03", "chaos_mr_05"]
    layout = load_dataset(tmp_path / "t1")
    assert layout.channel_names == ["T1DUAL_InPhase", "T1DUAL_OutPhase"]
    in_phase, out_phase = (np.asarray(nib.load(str(p)).dataobj) for p in layout.cases["chaos_mr_05"].image_paths)
    np.testing.assert_array_equal(in_phase, image(12))
    np.testing.assert_array_equal(out_phase, image(11))
    spleen = {p.class_name: (p.target, p.kind) for p in layout.cases["chaos_mr_05"].prompts}["spleen"]
    assert spleen == ((), "absent")
    flat = convert_chaos(release, tmp_path / "t1_2d", spatial_dims=2, modality="T1DUAL_OutPhase")
    assert flat.converted[:2] == ["chaos_mr_03_z000", "chaos_mr_03_z001"] and len(flat.converted) == 2 * SHAPE[2]
    written = nib.load(str(tmp_path / "t1_2d" / "imagesTr" / "chaos_mr_03_z004_0000.nii.gz"))
    assert written.shape == (*SHAPE[:2], 1)
    np.testing.assert_allclose(written.affine[:3, 3], series_affine(MR_ORIGIN, MR_SPACING)[:3, :] @ [0, 0, 4, 1])
    np.testing.assert_array_equal(np.asarray(written.dataobj)[:, :, 0], image(11)[:, :, 4])


def test_modality_is_required_and_checked(release, tmp_path):
    with pytest.raises(MedTextSegError, match=r"--option modality=\.\.\. is required, one of CT, T2SPIR"):
        convert_chaos(release, tmp_path / "out")
    with pytest.raises(MedTextSegError, match=r"option modality must be one of .* got 'T1'"):
        convert_chaos(release, tmp_path / "out", modality="T1")
    with pytest.raises(MedTextSegError, match=r"no CHAOS CT folder"):
        convert_chaos(release / "Train_Sets" / "MR", tmp_path / "out", modality="CT")


# -------------------------------------------------------------------- several sequences pooled into one dataset
POOLED_MR = ("T2SPIR", "T1DUAL_InPhase", "T1DUAL_OutPhase")


def patient_splits(layout) -> dict[str, set[str]]:
    """patient -> the splits its cases are in (read from the prompts' meta)."""
    split_of = {case: split for split, cases in layout.splits.items() for case in cases}
    found: dict[str, set[str]] = {}
    for record in layout.cases.values():
        found.setdefault(record.prompts[0].meta["patient"], set()).add(split_of[record.case])
    return found


def split_of(case: str) -> str:
    return next(split for split, ids in hash_split([case]).items() if ids)


def drawn_apart(cases) -> bool:
    """Whether ``cases``, drawn each on its own, would fall in several splits (so that a per-patient check can
    fail)."""
    return len({split_of(case) for case in cases}) > 1


@pytest.fixture(scope="module")
def pooled(release, tmp_path_factory):
    dst = tmp_path_factory.mktemp("out") / "chaos_all"
    return dst, cli_convert("chaos", release, dst, modality="T1DUAL_OutPhase+MR+ct", regions="kidneys:2+3")


def test_pooled_sequences_give_a_single_channel_case_per_patient_and_sequence(pooled, release):
    dst, result = pooled
    assert result.exit_code == 0, result.output
    layout = load_dataset(dst)
    verify_dataset(layout)
    assert sorted(layout.cases) == ["chaos_ct_01_ct", "chaos_mr_03_t1dual_inphase", "chaos_mr_03_t1dual_outphase",
                                    "chaos_mr_03_t2spir", "chaos_mr_05_t1dual_inphase", "chaos_mr_05_t1dual_outphase"]
    skipped = json.loads((dst / "conversion_summary.json").read_text())["skipped"]
    assert sorted(skipped) == ["chaos_ct_02_ct", "chaos_mr_05_t2spir", "chaos_mr_07_t1dual_inphase",
                               "chaos_mr_07_t1dual_outphase", "chaos_mr_07_t2spir"]
    assert skipped["chaos_mr_07_t1dual_inphase"] == \
        f"no DICOM folder {release}/Train_Sets/MR/7/T1DUAL/DICOM_anon/InPhase"
    meta = json.loads((dst / "dataset.json").read_text())
    assert layout.channel_names == ["image"] and meta["name"] == "CHAOS_CT+T2SPIR+T1DUAL_InPhase+T1DUAL_OutPhase"
    assert meta["medtextseg"]["sequences"] == ["CT", *POOLED_MR]
    assert layout.labels == {"background": 0, "liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4}
    assert json.loads((dst / "chaos_conversion.json").read_text()) == {"modality": ["CT", *POOLED_MR]}
    for case, seed in (("chaos_ct_01_ct", 1), ("chaos_mr_03_t2spir", 3), ("chaos_mr_05_t1dual_inphase", 12),
                       ("chaos_mr_05_t1dual_outphase", 11)):
        [path] = layout.cases[case].image_paths
        np.testing.assert_array_equal(np.asarray(nib.load(str(path)).dataobj), image(seed))


def test_pooled_labels_and_prompts_follow_each_sequence_and_ct_is_prompted_with_the_liver_only(pooled):
    layout = load_dataset(pooled[0])

    def label(case: str) -> np.ndarray:
        return np.asarray(nib.load(str(layout.cases[case].label_path)).dataobj)

    np.testing.assert_array_equal(label("chaos_mr_03_t2spir"), np.stack([organs(n) for n in range(SHAPE[2])], 2))
    np.testing.assert_array_equal(label("chaos_mr_05_t1dual_outphase"),
                                  np.stack([organs(n, spleen=False) for n in range(SHAPE[2])], 2))
    np.testing.assert_array_equal(label("chaos_ct_01_ct"),
                                  np.stack([organs(SHAPE[2] - 1 - k) == 1 for k in range(SHAPE[2])], 2))
    [liver] = layout.cases["chaos_ct_01_ct"].prompts  # no absent kidney, spleen or kidneys prompt: CT masks the liver
    assert (liver.class_name, liver.target, liver.kind) == ("liver", (1,), "anatomy")
    assert liver.meta == {"sequence": "CT", "patient": "chaos_ct_01"}
    prompts = {p.class_name: p for p in layout.cases["chaos_mr_05_t1dual_inphase"].prompts}
    assert sorted(prompts) == ["kidney_left", "kidney_right", "kidneys", "liver", "spleen"]
    assert (prompts["spleen"].target, prompts["spleen"].kind) == ((), "absent")
    assert (prompts["kidneys"].target, prompts["kidneys"].kind) == ((2, 3), "anatomy")
    assert prompts["liver"].meta == {"sequence": "T1DUAL_InPhase", "patient": "chaos_mr_05"}


def test_pooled_splits_are_drawn_per_patient(pooled):
    layout = load_dataset(pooled[0])
    by_patient = patient_splits(layout)
    assert sorted(by_patient) == ["chaos_ct_01", "chaos_mr_03", "chaos_mr_05"]
    for patient, splits in by_patient.items():  # the patient's split, as its single-sequence conversions draw it
        assert splits == {split_of(patient)}
    assert drawn_apart(layout.cases)


def test_a_second_pooled_run_with_the_same_list_in_other_words_resumes_and_another_list_is_refused(pooled, release):
    dst, _ = pooled
    result = cli_convert("chaos", release, dst, modality="all", regions="kidneys:2+3")
    assert result.exit_code == 0, result.output
    assert f"6 cases in {dst} (0 converted, 6 already done); 5 skipped" in printed(result)
    for other in ("MR", "T2SPIR", "CT+T2SPIR"):
        result = cli_convert("chaos", release, dst, modality=other, regions="kidneys:2+3")
        assert result.exit_code == 2 and "was converted with other chaos options (modality differ)" in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_pooled_2d_slices_carry_their_sequence_and_split_by_patient(release, tmp_path):
    summary = convert_chaos(release, tmp_path / "mr_2d", spatial_dims=2, modality=["T1DUAL_InPhase", "t2spir"])
    assert summary.skipped.keys() == {"chaos_mr_05_t2spir", "chaos_mr_07_t2spir", "chaos_mr_07_t1dual_inphase"}
    per_case = 3 * SHAPE[2]  # mr_03 T2SPIR and T1DUAL in-phase, mr_05 T1DUAL in-phase: every slice has an organ
    assert len(summary.converted) == per_case and summary.converted[:2] == ["chaos_mr_03_t2spir_z000",
                                                                            "chaos_mr_03_t2spir_z001"]
    layout = load_dataset(tmp_path / "mr_2d")
    assert layout.channel_names == ["MR"]
    assert json.loads((tmp_path / "mr_2d" / "chaos_conversion.json").read_text()) == \
        {"modality": ["T2SPIR", "T1DUAL_InPhase"]}
    record = layout.cases["chaos_mr_05_t1dual_inphase_z004"]
    assert record.prompts[0].meta == {"source_case": "chaos_mr_05_t1dual_inphase", "slice": 4,
                                      "sequence": "T1DUAL_InPhase", "patient": "chaos_mr_05"}
    np.testing.assert_array_equal(np.asarray(nib.load(str(record.image_paths[0])).dataobj)[:, :, 0],
                                  image(12)[:, :, 4])
    assert all(len(splits) == 1 for splits in patient_splits(layout).values())
    assert drawn_apart({p.meta["source_case"] for record in layout.cases.values() for p in record.prompts})


def test_modality_lists_are_read_in_any_case_and_order_and_t1dual_is_not_pooled(release, tmp_path):
    from medtextseg.converters.chaos import ChaosOptions

    def parsed(value):
        return ChaosOptions.parse({"modality": value}).modality

    assert parsed("t1dual_outphase+T2SPIR") == parsed("T2SPIR, T1DUAL_OutPhase") == ("T2SPIR", "T1DUAL_OutPhase")
    assert parsed("MR") == parsed(["mr", "T2SPIR"]) == POOLED_MR and parsed("ALL") == ("CT", *POOLED_MR)
    assert parsed("T2SPIR+t2spir") == ("T2SPIR",) and parsed("T1DUAL") == ("T1DUAL",)
    with pytest.raises(MedTextSegError, match=r"^chaos converter: option modality T1DUAL \(in-phase and out-phase "
                                              r"as two channels\) cannot be pooled .* T1DUAL_InPhase\+T1DUAL_OutPhase"):
        parsed("T1DUAL+T2SPIR")
    with pytest.raises(MedTextSegError, match=r"option modality must be one of CT, .* MR, all, or several joined "
                                              r"by \+, got 'T2SPIR\+T3'"):
        parsed("T2SPIR+T3")
    with pytest.raises(MedTextSegError, match=r"option modality must be one of .* got '\+'"):
        parsed("+")
    with pytest.raises(MedTextSegError, match=r"no CHAOS CT folder"):
        convert_chaos(release / "Train_Sets" / "MR", tmp_path / "out", modality="all")
