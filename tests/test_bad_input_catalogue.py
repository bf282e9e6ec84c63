"""The bad-input and fault catalogue: each case ends in one line naming the file or field, exit status 2, and
leaves every input as it was and nothing half-written. Rows are added as the catalogue is worked through; the
last test keeps docs/bad_input_catalogue.md generated from them."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import Payload, link_member, repack
from medtextseg.cli import app
from medtextseg.config import Config
from medtextseg.training.engine import train

runner = CliRunner()
TINY_2D = ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
           "train.steps=1", "train.val_cases=1", "train.warmup_steps=1"]


TINY_3D = ["model.channels=[4,8,16]", "model.strides=[[1,1,1],[2,2,1],[2,2,2]]", "data.patch_size=[32,32,16]",
           "train.steps=1", "train.val_cases=1", "train.warmup_steps=1"]


@pytest.fixture(scope="module")
def model_run(dataset_2d, tmp_path_factory) -> Path:
    config = Config.load("default_2d", [*TINY_2D, f"data.root={dataset_2d}"])
    return train(config, tmp_path_factory.mktemp("catalogue") / "run", progress=False)


@pytest.fixture(scope="module")
def model_run_3d(dataset_3d, tmp_path_factory) -> Path:
    config = Config.load("default", [*TINY_3D, f"data.root={dataset_3d}"])
    return train(config, tmp_path_factory.mktemp("catalogue") / "run_3d", progress=False)


@pytest.fixture(scope="module")
def model_25d(tmp_path_factory) -> Path:
    """An untrained 2.5D model (data.slice_context=1: 3 slices of each of 3 channels), as a checkpoint file."""
    from medtextseg.models.checkpoint import save_checkpoint
    from medtextseg.models.factory import create_model

    config = Config.load("default_2d", [*TINY_2D, "model.in_channels=9", "data.slice_context=1"])
    return save_checkpoint(tmp_path_factory.mktemp("catalogue") / "model_25d.pt",
                           {"model": create_model(config.model, 384).state_dict(), "config": config.model_dump(),
                            "text_dim": 384, "channel_names": ["T2W", "ADC", "HBV"]})


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` -> the digest of its bytes (what a test compares before and after)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def predict_args(run: Path, images: list[Path], out: Path) -> list[str]:
    return ["predict", "-m", str(run), *[a for p in images for a in ("-i", str(p))],
            "-p", "the prostate gland", "-p", "the lesion in the left PZ", "-o", str(out), "--probabilities"]


def inputs_named_like_outputs(dataset: Path, folder: Path) -> list[Path]:
    """A case's channel files copied into ``folder`` under the names predict gives its outputs."""
    folder.mkdir()
    names = ["mask_00.nii.gz", "mask_01.nii.gz", "probability_00.nii.gz"]
    sources = sorted((dataset / "imagesTr").glob("synth_000_*.nii.gz"))
    return [Path(shutil.copy(source, folder / name)) for source, name in zip(sources, names, strict=True)]


def test_predict_refuses_to_write_over_its_own_inputs(model_run, dataset_2d, tmp_path):
    """Issue 19, fix first: this wrote the masks over the input files and exited 0."""
    images = inputs_named_like_outputs(dataset_2d, tmp_path / "in")
    before = snapshot(tmp_path / "in")
    result = runner.invoke(app, predict_args(model_run, images, tmp_path / "in"))
    assert result.exit_code == 2, result.output
    assert f"error: --out {tmp_path / 'in'}: holds the input {images[0]}" in result.output
    assert snapshot(tmp_path / "in") == before  # same files, same bytes: nothing overwritten, nothing added


