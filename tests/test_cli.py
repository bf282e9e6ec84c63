"""The command-line app, run in-process: help texts, the stage chain, and one-line errors with exit 2."""

import json

import nibabel as nib
import pytest
from typer.testing import CliRunner

from medtextseg.cli import app
from medtextseg.utils.precision import cpu_has_native_bf16

runner = CliRunner()
TINY = ["--set", "model.channels=[4,8,16]", "--set", "model.strides=[[1,1],[2,2],[2,2]]",
        "--set", "data.patch_size=[48,48]", "--set", "train.steps=2", "--set", "train.val_cases=1"]


@pytest.mark.parametrize("command", ["synth", "train", "predict", "evaluate", "robustness", "compare", "presets"])
def test_every_command_explains_itself(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output and len(result.output.splitlines()) > 4


def test_presets_are_listed():
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0 and "default" in result.output.split()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert runner.invoke(app, ["synth", "--out", str(root / "data"), "--cases", "6", "--dim", "2"]).exit_code == 0
    result = runner.invoke(app, ["train", "--data", str(root / "data"), "--out", str(root / "run"),
                                 "--preset", "default_2d", *TINY])
    assert result.exit_code == 0, result.output
    return root


def test_predict_writes_one_mask_per_prompt_on_the_input_grid(cli_run):
    images = sorted((cli_run / "data" / "imagesTr").glob("synth_000_*.nii.gz"))
    out = cli_run / "pred"
    args = ["predict", "-m", str(cli_run / "run"), *[a for p in images for a in ("-i", str(p))],
            "-p", "the prostate gland", "-p", "the lesion in the left PZ", "-o", str(out), "--probabilities"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    index = json.loads((out / "prompts.json").read_text())
    assert [item["prompt"] for item in index] == ["the prostate gland", "the lesion in the left PZ"]
    for item in index:
        mask = nib.load(str(out / item["mask"]))
        assert mask.shape == nib.load(str(images[0])).shape
        assert (mask.affine == nib.load(str(images[0])).affine).all()
        assert (out / item["probability"]).is_file()


@pytest.fixture(scope="module")
def evidential_run(cli_run):
    """A tiny TextBCS run (encoder attention, similarity maps, evidential head) on the cli_run data."""
    result = runner.invoke(app, ["train", "--data", str(cli_run / "data"), "--out", str(cli_run / "textbcs"),
                                 "--preset", "textbcs", *TINY, "--set", "model.vision_language_levels=[1,2]",
                                 "--set", "model.similarity_levels=[1,2]", "--set", "data.structured_prompts=0.5"])
    assert result.exit_code == 0, result.output
    return cli_run / "textbcs"


def test_predict_uncertainty_writes_maps_on_the_input_grid_and_overlays(cli_run, evidential_run):
    images = sorted((cli_run / "data" / "imagesTr").glob("synth_000_*.nii.gz"))
    out = cli_run / "pred_uncertainty"
    result = runner.invoke(app, ["predict", "-m", str(evidential_run), *[a for p in images for a in ("-i", str(p))],
                                 "-p", "location left peripheral zone; number one", "-o", str(out), "--uncertainty",
                                 "--tta"])
    assert result.exit_code == 0, result.output
    (item,) = json.loads((out / "prompts.json").read_text())
    assert item["uncertainty_kind"] == "dirichlet"
    uncertainty, reference = nib.load(str(out / item["uncertainty"])), nib.load(str(images[0]))
    assert uncertainty.shape == reference.shape and (uncertainty.affine == reference.affine).all()
    values = uncertainty.get_fdata()
    assert values.min() > 0 and values.max() <= 1  # u = 2 / S is never 0
    assert (out / item["overlay"]).stat().st_size > 1000


def test_evaluate_reports_calibration_uncertainty_and_lesion_detection(cli_run, evidential_run):
    out = cli_run / "eval_textbcs"
    result = runner.invoke(app, ["evaluate", "-m", str(evidential_run), "-d", str(cli_run / "data"), "-o", str(out),
                                 "--no-save-masks", "--component-sweep", "0,20"])
    assert result.exit_code == 0, result.output
    sweep = json.loads((out / "component_sweep.json").read_text())
    assert {(row["min_voxels"], row["group"]) for row in sweep} >= {(0, "overall"), (20, "overall")}
    assert "component sweep (overall Dice by minimum component size): 0:" in result.output
    assert "calibration: ECE" in result.output and "lesion detection (picai_eval" in result.output
    uncertainty = json.loads((out / "uncertainty.json").read_text())
    assert uncertainty["overall"]["uncertainty_kind"] == "dirichlet" and 0 <= uncertainty["overall"]["ece"] <= 1
    overall = json.loads((out / "summary.json").read_text())[-1]
    assert overall["ece"] == pytest.approx(uncertainty["overall"]["ece"])
    assert (out / "reliability.png").is_file()
    detection = json.loads((out / "lesion_detection.json").read_text())
    assert detection["cases"] > 0 and {"auroc", "ap", "picai_score"} <= set(detection)
    asked = json.loads((out / "inference.json").read_text())  # how it was asked, "auto" resolved
    assert asked["autocast"] == "auto" and asked["device"] == "cpu"
    assert asked["precision"] == ("bfloat16" if cpu_has_native_bf16() else "float32")


def test_robustness_scores_each_style(cli_run):
    out = cli_run / "robustness"
    result = runner.invoke(app, ["robustness", "-m", str(cli_run / "run"), "-d", str(cli_run / "data"), "-o", str(out),
                                 "--split", "train", "--style", "original", "--style", "structured"])
    assert result.exit_code == 0, result.output
    assert "structured: Dice" in result.output
    rows = json.loads((out / "robustness_summary.json").read_text())
    assert {row["style"] for row in rows} == {"original", "structured"}


def test_evaluate_and_compare_write_reports(cli_run):
    out = cli_run / "eval"
    result = runner.invoke(app, ["evaluate", "-m", str(cli_run / "run"), "-d", str(cli_run / "data"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert {row["group"] for row in summary} >= {"anatomy", "overall"}
    assert (out / "metrics_per_prompt.csv").is_file() and list((out / "overlays").glob("*.png"))
    assert (out / "loss_curve.png").is_file()
    result = runner.invoke(app, ["compare", f"a={out}", f"b={out}", "--out", str(cli_run / "report")])
    assert result.exit_code == 0, result.output
    assert (cli_run / "report" / "comparison_dice.png").is_file()


def test_evaluate_run_returns_what_its_files_hold(cli_run, tmp_path):
    """The Python API's result object carries the same records and summary as the JSON files it wrote."""
    from medtextseg.evaluation.runner import evaluate_run
    from medtextseg.evaluation.tables import read_records

    result = evaluate_run(cli_run / "run", cli_run / "data", tmp_path / "eval", save_masks=False, progress=False,
                          component_sweep=[0, 5])
    assert result.out_dir == tmp_path / "eval" and result.records
    assert result.records == read_records(tmp_path / "eval" / "metrics_per_prompt.json")
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert [row["group"] for row in result.summary] == [row["group"] for row in summary]
    assert result.overall["group"] == "overall" and result.overall["n"] == len(result.records)
    assert result.overall["dice_mean"] == pytest.approx(summary[-1]["dice_mean"])
    sweep = json.loads((tmp_path / "eval" / "component_sweep.json").read_text())
    assert len(result.component_sweep) == len(sweep) and {row["min_voxels"] for row in sweep} == {0, 5}


def test_evaluate_reports_dice_per_wording_and_sequence_when_prompts_carry_them(cli_run, tmp_path):
    """Held-out wordings (synth --unseen-wording) and the MR sequence of a pooled dataset (convert chaos
    --option modality=MR) each get a summary per value."""
    data = tmp_path / "worded"
    assert runner.invoke(app, ["synth", "--out", str(data), "--cases", "6", "--dim", "2", "--seed", "3",
                               "--unseen-wording", "0.5"]).exit_code == 0
    lines = [json.loads(line) for line in (data / "prompts.jsonl").read_text().splitlines()]
    for number, line in enumerate(lines):  # as a pooled CHAOS conversion writes them (here not one per case)
        line["meta"]["sequence"] = "t2spir" if number % 2 else "t1dual_inphase"
    (data / "prompts.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "-m", str(cli_run / "run"), "-d", str(data), "-o", str(out),
                                 "--no-save-masks"])
    assert result.exit_code == 0, result.output
    rows = {row["group"]: row for row in json.loads((out / "summary_by_wording.json").read_text())}
    records = json.loads((out / "metrics_per_prompt.json").read_text())
    for wording in ("seen", "unseen"):
        mine = [r["dice"] for r in records if r["wording"] == wording]
        assert rows[wording]["n"] == len(mine) > 0
        assert rows[wording]["dice_mean"] == pytest.approx(sum(mine) / len(mine))
        per_group = [row for name, row in rows.items() if name.endswith(f"/{wording}")]
        assert sum(row["n"] for row in per_group) == len(mine)
    assert rows["overall"]["n"] == len(records)
    by_sequence = {row["group"]: row for row in json.loads((out / "summary_by_sequence.json").read_text())}
    for sequence in ("t2spir", "t1dual_inphase"):
        mine = [r["dice"] for r in records if r["sequence"] == sequence]
        assert by_sequence[sequence]["n"] == len(mine) > 0
        assert by_sequence[sequence]["dice_mean"] == pytest.approx(sum(mine) / len(mine))


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--set", "train.step=3"], "unknown config key 'train.step'"),
    (["train", "--data", "{tmp}/nowhere", "--out", "{tmp}/r", "--preset", "default_2d"], "dataset folder not found"),
    (["predict", "-m", "{run}", "-i", "{image}", "-p", "the gland"], "the model takes 3 image file(s)"),
    (["predict", "-m", "{run}", "-i", "{image}", "-i", "{image}", "-i", "{image}", "-p", " "], "the prompt is empty"),
    (["predict", "-m", "{tmp}", "-i", "{image}", "-p", "the gland"], "no best.pt or last.pt"),
    (["synth", "--out", "{tmp}/s", "--dim", "4"], "--dim must be 2 or 3"),
    (["compare", "x"], "expected NAME=EVALUATION_FOLDER"),
    (["study", "filmcbn_losses", "--data", "synth"], "--data 'synth': expected NAME=DATASET_FOLDER"),
    (["study", "filmcbn_lossez"], "unknown study 'filmcbn_lossez'"),
])
def test_bad_input_ends_with_one_line_and_status_2(cli_run, tmp_path, args, message):
    image = sorted((cli_run / "data" / "imagesTr").glob("synth_000_*.nii.gz"))[0]
    filled = [a.format(data=cli_run / "data", tmp=tmp_path, run=cli_run / "run", image=image) for a in args]
    result = runner.invoke(app, filled)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output


def test_calibrate_presence_chooses_on_a_held_out_split_and_keeps_it(cli_run, tmp_path):
    import shutil

    from medtextseg.models.trained import load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(cli_run / "run", run)  # the command rewrites the run's best.pt and config.yaml
    result = runner.invoke(app, ["calibrate-presence", "-m", str(run), "-d", str(cli_run / "data"),
                                 "--thresholds", "0.3,0.5,0.7"])
    assert result.exit_code == 0, result.output
    table = json.loads((run / "calibration_presence.json").read_text())
    scores = {float(t): s for t, s in table["scores"].items()}
    assert sorted(scores) == [0.0, 0.3, 0.5, 0.7] and table["split"] == "val"  # 0.0: the gate left open
    # the rule, replayed on the table: most absent answered empty at a present Dice within 0.02 of the open gate's
    allowed = [t for t, s in scores.items() if s["present_dice"] >= scores[0.0]["present_dice"] - 0.02 - 1e-9]
    most = max(scores[t]["absent_empty"] for t in allowed)
    assert table["chosen"] == min(t for t in allowed if scores[t]["absent_empty"] >= most - 1e-9)
    assert 0 < table["stability"] <= 1 and table["warning"] is not None  # a 1-case split is flagged
    assert "<- chosen" in result.output and "bootstrap" in result.output
    assert load_checkpoint(run / "best.pt")["config"]["inference"]["presence_threshold"] == table["chosen"]
    assert f"presence_threshold: {table['chosen']}" in (run / "config.yaml").read_text()
    bad = runner.invoke(app, ["calibrate-presence", "-m", str(run), "-d", str(cli_run / "data"),
                              "--thresholds", "0.5,1.5"])
    assert bad.exit_code == 2 and "(0, 1)" in bad.output


def test_calibrate_presence_cross_fits_over_fold_runs(cli_run, tmp_path):
    """Issue 14: given every fold's run, each scores its own held-out fold, one threshold is chosen on all of them
    (each train + val case once) and kept in every run; the same fold twice is refused."""
    import shutil

    from medtextseg.models.trained import load_checkpoint

    data = tmp_path / "data"
    shutil.copytree(cli_run / "data", data)
    runs = [tmp_path / f"fold{k}" for k in range(2)]
    for fold, run in enumerate(runs):
        result = runner.invoke(app, ["train", "--data", str(data), "--out", str(run), "--preset", "default_2d",
                                     "--fold", str(fold), "--set", "data.folds=2", *TINY])
        assert result.exit_code == 0, result.output
    alone = []
    for run in runs:
        assert runner.invoke(app, ["calibrate-presence", "-m", str(run), "-d", str(data)]).exit_code == 0
        alone.append(json.loads((run / "calibration_presence.json").read_text()))
    result = runner.invoke(app, ["calibrate-presence", *[a for r in runs for a in ("-m", str(r))], "-d", str(data)])
    assert result.exit_code == 0, result.output
    table = json.loads((runs[0] / "calibration_presence.json").read_text())
    splits = json.loads((data / "splits.json").read_text())
    assert table["cases"] == len(splits["train"]) + len(splits["val"]) and table["runs"] == [str(r) for r in runs]
    assert table["absent_prompts"] == sum(a["absent_prompts"] for a in alone)
    assert table["present_prompts"] == sum(a["present_prompts"] for a in alone)
    scores = {float(t): s for t, s in table["scores"].items()}  # the pooled open gate: the folds' prompts together
    n = [a["absent_prompts"] + a["present_prompts"] for a in alone]
    assert scores[0.0]["val_dice"] == pytest.approx(sum(a["scores"]["0.0"]["val_dice"] * k for a, k in
                                                        zip(alone, n, strict=True)) / sum(n))
    for run in runs:
        assert load_checkpoint(run / "best.pt")["config"]["inference"]["presence_threshold"] == table["chosen"]
        assert json.loads((run / "calibration_presence.json").read_text()) == table
    twice = runner.invoke(app, ["calibrate-presence", "-m", str(runs[0]), "-m", str(runs[0]), "-d", str(data)])
    assert twice.exit_code != 0 and "both hold out case" in twice.output
