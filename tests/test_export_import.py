"""A shareable model: `export` writes a run as one .zip, `import` unpacks it into a clean folder, and both (and the
zip read in place) predict exactly what the run does; a package that is edited, escapes its folder or carries a
payload is refused before anything of it is used."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import Payload, link_member, repack
from medtextseg.api import load_model
from medtextseg.cli import app
from medtextseg.config import Config
from medtextseg.data.planning import planned_config
from medtextseg.models import package_format
from medtextseg.models.package_format import read_package
from medtextseg.training.engine import train
from medtextseg.utils.errors import MedTextSegError

runner = CliRunner()
TINY_2D = ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
           "train.steps=1", "train.val_cases=1", "train.warmup_steps=1"]
PROMPTS = ["the prostate gland", "all lesions", "the lesion in the left PZ"]
SUMMARY = [{"group": "anatomy", "n": 3, "dice_mean": 0.812, "dice_std": 0.05, "iou_mean": 0.7, "hd95_mean": 3.5,
            "empty_correct": None},
           {"group": "overall", "n": 5, "dice_mean": 0.654, "dice_std": 0.1, "iou_mean": 0.5, "hd95_mean": 6.25,
            "empty_correct": 0.5}]


@pytest.fixture(scope="module")
def run(dataset_2d, tmp_path_factory) -> Path:
    """A tiny trained 2D run, planned (plans.json), with a presence calibration and an evaluation beside it."""
    config, plan = planned_config("default_2d", [*TINY_2D, f"data.root={dataset_2d}"])
    folder = train(config, tmp_path_factory.mktemp("export") / "run", progress=False, plan=plan)
    (folder / "calibration_presence.json").write_text(json.dumps(
        {"split": "val", "chosen": 0.5, "previous": 0.5, "stability": 0.9, "rule": "test"}))
    (folder.parent / "eval").mkdir()
    (folder.parent / "eval" / "summary.json").write_text(json.dumps(SUMMARY))
    return folder


@pytest.fixture(scope="module")
def package(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("package") / "model.zip"
    result = runner.invoke(app, ["export", str(run), "-o", str(out), "--eval", str(run.parent / "eval")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {out} (") and "channels T2W, ADC, HBV" in result.output
    return out


def case_images(dataset: Path) -> list[Path]:
    return sorted((dataset / "imagesTr").glob("synth_005_*.nii.gz"))


def answers(model, images: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(s.mask, s.probability) for s in load_model(model, device="cpu").predict(images, PROMPTS)]


def same(first, second) -> bool:
    return all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, second, strict=True))


def test_export_then_import_into_a_clean_folder_predicts_identically(run, dataset_2d, tmp_path):
    """The package stands alone: exported from a copy of the run that is then deleted, imported into a new
    folder; the folder and the zip itself (read in place) give the run's masks and probabilities bit for bit."""
    images = case_images(dataset_2d)
    expected = answers(run, images)
    copy = Path(shutil.copytree(run, tmp_path / "run_copy"))
    zipped = tmp_path / "shared" / "model.zip"
    assert runner.invoke(app, ["export", str(copy), "-o", str(zipped)]).exit_code == 0
    shutil.rmtree(copy)
    result = runner.invoke(app, ["import", str(zipped), "-o", str(tmp_path / "clean" / "model")])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "clean" / "model"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "best.pt", "calibration_presence.json",
                                                       "config.yaml", "metadata.json", "plans.json"]
    assert (folder / "best.pt").read_bytes() == (run / "best.pt").read_bytes()  # best.pt travels unchanged
    assert same(answers(folder, images), expected)
    assert same(answers(zipped, images), expected)
    assert not list((tmp_path / "clean").glob(".*"))  # no hidden folder left beside it

    # the command line reads the zip as well: the same mask files as from the run
    for model, out in ((run, tmp_path / "from_run"), (zipped, tmp_path / "from_zip")):
        args = ["predict", "-m", str(model), *[a for p in images for a in ("-i", str(p))], "-o", str(out),
                "-p", PROMPTS[0], "--probabilities"]
        assert runner.invoke(app, args).exit_code == 0
    for name in ("mask_00.nii.gz", "probability_00.nii.gz"):
        assert np.array_equal(nib.load(tmp_path / "from_run" / name).get_fdata(),
                              nib.load(tmp_path / "from_zip" / name).get_fdata())