def test_predict_refuses_an_input_reached_through_a_link(model_run, dataset_2d, tmp_path):
    images = inputs_named_like_outputs(dataset_2d, tmp_path / "in")
    (tmp_path / "alias").symlink_to(tmp_path / "in")
    result = runner.invoke(app, predict_args(model_run, images, tmp_path / "alias"))
    assert result.exit_code == 2 and "holds the input" in result.output
    # a hard link to an input under the name of a planned output
    (tmp_path / "out").mkdir()
    os.link(images[1], tmp_path / "out" / "mask_00.nii.gz")
    before = snapshot(tmp_path / "in")
    result = runner.invoke(app, predict_args(model_run, images, tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'out' / 'mask_00.nii.gz'} is the input {images[1]} (the same file)" in result.output
    assert snapshot(tmp_path / "in") == before and sorted(os.listdir(tmp_path / "out")) == ["mask_00.nii.gz"]


@pytest.mark.parametrize("subfolder", ["", "imagesTr", "labelsTr"])
def test_predict_refuses_a_dataset_folder(model_run, dataset_2d, tmp_path, subfolder):
    dataset = Path(shutil.copytree(dataset_2d, tmp_path / "dataset"))
    images = [Path(shutil.copy(p, tmp_path / p.name)) for p in sorted(dataset.glob("imagesTr/synth_000_*"))]
    before = snapshot(dataset)
    result = runner.invoke(app, predict_args(model_run, images, dataset / subfolder))
    assert result.exit_code == 2, result.output
    assert "is a dataset's own folder; predictions written there would be read back as data" in result.output
    assert snapshot(dataset) == before


def test_a_checkpoint_that_would_run_code_is_refused_unrun(model_run, dataset_2d, tmp_path):
    """Issue 19, fix first: a best.pt carrying a pickled payload ran it, then predicted (exit 0)."""
    state = torch.load(model_run / "best.pt", weights_only=True)
    marker = tmp_path / "payload_ran"
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    torch.save({**state, "extra": Payload(marker)}, hostile / "best.pt")
    images = sorted((dataset_2d / "imagesTr").glob("synth_000_*.nii.gz"))
    result = runner.invoke(app, predict_args(hostile, images, tmp_path / "pred"))
    assert result.exit_code == 2, result.output
    assert f"error: {hostile / 'best.pt'}: refused, loading it would run code (it calls " in result.output
    assert not marker.exists()  # the payload never ran
    assert not (tmp_path / "pred").exists()


def test_own_checkpoints_load_weights_only_and_resume(model_run, tmp_path):
    """last.pt carries numpy's RNG state: allow-listed by name, so resuming still works weights-only."""
    from medtextseg.models.trained import load_checkpoint

    state = load_checkpoint(model_run / "last.pt")
    assert state["rng"]["numpy"][0] == "MT19937" and state["rng"]["numpy"][1].shape == (624,)


# ------------------------------------------------------------------ a dataset reads only its own files
def dataset_copy(dataset: Path, folder: Path) -> Path:
    return Path(shutil.copytree(dataset, folder))


def train_args(dataset: Path, out: Path, preset: str = "default_2d", sets: tuple[str, ...] = ()) -> list[str]:
    return ["train", "-d", str(dataset), "-o", str(out), "-p", preset,
            *[a for s in [*TINY_2D, *sets] for a in ("--set", s)]]


def append_line(path: Path, line: str) -> int:
    """Append one line to a text file; returns its line number."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    return len(path.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
def test_a_prompt_target_outside_the_dataset_folder_is_refused(dataset_2d, tmp_path, how):
    """Issue 19, fix first: a target of "../../elsewhere/mask.nii.gz" or an absolute path was read and trained on."""
    dataset = dataset_copy(dataset_2d, tmp_path / "data" / "ds")
    elsewhere = tmp_path / "elsewhere" / "mask.nii.gz"
    elsewhere.parent.mkdir()
    shutil.copy(dataset / "labelsTr" / "synth_001.nii.gz", elsewhere)  # a valid mask on the case's grid
    if how == "symlink":
        (dataset / "masks").mkdir()
        (dataset / "masks" / "mask.nii.gz").symlink_to(elsewhere)
    target = {"relative": "../../elsewhere/mask.nii.gz", "absolute": str(elsewhere),
              "symlink": "masks/mask.nii.gz"}[how]
    number = append_line(dataset / "prompts.jsonl", json.dumps({"case": "synth_001", "prompt": "the mask elsewhere",
                                                                "target": target}))
    before = snapshot(tmp_path)
    result = runner.invoke(app, train_args(dataset, tmp_path / "run"))
    assert result.exit_code == 2, result.output
    assert (f"error: {dataset / 'prompts.jsonl'}:{number}: target {target!r} resolves outside the dataset folder "
            f"{dataset}; keep mask files inside the dataset folder, named relative to it") in result.output
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


# ------------------------------------------------------------------ sparsify --overwrite deletes only its own output
@pytest.fixture
def sparsify_area(dataset_3d, tmp_path) -> Path:
    """A source dataset in work/dense, a user's folder, a dataset sparsify did not write, and a plain file."""
    dataset_copy(dataset_3d, tmp_path / "work" / "dense")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's notes\n")
    (tmp_path / "other").mkdir()
    shutil.copy(dataset_3d / "dataset.json", tmp_path / "other" / "dataset.json")
    (tmp_path / "file.txt").write_text("a plain file\n")
    return tmp_path


@pytest.mark.parametrize("dst, message", [
    ("work/dense", "--dst {dst}: must differ from --src"),
    ("work", "--dst {dst}: is --src {src} or a folder holding it; replacing it would delete the source: choose "
             "a folder outside it"),
    ("work/dense/sparse", "--dst {dst}: lies inside --src {src}; the copy would change the source: choose a "
                          "folder outside it"),
    ("mine", "--dst {dst}: not a folder sparsify wrote (no sparse_annotations.json beside a dataset.json naming "
             "its source); --overwrite replaces only those: choose another --dst or remove it yourself"),
    ("other", "--dst {dst}: not a folder sparsify wrote (no sparse_annotations.json beside a dataset.json naming "
              "its source); --overwrite replaces only those: choose another --dst or remove it yourself"),
    ("file.txt", "--dst {dst}: is a file; --dst names the folder to write the sparse copy into"),
])
def test_sparsify_overwrite_deletes_nothing_it_did_not_write(sparsify_area, dst, message):
    """Issue 19: --overwrite deleted whatever --dst pointed at (the source's parent, a user's folder)."""
    src, dst = sparsify_area / "work" / "dense", sparsify_area / dst
    before = snapshot(sparsify_area)
    result = runner.invoke(app, ["sparsify", "--src", str(src), "--dst", str(dst), "--fraction", "0.5",
                                 "--overwrite"])
    assert result.exit_code == 2, result.output
    assert f"error: {message.format(dst=dst, src=src)}" in result.output
    assert snapshot(sparsify_area) == before  # the source and the user's files are all there, unchanged
    assert sorted(p.name for p in sparsify_area.iterdir()) == ["file.txt", "mine", "other", "work"]


def test_sparsify_overwrite_replaces_its_own_output(sparsify_area):
    src, dst = sparsify_area / "work" / "dense", sparsify_area / "sparse"
    args = ["sparsify", "--src", str(src), "--dst", str(dst), "--fraction", "0.5"]
    assert runner.invoke(app, args).exit_code == 0
    (dst / "stale.txt").write_text("from before\n")
    result = runner.invoke(app, [*args, "--overwrite", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert not (dst / "stale.txt").exists() and json.loads((dst / "dataset.json").read_text())["medtextseg"][
        "sparse"]["seed"] == 1


# ------------------------------------------------------------------ atomic writes: whole files, the user's mode
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
@pytest.mark.parametrize("name, files", [("mask.mhd", ["mask.mhd", "mask.zraw"]), ("mask.nii.gz", ["mask.nii.gz"])])
def test_written_images_are_alone_whole_and_readable_under_the_umask(dataset_2d, tmp_path, name, files, umask,
                                                                     mode):
    """Issue 19: a .mhd left a stray .mask-XXXX.zraw beside it; outputs were 0600 whatever the umask."""
    from medtextseg.data.io import read_array, read_geometry, write_like
    from medtextseg.utils.atomic import write_text_atomic

    reference = dataset_2d / "imagesTr" / "synth_000_0000.nii.gz"
    array = (read_array(reference) > 0).astype(np.uint8)
    out = tmp_path / "out"
    previous = os.umask(umask)
    try:
        write_like(array, reference, out / name)
        write_like(array, reference, out / name)  # over an earlier output
        write_text_atomic(out / "prompts.json", "[]")
    finally:
        os.umask(previous)
    assert sorted(os.listdir(out)) == sorted([*files, "prompts.json"])
    assert {f: stat.S_IMODE((out / f).stat().st_mode) for f in os.listdir(out)} == dict.fromkeys(os.listdir(out),
                                                                                                mode)
    if name.endswith(".mhd"):
        assert "ElementDataFile = mask.zraw" in (out / name).read_text(errors="replace")
    assert np.array_equal(read_array(out / name), array)
    assert read_geometry(out / name).same_grid(read_geometry(reference))


def test_a_failed_atomic_write_leaves_nothing(tmp_path):
    from medtextseg.utils.atomic import atomic_path

    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out" / "mask.mhd") as tmp:
        tmp.write_text("header")
        tmp.with_suffix(".zraw").write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert os.listdir(tmp_path / "out") == []


# ------------------------------------------------------------------ a study writes only below -o
@pytest.mark.parametrize("configuration, dataset, data_option, message", [
    ("../../../escaped", "synth", None, "configuration name '../../../escaped'"),
    ("a/b", "synth", None, "configuration name 'a/b'"),
    ("..", "synth", None, "configuration name '..'"),
    ("ok", "../escaped", None, "dataset name '../escaped'"),
    ("ok", "synth", "../../escaped", "dataset name '../../escaped'"),
])
def test_a_study_name_that_is_a_path_is_refused(dataset_2d, tmp_path, configuration, dataset, data_option, message):
    """Issue 19: a configuration named ../../x wrote its run outside -o."""
    import yaml

    spec = tmp_path / "specs" / "study.yaml"
    spec.parent.mkdir()
    spec.write_text(yaml.safe_dump({"name": "tiny", "preset": "default_2d", "seeds": [0], "overrides": TINY_2D,
                                    "configurations": {configuration: []}, "datasets": {dataset: str(dataset_2d)}}))
    out = tmp_path / "a" / "b" / "out"
    before = snapshot(tmp_path)
    extra = ["--data", f"{data_option}={dataset_2d}"] if data_option else []
    result = runner.invoke(app, ["study", str(spec), "-o", str(out), *extra])
    assert result.exit_code == 2, result.output
    assert (f"error: {spec}: {message} is not a plain folder name (it holds '/' or '\\', or is '.' or '..'); each "
            "run is written to OUT/runs/DATASET/CONFIGURATION/: rename it") in result.output
    assert snapshot(tmp_path) == before and not (tmp_path / "a").exists()


# ------------------------------------------------------------------ one writer per output folder
HOLD_LOCK = """
import sys, time
from medtextseg.utils.folder_lock import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(300)
"""


@pytest.fixture
def held_folder(tmp_path):
    """A folder whose lock another process holds: a child that takes it and sleeps. Yields (folder, child)."""
    import subprocess
    import sys

    import medtextseg

    folder = tmp_path / "held"
    source = str(Path(medtextseg.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline() == b"locked\n"
        yield folder, child
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


def in_use(folder: Path, pid: int) -> str:
    return (f"error: {folder}: in use by another medtextseg process (pid {pid}, which holds .medtextseg.lock); wait "
            "for it to end or choose another output folder")


@pytest.mark.parametrize("command", ["train", "predict"])
def test_a_second_writer_into_a_locked_folder_stops_at_once(held_folder, command, model_run, dataset_2d, tmp_path):
    """Issue 19: two trainings into one --out both exited 0 with their files mixed; two predicts mixed masks."""
    folder, child = held_folder
    before = snapshot(tmp_path)
    if command == "train":
        args = train_args(dataset_2d, folder)
    else:
        args = predict_args(model_run, sorted((dataset_2d / "imagesTr").glob("synth_000_*.nii.gz")), folder)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == in_use(folder, child.pid)
    assert snapshot(tmp_path) == before and os.listdir(folder) == [".medtextseg.lock"]


def test_under_torchrun_every_rank_stops_when_rank_0_finds_the_folder_locked(held_folder, dataset_2d):
    """Issue 19: rank 0 stopped at once on a locked run folder, but the other ranks planned and then waited for it
    in the process group until its timeout (half an hour). Two processes with torchrun's environment (gloo)."""
    import socket
    import subprocess
    import sys

    import medtextseg

    folder, child = held_folder
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = str(Path(medtextseg.__file__).parents[1])
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    ranks = [subprocess.Popen([sys.executable, "-m", "medtextseg.cli", *train_args(dataset_2d, folder)],
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        outputs = [rank.communicate(timeout=150) for rank in ranks]  # the fix: seconds, not the group's timeout
    finally:
        for rank in ranks:
            rank.kill()
            rank.wait()
    assert [rank.returncode for rank in ranks] == [2, 2], outputs
    assert [err.strip() for _, err in outputs] == [in_use(folder, child.pid)] * 2, outputs
    assert os.listdir(folder) == [".medtextseg.lock"]


def test_a_killed_holder_leaves_no_stale_lock(held_folder, model_run, dataset_2d):
    """The kernel drops a flock when its process dies, SIGKILL included: the next predict takes the folder."""
    folder, child = held_folder
    child.kill()
    child.wait()
    assert (folder / ".medtextseg.lock").read_text() == f"{child.pid}\n"  # left by the killed holder
    result = runner.invoke(app, predict_args(model_run, sorted((dataset_2d / "imagesTr").glob("synth_000_*.nii.gz")),
                                             folder))
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(folder)) == ["mask_00.nii.gz", "mask_01.nii.gz", "probability_00.nii.gz",
                                          "probability_01.nii.gz", "prompts.json"]  # the lock file went with it


def test_the_lock_is_taken_and_given_back_in_one_process(tmp_path):
    from medtextseg.utils.errors import MedTextSegError
    from medtextseg.utils.folder_lock import folder_lock

    folder = tmp_path / "a" / "b"
    with folder_lock(folder):
        assert (folder / ".medtextseg.lock").read_text() == f"{os.getpid()}\n"
        with folder_lock(tmp_path / "a" / ".." / "a" / "b"):  # held by this process: taking it again is a no-op
            pass
        assert (folder / ".medtextseg.lock").is_file()  # still held
    assert not (tmp_path / "a").exists()  # made for the lock, empty: removed with it
    with pytest.raises(MedTextSegError, match="cannot create the folder"), folder_lock(tmp_path / "a" / "\0"):
        pass
    with pytest.raises(RuntimeError, match="the writer failed"), folder_lock(folder):
        (folder / "result.txt").write_text("written")
        raise RuntimeError("the writer failed")
    assert os.listdir(folder) == ["result.txt"]  # what was written stays; the lock went
    with folder_lock(folder):  # and it can be taken again
        pass


@pytest.mark.parametrize("where, message", [
    ("file.txt", "{out}: is a file, not a folder; choose an output folder"),
    ("file.txt/out", "{out}: cannot create the folder (Not a directory); choose a writable output folder"),
    ("read_only/out", "{out}: cannot create the folder (Permission denied); choose a writable output folder"),
    ("read_only", "{out}: cannot write into the folder (Permission denied); choose a writable output folder"),
])
def test_an_output_folder_that_cannot_be_written(model_run, dataset_2d, tmp_path, where, message):
    """Issue 19: an output path that is a file, lies under one, or is read-only ended in a traceback."""
    if where.startswith("read_only") and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    (tmp_path / "file.txt").write_text("a user's file\n")
    (tmp_path / "read_only").mkdir(mode=0o555)
    out = tmp_path / where
    before = snapshot(tmp_path)
    result = runner.invoke(app, predict_args(model_run, sorted((dataset_2d / "imagesTr").glob("synth_000_*.nii.gz")),
                                             out))
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: " + message.format(out=out)
    assert snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["file.txt", "read_only"]


# ------------------------------------------------------------------ one line, not a traceback
def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def spatial_dims_text(ds: Path, tmp: Path) -> dict:
    edit_json(ds / "dataset.json", lambda d: d["medtextseg"].update(spatial_dims="2D"))
    return {}


def channel_names_list(ds: Path, tmp: Path) -> dict:
    edit_json(ds / "dataset.json", lambda d: d.update(channel_names=["T2W", "ADC", "HBV"]))
    return {}


def prompts_empty(ds: Path, tmp: Path) -> dict:
    (ds / "prompts.jsonl").write_text("", encoding="utf-8")
    return {}


def prompts_latin1(ds: Path, tmp: Path) -> dict:
    path = ds / "prompts.jsonl"
    number = append_line(path, json.dumps({"case": "synth_001", "prompt": "la région de la prostate",
                                           "target": [1]}, ensure_ascii=False))
    path.write_bytes(path.read_text(encoding="utf-8").encode("latin-1"))
    return {"line": number}


def prompts_meta_list(ds: Path, tmp: Path) -> dict:
    number = append_line(ds / "prompts.jsonl", json.dumps({"case": "synth_001", "prompt": "the gland",
                                                           "target": [1, 2], "meta": ["side", "left"]}))
    return {"line": number}


def splits_list(ds: Path, tmp: Path) -> dict:
    (ds / "splits.json").write_text(json.dumps(["synth_000", "synth_001"]), encoding="utf-8")
    return {}


def split_case(ds: Path, split: str) -> str:
    return json.loads((ds / "splits.json").read_text(encoding="utf-8"))[split][0]


def label_of_test_case(change):
    """The label map of the test split's first case rewritten by ``change`` (array -> array)."""
    def make(ds: Path, tmp: Path) -> dict:
        import nibabel as nib

        case = split_case(ds, "test")
        path = ds / "labelsTr" / f"{case}.nii.gz"
        image = nib.load(path)
        data = change(np.asanyarray(image.dataobj))
        nib.save(nib.Nifti1Image(data, image.affine), path)
        spacing = "x".join(f"{float(v):.3g}" for v in image.header.get_zooms())
        return {"case": case, "shape": data.shape, "expected": image.shape, "spacing": spacing}

    return make


def with_value(value, dtype):
    def change(data: np.ndarray) -> np.ndarray:
        data = data.astype(dtype)
        data.flat[0] = value
        return data

    return change


def split_also_in(split: str, other: str):
    """The first case of ``split`` listed in ``other`` too (leakage)."""
    def make(ds: Path, tmp: Path) -> dict:
        edit_json(ds / "splits.json", lambda d: d[other].append(d[split][0]))
        return {"case": split_case(ds, split)}

    return make


def prompt_target(target):
    def make(ds: Path, tmp: Path) -> dict:
        return {"line": append_line(ds / "prompts.jsonl", json.dumps({"case": "synth_001", "prompt": "the gland",
                                                                      "target": target}))}

    return make


def rewrite_image(path: Path, change) -> None:
    """Rewrite a NIfTI file's voxels with ``change`` (array -> array), keeping its affine."""
    import nibabel as nib

    image = nib.load(path)
    nib.save(nib.Nifti1Image(change(np.asanyarray(image.dataobj)), image.affine), path)


def train_image(change):
    """Channel 0 of the first training case rewritten by ``change``."""
    def make(ds: Path, tmp: Path) -> dict:
        path = ds / "imagesTr" / f"{split_case(ds, 'train')}_0000.nii.gz"
        rewrite_image(path, change)
        return {"image": path}

    return make


def as_volume(data: np.ndarray) -> np.ndarray:
    """A 2D slice [X, Y, 1] repeated into a volume [X, Y, 4]."""
    return np.repeat(data, 4, axis=2)


def as_4d(data: np.ndarray) -> np.ndarray:
    """[X, Y, Z] -> [X, Y, Z, 3]: three channels in one file."""
    return np.stack([data] * 3, axis=-1)


def predicting(model_fixture: str, how):
    """A row run by ``predict`` with the model of ``model_fixture``: ``how(ds, tmp, request)`` returns the
    details, its ``images`` the -i files."""
    how.model_fixture = model_fixture
    return how


def images_2d(ds: Path, tmp: Path, request) -> dict:
    images = sorted((ds / "imagesTr").glob("synth_000_*.nii.gz"))
    return {"images": images, "image": images[0]}


def images_4d(copies: int):
    """One file holding the three channels of a 3D case, given ``copies`` times."""
    def make(ds: Path, tmp: Path, request) -> dict:
        source = request.getfixturevalue("dataset_3d") / "imagesTr" / "synth_000_0000.nii.gz"
        path = Path(shutil.copy(source, tmp / "four_d.nii.gz"))
        rewrite_image(path, as_4d)
        return {"images": [path] * copies, "image": path}

    return make


def images_2_of_3(ds: Path, tmp: Path, request) -> dict:
    return {"images": sorted((ds / "imagesTr").glob("synth_000_*.nii.gz"))[:2]}


def preset_file(text: str):
    def make(ds: Path, tmp: Path) -> dict:
        (tmp / "preset.yaml").write_text(text, encoding="utf-8")
        return {"args": ["-p", str(tmp / "preset.yaml")]}

    return make


def set_below_a_value(ds: Path, tmp: Path) -> dict:
    return {"args": ["--set", "train.steps.x=1"]}


def fold_argument(fold: int):
    def make(ds: Path, tmp: Path) -> dict:
        return {"args": ["--fold", str(fold)]}

    return make


def ensemble_with(other_fixture: str):
    """predict -m RUN -m OTHER: an ensemble of the 2D model and another run."""
    def make(ds: Path, tmp: Path, request) -> dict:
        other = request.getfixturevalue(other_fixture)
        return {"images": sorted((ds / "imagesTr").glob("synth_000_*.nii.gz")), "args": ["-m", str(other)],
                "model": request.getfixturevalue("model_run"), "other": other}

    return make


def checkpoint_edit(change):
    def make(ds: Path, tmp: Path, run: Path) -> Path:
        state = torch.load(run / "best.pt", weights_only=True)
        change(state)
        (tmp / "model").mkdir()
        torch.save(state, tmp / "model" / "best.pt")
        return tmp / "model"

    return make


def drop_first_weight(state: dict) -> None:
    del state["model"][next(iter(state["model"]))]


def reshape_first_weight(state: dict) -> None:
    key = next(k for k, v in state["model"].items() if v.ndim > 1)
    state["model"][key] = torch.zeros(*state["model"][key].shape[:-1], state["model"][key].shape[-1] + 1)


def package_edit(**edits):
    """The run exported (``medtextseg export``), then changed as ``repack`` says: predict -m MODEL.zip."""
    def make(ds: Path, tmp: Path, run: Path) -> Path:
        from medtextseg.training.model_package import export_model

        exported = export_model(run, tmp / "exported.zip").path
        replace = {name: change(run, tmp) for name, change in edits.get("replace", {}).items()}
        package = repack(exported, tmp / "model.zip", replace, edits.get("extra", ()), edits.get("digests", True))
        exported.unlink()
        return package

    return make


def payload_weights(run: Path, tmp: Path) -> bytes:
    """The run's weights plus a pickled call that would create a file (the row fails if it appears)."""
    path = tmp / "payload.pt"
    torch.save({**torch.load(run / "best.pt", weights_only=True), "extra": Payload(tmp / "payload_ran")}, path)
    data = path.read_bytes()
    path.unlink()
    return data


def flipped_weights(run: Path, tmp: Path) -> bytes:
    data = bytearray((run / "best.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


def unplanned(make):
    """The same case with ``train --no-plan``: the trainer reads the dataset itself."""
    def make_unplanned(ds: Path, tmp: Path) -> dict:
        details = make(ds, tmp)
        return details | {"args": [*details.get("args", []), "--no-plan"]}

    make_unplanned.command = "train --no-plan"
    return make_unplanned


def prompt_line(prompt: str):
    """A prompts.jsonl line with this prompt text (JSON escapes any control character in it)."""
    def make(ds: Path, tmp: Path) -> dict:
        return {"line": append_line(ds / "prompts.jsonl", json.dumps({"case": "synth_001", "prompt": prompt,
                                                                      "target": [1]}))}

    return make


def predict_prompt(prompt: str):
    """predict with a third -p."""
    def make(ds: Path, tmp: Path, request) -> dict:
        return {"images": sorted((ds / "imagesTr").glob("synth_000_*.nii.gz")), "args": ["-p", prompt]}

    return make


def data_folder(name: str):
    def make(ds: Path, tmp: Path) -> dict:
        return {"args": ["-d", str(tmp / name)]}

    return make


def set_values(*overrides: str):
    def make(ds: Path, tmp: Path) -> dict:
        return {"args": [a for o in overrides for a in ("--set", o)]}

    return make


NOT_A_SECTION = "is a value, not a section with fields; set it as train.steps=VALUE"
CONTROL = "the prompt has the control character {char} at character {position}; a prompt is plain text: remove it"
SURROGATE = ("the prompt has {char} at character {position}, which is not a character (a lone surrogate: text that "
             "was not valid UTF-8?); give the prompt as UTF-8 text")
PATCH_50 = ("data.patch_size [50, 50] is not a multiple of the strides' product [4, 4] along each axis (model.strides "
            "[[1, 1], [2, 2], [2, 2]]); the decoder could not join its skip connections: use e.g. --set "
            "data.patch_size=[48,48]")
CASES = {
    # dataset files: `train` stops while reading the dataset, before a run folder exists
    "spatial_dims is text": (spatial_dims_text, "{ds}/dataset.json: medtextseg.spatial_dims must be the integer 2 "
                                                "or 3, got '2D'"),
    "channel_names is a list": (channel_names_list, '{ds}/dataset.json: channel_names must be an object '
                                                    '{{"0": name, "1": name, ...}}, got a list'),
    "prompts.jsonl is empty": (prompts_empty, "{ds}/prompts.jsonl: no prompts; write one JSON line per case, "
                                              "prompt and target (see docs/dataset_format.md)"),
    "prompts.jsonl is Latin-1": (prompts_latin1, "{ds}/prompts.jsonl:{line}: not UTF-8 text (byte 0xe9); save "
                                                 "the file as UTF-8"),
    "meta is a list": (prompts_meta_list, "{ds}/prompts.jsonl:{line}: meta must be an object "
                                          '{{"key": value, ...}}, got a list'),
    "prompts.jsonl is empty, unplanned": (unplanned(prompts_empty), "{ds}/prompts.jsonl: no prompts; write one "
                                                                    "JSON line per case, prompt and target (see "
                                                                    "docs/dataset_format.md)"),
    # every case a split names is checked before training, the test split's too
    "test-split label on another grid": (label_of_test_case(lambda data: data[:-8]), "{ds}/labelsTr/{case}.nii.gz: "
                                         "not on the grid of {case}_0000.nii.gz (shape {shape} vs {expected}, "
                                         "spacing {spacing} vs {spacing}); resample it onto the first channel's "
                                         "grid"),
    "test-split label value undeclared": (label_of_test_case(with_value(9, np.uint8)), "{ds}/labelsTr/{case}.nii.gz: "
                                          "label value 9 is not declared in dataset.json labels [0, 1, 2, 3, 4, 5]"),
    "test-split label value float": (label_of_test_case(with_value(0.5, np.float32)), "{ds}/labelsTr/{case}.nii.gz: "
                                     "label map has non-integer values"),
    "test-split label value negative": (label_of_test_case(with_value(-1, np.int16)), "{ds}/labelsTr/{case}.nii.gz: "
                                        "label value -1 is not declared in dataset.json labels [0, 1, 2, 3, 4, 5]"),
    "test-split label undeclared, unplanned": (unplanned(label_of_test_case(with_value(9, np.uint8))),
                                               "{ds}/labelsTr/{case}.nii.gz: label value 9 is not declared in "
                                               "dataset.json labels [0, 1, 2, 3, 4, 5]"),
    "train and val splits overlap": (split_also_in("val", "train"), "{ds}/splits.json: splits 'train' and 'val' "
                                     "share 1 case(s) ({case}); a case in two splits leaks into the scores: keep "
                                     "each case in one split"),
    "train and test splits overlap": (split_also_in("train", "test"), "{ds}/splits.json: splits 'train' and 'test' "
                                      "share 1 case(s) ({case}); a case in two splits leaks into the scores: keep "
                                      "each case in one split"),
    "target is true": (prompt_target(True), "{ds}/prompts.jsonl:{line}: target must be a list of label values (e.g. "
                                            "[1, 2]), [] for an absent target, or a mask file path inside the "
                                            "dataset folder; got true"),
    "target is a number": (prompt_target(1), "{ds}/prompts.jsonl:{line}: target must be a list of label values "
                                             "(e.g. [1, 2]), [] for an absent target, or a mask file path inside "
                                             "the dataset folder; got 1"),
    "target lists true": (prompt_target([True]), "{ds}/prompts.jsonl:{line}: target value true is not a label "
                                                 "value; list integers declared in dataset.json labels, e.g. [1, 2]"),
    "target lists a float": (prompt_target([1.0]), "{ds}/prompts.jsonl:{line}: target value 1.0 is not a label "
                                                   "value; list integers declared in dataset.json labels, e.g. "
                                                   "[1, 2]"),
    "splits.json is a list": (splits_list, '{ds}/splits.json: must be an object of split name -> case ids, e.g. '
                                           '{{"train": [...], "val": [...], "test": [...]}}, got a list'),
    # images of other dimensions or channels than the model's, and patches the strides do not divide: refused
    # before the model sees a tensor
    # (a 3D image given to a 2D model is segmented slice by slice: tests/test_slices.py)
    "2D image to a 2.5D model": (predicting("model_25d", lambda ds, tmp, request: images_2d(ds, tmp, request)),
                                 "{image}: a single slice (shape 48 x 48 x 1) but the model reads 3 neighbouring "
                                 "slices of each channel (data.slice_context=1); give the whole volume"),
    "2D image to a 3D model": (predicting("model_run_3d", images_2d), "{image}: a 2D image (shape 48 x 48 x 1) but "
                                                                      "the model is 3D (a volume per file): give the "
                                                                      "whole volume, or use a 2D model"),
    "4D image to a 3D model": (predicting("model_run_3d", images_4d(3)), "{image}: a 4D image (shape 48 x 48 x 16 x "
                                                                         "3) but the model takes one 3D image per "
                                                                         "file: save each channel (or time point) as "
                                                                         "a file of its own, in the channel order"),
    "one 4D file for 3 channels": (predicting("model_run_3d", images_4d(1)), "{image}: a 4D image (shape 48 x 48 x "
                                                                             "16 x 3) but the model takes one 3D image "
                                                                             "per file: save each channel (or time "
                                                                             "point) as a file of its own, in the "
                                                                             "channel order"),
    "2 channel files for 3": (predicting("model_run", images_2_of_3), "the model takes 3 image file(s) (T2W, ADC, "
                                                                      "HBV), one per channel, in that order; got 2"),
    "3D image in a 2D dataset": (train_image(as_volume), "{image}: a 3D image (shape 48 x 48 x 4) but the dataset is "
                                                         "2D (one slice per file, X x Y x 1): give a single slice, or "
                                                         "declare medtextseg.spatial_dims 3 in dataset.json"),
    "4D image in a dataset": (train_image(as_4d), "{image}: a 4D image (shape 48 x 48 x 1 x 3) but the dataset takes "
                                                  "one 2D image per file: save each channel (or time point) as a "
                                                  "file of its own, in the channel order"),
    "in_channels is not the dataset's": (set_values("model.in_channels=2"), "config field 'model.in_channels' is 2 "
                                                                            "but {ds}/dataset.json declares 3 "
                                                                            "channels (T2W, ADC, HBV)"),
    "patch not divisible by the strides": (set_values("data.patch_size=[50,50]"), PATCH_50),
    "patch not divisible, unplanned": (unplanned(set_values("data.patch_size=[50,50]")), PATCH_50),
    "patch of 3 values for a 2D model": (set_values("data.patch_size=[48,48,16]"), "data.patch_size [48, 48, 16] "
                                                                                  "must have 2 values "
                                                                                  "(model.spatial_dims=2)"),
    "checkpoint's patch not divisible": (checkpoint_edit(lambda state: state["config"]["data"].update(
        patch_size=[50, 50])), "{model}/best.pt: its config: " + PATCH_50),
    # control characters: a prompt is refused naming the character by its escape; no message echoes one raw
    "prompt with an ANSI escape": (predicting("model_run", predict_prompt("the \x1b[31mgland\x1b[0m")),
                                   "prompt 3: " + CONTROL.format(char=r"'\x1b'", position=5)),
    "prompt line with an ANSI escape": (prompt_line("the \x1b[2Jgland"), "{ds}/prompts.jsonl:{line}: "
                                        + CONTROL.format(char=r"'\x1b'", position=5)),
    "prompt line with NUL": (prompt_line("the gland\x00"), "{ds}/prompts.jsonl:{line}: "
                             + CONTROL.format(char=r"'\x00'", position=10)),
    "prompt line with a bidi override": (prompt_line("the \u202ednalg"), "{ds}/prompts.jsonl:{line}: "
                                         + CONTROL.format(char=r"'\u202e'", position=5)),
    # half of a UTF-16 pair (bytes that were not UTF-8, in argv or a JSON escape): it reached the text encoder
    "prompt with a lone surrogate": (predicting("model_run", predict_prompt("the gland \udcff")),
                                     "prompt 3: " + SURROGATE.format(char=r"'\udcff'", position=11)),
    "prompt line with a lone surrogate": (prompt_line("the gland \ud800"), "{ds}/prompts.jsonl:{line}: "
                                          + SURROGATE.format(char=r"'\ud800'", position=11)),
    "folder name with an escape code": (data_folder("ds\x1b[2J"), "{tmp}/ds\\x1b[2J: dataset folder not found"),
    # configuration
    "preset is a list": (preset_file("- model\n- train\n"), "{tmp}/preset.yaml: a preset must be a mapping of "
                                                            "config sections (model:, data:, train:, ...), got a list"),
    "preset is a scalar": (preset_file("just some text\n"), "{tmp}/preset.yaml: a preset must be a mapping of "
                                                            "config sections (model:, data:, train:, ...), got a "
                                                            "string"),
    "recursive anchor": (preset_file("model: &loop\n  inner: *loop\n"), "{tmp}/preset.yaml: a YAML anchor is used "
                                                                        "inside its own value (a structure that "
                                                                        "contains itself); write the values out"),
    "--set below a value": (set_below_a_value, f"unknown config key 'train.steps.x': train.steps {NOT_A_SECTION}"),
    "fold out of range": (fold_argument(5), "data.fold=5 is out of range: data.folds=5 makes folds 0..4"),
    "ensemble of a 2D and a 3D model": (predicting("model_run", ensemble_with("model_run_3d")),
                                        "{other}/best.pt: its spatial dimensions (model.spatial_dims) is 3, but "
                                        "{model}/best.pt's is 2; an ensemble's models must share it (train them "
                                        "on one plan, e.g. medtextseg train --fold K)"),
    # checkpoints: `predict` stops while loading the model, before its output folder exists
    "weights miss a key": (checkpoint_edit(drop_first_weight), "{model}/best.pt: its weights do not fit the model "
                                                               "its config describes (missing {key}); use the file "
                                                               "medtextseg train wrote, unchanged"),
    "weights of another shape": (checkpoint_edit(reshape_first_weight), "{model}/best.pt: its weights do not fit "
                                                                        "the model its config describes ({key} has "
                                                                        "shape {shape}, the model {expected}); use "
                                                                        "the file medtextseg train wrote, unchanged"),
    "no text_dim": (checkpoint_edit(lambda state: state.pop("text_dim")), "{model}/best.pt: no 'text_dim' (the "
                                                                          "prompt feature size the model was trained "
                                                                          "with); not a checkpoint medtextseg train "
                                                                          "wrote"),
    # model packages (medtextseg export): every member checked before any is used, weights loaded weights-only
    "package member outside it (zip-slip)": (package_edit(extra=[("../evil.py", b"x")]), "{package}: member "
                                             "'../evil.py' points outside the package (an absolute path or '..'); "
                                             "refused, nothing was extracted"),
    "package member is a link": (package_edit(extra=[(link_member("plans.json"), b"/etc/passwd")]), "{package}: "
                                 "member 'plans.json' is a symbolic link; refused, nothing was extracted"),
    "package weights changed after export": (package_edit(replace={"best.pt": flipped_weights}, digests=False),
                                             "{package}: best.pt does not match the SHA-256 that metadata.json "
                                             "records (changed or damaged after export); refused: get the package "
                                             "again from its source"),
    "package weights would run code": (package_edit(replace={"best.pt": payload_weights}), "{package}:best.pt: "
                                       "refused, loading it would run code (it calls getattr); medtextseg loads "
                                       "only weights and plain data. Use a checkpoint written by medtextseg train "
                                       "from a source you trust"),
}


# ------------------------------------------------------------------ incomplete files and degenerate affines
def cut_gzip_stream(path: Path) -> dict:
    """The file's first half: its gzip stream stops mid-way, past the header."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return {}


def cut_header(path: Path) -> dict:
    """A whole gzip stream of the header's first 200 bytes alone."""
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:200]))
    return {}


def cut_voxels(path: Path) -> dict:
    """A whole gzip stream, the voxel data 100 bytes short."""
    import nibabel as nib

    header = nib.load(path).header
    needed = int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    return {"got": needed - 100, "needed": needed, "shape": " x ".join(map(str, header.get_data_shape())),
            "dtype": header.get_data_dtype().name}


def sform(change):
    """The file's affine changed by ``change`` (4x4 array, in place), written as its sform (qform unset)."""
    def spoil(path: Path) -> dict:
        import nibabel as nib

        image = nib.load(path)
        header, affine = image.header.copy(), image.affine.copy()
        change(affine)
        header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
        header["sform_code"], header["qform_code"] = 1, 0
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), None, header=header), path)
        return {}

    return spoil


def voxels_at_byte_0(path: Path) -> dict:
    """The header's vox_offset set to 0: nibabel would read the header's own bytes as voxels."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[108:112] = np.float32(0).tobytes()
    path.write_bytes(gzip.compress(bytes(raw)))
    return {}


def zero_column(affine: np.ndarray) -> None:
    affine[:3, 1] = 0


def repeated_column(affine: np.ndarray) -> None:
    affine[:3, 1] = affine[:3, 0]


def nan_entry(affine: np.ndarray) -> None:
    affine[0, 0] = np.nan


def spoilt_input(spoil):
    """predict on synth_000 with its first channel spoilt by ``spoil`` (path -> details)."""
    def make(ds: Path, tmp: Path, request) -> dict:
        images = sorted((ds / "imagesTr").glob("synth_000_*.nii.gz"))
        return {"images": images, "image": images[0], **spoil(images[0])}

    return make


def spoilt_case(split: str, spoil):
    """The first channel of the first case of ``split`` spoilt by ``spoil``."""
    def make(ds: Path, tmp: Path) -> dict:
        path = ds / "imagesTr" / f"{split_case(ds, split)}_0000.nii.gz"
        return {"image": path, **spoil(path)}

    return make


def evaluating(make):
    """The row run by ``evaluate`` (the 2D model on the dataset's test split)."""
    make.command = "evaluate"
    return make


INCOMPLETE = "the file is incomplete (an interrupted copy or download?): copy it again from its source"
NO_PLACE = "the image has no valid position in space: fix its header or export it again"
SPOILT = {
    "gzip stream cut short": (cut_gzip_stream, "{image}: cut short: its gzip stream ends before its end marker; "
                                               + INCOMPLETE),
    "header cut short": (cut_header, "{image}: the NIfTI header is cut short (200 of 348 bytes); " + INCOMPLETE),
    "voxel data cut short": (cut_voxels, "{image}: the voxel data is cut short ({got} of the {needed} bytes that "
                                         "shape {shape} of {dtype} needs); " + INCOMPLETE),
    "affine with a zero column": (sform(zero_column), "{image}: its voxel-to-world affine (sform) gives voxel axis "
                                                      "1 zero length (a voxel size of 0); " + NO_PLACE),
    "singular affine": (sform(repeated_column), "{image}: its voxel-to-world affine (sform) is singular: its voxel "
                                                "axes do not span 3D space (two point the same way); " + NO_PLACE),
    "affine with NaN": (sform(nan_entry), "{image}: its voxel-to-world affine (sform) holds NaN or infinite "
                                          "values; " + NO_PLACE),
    "voxels inside the header": (voxels_at_byte_0, "{image}: its header puts the voxels at byte 0 (vox_offset), "
                                                   "inside the header; the voxels of a .nii file start at byte 352 "
                                                   "or later: the header is broken: export the image again"),
}
# issue 19: these ended in MONAI/nibabel tracebacks (predict, and the training or evaluation after verification)
for _name, (_spoil, _message) in SPOILT.items():
    CASES[f"{_name}, predict"] = (predicting("model_run", spoilt_input(_spoil)), _message)
    CASES[f"{_name}, train"] = (spoilt_case("train", _spoil), _message)
    CASES[f"{_name}, evaluate"] = (evaluating(spoilt_case("test", _spoil)), _message)


# ------------------------------------------------------------------ 2D slices in another voxel order
def moved_slice_axis(path: Path, keep_world: bool) -> dict:
    """A 2D file's single-voxel axis moved from last to the middle (48 x 48 x 1 -> 48 x 1 x 48): with the
    affine's columns moved alike (``keep_world``: the same slice in space, stored in another voxel order), or
    kept (the slice now standing on its edge: not axial)."""
    import nibabel as nib

    image = nib.load(path)
    order = [0, 2, 1]
    affine = image.affine[:, [*order, 3]] if keep_world else image.affine
    nib.save(nib.Nifti1Image(np.transpose(np.asanyarray(image.dataobj), order), affine), path)
    return {}


def sagittal(path: Path) -> dict:
    """A 48 x 48 x 1 slice whose affine runs its single-voxel axis left-right (a sagittal slice)."""
    import nibabel as nib

    image = nib.load(path)
    affine = image.affine.copy()
    affine[:3, :3] = affine[[2, 0, 1], :3]
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), affine), path)
    return {}


