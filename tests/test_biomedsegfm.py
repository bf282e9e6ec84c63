"""BiomedSegFM (CVPR 2025 text-guided 3D segmentation challenge) npz + class prompts JSON: a tiny mimic of the
challenge folders converted into our format (axis order, spacing, prompts), exported back, and round trips."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medtextseg.cli import app
from medtextseg.converters.biomedsegfm import class_name_of, convert_biomedsegfm
from medtextseg.converters.biomedsegfm_export import export_biomedsegfm
from medtextseg.converters.nnunet import convert_nnunet
from medtextseg.data.layout import load_dataset, verify_dataset
from medtextseg.utils.errors import MedTextSegError

runner = CliRunner()
ZYX = (4, 6, 8)  # imgs and gts as the challenge stores them: (Z, Y, X)
SPACING = (0.8, 0.9, 3.0)  # (x, y, z), SimpleITK's GetSpacing order
ITK_AFFINE = np.diag([-0.8, -0.9, 3.0, 1.0])
CT = {"1": ["Liver", "Liver in abdominal CT", "CT imaging of the liver in the abdomen"],
      "2": ["Liver tumor", "Liver tumor in abdominal CT"], "instance_label": 0}
PET = {"1": ["Lesion", "Lesion in whole body PET", "PET imaging of the lesion in the whole body region"],
       "instance_label": 1}
TRAIN = "3D_train_npz_random_10percent_16G"


def volume(case: int) -> np.ndarray:
    """uint8 intensities as in the challenge; every voxel of a case differs along each axis."""
    return ((np.arange(np.prod(ZYX)).reshape(ZYX) + 37 * case) % 251).astype(np.uint8)


def ct_labels(case: int) -> np.ndarray:
    gts = np.zeros(ZYX, np.uint8)
    gts[1:3, 1:5, 0:3] = 1  # liver: z 1-2, y 1-4, x 0-2, an asymmetric block
    if case != 1:
        gts[2, 2:4, 1] = 2  # tumour, absent from case 1
    return gts


def pet_labels(case: int, instances: int) -> np.ndarray:
    gts = np.zeros(ZYX, np.uint8)
    for number in range(1, instances + 1):
        gts[number % 4, number % 6, number] = number
    return gts


def save_npz(path, imgs, gts=None, spacing=SPACING) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"imgs": imgs, "spacing": np.asarray(spacing)} | ({} if gts is None else {"gts": gts})
    np.savez_compressed(path, **arrays)


def make_challenge(folder: Path) -> Path:
    """CVPR-BiomedSegFM/: the class JSON at the top, npz files in {modality}/{dataset}/ folders."""
    root = folder / "CVPR-BiomedSegFM"
    root.mkdir()
    (root / "CVPR25_TextSegFMData_with_class.json").write_text(json.dumps({"CT_AbdTumor": CT, "PET_autoPET": PET}))
    for case in range(3):
        save_npz(root / TRAIN / "CT" / "CT_AbdTumor" / f"CT_AbdTumor_{case:03d}.npz", volume(case), ct_labels(case))
    for case, instances in enumerate((3, 0, 5)):
        save_npz(root / TRAIN / "PET" / "PET_autoPET" / f"PET_autoPET_{case:03d}.npz", volume(case),
                 pet_labels(case, instances))
    return root


@pytest.fixture
def challenge(tmp_path):
    return make_challenge(tmp_path)


def read(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def lines(layout, case) -> dict:
    return {p.class_name: (p.prompt, p.target, p.kind) for p in layout.cases[case].prompts}


# ------------------------------------------------------------------------ reading
def test_npz_cases_become_class_prompts_with_the_given_texts(challenge, tmp_path):
    dst = tmp_path / "out"
    result = runner.invoke(app, ["convert", "biomedsegfm", "--src", str(challenge / TRAIN / "CT" / "CT_AbdTumor"),
                                 "--dst", str(dst)])  # the JSON is found three folders up
    assert result.exit_code == 0, result.output
    assert "3 cases" in result.output
    layout = load_dataset(dst)
    verify_dataset(layout)
    assert layout.channel_names == ["CT"] and layout.labels == {"background": 0, "liver": 1, "liver_tumour": 2}
    for case in range(3):
        record = layout.cases[f"CT_AbdTumor_{case:03d}"]
        image, label = nib.load(str(record.image_paths[0])), nib.load(str(record.label_path))
        assert image.shape == (8, 6, 4)  # (X, Y, Z)
        assert np.allclose(image.affine, ITK_AFFINE) and np.allclose(label.affine, ITK_AFFINE)
        assert np.array_equal(image.get_fdata(), volume(case).transpose(2, 1, 0))
        assert np.array_equal(read(record.label_path), ct_labels(case).transpose(2, 1, 0))
    assert lines(layout, "CT_AbdTumor_000") == {"liver": ("Liver", (1,), "anatomy"),
                                                "liver_tumour": ("Liver tumor", (2,), "anatomy")}
    assert lines(layout, "CT_AbdTumor_001")["liver_tumour"] == ("Liver tumor", (), "absent")
    assert layout.vocabulary.templates == ("{name}",)
    assert layout.vocabulary.synonyms == {"liver": tuple(CT["1"]), "liver_tumour": tuple(CT["2"])}
    assert layout.vocabulary.phrasings("liver") == CT["1"]  # training rewords among exactly the given texts


def test_dataset_choice_spacing_order_and_a_single_entry_file(challenge, tmp_path):
    with pytest.raises(MedTextSegError, match="CT_AbdTumor, PET_autoPET found; pass --option dataset=NAME"):
        convert_biomedsegfm(challenge, tmp_path / "none")
    with pytest.raises(MedTextSegError, match="did you mean 'CT_AbdTumor'"):
        convert_biomedsegfm(challenge, tmp_path / "none", dataset="CT_AbdTumour")
    chosen = convert_biomedsegfm(challenge, tmp_path / "ct", dataset="CT_AbdTumor")
    assert chosen.converted == ["CT_AbdTumor_000", "CT_AbdTumor_001", "CT_AbdTumor_002"]
    other = tmp_path / "elsewhere"  # npz files made with spacing in (z, y, x), and the entry alone in a file
    save_npz(other / "case_a.npz", volume(0), ct_labels(0), spacing=SPACING[::-1])
    (tmp_path / "entry.json").write_text(json.dumps(CT))
    summary = convert_biomedsegfm(other, tmp_path / "zyx", prompts=str(tmp_path / "entry.json"), spacing_order="zyx")
    layout = load_dataset(summary.dataset)
    assert np.allclose(nib.load(str(layout.cases["case_a"].image_paths[0])).affine, ITK_AFFINE)
    assert lines(layout, "case_a")["liver"] == ("Liver", (1,), "anatomy")


def test_instance_labels_give_one_prompt_for_all_instances(challenge, tmp_path):
    summary = convert_biomedsegfm(challenge, tmp_path / "pet", dataset="PET_autoPET", max_instances="4")
    assert summary.converted == ["PET_autoPET_000", "PET_autoPET_001"]
    assert "PET_autoPET_002.npz: instance 5 exceeds max_instances=4" in summary.skipped["PET_autoPET_002"]
    layout = load_dataset(summary.dataset)
    assert layout.labels == {"background": 0, "lesion_1": 1, "lesion_2": 2, "lesion_3": 3, "lesion_4": 4}
    assert lines(layout, "PET_autoPET_000") == {"lesion": ("Lesion", (1, 2, 3), "all")}
    assert lines(layout, "PET_autoPET_001") == {"lesion": ("Lesion", (), "absent")}
    assert layout.cases["PET_autoPET_000"].prompts[0].meta["instances"] == 3
    out = tmp_path / "pet_npz"
    export_biomedsegfm(summary.dataset, out)
    assert json.loads((out / "class_prompts.json").read_text()) == {"PET_autoPET": PET}
    again = convert_biomedsegfm(out, tmp_path / "pet_again", max_instances="4")
    assert lines(load_dataset(again.dataset), "PET_autoPET_000") == {"lesion": ("Lesion", (1, 2, 3), "all")}


def test_bad_cases_are_skipped_by_name(challenge, tmp_path):
    folder = challenge / TRAIN / "CT" / "CT_AbdTumor"
    save_npz(folder / "CT_AbdTumor_003.npz", volume(3))  # no gts: a validation image
    undeclared = ct_labels(4)
    undeclared[0, 0, 0] = 7
    save_npz(folder / "CT_AbdTumor_004.npz", volume(4), undeclared)
    (folder / "CT_AbdTumor_005.npz").write_bytes(b"PK\x03\x04 not really a zip")
    save_npz(folder / "CT_AbdTumor_006.npz", volume(6), ct_labels(6)[:, :, :5])
    dst = tmp_path / "out"
    summary = convert_biomedsegfm(folder, dst)
    assert summary.converted == ["CT_AbdTumor_000", "CT_AbdTumor_001", "CT_AbdTumor_002"]
    assert "CT_AbdTumor_003.npz: no 'gts' array" in summary.skipped["CT_AbdTumor_003"]
    assert "CT_AbdTumor_004.npz: label value 7 has no prompt" in summary.skipped["CT_AbdTumor_004"]
    assert "CT_AbdTumor_005.npz: cannot read" in summary.skipped["CT_AbdTumor_005"]
    assert "CT_AbdTumor_006.npz: imgs (4, 6, 8) and gts (4, 6, 5)" in summary.skipped["CT_AbdTumor_006"]
    with pytest.raises(MedTextSegError, match="spacing_order"):
        convert_biomedsegfm(folder, dst, spacing_order="zxy")


@pytest.mark.parametrize("args, message", [
    (["--spatial-dims", "2"], "convert in 3D"),
    (["--option", "datset=CT_AbdTumor"], "did you mean 'dataset'"),
    (["--option", "max_instances=0"], "max_instances must be an integer >= 1"),
])
def test_bad_options_end_with_one_line(challenge, tmp_path, args, message):
    result = runner.invoke(app, ["convert", "biomedsegfm", "--src", str(challenge), "--dst", str(tmp_path / "o"),
                                 *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_class_names_come_from_the_text_inside_a_template():
    assert class_name_of("segment the left kidney") == "left_kidney"
    assert class_name_of("Segment the liver region") == "liver"
    assert class_name_of("Intra-meatal region of vestibular schwannoma") == (
        "intra_meatal_region_of_vestibular_schwannoma")


# ------------------------------------------------------------------------ writing and round trips
def test_round_trip_keeps_voxels_spacing_and_prompts(challenge, tmp_path):
    first = load_dataset(convert_biomedsegfm(challenge, tmp_path / "ours", dataset="CT_AbdTumor").dataset)
    out = tmp_path / "npz"
    result = runner.invoke(app, ["export-biomedsegfm", "--src", str(first.root), "--dst", str(out)])
    assert result.exit_code == 0, result.output
    assert f"3 cases of CT_AbdTumor written to {out / 'CT_AbdTumor'}" in result.output
    assert json.loads((out / "class_prompts.json").read_text()) == {"CT_AbdTumor": CT}
    with np.load(out / "CT_AbdTumor" / "CT_AbdTumor_000.npz") as npz:  # the challenge's own arrays, axis orders
        assert np.array_equal(npz["imgs"], volume(0)) and np.array_equal(npz["gts"], ct_labels(0))
        assert np.allclose(npz["spacing"], SPACING)
    second = load_dataset(convert_biomedsegfm(out, tmp_path / "again").dataset)
    assert second.labels == first.labels and second.vocabulary.to_dict() == first.vocabulary.to_dict()
    for case, record in first.cases.items():
        again = second.cases[case]
        assert np.array_equal(read(again.image_paths[0]), read(record.image_paths[0]))
        assert np.array_equal(read(again.label_path), read(record.label_path))
        assert np.allclose(nib.load(str(again.image_paths[0])).affine, nib.load(str(record.image_paths[0])).affine)
        assert lines(second, case) == lines(first, case)
    export_biomedsegfm(first.root, tmp_path / "u8", uint8=True)  # the challenge's intensity range
    with np.load(tmp_path / "u8" / "CT_AbdTumor" / "CT_AbdTumor_001.npz") as npz:
        assert npz["imgs"].dtype == np.uint8 and (npz["imgs"].min(), npz["imgs"].max()) == (0, 255)
        assert np.array_equal(npz["gts"], ct_labels(1))


@pytest.fixture
def nnunet_dataset(tmp_path):
    """One of ours made by the nnunet converter: two channels, an oblique anisotropic grid, built-in wordings."""
    src = tmp_path / "Dataset007_Tiny"
    (src / "labelsTr").mkdir(parents=True)
    (src / "imagesTr").mkdir()
    affine = np.array([[0.0, -1.5, 0.1, 12.0], [1.2, 0.0, 0.0, -30.5], [0.0, 0.2, 3.0, 7.25], [0, 0, 0, 1]])
    for case in range(3):
        label = np.zeros((8, 6, 4), np.uint8)
        label[1:4, 1:5, 0:2] = 1
        if case != 1:
            label[5:7, 4:6, 2:4] = 2
        nib.save(nib.Nifti1Image(label, affine), str(src / "labelsTr" / f"tiny_{case:03d}.nii.gz"))
        for channel in range(2):
            image = np.arange(8 * 6 * 4, dtype=np.float32).reshape(8, 6, 4) * (channel + 1) + case
            nib.save(nib.Nifti1Image(image, affine), str(src / "imagesTr" / f"tiny_{case:03d}_{channel:04d}.nii.gz"))
    (src / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "liver": 1, "kidney_left": 2},
        "numTraining": 3, "file_ending": ".nii.gz", "name": "Tiny"}))
    convert_nnunet(src, tmp_path / "ours", regions="both:1+2")
    return tmp_path / "ours"


def test_round_trip_of_a_converted_dataset_keeps_prompt_texts_and_the_exact_affine(nnunet_dataset, tmp_path):
    first = load_dataset(nnunet_dataset)
    out = tmp_path / "npz"
    summary = export_biomedsegfm(nnunet_dataset, out)
    assert summary.channel_note == "channel 0 of 2: T1"
    assert summary.prompts_not_written == 3  # the region "both" (target [1, 2]) of each case
    entry = json.loads((out / "class_prompts.json").read_text())["Tiny"]
    assert entry["1"][0] == "segment the liver" and entry["2"][0] == "segment the left kidney"
    assert entry["instance_label"] == 0
    second = load_dataset(convert_biomedsegfm(out, tmp_path / "again").dataset)
    assert second.labels == {"background": 0, "liver": 1, "left_kidney": 2}
    for case, record in first.cases.items():
        again = second.cases[case]
        assert np.array_equal(read(again.image_paths[0]), read(record.image_paths[0]))
        assert np.array_equal(read(again.label_path), read(record.label_path))
        before, after = nib.load(str(record.image_paths[0])), nib.load(str(again.image_paths[0]))
        assert np.allclose(after.affine, before.affine, atol=1e-6)  # oblique: kept by medtextseg_affine
        kept = {(p.prompt, p.target, p.kind) for p in record.prompts if p.class_name != "both"}
        assert {(p.prompt, p.target, p.kind) for p in again.prompts} == kept
    for old, new in (("liver", "liver"), ("kidney_left", "left_kidney")):
        assert set(second.vocabulary.phrasings(new)) == set(first.vocabulary.phrasings(old))
    export_biomedsegfm(second.root, out, name="Tiny_again")  # a second dataset joins the same JSON
    assert sorted(json.loads((out / "class_prompts.json").read_text())) == ["Tiny", "Tiny_again"]
