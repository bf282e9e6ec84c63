"""The preprocessed cache: cases prepared once into DATA/.medtextseg_cache/preprocessed/{key}, read lazily, the same
tensors as preparing them afresh; invalidated by changed files and another spacing; never half-written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medtextseg.config import Config
from medtextseg.data import preprocessed as preprocessed_module
from medtextseg.data.dataset import PromptSampleDataset, prepare_case
from medtextseg.data.layout import load_dataset
from medtextseg.data.preprocessed import CachedCase, preprocess_cases, preprocessed_folder
from medtextseg.training.engine import Trainer

SPACING = [1.5, 1.5, 4.0]  # not the files' 1.2 x 1.2 x 3: the cached arrays are resampled ones


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Four synthetic 3D cases; the first also has a mask-file target (cached as a bool array)."""
    from medtextseg.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path_factory.mktemp("cache_src"), num_cases=4, spatial_dims=3, seed=2)
    case = sorted(load_dataset(root).cases)[0]
    label = nib.load(str(root / "labelsTr" / f"{case}.nii.gz"))
    mask = (np.asanyarray(label.dataobj) == 2).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, label.affine), str(root / "pz_mask.nii.gz"))
    with open(root / "prompts.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"case": case, "prompt": "pz from a file", "target": "pz_mask.nii.gz",
                                 "kind": "anatomy"}) + "\n")
    return root


@pytest.fixture
def dataset(source, tmp_path) -> Path:
    """A copy of ``source`` without any cache, for a test to change."""
    return Path(shutil.copytree(source, tmp_path / "data", ignore=shutil.ignore_patterns(".medtextseg_cache")))


def assert_same_case(cached, fresh) -> None:
    assert cached.case == fresh.case and cached.prompts == fresh.prompts
    assert cached.image.dtype == fresh.image.dtype == torch.float32 and torch.equal(cached.image, fresh.image)
    assert cached.label.dtype == fresh.label.dtype == torch.int64 and torch.equal(cached.label, fresh.label)
    assert list(cached.masks) == list(fresh.masks)
    for path, mask in fresh.masks.items():
        assert cached.masks[path].dtype == mask.dtype == torch.bool and torch.equal(cached.masks[path], mask)


@pytest.mark.parametrize("spacing", [None, SPACING])
def test_cached_arrays_equal_freshly_prepared_ones(dataset, spacing):
    layout = load_dataset(dataset)
    ids = sorted(layout.cases)
    result = preprocess_cases(layout, ids, spacing)
    assert result.prepared == len(ids) and result.folder.parent == dataset / ".medtextseg_cache" / "preprocessed"
    assert all(isinstance(c, CachedCase) for c in result.cases)
    assert any(c.mask_files for c in result.cases)  # the mask-file target is cached too
    for reference in result.cases:
        assert_same_case(reference.load(), prepare_case(layout.cases[reference.case], spacing, 3))
    assert np.load(result.cases[0].image_file, mmap_mode="r").dtype == np.float32  # maps, uncompressed
    assert np.load(result.cases[0].label_file).dtype == np.uint8  # label maps are stored small, int64 when loaded


def test_second_preparation_reads_the_cache(dataset, monkeypatch):
    layout = load_dataset(dataset)
    ids = sorted(layout.cases)
    first = preprocess_cases(layout, ids, SPACING)

    def no_preparation(*args, **kwargs):
        raise AssertionError("a cached case was prepared again")

    bars = []

    def track(sequence, description, **kwargs):
        bars.append(description)
        return sequence

    monkeypatch.setattr(preprocessed_module, "prepare_case", no_preparation)
    monkeypatch.setattr("rich.progress.track", track)
    monkeypatch.setattr("medtextseg.utils.progress.output_is_terminal", lambda: True)  # the bars a terminal shows
    second = preprocess_cases(load_dataset(dataset), ids, SPACING, progress=True)
    assert second.prepared == 0 and second.folder == first.folder
    assert bars == [f"reading {len(ids)} preprocessed cases"]
    for before, after in zip(first.cases, second.cases, strict=True):
        assert_same_case(after.load(), before.load())