def test_the_last_checkpoint_exports_without_its_training_state(run, dataset_2d, tmp_path):
    out = tmp_path / "last.zip"
    assert runner.invoke(app, ["export", str(run), "-o", str(out), "--checkpoint", "last"]).exit_code == 0
    checked = read_package(out)
    assert "optimizer" not in checked.state and "rng" not in checked.state
    assert checked.metadata["medtextseg"]["checkpoint"] == "last.pt"
    images = case_images(dataset_2d)
    assert same(answers(out, images), answers(run / "last.pt", images))


def test_the_model_card_and_metadata_say_what_the_model_takes(package, run):
    checked = read_package(package)
    metadata, card = checked.metadata, checked.files["README.md"].decode()
    info = metadata["medtextseg"]
    config = Config.from_dict(checked.state["config"])
    assert info["channel_names"] == ["T2W", "ADC", "HBV"] and info["spatial_dims"] == 2
    assert info["spacing"] == config.data.spacing == [1.2, 1.2]
    assert info["threshold"] == 0.5 and info["presence_threshold"] == config.inference.presence_threshold
    assert info["text_encoder"] == {"name": checked.state["text_encoder"], "dim": 384, "config": "minilm",
                                    "max_tokens": config.text.max_tokens}
    assert info["prompt_kinds"] == sorted(k for k, w in config.data.kind_weights.items() if w > 0)
    assert info["files"]["best.pt"]["sha256"] == hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()
    # the MONAI bundle metadata fields
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                "required_packages_version", "task", "description", "authors", "copyright", "intended_use"):
        assert key in metadata, key
    image = metadata["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 3 and image["channel_def"] == {"0": "T2W", "1": "ADC", "2": "HBV"}
    assert image["modality"] == "MR" and image["spatial_shape"] == [48, 48]
    assert metadata["network_data_format"]["outputs"]["pred"]["value_range"] == [0, 1]
    assert metadata["eval_metrics"]["mean_dice"] == 0.654
    assert json.loads(checked.files["evaluation/summary.json"]) == SUMMARY
    for line in ("| channels | 0: T2W, 1: ADC, 2: HBV |", "| resampled to | 1.2 x 1.2 mm", "| mask threshold | 0.5 ",
                 "chosen on the 'val' split by calibrate-presence", "| overall | 5 | 0.654 | 0.500 | 6.25 | 0.50 |",
                 "Trained on SynthProstate", 'model = load_model("model.zip")', "medtextseg predict -m model.zip"):
        assert line in card, line


def test_export_refuses_to_overwrite_and_is_reproducible(run, package, tmp_path):
    before = package.read_bytes()
    result = runner.invoke(app, ["export", str(run), "-o", str(package)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: -o {package}: already exists; choose another name, or --overwrite "
                                     "to replace it")
    assert package.read_bytes() == before
    again = tmp_path / "again.zip"
    args = ["export", str(run), "-o", str(again), "--eval", str(run.parent / "eval")]
    assert runner.invoke(app, args).exit_code == 0
    assert again.read_bytes() == before  # fixed member times: the same run gives the same bytes
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(("args", "message"), [
    (["-o", "{tmp}/model.tar"], "-o {tmp}/model.tar: a model package is a .zip file; give a name ending in .zip"),
    (["-o", "{tmp}/m.zip", "--checkpoint", "worst"], "--checkpoint must be best or last, got 'worst'"),
    (["-o", "{tmp}/m.zip", "--eval", "{tmp}"], "{tmp}/summary.json: file not found (--eval takes the folder "
                                               "medtextseg evaluate -o wrote)"),
])
def test_export_errors_are_one_line(run, tmp_path, args, message):
    result = runner.invoke(app, ["export", str(run), *[a.format(tmp=tmp_path) for a in args]])
    assert result.exit_code == 2 and result.output.strip() == f"error: {message.format(tmp=tmp_path)}"
    assert not list(tmp_path.iterdir())


def test_import_replaces_only_what_an_import_wrote(package, run, tmp_path):
    target = tmp_path / "model"
    assert runner.invoke(app, ["import", str(package), "-o", str(target)]).exit_code == 0
    result = runner.invoke(app, ["import", str(package), "-o", str(target)])
    assert result.exit_code == 2 and "already exists; choose a new folder, or --overwrite" in result.output
    assert runner.invoke(app, ["import", str(package), "-o", str(target), "--overwrite"]).exit_code == 0
    other = Path(shutil.copytree(run, tmp_path / "a_run"))
    before = sorted(p.name for p in other.iterdir())
    result = runner.invoke(app, ["import", str(package), "-o", str(other), "--overwrite"])
    assert result.exit_code == 2 and "not a folder medtextseg import wrote" in result.output
    assert sorted(p.name for p in other.iterdir()) == before


def test_weights_that_would_run_code_are_refused_unrun(package, run, dataset_2d, tmp_path):
    """The digests match (a forger rewrites them): the weights-only loader is what refuses the payload."""
    marker = tmp_path / "payload_ran"
    buffer = tmp_path / "hostile.pt"
    torch.save({**torch.load(run / "best.pt", weights_only=True), "extra": Payload(marker)}, buffer)
    hostile = repack(package, tmp_path / "hostile.zip", {"best.pt": buffer.read_bytes()})
    images = case_images(dataset_2d)
    for args in (["import", str(hostile), "-o", str(tmp_path / "imported")],
                 ["predict", "-m", str(hostile), *[a for p in images for a in ("-i", str(p))], "-p", PROMPTS[0],
                  "-o", str(tmp_path / "pred")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {hostile}:best.pt: refused, loading it would run code (it calls ")
    with pytest.raises(MedTextSegError, match="refused, loading it would run code"):
        load_model(hostile)
    assert not marker.exists()  # the payload never ran
    assert not (tmp_path / "imported").exists() and not (tmp_path / "pred").exists()


@pytest.mark.parametrize(("extra", "message"), [
    ([("../evil.txt", b"x")], "member '../evil.txt' points outside the package (an absolute path or '..'); refused, "
                              "nothing was extracted"),
    ([("evaluation/../../evil.txt", b"x")], "member 'evaluation/../../evil.txt' points outside the package"),
    ([("/tmp/evil.txt", b"x")], "member '/tmp/evil.txt' points outside the package"),
    ([(link_member("plans.json"), b"/etc/passwd")], "member 'plans.json' is a symbolic link; refused"),
    ([("run.py", b"import os")], "unexpected member 'run.py'; a model package holds only metadata.json, README.md, "
                                 "best.pt, config.yaml, plans.json, calibration_presence.json, "
                                 "evaluation/summary.json"),
    ([("README.md", b"a second card")], "member 'README.md' is in it twice; refused"),
])
def test_a_member_that_could_escape_or_hide_is_refused_before_anything_is_written(package, tmp_path, extra,
                                                                                    message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name: that is the point
        bad = repack(package, tmp_path / "bad.zip", extra=tuple(extra))
    result = runner.invoke(app, ["import", str(bad), "-o", str(tmp_path / "out" / "model")])
    assert result.exit_code == 2
    assert result.output.strip().startswith(f"error: {bad}: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]  # nothing extracted, no folder made
    with pytest.raises(MedTextSegError, match="refused|unexpected"):
        load_model(bad)


def test_tampered_weights_fail_their_checksum(package, tmp_path):
    with zipfile.ZipFile(package) as archive:
        weights = bytearray(archive.read("best.pt"))
    weights[len(weights) // 2] ^= 0xFF  # one byte inside a tensor
    tampered = repack(package, tmp_path / "tampered.zip", {"best.pt": bytes(weights)}, digests=False)
    result = runner.invoke(app, ["import", str(tampered), "-o", str(tmp_path / "model")])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {tampered}: best.pt does not match the SHA-256 that metadata.json "
                                     "records (changed or damaged after export); refused: get the package again "
                                     "from its source")
    assert not (tmp_path / "model").exists()


def test_an_oversize_member_is_refused_by_its_bound(package, tmp_path, monkeypatch):
    monkeypatch.setattr(package_format, "MAX_WEIGHTS_BYTES", 1000)
    with pytest.raises(MedTextSegError, match=r"member 'best.pt' is \d+ bytes, over the bound of 1000; refused"):
        read_package(package)
    # the bytes themselves are read with the bound, whatever size the header states
    monkeypatch.setattr(package_format, "MAX_TEXT_BYTES", 100)
    with zipfile.ZipFile(package) as archive, pytest.raises(MedTextSegError, match="inflates to over 100 bytes"):
        package_format._read_bounded(package, archive, archive.getinfo("README.md"))


def test_a_file_that_is_not_a_package_is_one_line(tmp_path):
    fake = tmp_path / "model.zip"
    fake.write_text("not a zip")
    result = runner.invoke(app, ["import", str(fake), "-o", str(tmp_path / "model")])
    assert result.exit_code == 2 and result.output.startswith(f"error: {fake}: not a model package (BadZipFile")
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("best.pt", b"")
    with pytest.raises(MedTextSegError, match="not a model package: no metadata.json, README.md, config.yaml"):
        read_package(plain)