NOT_AXIAL = ("{image}: a 2D image (shape {shape}) that is not an axial slice: its sform runs voxel axis {normal} "
             "superior-inferior (48 voxels) and voxel axis {single} is the single-voxel one, but {subject} is 2D "
             "on axial slices (one voxel along superior-inferior): reslice it, or correct its affine if the slice "
             "is axial")


def not_axial(spoil, shape: str, normal: int, single: int):
    def spoilt(path: Path) -> dict:
        return {**spoil(path), "shape": shape, "normal": normal, "single": single}

    return spoilt


# issue 19: a slice stored 48 x 1 x 48 passed the 2D check and was squeezed along the wrong axis
for _name, _spoil in {"2D slice stored 48 x 1 x 48": not_axial(lambda p: moved_slice_axis(p, False), "48 x 1 x 48",
                                                               2, 1),
                      "sagittal 2D slice": not_axial(sagittal, "48 x 48 x 1", 1, 2)}.items():
    CASES[f"{_name}, predict"] = (predicting("model_run", spoilt_input(
        lambda p, s=_spoil: {**s(p), "subject": "the model"})), NOT_AXIAL)
    CASES[f"{_name}, train"] = (spoilt_case("train", lambda p, s=_spoil: {**s(p), "subject": "the dataset"}),
                                NOT_AXIAL)


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_error_and_nothing_written(case, dataset_2d, tmp_path, request):
    """Issue 19: each of these ended in a raw traceback (TypeError, UnicodeDecodeError, RecursionError, ...)."""
    make, message = CASES[case]
    dataset = dataset_copy(dataset_2d, tmp_path / "ds")
    out = tmp_path / "out"
    if hasattr(make, "model_fixture"):  # predict on these images
        details = make(dataset, tmp_path, request)
        args = [*predict_args(request.getfixturevalue(make.model_fixture), details.pop("images"), out),
                *details.pop("args", [])]
    elif message.startswith("{package}"):
        details = {"package": make(dataset, tmp_path, request.getfixturevalue("model_run"))}
        args = predict_args(details["package"], sorted((dataset / "imagesTr").glob("synth_000_*.nii.gz")), out)
    elif message.startswith("{model}"):
        run = request.getfixturevalue("model_run")
        model = make(dataset, tmp_path, run)
        state = torch.load(model / "best.pt", weights_only=True)
        reference = torch.load(run / "best.pt", weights_only=True)["model"]
        key = next((k for k in reference if k not in state["model"] or state["model"][k].shape != reference[k].shape),
                   "")
        details = {"model": model, "key": key,
                   "shape": list(state["model"][key].shape) if key in state["model"] else None,
                   "expected": list(reference[key].shape) if key else None}
        args = predict_args(model, sorted((dataset / "imagesTr").glob("synth_000_*.nii.gz")), out)
    elif getattr(make, "command", "") == "evaluate":
        details = make(dataset, tmp_path)
        args = ["evaluate", "-m", str(request.getfixturevalue("model_run")), "-d", str(dataset), "-o", str(out)]
    else:
        details = make(dataset, tmp_path)
        extra = details.pop("args", [])
        args = [*train_args(dataset, out), *extra]
    before = snapshot(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    expected = message.format(ds=dataset, tmp=tmp_path, **details)
    assert result.output.strip() == f"error: {expected}"  # one line, nothing else
    assert result.output.strip().isprintable()  # no raw control character reaches the terminal
    assert snapshot(tmp_path) == before and not out.exists()


def test_a_2d_slice_in_another_voxel_order_reads_and_writes_back_on_its_grid(model_run, dataset_2d, tmp_path):
    """Issue 19: a slice stored 48 x 1 x 48 whose affine says it is axial is the same slice: it trains to the
    same weights, predicts the same mask written back 48 x 1 x 48 on its own grid, and scores the same."""
    from medtextseg.evaluation.runner import evaluate_run

    moved = dataset_copy(dataset_2d, tmp_path / "moved")
    for path in [*moved.glob("imagesTr/*.nii.gz"), *moved.glob("labelsTr/*.nii.gz")]:
        moved_slice_axis(path, keep_world=True)
    config = Config.load("default_2d", [*TINY_2D, f"data.root={moved}"])
    weights = torch.load(train(config, tmp_path / "run", progress=False) / "best.pt", weights_only=True)["model"]
    reference = torch.load(model_run / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(weights[key], value) for key, value in reference.items())
    for dataset, out in ((dataset_2d, tmp_path / "pred"), (moved, tmp_path / "pred_moved")):
        result = runner.invoke(app, predict_args(model_run, sorted(dataset.glob("imagesTr/synth_000_*")), out))
        assert result.exit_code == 0, result.output
    from medtextseg.data.io import read_array, read_geometry

    mask, moved_mask = (read_array(tmp_path / name / "mask_01.nii.gz") for name in ("pred", "pred_moved"))
    assert moved_mask.shape == (48, 1, 48) and mask.any()
    assert np.array_equal(moved_mask, np.transpose(mask, (0, 2, 1)))
    assert read_geometry(tmp_path / "pred_moved" / "mask_01.nii.gz").same_grid(
        read_geometry(moved / "imagesTr" / "synth_000_0000.nii.gz"))
    scores = [evaluate_run(model_run, dataset, tmp_path / f"eval_{dataset.name}", progress=False).summary
              for dataset in (dataset_2d, moved)]
    assert scores[0] == scores[1] and scores[0]


# ------------------------------------------------------------------ the catalogue as a document
CATALOGUE_DOC = Path(__file__).parents[1] / "docs" / "bad_input_catalogue.md"


class _Placeholders(dict):
    """How a message's placeholders read in the document: {ds} -> DATASET, {line} -> LINE, ..."""

    def __missing__(self, key: str) -> str:
        return {"ds": "DATASET", "tmp": "FOLDER", "model": "RUN", "package": "MODEL.zip"}.get(key, key.upper())


def row_command(make, message: str) -> str:
    if hasattr(make, "model_fixture") or message.startswith(("{model}", "{package}")):
        return "predict"
    return getattr(make, "command", "train")


def catalogue_markdown() -> str:
    """docs/bad_input_catalogue.md: the CASES table (case, command, the whole message), then the cases that have
    a test of their own (name and docstring), in the order of this file."""
    import inspect

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["# The bad-input catalogue", "",
             "Generated from `tests/test_bad_input_catalogue.py` by the test that keeps it current (do not edit: "
             "`MEDTEXTSEG_WRITE_CATALOGUE=1 pytest tests/test_bad_input_catalogue.py -k catalogue_doc` rewrites "
             "it). Every row is run for real by the test suite, on a copy of a small synthetic dataset: each ends "
             "with exactly this one line on stderr after `error: `, exit status 2, and nothing written (no run "
             "folder, no output folder, every input unchanged). In the messages, DATASET is the dataset folder, "
             "RUN the model's run folder, MODEL.zip a package exported from it, FOLDER a scratch folder; other "
             "capitals stand for the file, line or value at hand.", "",
             "| case | command | message |", "|---|---|---|"]
    for case, (make, message) in CASES.items():
        text = message.format_map(_Placeholders())
        lines.append(f"| {cell(case)} | `{row_command(make, message)}` | `{cell(text)}` |")
    lines += ["", "## Cases with a test of their own", "",
              "They need more than a row: several commands, two processes, links, file modes or checkpoints made "
              "to order.", "", "| test | note |", "|---|---|"]
    tests = [(inspect.getsourcelines(f)[1], name, f) for name, f in globals().items()
             if name.startswith("test_") and callable(f)
             and name not in ("test_one_line_error_and_nothing_written", "test_the_catalogue_doc_is_current")]
    for _, name, function in sorted(tests):
        summary = " ".join((inspect.getdoc(function) or "").split())
        lines.append(f"| {cell(name[len('test_'):].replace('_', ' '))} | {cell(summary)} |")
    return "\n".join(lines) + "\n"


def test_the_catalogue_doc_is_current():
    """docs/bad_input_catalogue.md is what this file's cases generate: it cannot drift from what is tested."""
    text = catalogue_markdown()
    if os.environ.get("MEDTEXTSEG_WRITE_CATALOGUE"):
        CATALOGUE_DOC.write_text(text, encoding="utf-8")
    assert CATALOGUE_DOC.is_file() and CATALOGUE_DOC.read_text(encoding="utf-8") == text, (
        f"{CATALOGUE_DOC} is out of date: MEDTEXTSEG_WRITE_CATALOGUE=1 pytest tests/test_bad_input_catalogue.py "
        "-k catalogue_doc rewrites it")
