"""Every bad input the dataset loader knows gets a one-line error naming the file (and line)."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from medtextseg.data.layout import load_dataset, verify_dataset
from medtextseg.utils.errors import MedTextSegError


@pytest.fixture
def dataset(dataset_3d, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(dataset_3d, copy)
    return copy


def _first_case(root):
    return sorted(p.name[: -len("_0000.nii.gz")] for p in (root / "imagesTr").glob("*_0000.nii.gz"))[0]


def _rewrite(path, transform):
    image = nib.load(str(path))
    data, affine = transform(np.asanyarray(image.dataobj).copy(), image.affine.copy())
    nib.save(nib.Nifti1Image(data, affine, image.header), str(path))


def test_valid_dataset_loads(dataset):
    layout = load_dataset(dataset)
    verify_dataset(layout)
    assert layout.channel_names == ["T2W", "ADC", "HBV"]
    assert set(layout.splits) == {"train", "val", "test"}
    assert sum(len(c.prompts) for c in layout.cases.values()) > 0


def test_missing_channel_file(dataset):
    case = _first_case(dataset)
    (dataset / "imagesTr" / f"{case}_0001.nii.gz").unlink()
    with pytest.raises(MedTextSegError, match=rf"{case}_0001.nii.gz: missing channel file \(dataset.json declares 3"):
        load_dataset(dataset)


def test_channels_on_different_grids(dataset):
    case = _first_case(dataset)
    path = dataset / "imagesTr" / f"{case}_0002.nii.gz"
    _rewrite(path, lambda d, a: (d, a @ np.diag([1.5, 1, 1, 1])))
    layout = load_dataset(dataset)
    with pytest.raises(MedTextSegError, match=rf"{case}_0002.nii.gz: not on the grid of {case}_0000.nii.gz"):
        verify_dataset(layout)


def test_label_on_different_grid(dataset):
    case = _first_case(dataset)
    path = dataset / "labelsTr" / f"{case}.nii.gz"
    _rewrite(path, lambda d, a: (d[:-2], a))
    with pytest.raises(MedTextSegError, match=rf"labelsTr/{case}.nii.gz: not on the grid.*shape \(46, 48, 16\)"):
        verify_dataset(load_dataset(dataset))


def test_undeclared_label_value(dataset):
    case = _first_case(dataset)
    _rewrite(dataset / "labelsTr" / f"{case}.nii.gz", lambda d, a: (np.where(d == 1, 9, d).astype(d.dtype), a))
    with pytest.raises(MedTextSegError, match=rf"{case}.nii.gz: label value 9 is not declared in dataset.json"):
        verify_dataset(load_dataset(dataset))


def test_nan_voxels(dataset):
    case = _first_case(dataset)

    def poison(data, affine):
        data = data.astype(np.float32)
        data[3, 4, 5] = np.nan
        return data, affine

    _rewrite(dataset / "imagesTr" / f"{case}_0000.nii.gz", poison)
    with pytest.raises(MedTextSegError, match=rf"{case}_0000.nii.gz: 1 NaN or infinite voxels"):
        verify_dataset(load_dataset(dataset))


def test_corrupt_image_file(dataset):
    case = _first_case(dataset)
    (dataset / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(b"not a nifti file at all")
    with pytest.raises(MedTextSegError, match=rf"{case}_0000.nii.gz: cannot read image header"):
        verify_dataset(load_dataset(dataset))


def _append_prompt(root, line):
    with open(root / "prompts.jsonl", "a") as handle:
        handle.write(line + "\n")
    return sum(1 for _ in open(root / "prompts.jsonl"))


def test_prompt_for_unknown_case(dataset):
    number = _append_prompt(dataset, json.dumps({"case": "nobody", "prompt": "the gland", "target": [1]}))
    with pytest.raises(MedTextSegError, match=rf"prompts.jsonl:{number}: unknown case 'nobody'"):
        load_dataset(dataset)


def test_prompt_with_unknown_label(dataset):
    case = _first_case(dataset)
    number = _append_prompt(dataset, json.dumps({"case": case, "prompt": "the bladder", "target": [7]}))
    with pytest.raises(MedTextSegError, match=rf"prompts.jsonl:{number}: target label 7 is not declared"):
        load_dataset(dataset)


def test_malformed_prompt_line(dataset):
    number = _append_prompt(dataset, '{"case": "synth_000", "prompt": ')
    with pytest.raises(MedTextSegError, match=rf"prompts.jsonl:{number}: not valid JSON"):
        load_dataset(dataset)


def test_empty_prompt_in_dataset(dataset):
    case = _first_case(dataset)
    number = _append_prompt(dataset, json.dumps({"case": case, "prompt": "  ", "target": []}))
    with pytest.raises(MedTextSegError, match=rf"prompts.jsonl:{number}: the prompt is empty"):
        load_dataset(dataset)


def test_missing_dataset_json(dataset):
    (dataset / "dataset.json").unlink()
    with pytest.raises(MedTextSegError, match=r"dataset.json: file not found"):
        load_dataset(dataset)


def test_mask_file_targets_are_supported(dataset):
    case = _first_case(dataset)
    label = nib.load(str(dataset / "labelsTr" / f"{case}.nii.gz"))
    mask = (np.asanyarray(label.dataobj) == 2).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, label.affine), str(dataset / "pz_mask.nii.gz"))
    _append_prompt(dataset, json.dumps({"case": case, "prompt": "pz from a file", "target": "pz_mask.nii.gz"}))
    layout = load_dataset(dataset)
    verify_dataset(layout, [case])
    from medtextseg.data.dataset import prepare_case

    prepared = prepare_case(layout.cases[case], None, 3)
    record = [p for p in layout.cases[case].prompts if p.prompt == "pz from a file"][0]
    assert prepared.target(record).sum() == (prepared.label == 2).sum() > 0


def test_verification_reads_a_case_again_only_when_its_files_changed(dataset, monkeypatch):
    """Planning and then training both verify the dataset: the second pass reads only what changed."""
    import medtextseg.data.layout as layout_module

    layout = load_dataset(dataset)
    verify_dataset(layout)
    read = []
    original = layout_module.verify_case
    monkeypatch.setattr(layout_module, "verify_case", lambda case, *args: (read.append(case.case),
                                                                          original(case, *args)))
    verify_dataset(load_dataset(dataset))
    assert read == []
    case = _first_case(dataset)
    _rewrite(dataset / "labelsTr" / f"{case}.nii.gz", lambda d, a: (np.where(d == 0, 9, d).astype(d.dtype), a))
    with pytest.raises(MedTextSegError, match=rf"labelsTr/{case}.nii.gz: label value 9 is not declared"):
        verify_dataset(load_dataset(dataset))
    assert read == [case]


def test_a_bad_file_stops_the_progress_bar_of_the_check(dataset):
    """A bad file ended the check inside rich's ``track``: the bar's refresh thread kept running while the error
    was held, and the next bar in the process waited for its display's lock for ever (a hung test run)."""
    import threading

    from rich.live import _RefreshThread

    case = _first_case(dataset)
    (dataset / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(b"not a nifti file at all")
    with pytest.raises(MedTextSegError) as error:
        verify_dataset(load_dataset(dataset), progress=True)
    assert error.value.__traceback__ is not None  # the error, and so the loop's frames, are still held
    # a stopped bar's refresh thread ends within its next tick (rich does not join it); an open one never does
    for thread in [t for t in threading.enumerate() if isinstance(t, _RefreshThread)]:
        thread.join(timeout=5)
    assert not any(isinstance(thread, _RefreshThread) for thread in threading.enumerate())
    from medtextseg.utils.progress import progress_bar

    def next_bar() -> None:  # the symptom: the next bar in the process waited for the display for ever
        with progress_bar(range(3), "next", True) as items:
            list(items)

    worker = threading.Thread(target=next_bar, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive()
