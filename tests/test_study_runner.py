"""`medtextseg study`: a study YAML runs every (dataset, configuration, seed), resumes, and fails early on typos."""

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medtextseg.cli import app
from medtextseg.study.spec import load_study, shipped_studies
from medtextseg.utils.errors import MedTextSegError

TINY = ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
        "train.batch_images=1", "data.prompts_per_image=2", "train.steps=2", "train.val_every=2",
        "train.val_cases=1", "train.warmup_steps=1"]


def write_spec(folder, dataset, configurations) -> str:
    spec = {"name": "tiny", "preset": "default_2d", "seeds": [0, 1], "overrides": TINY,
            "configurations": configurations, "datasets": {"synth": str(dataset)}, "metrics": ["dice", "hd95"]}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_study_runs_every_configuration_and_seed_then_resumes_without_retraining(dataset_2d, tmp_path):
    spec = write_spec(tmp_path, dataset_2d, {"dice": ["loss.terms={dice: 1.0}"],
                                             "dice_bce": ["loss.terms={dice_bce: 1.0}"]})
    result = CliRunner().invoke(app, ["study", spec, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = tmp_path / "out" / "synth"
    runs = [line.split(",")[:2] for line in (report / "runs.csv").read_text().splitlines()[1:]]
    assert sorted({tuple(r) for r in runs}) == [("dice", "0"), ("dice", "1"), ("dice_bce", "0"), ("dice_bce", "1")]
    assert (report / "violin.png").stat().st_size > 0
    assert "## Pairwise comparisons" in (report / "summary.md").read_text()
    trained = tmp_path / "out" / "runs" / "synth" / "dice_bce" / "seed1" / "model" / "config.yaml"
    assert "dice_bce: 1.0" in trained.read_text() and "seed: 1" in trained.read_text()
    stamp = (tmp_path / "out" / "runs" / "synth" / "dice" / "seed0" / "result.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, ["study", spec, "--out", str(tmp_path / "out")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "out" / "runs" / "synth" / "dice" / "seed0" / "result.json").stat().st_mtime_ns == stamp
    assert json.loads((report / "study.json").read_text())["runs"]
    saved = load_study(tmp_path / "out" / "study.yaml")  # the resolved study is saved and loads back
    assert saved.configurations == load_study(spec).configurations and saved.datasets == {"synth": str(dataset_2d)}
    # planned as `medtextseg train` plans: one plan per (dataset, configuration), replayed by every seed
    plan = json.loads((tmp_path / "out" / "runs" / "synth" / "dice" / "plans.json").read_text())
    for seed in (0, 1):
        model = tmp_path / "out" / "runs" / "synth" / "dice" / f"seed{seed}" / "model"
        assert json.loads((model / "plans.json").read_text()) == plan
        config = yaml.safe_load((model / "config.yaml").read_text())
        assert config["data"]["spacing"] == plan["spacing"]
        assert config["data"]["patch_size"] == [48, 48]  # the study's overrides win over the plan


def test_a_study_with_reference_compares_every_configuration_with_a_text_blind_unet_given_the_runs_time(
        dataset_2d, tmp_path):
    from medtextseg.evaluation.reference import REFERENCE_NAME
    from medtextseg.study.spec import REFERENCE_FOLDER

    spec = write_spec(tmp_path, dataset_2d, {"dice": ["loss.terms={dice: 1.0}"],
                                             "dice_bce": ["loss.terms={dice_bce: 1.0}"]})
    result = CliRunner().invoke(app, ["study", spec, "--out", str(tmp_path / "out"), "--reference"])
    assert result.exit_code == 0, result.output
    study = json.loads((tmp_path / "out" / "synth" / "study.json").read_text())
    assert study["configurations"][-1] == REFERENCE_NAME and study["reference"] == REFERENCE_NAME
    runs = tmp_path / "out" / "runs" / "synth"
    for seed in (0, 1):  # the mean time of that seed's runs, at the first configuration's plan
        reference = json.loads((runs / REFERENCE_FOLDER / f"seed{seed}" / "result.json").read_text())
        seconds = [json.loads((runs / name / f"seed{seed}" / "result.json").read_text())["train_seconds"]
                   for name in ("dice", "dice_bce")]
        assert reference["train_seconds"] == pytest.approx(sum(seconds) / 2) and reference["steps"] >= 1
        # lesion data: it answers lesion prompts only, so it has no anatomy and no overall row
        groups = {row["group"] for row in reference["summary"]}
        assert groups and "anatomy" not in groups and "overall" not in groups
    families = {(row["family"], row["configuration_a"], row["configuration_b"]) for row in study["comparisons"]}
    assert ("configurations", "dice", "dice_bce") in families
    assert {("reference", name, REFERENCE_NAME) for name in ("dice", "dice_bce")} <= families
    assert not any(row["configuration_a"] == REFERENCE_NAME for row in study["comparisons"])
    assert not any(row["family"] == "reference" and row["group"] in ("anatomy", "overall")
                   for row in study["comparisons"])
    assert f"## Against the reference, {REFERENCE_NAME}" in (tmp_path / "out" / "synth" / "summary.md").read_text()


def test_a_study_refuses_a_reference_with_folds(dataset_2d, tmp_path):
    spec = write_spec(tmp_path, dataset_2d, {"dice": ["loss.terms={dice: 1.0}"]})
    with pytest.raises(MedTextSegError, match="reference with folds is not supported"):
        study = load_study(spec, reference=True)
        study.folds = 2
        study.check()


def test_a_study_with_plan_false_keeps_the_preset_values(dataset_2d, tmp_path):
    spec = yaml.safe_load(open(write_spec(tmp_path, dataset_2d, {"dice": ["loss.terms={dice: 1.0}"]})))
    spec |= {"plan": False, "seeds": [0]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["study", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    runs = tmp_path / "out" / "runs" / "synth" / "dice"
    assert not (runs / "plans.json").exists() and not (runs / "seed0" / "model" / "plans.json").exists()
    config = yaml.safe_load((runs / "seed0" / "model" / "config.yaml").read_text())
    assert config["data"]["spacing"] == load_study(tmp_path / "study.yaml").run_config("dice", 0, "synth").data.spacing


def test_a_typo_in_any_configuration_fails_before_training_and_names_it(dataset_2d, tmp_path):
    spec = write_spec(tmp_path, dataset_2d, {"good": [], "bad": ["loss.terms={dicee: 1.0}"]})
    with pytest.raises(MedTextSegError, match=r"configuration 'bad'.*unknown loss term 'dicee'"):
        load_study(spec)
    result = CliRunner().invoke(app, ["study", spec, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "error:" in result.output and not (tmp_path / "out" / "runs").exists()


def test_shipped_studies_resolve():
    for name in ("filmcbn_losses", "filmcbn_ablation"):
        study = load_study(name)
        assert len(study.seeds) == 3 and study.preset == "filmcbn"
    assert set(load_study("filmcbn_losses").configurations) == {"dice", "jaccard", "tversky", "dice_bce"}
    # every shipped study resolves and checks, and `study --help` names each of them
    help_text = " ".join(CliRunner().invoke(app, ["study", "--help"]).output.split())
    for name in shipped_studies():
        assert load_study(name).seeds and name in help_text
    # --seeds N runs seeds 0 .. N-1 (the FiLM/CBN paper's 10 runs) in place of the study's own
    assert load_study("filmcbn_losses", seeds=10).seeds == list(range(10))
    assert CliRunner().invoke(app, ["study", "filmcbn_losses", "--seeds", "0"]).exit_code == 2
    # --data with one of the study's datasets runs that one, with its own overrides only
    assert load_study("filmcbn_losses", {"synthetic_2d": "work/synth2d"}).dataset_overrides == {}
    aal = load_study("filmcbn_losses", {"aal_2d": "work/aal2d"})
    assert list(aal.datasets) == ["aal_2d"] and "model.in_channels=1" in aal.dataset_overrides["aal_2d"]


def test_a_study_over_folds_scores_each_seed_out_of_fold(dataset_2d, tmp_path):
    """``folds: 2``: each (configuration, seed) is two fold runs, scored together on every train and val case,
    each case by the run that held it out; one plan for every fold and seed."""
    import shutil

    data = shutil.copytree(dataset_2d, tmp_path / "data", ignore=shutil.ignore_patterns(".medtextseg_cache"))
    spec = yaml.safe_load(open(write_spec(tmp_path, data, {"dice": ["loss.terms={dice: 1.0}"],
                                                           "dice_bce": ["loss.terms={dice_bce: 1.0}"]})))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec | {"folds": 2, "seeds": [0]}))
    result = CliRunner().invoke(app, ["study", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    splits = json.loads((data / "splits_final.json").read_text())
    pool = sorted(case for fold in splits for case in fold["val"])
    plan = json.loads((tmp_path / "out" / "runs" / "synth" / "dice" / "plans.json").read_text())
    for configuration in ("dice", "dice_bce"):
        seed = tmp_path / "out" / "runs" / "synth" / configuration / "seed0"
        for k in (0, 1):
            config = yaml.safe_load((seed / f"fold_{k}" / "config.yaml").read_text())
            assert (config["data"]["fold"], config["data"]["folds"]) == (k, 2)
            assert json.loads((seed / f"fold_{k}" / "plans.json").read_text()) == plan
        records = json.loads((seed / "eval" / "metrics_per_prompt.json").read_text())
        assert sorted({r["case"] for r in records}) == pool  # every train and val case once, no test case
        assert all(r["case"] in splits[r["fold"]]["val"] for r in records)
    runs = [line.split(",")[:2] for line in (tmp_path / "out" / "synth" / "runs.csv").read_text().splitlines()[1:]]
    assert sorted({tuple(r) for r in runs}) == [("dice", "0"), ("dice_bce", "0")]


def test_a_study_over_folds_refuses_another_split(dataset_2d, tmp_path):
    spec = yaml.safe_load(open(write_spec(tmp_path, dataset_2d, {"dice": []})))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec | {"folds": 3, "split": "val"}))
    with pytest.raises(MedTextSegError, match=r"study 'tiny': split 'val' with folds: .* leave split out"):
        load_study(tmp_path / "study.yaml")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
def test_a_worker_ends_when_its_study_is_killed(tmp_path):
    """A study killed outright (SIGKILL: no handler runs) leaves no worker training on as an orphan."""
    script = tmp_path / "study_stand_in.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context
        from medtextseg.study.runner import exit_with_parent

        if __name__ == "__main__":
            with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=exit_with_parent,
                                     initargs=(os.getpid(), 0.1)) as pool:
                print(pool.submit(os.getpid).result(), flush=True)
                pool.submit(time.sleep, 120).result()  # a long run
    """))
    study = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(study.stdout.readline())
        assert running(worker)
        study.kill()
        study.wait()
        deadline = time.monotonic() + 20
        while running(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(worker)
    finally:
        study.kill()


def running(pid: int) -> bool:
    """Whether ``pid`` runs (an exited process nobody reaped yet is a zombie, state Z)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
