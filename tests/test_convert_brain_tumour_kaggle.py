"""Cheng et al.'s brain tumour slices: tiny mimics of the figshare MATLAB v7.3 release (extracted and zipped) and
of the Kaggle PNG class folders, converted and read back: geometry, voxels, tumour-type prompts, patient splits."""

import json
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medtextseg.cli import app
from medtextseg.converters.brain_tumour_kaggle import convert_brain_tumour_kaggle, mask_pixels
from medtextseg.data.layout import load_dataset, verify_dataset
from medtextseg.utils.errors import MedTextSegError

h5py = pytest.importorskip("h5py")
runner = CliRunner()
ROWS, COLUMNS = 12, 16  # not square: a transposed slice cannot pass
MATLAB_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Apr  3 10:00:00 2017 HDF5 schema 1.00 ."
# figshare number -> (label: 1 meningioma, 2 glioma, 3 pituitary, PID); the PIDs hash to val, test and train
FIGSHARE = {1: (1, "100360"), 2: (1, "100360"), 3: (2, "MR040"), 4: (3, "112649"), 767: (2, "MR040"),
            768: (3, "112649")}
SPLIT_OF_PATIENT = {"100360": "val", "MR040": "test", "112649": "train"}
TYPE_OF_LABEL = {1: "meningioma", 2: "glioma", 3: "pituitary_tumour"}


def slice_image(number: int) -> np.ndarray:
    """MATLAB's view, [row, column]: every pixel differs, across slices too."""
    return (np.arange(ROWS * COLUMNS).reshape(ROWS, COLUMNS) + 1000 * number).astype(np.int16)


def slice_mask(number: int) -> np.ndarray:
    mask = np.zeros((ROWS, COLUMNS), np.uint8)
    mask[2:5, 3 + number % 5:9] = 1  # rows 2-4: a transposed mask lands elsewhere
    return mask


def mat_bytes(image: np.ndarray, mask: np.ndarray, label: float, pid: str, tmp_path) -> bytes:
    """A MATLAB v7.3 file as MATLAB writes it: a 512-byte header block, then HDF5 with every array transposed."""
    path = tmp_path / "scratch.mat"
    with h5py.File(path, "w", userblock_size=512) as handle:
        group = handle.create_group("cjdata")
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        for name, data, kind in (("image", image.T, "int16"), ("label", np.array([[label]]), "double"),
                                 ("PID", np.array([[ord(c)] for c in pid], np.uint16), "char"),
                                 ("tumorMask", mask.T, "logical"),
                                 ("tumorBorder", np.array([[3.0, 4.0, 5.0, 6.0]]), "double")):
            group.create_dataset(name, data=data).attrs["MATLAB_class"] = np.bytes_(kind)
    data = bytearray(path.read_bytes())
    data[:128] = MATLAB_HEADER.ljust(116) + b"\x00" * 8 + b"\x00\x02IM"
    return bytes(data)


