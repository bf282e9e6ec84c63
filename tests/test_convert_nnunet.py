"""Multi-class datasets as prompts: tiny nnU-Net v2 and MSD mimics converted, then read back and checked; the
converter registry and the `convert` command."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medtextseg.cli import app
from medtextseg.converters import registry
from medtextseg.converters.nnunet import convert_msd, convert_nnunet
from medtextseg.data.layout import load_dataset, verify_dataset
from medtextseg.data.vocabulary import PromptVocabulary

runner = CliRunner()
SHAPE = (8, 8, 4)
# an oblique, anisotropic grid: a conversion that drops or rounds the affine cannot pass
AFFINE = np.array([[0.0, -1.5, 0.1, 12.0], [1.2, 0.0, 0.0, -30.5], [0.0, 0.2, 3.0, 7.25], [0, 0, 0, 1]])


def image_array(case: int, channel: int) -> np.ndarray:
    """Every voxel differs, across cases and channels."""
    return (np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) + 1000 * case + 100000 * channel)


def label_array(case: int) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[1:4, 1:5, 0:2] = 1  # liver everywhere
    if case != 1:
        label[5:7, 5:7, 2:4] = 2  # left kidney: absent from case 1
    return label


def save(array: np.ndarray, path, affine=AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def make_nnunet_source(root: Path) -> Path:
    src = root / "Dataset007_Tiny"
    for case in range(3):
        for channel in range(2):
            save(image_array(case, channel), src / "imagesTr" / f"tiny_{case:03d}_{channel:04d}.nii.gz")
        save(label_array(case), src / "labelsTr" / f"tiny_{case:03d}.nii.gz")
    (src / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "liver": 1, "kidney_left": 2},
        "numTraining": 3, "file_ending": ".nii.gz", "name": "Tiny"}))
    return src


@pytest.fixture
def nnunet_source(tmp_path):
    return make_nnunet_source(tmp_path)


MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def make_msd_source(root: Path) -> Path:
    """Task01_BrainTumour in miniature: 4D [X, Y, Z, 4] images, 3D labels, MSD dataset.json."""
    src = root / "Task01_BrainTumour"
    training = []
    for case in range(3):
        image = np.stack([image_array(case, channel) for channel in range(4)], axis=-1)
        save(image, src / "imagesTr" / f"BRATS_{case + 1:03d}.nii.gz")
        label = np.zeros(SHAPE, np.uint8)
        label[2:6, 2:6, 1:3] = 1
        label[3:5, 3:5, 1:3] = 2 if case != 2 else 1  # case 3 has no non-enhancing core
        label[3:4, 3:4, 1:2] = 3
        save(label, src / "labelsTr" / f"BRATS_{case + 1:03d}.nii.gz")
        training.append({"image": f"./imagesTr/BRATS_{case + 1:03d}.nii.gz",
                         "label": f"./labelsTr/BRATS_{case + 1:03d}.nii.gz"})
    (src / "dataset.json").write_text(json.dumps({
        "name": "BRATS", "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}, "labels": MSD_LABELS,
        "numTraining": 3, "numTest": 0, "training": training, "test": []}))
    return src


@pytest.fixture
def msd_source(tmp_path):
    return make_msd_source(tmp_path)


def prompts_of(layout, case):
    return {p.class_name: p for p in layout.cases[case].prompts}


# ------------------------------------------------------------------------ nnU-Net v2
def test_nnunet_dataset_becomes_one_prompt_per_case_and_class(nnunet_source, tmp_path):
    dst = tmp_path / "out"
    summary = convert_nnunet(nnunet_source, dst)
    assert summary.converted == ["tiny_000", "tiny_001", "tiny_002"] and not summary.skipped
    assert not (dst / "case_groups.json").exists()  # one case per volume: no group of two or more
    layout = load_dataset(dst)
    verify_dataset(layout)
    assert layout.channel_names == ["T1", "T2"] and layout.labels == {"background": 0, "liver": 1, "kidney_left": 2}
    for case in range(3):
        name = f"tiny_{case:03d}"
        for channel in range(2):
            written = nib.load(str(layout.cases[name].image_paths[channel]))
            assert written.shape == SHAPE and np.allclose(written.affine, AFFINE, atol=1e-5)
            assert np.array_equal(written.get_fdata(), image_array(case, channel))
        label = nib.load(str(layout.cases[name].label_path))
        assert np.allclose(label.affine, AFFINE, atol=1e-5)
        assert np.array_equal(np.asarray(label.dataobj), label_array(case))
    present, absent = prompts_of(layout, "tiny_000"), prompts_of(layout, "tiny_001")
    assert (present["liver"].prompt, present["liver"].target, present["liver"].kind) == (
        "segment the liver", (1,), "anatomy")
    assert (present["kidney_left"].prompt, present["kidney_left"].target) == ("segment the left kidney", (2,))
    assert (absent["kidney_left"].target, absent["kidney_left"].kind) == ((), "absent")
    assert absent["liver"].kind == "anatomy" and len(layout.cases["tiny_001"].prompts) == 2
    assert layout.vocabulary.synonyms["kidney_left"] == ("left kidney", "left renal parenchyma")
    assert layout.vocabulary.synonyms["liver"][0] == "liver"


def test_bad_cases_are_skipped_by_name_and_the_others_converted(nnunet_source, tmp_path):
    images, labels = nnunet_source / "imagesTr", nnunet_source / "labelsTr"
    for channel in range(2):  # corrupt: bytes that are not a NIfTI file
        (images / f"tiny_003_{channel:04d}.nii.gz").write_bytes(b"not an image at all" * 10)
    (labels / "tiny_003.nii.gz").write_bytes(b"garbage")
    for channel in range(2):  # no label file
        save(image_array(4, channel), images / f"tiny_004_{channel:04d}.nii.gz")
        save(image_array(5, channel), images / f"tiny_005_{channel:04d}.nii.gz")
    save(np.zeros((8, 8, 3), np.uint8), labels / "tiny_005.nii.gz")  # label on another grid
    save(image_array(6, 0), images / "tiny_006_0000.nii.gz")  # second channel missing
    save(label_array(6), labels / "tiny_006.nii.gz")
    bad_label = label_array(7)
    bad_label[0, 0, 0] = 9  # a value dataset.json does not declare
    save(bad_label, labels / "tiny_007.nii.gz")
    for channel in range(2):
        save(image_array(7, channel), images / f"tiny_007_{channel:04d}.nii.gz")
    summary = convert_nnunet(nnunet_source, tmp_path / "out")
    assert summary.converted == ["tiny_000", "tiny_001", "tiny_002"]
    assert sorted(summary.skipped) == ["tiny_003", "tiny_004", "tiny_005", "tiny_006", "tiny_007"]
    assert "tiny_003_0000.nii.gz: cannot read image header" in summary.skipped["tiny_003"]
    assert "no label file labelsTr/tiny_004.nii.gz" in summary.skipped["tiny_004"]
    assert "shape (8, 8, 3) differs from the image's (8, 8, 4)" in summary.skipped["tiny_005"]
    assert "missing channel file tiny_006_0001.nii.gz" in summary.skipped["tiny_006"]
    assert "label value 9 is not declared" in summary.skipped["tiny_007"]
    assert "5 skipped: tiny_003: " in summary.line()
    layout = load_dataset(tmp_path / "out")
    assert sorted(c for split in layout.splits.values() for c in split) == ["tiny_000", "tiny_001", "tiny_002"]
    summary_file = json.loads((tmp_path / "out" / "conversion_summary.json").read_text())
    assert set(summary_file["skipped"]) == set(summary.skipped)


def test_region_labels_become_union_targets(nnunet_source, tmp_path):
    meta = json.loads((nnunet_source / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "organs": [1, 2], "kidney_left": 2}
    (nnunet_source / "dataset.json").write_text(json.dumps(meta))
    convert_nnunet(nnunet_source, tmp_path / "out")
    layout = load_dataset(tmp_path / "out")
    assert layout.labels == {"background": 0, "label_1": 1, "kidney_left": 2}
    prompts = prompts_of(layout, "tiny_001")
    assert prompts["organs"].target == (1, 2) and prompts["organs"].kind == "anatomy"
    assert prompts["kidney_left"].kind == "absent"


def test_two_dimensional_conversion_slices_each_case_and_keeps_patients_in_one_split(nnunet_source, tmp_path):
    dst = tmp_path / "out2d"
    summary = convert_nnunet(nnunet_source, dst, spatial_dims=2, slices="all")
    assert len(summary.converted) == 3 * SHAPE[2]
    layout = load_dataset(dst)
    verify_dataset(layout)
    assert layout.spatial_dims == 2
    written = nib.load(str(layout.cases["tiny_002_z003"].image_paths[1]))
    assert written.shape == (8, 8, 1)
    assert np.allclose(written.affine[:3, 3], AFFINE[:3, 3] + 3 * AFFINE[:3, 2], atol=1e-5)
    assert np.array_equal(written.get_fdata()[:, :, 0], image_array(2, 1)[:, :, 3])
    slice_prompts = prompts_of(layout, "tiny_000_z000")  # liver in slices 0-1, kidney in 2-3
    assert slice_prompts["liver"].kind == "anatomy" and slice_prompts["kidney_left"].kind == "absent"
    assert slice_prompts["liver"].meta == {"source_case": "tiny_000", "slice": 0}
    for members in layout.splits.values():
        for case in {c.rsplit("_z", 1)[0] for c in members}:
            assert all(f"{case}_z{k:03d}" in members for k in range(SHAPE[2]))
    # the slices of one volume are one group: cross-validation folds keep them together (data/folds.py)
    groups = json.loads((dst / "case_groups.json").read_text())
    assert len(groups) == 12 and groups["tiny_001_z002"] == groups["tiny_001_z000"] == "tiny_001"
    again = convert_nnunet(nnunet_source, dst, spatial_dims=2, slices="all")
    assert again.converted == [] and len(again.already_done) == 12


def test_two_dimensional_default_keeps_slices_with_a_label(nnunet_source, tmp_path):
    label = label_array(0)
    label[:, :, 3] = 0
    save(label, nnunet_source / "labelsTr" / "tiny_000.nii.gz")
    summary = convert_nnunet(nnunet_source, tmp_path / "out", spatial_dims=2)
    assert [c for c in summary.converted if c.startswith("tiny_000")] == [f"tiny_000_z{k:03d}" for k in range(3)]


def test_unknown_and_malformed_options_are_explained(nnunet_source, tmp_path):
    with pytest.raises(ValueError, match=r"--option colour: unknown option; the nnunet converter takes rename, "):
        convert_nnunet(nnunet_source, tmp_path / "out", colour="red")
    with pytest.raises(ValueError, match=r"--option rename: no class 'cancer'; classes are liver, kidney_left"):
        convert_nnunet(nnunet_source, tmp_path / "out", rename="cancer:liver_tumour")
    with pytest.raises(ValueError, match=r"--option regions: both names label value 7"):
        convert_nnunet(nnunet_source, tmp_path / "out", regions="both:1+7")
    with pytest.raises(ValueError, match=r"nnunet converter: option slices must be one of foreground, all, got 'some'"):
        convert_nnunet(nnunet_source, tmp_path / "out", slices="some")


def test_converting_a_folder_into_itself_is_refused_and_writes_nothing(nnunet_source):
    before = sorted(path.name for path in nnunet_source.rglob("*"))
    with pytest.raises(ValueError, match=r"--dst .*: must differ from --src"):
        convert_nnunet(nnunet_source, nnunet_source / ".." / nnunet_source.name)
    assert sorted(path.name for path in nnunet_source.rglob("*")) == before


def test_a_source_that_is_not_nnunet_is_named(msd_source, tmp_path):
    with pytest.raises(ValueError, match=r"dataset.json: missing key 'channel_names' \(not an nnU-Net v2"):
        convert_nnunet(msd_source, tmp_path / "out")


# ------------------------------------------------------------------------ Medical Segmentation Decathlon
def test_msd_task_splits_4d_images_per_channel_and_adds_regions(msd_source, tmp_path):
    dst = tmp_path / "out"
    summary = convert_msd(msd_source, dst, regions="whole_tumour:1+2+3,tumour_core:2+3", rename="edema:oedema")
    assert summary.converted == ["BRATS_001", "BRATS_002", "BRATS_003"]
    layout = load_dataset(dst)
    verify_dataset(layout)
    assert layout.channel_names == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert layout.labels == {"background": 0, "oedema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3}
    source_label = np.asarray(nib.load(str(msd_source / "labelsTr" / "BRATS_002.nii.gz")).dataobj)
    case = layout.cases["BRATS_002"]
    for channel in range(4):
        written = nib.load(str(case.image_paths[channel]))
        assert written.shape == SHAPE and np.allclose(written.affine, AFFINE, atol=1e-5)
        assert np.array_equal(written.get_fdata(), image_array(1, channel))
    assert np.array_equal(np.asarray(nib.load(str(case.label_path)).dataobj), source_label)
    prompts = prompts_of(layout, "BRATS_003")
    assert prompts["whole_tumour"].target == (1, 2, 3) and prompts["whole_tumour"].prompt == "segment the whole tumour"
    assert prompts["tumour_core"].target == (2, 3) and prompts["tumour_core"].kind == "anatomy"
    assert prompts["non-enhancing tumor"].kind == "absent" and prompts["non-enhancing tumor"].target == ()
    assert prompts["oedema"].prompt == "segment the peritumoural oedema"
    assert prompts_of(layout, "BRATS_001")["non-enhancing tumor"].kind == "anatomy"
    assert isinstance(layout.vocabulary, PromptVocabulary)
    assert layout.vocabulary.synonyms["non-enhancing tumor"][0] == "non-enhancing tumour core"


def test_msd_case_with_a_missing_image_is_skipped(msd_source, tmp_path):
    (msd_source / "imagesTr" / "BRATS_002.nii.gz").unlink()
    summary = convert_msd(msd_source, tmp_path / "out")
    assert summary.converted == ["BRATS_001", "BRATS_003"]
    assert summary.skipped == {"BRATS_002": "image file ./imagesTr/BRATS_002.nii.gz not found"}


def test_msd_image_with_the_wrong_channel_count_is_skipped(msd_source, tmp_path):
    save(image_array(0, 0), msd_source / "imagesTr" / "BRATS_001.nii.gz")  # 3D, but 4 modalities declared
    summary = convert_msd(msd_source, tmp_path / "out")
    assert "1 channels, dataset.json declares 4 (FLAIR, T1w, t1gd, T2w)" in summary.skipped["BRATS_001"]


def test_edited_vocabulary_is_kept_on_a_second_run(msd_source, tmp_path):
    dst = tmp_path / "out"
    convert_msd(msd_source, dst)
    path = dst / "prompt_vocabulary.json"
    content = json.loads(path.read_text())
    content["synonyms"]["edema"] = ["vasogenic oedema"]
    path.write_text(json.dumps(content))
    convert_msd(msd_source, dst)
    assert load_dataset(dst).vocabulary.synonyms["edema"] == ("vasogenic oedema",)
    with pytest.raises(ValueError, match=r"prompt_vocabulary.json: class 'whole_tumour' has no synonyms; add it"):
        convert_msd(msd_source, dst, regions="whole_tumour:1+2+3")


# ------------------------------------------------------------------------ registry and command line
def test_registry_lists_both_converters_and_suggests_names():
    found = registry.converters()
    assert found["nnunet"].function is convert_nnunet and found["msd"].function is convert_msd
    assert registry.broken_modules() == {}
    with pytest.raises(ValueError, match=r"unknown converter 'nnunte'; did you mean 'nnunet'\?"):
        registry.get_converter("nnunte")


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match=r"converter name 'nnunet' is registered twice"):
        registry.register("nnunet", "another converter")(lambda src, dst, **options: None)
    with pytest.raises(ValueError, match=r"the description must be one non-empty line"):
        registry.register("other", "two\nlines")


def test_convert_help_lists_every_converter_with_its_description():
    result = runner.invoke(app, ["convert", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for name, info in registry.converters().items():
        assert f"{name}: {info.description}" in text


def test_convert_command_writes_the_dataset_and_prints_the_summary(nnunet_source, tmp_path):
    dst = tmp_path / "cli"
    args = ["convert", "nnunet", "--src", str(nnunet_source), "--dst", str(dst), "--option", "rename=liver:hepar"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"3 cases in {dst} (3 converted, 0 already done)" in " ".join(result.output.split())
    assert "hepar" in load_dataset(dst).labels


@pytest.mark.parametrize(("args", "message"), [
    (["nnunet", "--src", "{tmp}/missing", "--dst", "{tmp}/out"], "--src {tmp}/missing: folder not found"),
    (["nnunet", "--src", "{tmp}", "--dst", "{tmp}/out"], "dataset.json: file not found"),
    (["nnunte", "--src", "{tmp}", "--dst", "{tmp}/out"], "unknown converter 'nnunte'"),
    (["nnunet", "--src", "{tmp}", "--dst", "{tmp}/out", "--spatial-dims", "4"], "--spatial-dims must be 2 or 3"),
    (["nnunet", "--src", "{tmp}", "--dst", "{tmp}/out", "--option", "slices"], "--option 'slices': expected KEY="),
])
def test_convert_errors_are_one_line_with_exit_code_2(tmp_path, args, message):
    result = runner.invoke(app, ["convert", *[a.format(tmp=tmp_path) for a in args]])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message.format(tmp=tmp_path) in lines[0], result.output
