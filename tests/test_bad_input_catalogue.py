"""The bad-input and fault catalogue: each case ends in one line naming the file or field, exit status 2, and
leaves every input as it was and nothing half-written. Rows are added as the catalogue is worked through."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medtextseg.cli import app
from medtextseg.config import Config
from medtextseg.training.trainer import train

runner = CliRunner()
TINY_2D = ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
           "train.steps=1", "train.val_cases=1", "train.warmup_steps=1"]


@pytest.fixture(scope="module")
def model_run(dataset_2d, tmp_path_factory) -> Path:
    config = Config.load("default_2d", [*TINY_2D, f"data.root={dataset_2d}"])
    return train(config, tmp_path_factory.mktemp("catalogue") / "run", progress=False)


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


class Payload:
    """Pickles as a call that creates a file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


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
    from medtextseg.training.checkpoint import load_checkpoint

    state = load_checkpoint(model_run / "last.pt")
    assert state["rng"]["numpy"][0] == "MT19937" and state["rng"]["numpy"][1].shape == (624,)