def test_a_changed_source_file_prepares_that_case_only(dataset, monkeypatch):
    layout = load_dataset(dataset)
    ids = sorted(layout.cases)
    preprocess_cases(layout, ids, SPACING)
    changed = ids[1]
    path = layout.cases[changed].image_paths[2]
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched
    prepared = []
    original = preprocessed_module.prepare_case

    def counting(case, *args):
        prepared.append(case.case)
        return original(case, *args)

    monkeypatch.setattr(preprocessed_module, "prepare_case", counting)
    again = preprocess_cases(load_dataset(dataset), ids, SPACING)
    assert prepared == [changed] and again.prepared == 1
    preprocess_cases(load_dataset(dataset), ids, SPACING)  # and that entry is valid again
    assert prepared == [changed]
    # a mask-file target counts as a source of its case
    masked = next(c for c in again.cases if c.mask_files)
    mask = dataset / "pz_mask.nii.gz"
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 1_000_000_000))
    assert preprocess_cases(load_dataset(dataset), ids, SPACING).prepared == 1 and prepared[-1] == masked.case


def test_another_spacing_prepares_into_another_folder(dataset):
    layout = load_dataset(dataset)
    ids = sorted(layout.cases)[:2]
    native, coarse = preprocess_cases(layout, ids, None), preprocess_cases(layout, ids, SPACING)
    assert native.folder != coarse.folder and coarse.prepared == 2
    assert json.loads((coarse.folder / "key.json").read_text())["spacing"] == SPACING
    assert coarse.cases[0].load().image.shape != native.cases[0].load().image.shape
    assert preprocess_cases(layout, ids, None).prepared == 0  # both stay valid side by side
    assert preprocessed_folder(dataset, SPACING, 2) != coarse.folder  # and 2D data of the same spacing differs


def test_a_read_only_dataset_is_cached_in_the_users_cache(dataset, monkeypatch, tmp_path):
    home = tmp_path / "user_cache"
    monkeypatch.setenv("MEDTEXTSEG_CACHE", str(home))
    writable = preprocessed_module._writable
    monkeypatch.setattr(preprocessed_module, "_writable",  # as if the dataset folder were read-only
                        lambda folder: not folder.is_relative_to(dataset) and writable(folder))
    layout = load_dataset(dataset)
    result = preprocess_cases(layout, sorted(layout.cases)[:1], SPACING)
    assert result.folder.is_relative_to(home / "preprocessed") and not (dataset / ".medtextseg_cache").exists()
    assert result.cases[0].image_file.is_file()


def _entry_files(folder: Path, case: str) -> list[str]:
    """The case's entry and arrays in the key folder (temporary folders are hidden and named apart)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f"{case}."))


def test_an_interrupted_write_leaves_no_partial_case(dataset, monkeypatch):
    layout = load_dataset(dataset)
    case = sorted(layout.cases)[0]
    folder = preprocessed_folder(dataset, SPACING, 3)
    save = np.save

    def interrupted(path, array):
        save(path, array)
        raise KeyboardInterrupt  # after the image, before the label, masks and entry

    monkeypatch.setattr(preprocessed_module.np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        preprocess_cases(layout, [case], SPACING)
    monkeypatch.setattr(preprocessed_module.np, "save", save)
    assert _entry_files(folder, case) == [] and [p.name for p in folder.iterdir()] == ["key.json"]
    assert preprocess_cases(layout, [case], SPACING).prepared == 1


def test_a_killed_write_leaves_no_partial_case(dataset):
    """SIGKILL in the middle of writing a case's arrays: no entry and no array of that case is visible, and the
    next preparation writes it whole. (An earlier entry of the case is removed before its arrays are replaced.)"""
    layout = load_dataset(dataset)
    case = sorted(layout.cases)[0]
    folder = preprocess_cases(layout, [case], None).folder
    assert _entry_files(folder, case) == sorted([f"{case}.json", f"{case}.image.npy", f"{case}.label.npy",
                                                 f"{case}.mask0.npy"])
    stat = layout.cases[case].label_path.stat()
    os.utime(layout.cases[case].label_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    script = f"""
