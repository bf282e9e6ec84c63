"""Ensembles (nnU-Net's fold ensemble): several models answer with the mean of their probabilities."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import text_checkpoint
from medtextseg import MedTextSegError, load_model
from medtextseg.cli import app
from medtextseg.data.layout import load_dataset
from medtextseg.inference.ensemble import EnsemblePredictor, model_members
from medtextseg.inference.predictor import Predictor
from medtextseg.models.ensemble import SegmenterEnsemble
from medtextseg.text.batch import TextBatch

PROMPTS = ["the prostate gland", "the lesion in the left PZ", "every lesion"]
OPEN_GATE = ("inference.presence_threshold=0",)  # the gate never closes: the answers are the probabilities alone


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """A folder of two runs, fold_0 and fold_1: tiny 3D models of three channels with other weights."""
    root = tmp_path_factory.mktemp("ensemble")
    for k in range(2):
        text_checkpoint(root / f"fold_{k}", 3, OPEN_GATE, seed=k)
    return root


@pytest.fixture(scope="module")
def images(dataset_3d):
    return sorted((dataset_3d / "imagesTr").glob("synth_000_*.nii.gz"))


def test_an_ensemble_of_one_is_the_model(folds, images):
    alone = Predictor(folds / "fold_0").predict(images, PROMPTS)
    ensemble = EnsemblePredictor([folds / "fold_0"])
    assert ensemble.config == Predictor(folds / "fold_0").config
    for one, together in zip(alone, ensemble.predict(images, PROMPTS), strict=True):
        assert np.array_equal(one.probability, together.probability) and np.array_equal(one.mask, together.mask)
        assert np.array_equal(one.uncertainty, together.uncertainty)


def test_an_ensemble_of_two_answers_the_mean_of_their_probabilities(folds, images):
    first, second = (load_model(folds / f"fold_{k}").predict(images, PROMPTS) for k in range(2))
    ensemble = load_model([folds / "fold_0", folds / "fold_1"])
    assert isinstance(ensemble, EnsemblePredictor)
    together = ensemble.predict(images, PROMPTS)
    for a, b, mean in zip(first, second, together, strict=True):
        assert np.abs(a.probability - b.probability).max() > 0.05  # two models that disagree
        expected = (a.probability.astype(np.float64) + b.probability) / 2
        # averaged per window before the (linear) blending and inversion: equal up to float32 rounding
        assert np.abs(mean.probability - expected).max() <= 2e-6
        decided = np.abs(expected - 0.5) > 1e-5  # voxels not on the threshold's edge
        assert np.array_equal(mean.mask[decided], (expected > 0.5)[decided])
        assert mean.probability.shape == a.probability.shape and np.array_equal(mean.affine, a.affine)
    # a folder of runs is its runs, in name order
    assert model_members(folds) == [folds / "fold_0", folds / "fold_1"]
    for from_folder, listed in zip(load_model(folds).predict(images, PROMPTS), together, strict=True):
        assert np.array_equal(from_folder.probability, listed.probability)


def test_the_gate_compares_the_mean_presence_with_the_mean_threshold(tmp_path):
    runs = [text_checkpoint(tmp_path / f"m{k}", 3, (f"inference.presence_threshold={t}",), seed=k).parent
            for k, t in enumerate((0.2, 0.7))]
    ensemble = EnsemblePredictor(runs)
    assert ensemble.config.inference.presence_threshold == 0.45 and ensemble.config.inference.threshold == 0.5
    assert EnsemblePredictor(runs, threshold=0.3).config.inference.threshold == 0.3  # --threshold wins
    members = [member for member in ensemble.model.members]
    window = torch.randn(2, 3 + 3, 16, 16, 8)  # 3 channels + 3 coordinate channels
    text = TextBatch(torch.randn(4, 384), torch.randn(4, 5, 384), torch.ones(4, 5, dtype=torch.bool))
    index = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        outputs = [member(window, text, index) for member in members]
        joint = SegmenterEnsemble(members)(window, text, index)
    mean = torch.stack([torch.sigmoid(o.logits) for o in outputs]).mean(0)
    torch.testing.assert_close(torch.sigmoid(joint.logits), mean, rtol=0, atol=1e-6)
    presence = torch.stack([torch.sigmoid(o.presence) for o in outputs]).mean(0)
    torch.testing.assert_close(torch.sigmoid(joint.presence), presence, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("channels", "overrides", "what"), [
    (3, ("model.spatial_dims=2", "model.strides=[[1,1],[2,2]]", "data.patch_size=[16,16]"),
     r"spatial dimensions \(model.spatial_dims\) is 2, but .*'s is 3"),
    (2, (), r"image channels is \(2, 't2w', 'adc'\), but .*'s is \(3, 't2w', 'adc', 'hbv'\)"),
    (3, ("data.spacing=[1.5,1.5,3]",), r"plan spacing \(data.spacing\) is \[1.5, 1.5, 3.0\], but .*'s is None"),
    (3, ("data.patch_size=[32,32,8]",), r"window \(data.patch_size\) is \[32, 32, 8\]"),
    (3, ("text.max_tokens=16",), r"text encoder \(name, width, text.max_tokens\) is \('minilm', 384, 16\)"),
])
def test_members_that_cannot_answer_as_one_are_refused(folds, tmp_path, channels, overrides, what):
    other = text_checkpoint(tmp_path / "other", channels, overrides, seed=5)
    with pytest.raises(MedTextSegError, match=what) as error:
        load_model([folds / "fold_0", other.parent])
    message = str(error.value)
    assert message.startswith(f"{other}: its ") and "\n" not in message
    assert message.endswith("an ensemble's models must share it (train them on one plan, e.g. medtextseg train "
                            "--fold K)")


def test_a_model_given_twice_is_refused(folds):
    with pytest.raises(MedTextSegError, match=r"fold_0: given twice as an ensemble member"):
        model_members([folds / "fold_0", folds / "fold_1", folds / "fold_0" / "."])


def test_predict_and_evaluate_take_several_models(folds, images, dataset_3d, tmp_path):
    runner = CliRunner()
    members = ["-m", str(folds / "fold_0"), "-m", str(folds / "fold_1")]
    result = runner.invoke(app, ["predict", *members, *[a for p in images for a in ("-i", str(p))],
                                 "-p", PROMPTS[0], "-o", str(tmp_path / "one"), "--probabilities"])
    assert result.exit_code == 0, result.output
    [expected] = load_model(folds).predict(images, PROMPTS[0])
    import nibabel as nib

    written = np.asarray(nib.load(str(tmp_path / "one" / "probability_00.nii.gz")).dataobj)
    assert np.array_equal(written, expected.probability)
    # many cases: the index records every member's digest (--continue redoes a case when any member changed)
    (tmp_path / "cases.txt").write_text(" ".join(str(p) for p in images) + "\n")
    result = runner.invoke(app, ["predict", "-m", str(folds), "-i", str(tmp_path / "cases.txt"), "-p", PROMPTS[0],
                                 "-o", str(tmp_path / "many")])
    assert result.exit_code == 0, result.output
    [record] = json.loads((tmp_path / "many" / "predictions.json").read_text())["masks"]
    assert [m["checkpoint"] for m in record["members"]] == [str((folds / f"fold_{k}" / "best.pt").resolve())
                                                          for k in range(2)]
    result = runner.invoke(app, ["evaluate", *members, "-d", str(dataset_3d), "-o", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "eval" / "ensemble.json").read_text())
    assert described["members"] == [str(folds / f"fold_{k}" / "best.pt") for k in range(2)]
    assert described["presence_threshold"] == 0.0
    assert "ensemble of 2 (fold_0 + fold_1)" in (tmp_path / "eval" / "summary.md").read_text()


@pytest.fixture(scope="module")
def three_folds(tmp_path_factory):
    """The runs of three folds (data.folds=3) of one draw, tiny models with other weights."""
    root = tmp_path_factory.mktemp("oof")
    for k in range(3):
        text_checkpoint(root / f"fold_{k}", 3, (*OPEN_GATE, f"data.fold={k}", "data.folds=3"), seed=k)
    return root


def test_out_of_fold_scores_each_fold_on_its_own_held_out_cases(three_folds, dataset_3d, tmp_path):
    """nnU-Net's cross-validation score: every train/val case once, answered by the one run that held it out."""
    import shutil

    data = shutil.copytree(dataset_3d, tmp_path / "data", ignore=shutil.ignore_patterns(".medtextseg_cache"))
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "--out-of-fold", "-m", str(three_folds), "-d", str(data), "-o",
                                 str(tmp_path / "oof"), "--no-save-masks"])
    assert result.exit_code == 0, result.output
    splits = json.loads((data / "splits_final.json").read_text())
    fold_of = {case: k for k, fold in enumerate(splits) for case in fold["val"]}
    records = json.loads((tmp_path / "oof" / "metrics_per_prompt.json").read_text())
    test_cases = set(load_dataset(data).splits["test"])
    assert {r["case"] for r in records} == set(fold_of) and test_cases and not test_cases & set(fold_of)
    assert all(r["fold"] == fold_of[r["case"]] for r in records)
    by_fold = {row["group"]: row for row in json.loads((tmp_path / "oof" / "summary_by_fold.json").read_text())}
    assert set(by_fold) == {"0", "1", "2", "overall"} and by_fold["overall"]["n"] == len(records)
    described = json.loads((tmp_path / "oof" / "out_of_fold.json").read_text())
    assert described["folds"] == {str(k): str(three_folds / f"fold_{k}" / "best.pt") for k in range(3)}
    # fold 1's records are what evaluating that run alone on its val split gives
    alone = runner.invoke(app, ["evaluate", "-m", str(three_folds / "fold_1"), "-d", str(data), "--split", "val",
                                "-o", str(tmp_path / "fold_1"), "--no-save-masks"])
    assert alone.exit_code == 0, alone.output
    expected = json.loads((tmp_path / "fold_1" / "metrics_per_prompt.json").read_text())
    assert [(r["case"], r["prompt"], r["dice"]) for r in expected] == \
        [(r["case"], r["prompt"], r["dice"]) for r in records if r["fold"] == 1]