def write_mat(path, number: int, label: float | None = None, pid: str | None = None, mask=None, tmp_path=None):
    known_label, known_pid = FIGSHARE.get(number, (1, "999"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(mat_bytes(slice_image(number), slice_mask(number) if mask is None else mask,
                               known_label if label is None else label, known_pid if pid is None else pid,
                               tmp_path or path.parent))


def make_figshare(root: Path) -> Path:
    """The figshare download: one archive extracted (1-4), one still zipped (767, 768), cvind.mat beside them."""
    src = root / "brain_tumor_dataset"
    for number in (1, 2, 3, 4):
        write_mat(src / "brainTumorDataPublic_1-766" / f"{number}.mat", number, tmp_path=root)
    with zipfile.ZipFile(src / "brainTumorDataPublic_767-1532.zip", "w") as archive:
        for number in (767, 768):
            label, pid = FIGSHARE[number]
            archive.writestr(f"{number}.mat", mat_bytes(slice_image(number), slice_mask(number), label, pid, root))
    write_mat(src / "cvind.mat", 9999, tmp_path=root)  # not a case: ignored by name
    (src / "README.txt").write_text("brain tumor dataset")
    return src


@pytest.fixture
def figshare(tmp_path):
    return make_figshare(tmp_path)


def case_name(number: int) -> str:
    return f"btd_{number:04d}"


def check_case(layout, number: int, tumour_type: str, image_rc: np.ndarray, mask_rc: np.ndarray) -> None:
    """The slice is [X = column, Y = row, 1] with an identity affine, its tumour labelled by type, three prompts."""
    case = layout.cases[case_name(number)]
    image, label = nib.load(str(case.image_paths[0])), nib.load(str(case.label_path))
    assert image.shape == (COLUMNS, ROWS, 1) and np.allclose(image.affine, np.eye(4))
    assert np.allclose(label.affine, np.eye(4))
    assert np.array_equal(image.get_fdata()[:, :, 0], image_rc.T)
    value = {"meningioma": 1, "glioma": 2, "pituitary_tumour": 3}[tumour_type]
    assert np.array_equal(np.asarray(label.dataobj)[:, :, 0], np.where(mask_rc.T > 0, value, 0))
    prompts = {p.class_name: p for p in case.prompts}
    assert set(prompts) == {"meningioma", "glioma", "pituitary_tumour"}
    for name, prompt in prompts.items():
        expected = ((value,), "anatomy") if name == tumour_type else ((), "absent")
        assert (prompt.target, prompt.kind) == expected, (number, name)
        assert prompt.meta["tumour_type"] == tumour_type


# ------------------------------------------------------------------------ figshare .mat
def test_figshare_files_become_tumour_type_prompts_split_by_patient(figshare, tmp_path):
    dst = tmp_path / "out"
    summary = convert_brain_tumour_kaggle(figshare, dst, spatial_dims=2)
    assert summary.converted == [case_name(n) for n in sorted(FIGSHARE)] and not summary.skipped
    layout = load_dataset(dst)
    verify_dataset(layout)
    assert layout.spatial_dims == 2 and layout.channel_names == ["T1CE"]
    assert layout.labels == {"background": 0, "meningioma": 1, "glioma": 2, "pituitary_tumour": 3}
    for number, (label, pid) in FIGSHARE.items():
        check_case(layout, number, TYPE_OF_LABEL[label], slice_image(number), slice_mask(number))
        assert layout.cases[case_name(number)].prompts[0].meta["patient"] == pid
        assert case_name(number) in layout.splits[SPLIT_OF_PATIENT[pid]]
    pituitary = {p.class_name: p for p in layout.cases[case_name(4)].prompts}["pituitary_tumour"]
    assert pituitary.prompt == "segment the pituitary tumour"
    zipped = layout.cases[case_name(767)].prompts[0].meta
    assert zipped["source_file"] == "brainTumorDataPublic_767-1532.zip:767.mat" and zipped["figshare_id"] == 767
    assert layout.vocabulary.synonyms["glioma"][0] == "glioma"
    meta = json.loads((dst / "dataset.json").read_text())["medtextseg"]
    assert meta["split_unit"] == "patient" and meta["layout"] == "mat"
    groups = json.loads((dst / "case_groups.json").read_text())  # a patient's slices: one group, for the folds
    for number, (_, pid) in FIGSHARE.items():
        together = [n for n, (_, other) in FIGSHARE.items() if other == pid]
        assert groups.get(case_name(number)) == (f"patient:{pid}" if len(together) > 1 else None)


def test_bad_files_are_skipped_by_name_and_a_second_run_reads_the_patients_again(figshare, tmp_path):
    folder = figshare / "brainTumorDataPublic_1-766"
    (folder / "5.mat").write_bytes(b"not a mat file" * 40)
    write_mat(folder / "6.mat", 6, label=4, tmp_path=tmp_path)
    write_mat(folder / "7.mat", 7, mask=np.zeros((ROWS, COLUMNS), np.uint8), tmp_path=tmp_path)
    dst = tmp_path / "out"
    summary = convert_brain_tumour_kaggle(figshare, dst, spatial_dims=2)
    assert sorted(summary.skipped) == ["btd_0005", "btd_0006", "btd_0007"]
    assert "5.mat" in summary.skipped["btd_0005"] and "not a MATLAB" in summary.skipped["btd_0005"]
    assert "6.mat" in summary.skipped["btd_0006"] and "cjdata.label" in summary.skipped["btd_0006"]
    assert "7.mat" in summary.skipped["btd_0007"] and "empty" in summary.skipped["btd_0007"]
    splits = json.loads((dst / "splits.json").read_text())
    again = convert_brain_tumour_kaggle(figshare, dst, spatial_dims=2)
    assert again.converted == [] and again.already_done == [case_name(n) for n in sorted(FIGSHARE)]
    assert json.loads((dst / "splits.json").read_text()) == splits  # patients read again for the splits


def test_missing_h5py_is_explained(figshare, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(MedTextSegError, match="pip install h5py"):
        convert_brain_tumour_kaggle(figshare, tmp_path / "out", spatial_dims=2)


def test_a_matlab_v5_file_is_read_with_scipy(tmp_path):
    from scipy.io import savemat

    src = tmp_path / "src"
    src.mkdir()
    savemat(src / "12.mat", {"cjdata": {"image": slice_image(12), "label": 3.0, "PID": "MR011",
                                        "tumorMask": slice_mask(12)}})
    layout = load_dataset(convert_brain_tumour_kaggle(src, tmp_path / "out", spatial_dims=2).dataset)
    check_case(layout, 12, "pituitary_tumour", slice_image(12), slice_mask(12))
    assert layout.cases["btd_0012"].prompts[0].meta["patient"] == "MR011"


# ------------------------------------------------------------------------ Kaggle PNG folders
def save_png(path, array_rc: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array_rc.astype(np.uint8)).save(path)


def png_image(number: int) -> np.ndarray:
    return (np.arange(ROWS * COLUMNS).reshape(ROWS, COLUMNS) + 7 * number) % 251


def png_mask(number: int) -> np.ndarray:
    """As the Kaggle masks: 255 on the tumour, 3 (not 0) elsewhere."""
    return np.where(slice_mask(number) > 0, 255, 3)


KAGGLE = {1: "Meningioma", 3: "Glioma", 4: "Pituitary tumor", 767: "Glioma"}


@pytest.fixture
def kaggle(tmp_path):
    """indk214's DATASET folder: Segmentation/{type}/enh_{N}.png + enh_{N}_mask.png; Classification without masks."""
    src = tmp_path / "kaggle"
    for number, folder in KAGGLE.items():
        save_png(src / "DATASET" / "Segmentation" / folder / f"enh_{number}.png", png_image(number))
        save_png(src / "DATASET" / "Segmentation" / folder / f"enh_{number}_mask.png", png_mask(number))
    save_png(src / "DATASET" / "Segmentation" / "Glioma" / "enh_1841.png", png_image(1841))  # its mask is missing
    save_png(src / "DATASET" / "Classification" / "Training" / "glioma" / "Tr-gl_0010.png", png_image(10))
    save_png(src / "DATASET" / "Classification" / "Testing" / "notumor" / "Te-no_0001.png", png_image(11))
    return src


def test_kaggle_folders_are_converted_from_the_command_line(kaggle, tmp_path):
    dst = tmp_path / "out"
    result = runner.invoke(app, ["convert", "brain_tumour_kaggle", "--src", str(kaggle), "--dst", str(dst),
                                 "--spatial-dims", "2"])
    assert result.exit_code == 0, result.output
    assert "4 cases" in result.output and "btd_1841: no mask enh_1841_mask.png" in result.output
    layout = load_dataset(dst)
    verify_dataset(layout)
    assert sorted(layout.cases) == [case_name(n) for n in sorted(KAGGLE)]  # no classification image
    types = {"Meningioma": "meningioma", "Glioma": "glioma", "Pituitary tumor": "pituitary_tumour"}
    for number, folder in KAGGLE.items():
        check_case(layout, number, types[folder], png_image(number), slice_mask(number))
        assert layout.cases[case_name(number)].prompts[0].meta["patient"] is None
    meta = json.loads((dst / "dataset.json").read_text())["medtextseg"]
    assert meta["split_unit"] == "image" and meta["layout"] == "png"
    again = runner.invoke(app, ["convert", "brain_tumour_kaggle", "--src", str(kaggle), "--dst", str(dst),
                                "--spatial-dims", "2"])
    assert "(0 converted, 4 already done)" in again.output


def test_patients_option_takes_the_pids_of_the_figshare_files(kaggle, figshare, tmp_path):
    summary = convert_brain_tumour_kaggle(kaggle, tmp_path / "out", spatial_dims=2, patients=str(figshare))
    layout = load_dataset(summary.dataset)
    for number in KAGGLE:
        pid = FIGSHARE[number][1]
        assert layout.cases[case_name(number)].prompts[0].meta["patient"] == pid
        assert case_name(number) in layout.splits[SPLIT_OF_PATIENT[pid]]
    assert json.loads((summary.dataset / "dataset.json").read_text())["medtextseg"]["split_unit"] == "patient"
    table = tmp_path / "patients.csv"
    table.write_text("image,patient\nenh_1.png,P1\n3,P3\nenh_4,P4\n")
    again = convert_brain_tumour_kaggle(kaggle, tmp_path / "out_csv", spatial_dims=2, patients=str(table))
    found = {c: r.prompts[0].meta["patient"] for c, r in load_dataset(again.dataset).cases.items()}
    assert found == {"btd_0001": "P1", "btd_0003": "P3", "btd_0004": "P4", "btd_0767": None}


def test_images_and_masks_folders_and_compressed_masks(tmp_path):
    src = tmp_path / "src"
    noisy = np.where(slice_mask(5) > 0, 250, 4)
    noisy[0, 0], noisy[11, 15] = 120, 131  # JPEG ringing: below / above the threshold
    (src / "meningioma" / "images").mkdir(parents=True)
    Image.fromarray(png_image(5).astype(np.uint8)).convert("RGB").save(src / "meningioma" / "images" / "x5.jpg")
    save_png(src / "meningioma" / "masks" / "x5.png", noisy)
    layout = load_dataset(convert_brain_tumour_kaggle(src, tmp_path / "out", spatial_dims=2).dataset)
    label = np.asarray(nib.load(str(layout.cases["btd_0005"].label_path)).dataobj)[:, :, 0]
    expected = slice_mask(5).T.copy()
    expected[15, 11] = 1
    assert np.array_equal(label > 0, expected > 0)
    assert np.array_equal(mask_pixels(np.array([[0, 1], [1, 0]])), np.array([[False, True], [True, False]]))


@pytest.mark.parametrize("args, message", [
    (["--spatial-dims", "3"], "pass --spatial-dims 2"),
    (["--spatial-dims", "2", "--option", "layuot=mat"], "did you mean 'layout'"),
    (["--spatial-dims", "2", "--option", "layout=dicom"], "option layout must be one of auto, mat, png, got 'dicom'"),
    (["--spatial-dims", "2", "--option", "layout=mat"], "no figshare brain tumour files"),
])
def test_bad_options_end_with_one_line(kaggle, tmp_path, args, message):
    result = runner.invoke(app, ["convert", "brain_tumour_kaggle", "--src", str(kaggle), "--dst",
                                 str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert message in result.output, result.output