import os, signal
import numpy as np
from medtextseg.data import preprocessed
from medtextseg.data.layout import load_dataset
save = np.save
def killed(path, array):
    save(path, array)
    if str(path).endswith(".label.npy"):
        os.kill(os.getpid(), signal.SIGKILL)
preprocessed.np.save = killed
layout = load_dataset({str(dataset)!r})
preprocessed.preprocess_cases(layout, [{case!r}], None)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    # the old entry is gone and the new arrays never left their hidden temporary folder
    assert _entry_files(folder, case) == sorted([f"{case}.image.npy", f"{case}.label.npy", f"{case}.mask0.npy"])
    assert preprocessed_module.read_entry(folder, load_dataset(dataset).cases[case], dataset) is None
    again = preprocess_cases(load_dataset(dataset), [case], None)
    assert again.prepared == 1
    assert_same_case(again.cases[0].load(), prepare_case(load_dataset(dataset).cases[case], None, 3))


def test_lazy_cases_yield_the_items_of_in_memory_cases(dataset):
    layout = load_dataset(dataset)
    ids = sorted(layout.cases)
    references = preprocess_cases(layout, ids, SPACING).cases
    in_memory = [prepare_case(layout.cases[c], SPACING, 3) for c in ids]
    kinds = {"single": 0.45, "all": 0.1, "absent": 0.3, "anatomy": 0.15}
    lazy, eager = (PromptSampleDataset(cases, [32, 32, 8], 3, kinds, 0.5, True, seed=7, coordinates=True)
                   for cases in (references, in_memory))
    for epoch in (0, 3):
        lazy.epoch = eager.epoch = epoch
        for index in range(len(ids)):
            got, want = lazy[index], eager[index]
            assert got["prompts"] == want["prompts"] and got["kinds"] == want["kinds"]
            for key in ("image", "targets"):
                assert got[key].dtype == want[key].dtype == torch.float32 and torch.equal(got[key], want[key])


def test_workers_give_the_same_batches(dataset_2d, tmp_path):
    """train.num_workers=2 loads and augments items in two processes: the batches are those of 0 workers, across
    an epoch boundary; and the trainer's training cases are references, its validation cases in memory."""
    overrides = ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
                 "train.batch_images=2", "data.prompts_per_image=2", "train.val_cases=1", f"data.root={dataset_2d}"]
    batches = {}
    for workers in (0, 2):
        trainer = Trainer(Config.load("default_2d", [*overrides, f"train.num_workers={workers}"]),
                          tmp_path / f"run{workers}", progress=False)
        trainer._setup()
        policy = trainer.policy
        assert all(isinstance(c, CachedCase) for c in policy.train_cases)
        assert not any(isinstance(c, CachedCase) for c in policy.val_cases)
        stream, batches[workers] = policy.batches.from_step(0), []
        for _ in range(policy.batches.steps_per_epoch + 2):
            batches[workers].append(next(stream))
        stream.close()
    for zero, two in zip(batches[0], batches[2], strict=True):
        assert zero["prompts"] == two["prompts"] and zero["kinds"] == two["kinds"]
        for key in ("image", "targets", "image_index"):
            assert torch.equal(zero[key], two[key])


def test_a_second_run_reads_every_case_from_the_cache(dataset_2d, tmp_path):
    from medtextseg.training.engine import train

    overrides = ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
                 "train.batch_images=2", "data.prompts_per_image=2", "train.val_cases=1", "train.steps=1",
                 f"data.root={dataset_2d}", f"data.cache_dir={tmp_path / 'cache'}"]
    starts = []
    for name in ("first", "second"):
        run = train(Config.load("default_2d", overrides), tmp_path / name, progress=False)
        starts.append(json.loads((run / "log.jsonl").read_text().splitlines()[0]))
    layout = load_dataset(dataset_2d)
    total = len(layout.splits["train"]) + 1
    assert (starts[0]["cases_prepared"], starts[0]["cases_read"]) == (total, 0)
    assert (starts[1]["cases_prepared"], starts[1]["cases_read"]) == (0, total)
    assert list((tmp_path / "cache" / "preprocessed").iterdir())  # data.cache_dir was used