@pytest.mark.parametrize(("members", "extra", "message"), [
    (["fold_0", "fold_1"], [], "no run for fold(s) 2 of 3: the out-of-fold score needs every fold"),
    (["fold_0", "fold_1", "fold_2", "plain"], [], "plain: not a fold run (data.fold is null)"),
    (["fold_0", "fold_1", "fold_2", "again_1"], [], "both held out fold 1"),
    (["fold_0", "fold_1", "fold_2"], ["--split", "test"], "--out-of-fold scores each fold run's held-out fold")])
def test_out_of_fold_refuses_what_is_not_one_cross_validation(three_folds, dataset_3d, tmp_path, members, extra,
                                                               message):
    import shutil

    runs = tmp_path / "runs"
    for name in members:
        if name == "plain":
            text_checkpoint(runs / name, 3, OPEN_GATE)
        elif name == "again_1":
            text_checkpoint(runs / name, 3, (*OPEN_GATE, "data.fold=1", "data.folds=3"), seed=7)
        else:
            shutil.copytree(three_folds / name, runs / name)
    result = CliRunner().invoke(app, ["evaluate", "--out-of-fold", "-m", str(runs), "-d", str(dataset_3d), "-o",
                                      str(tmp_path / "oof"), *extra])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and message in result.output, result.output
    assert not (tmp_path / "oof").exists()


def test_serve_answers_with_the_ensemble_and_names_its_members(folds, images, tmp_path):
    """`serve -m FOLDS`: /health lists every member with its checkpoint's hash; /segment gives the ensemble's masks
    and probabilities, bit for bit what `predict` with the same folder gives."""
    import gzip
    import io
    import zipfile

    import nibabel as nib
    from fastapi.testclient import TestClient

    from medtextseg.inference.batch_predict import file_sha256
    from medtextseg.server.app import ServerSettings, create_app

    predictor = load_model(folds, device="cpu")
    expected = EnsemblePredictor(folds).predict(images, PROMPTS)
    with TestClient(create_app(predictor, ServerSettings(temp_dir=tmp_path))) as client:
        model = client.get("/health").json()["model"]
        assert [m["run"] for m in model["members"]] == ["fold_0", "fold_1"]
        assert [m["checkpoint_sha256"] for m in model["members"]] == [
            file_sha256(folds / f"fold_{k}" / m["checkpoint"]) for k, m in enumerate(model["members"])]
        files = [("image", (path.name, path.read_bytes(), "application/gzip")) for path in images]
        response = client.post("/segment", files=files, data={"prompt": PROMPTS, "probabilities": "true"})
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        summary = json.loads(archive.read("summary.json"))
        assert summary["model"] == "fold_0" and summary["members"] == model["members"]
        for record, segmentation in zip(summary["results"], expected, strict=True):
            mask = nib.Nifti1Image.from_bytes(gzip.decompress(archive.read(record["mask"])))
            probability = nib.Nifti1Image.from_bytes(gzip.decompress(archive.read(record["probability"])))
            assert np.array_equal(mask.get_fdata(), segmentation.mask)
            assert np.array_equal(probability.get_fdata(dtype=np.float32), segmentation.probability)
    assert any(s.mask.any() for s in expected) and len({s.voxels for s in expected}) > 1  # answers that differ
