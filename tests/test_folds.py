"""Cross-validation folds: nnU-Net's k-fold split of the train + val cases, saved once, replayed by every fold run."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from medtextseg import MedTextSegError
from medtextseg.cli import app
from medtextseg.config import Config
from medtextseg.data.folds import FOLDS_FILE, GROUPS_FILE, apply_fold, held_out_layout, make_folds
from medtextseg.data.layout import load_dataset
from medtextseg.training.engine import Trainer

TINY_2D = ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
           "train.batch_images=2", "data.prompts_per_image=2", "train.warmup_steps=1"]
CASES = [f"case_{i:03d}" for i in range(23)]


@pytest.fixture(scope="module")
def eight_cases(tmp_path_factory):
    """8 synthetic 2D cases: train 6, val 1 (a pool of 7 for the folds), test synth_002."""
    from medtextseg.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("folds"), num_cases=8, spatial_dims=2, seed=1)


@pytest.fixture
def dataset(eight_cases, tmp_path):
    """A copy of ``eight_cases`` each test may write its splits_final.json into."""
    return shutil.copytree(eight_cases, tmp_path / "data", ignore=shutil.ignore_patterns(".medtextseg_cache"))


def test_folds_are_deterministic_disjoint_and_cover_the_cases():
    folds = make_folds(CASES, 5, seed=3)
    assert folds == make_folds(list(reversed(CASES)), 5, seed=3)  # the same cases in any order: the same folds
    assert folds != make_folds(CASES, 5, seed=4)
    vals = [case for fold in folds for case in fold["val"]]
    assert sorted(vals) == CASES  # every case validated exactly once
    assert sorted(len(fold["val"]) for fold in folds) == [4, 4, 5, 5, 5]  # near-equal, larger ones first
    for fold in folds:
        assert sorted(fold["train"] + fold["val"]) == CASES and not set(fold["train"]) & set(fold["val"])
        assert fold["train"] == sorted(fold["train"]) and fold["val"] == sorted(fold["val"])


def test_folds_are_nnunets_scikit_learn_kfold():
    """nnU-Net: KFold(5, shuffle=True, random_state=12345) over the sorted case ids."""
    model_selection = pytest.importorskip("sklearn.model_selection")
    expected = [{"train": [CASES[i] for i in train], "val": [CASES[i] for i in val]}
                for train, val in model_selection.KFold(5, shuffle=True, random_state=12345).split(CASES)]
    assert make_folds(CASES, 5, 12345) == expected


def test_a_group_stays_on_one_side_of_every_fold():
    groups = {case: f"patient_{i // 3}" for i, case in enumerate(CASES)}  # 8 patients of 1-3 cases
    for fold in make_folds(CASES, 5, 12345, groups):
        held = {groups[c] for c in fold["val"]}
        assert not held & {groups[c] for c in fold["train"]}
    with pytest.raises(MedTextSegError, match=r"data.folds=9 needs at least 9 groups .* got 8"):
        make_folds(CASES, 9, 12345, groups)


def test_the_folds_file_is_written_once_and_replayed(dataset):
    layout = load_dataset(dataset)
    test_cases = layout.splits["test"]
    pool = sorted(layout.splits["train"] + layout.splits["val"])
    fold_layout = apply_fold(layout, Config.load("default_2d", ["data.fold=1"]).data)
    written = json.loads((dataset / FOLDS_FILE).read_text())
    assert written == make_folds(pool, 5, 12345)  # nnU-Net's format: a list of {"train", "val"}
    assert fold_layout.splits["val"] == written[1]["val"] and fold_layout.splits["train"] == written[1]["train"]
    assert fold_layout.splits["test"] == test_cases  # untouched, and in no fold
    assert not {c for fold in written for side in fold.values() for c in side} & set(test_cases)
    assert layout.splits["val"] != fold_layout.splits["val"] or layout.splits["train"] != fold_layout.splits["train"]
    # the file, not the seed, decides from now on: an edited (or nnU-Net-made) file is replayed as it is
    written[1] = {"train": pool[2:], "val": pool[:2]}
    (dataset / FOLDS_FILE).write_text(json.dumps(written))
    replayed = apply_fold(layout, Config.load("default_2d", ["data.fold=1", "data.fold_seed=7"]).data)
    assert replayed.splits["val"] == pool[:2] and replayed.splits["train"] == pool[2:]
    assert apply_fold(layout, Config.load("default_2d").data) is layout  # no fold: the dataset's own splits


@pytest.mark.parametrize(("content", "message"), [
    ({"train": []}, r"must be a list of folds \{\"train\": \[case ids\], \"val\": \[case ids\]\}"),
    ([{"train": ["synth_000"], "val": ["synth_001"]}] * 2, r"holds 2 folds but data.folds=5; set data.folds=2"),
    ([{"train": ["synth_001"], "val": ["synth_002"]}] * 5, r"fold 0 val names case 'synth_002' of the 'test' split"),
    ([{"train": ["synth_001"], "val": ["synth_1"]}] * 5, r"fold 0 val names unknown case 'synth_1'"),
    ([{"train": ["synth_001"], "val": ["synth_001"]}] * 5, r"fold 0 trains and validates on case 'synth_001'"),
])
def test_a_bad_folds_file_is_refused_in_one_line(dataset, content, message):
    (dataset / FOLDS_FILE).write_text(json.dumps(content))
    with pytest.raises(MedTextSegError, match=message) as error:
        apply_fold(load_dataset(dataset), Config.load("default_2d", ["data.fold=0"]).data)
    assert str(dataset / FOLDS_FILE) in str(error.value) and "\n" not in str(error.value)


def test_case_groups_of_the_dataset_group_its_folds(dataset):
    layout = load_dataset(dataset)
    pool = sorted(layout.splits["train"] + layout.splits["val"])
    (dataset / GROUPS_FILE).write_text(json.dumps({case: "one patient" for case in pool[:3]}))
    folds = [apply_fold(layout, Config.load("default_2d", [f"data.fold={k}"]).data).splits for k in range(5)]
    assert any(set(pool[:3]) <= set(fold["val"]) for fold in folds)
    (dataset / FOLDS_FILE).unlink()
    (dataset / GROUPS_FILE).write_text(json.dumps({"synth_999": "a"}))
    with pytest.raises(MedTextSegError, match=rf"{GROUPS_FILE}: unknown case 'synth_999'"):
        apply_fold(layout, Config.load("default_2d", ["data.fold=0"]).data)


def test_a_fold_out_of_range_is_one_line(dataset, tmp_path):
    with pytest.raises(MedTextSegError, match=r"^data.fold=5 is out of range: data.folds=5 makes folds 0..4$"):
        Config.load("default_2d", ["data.fold=5"])
    result = CliRunner().invoke(app, ["train", "-d", str(dataset), "-o", str(tmp_path / "run"), "-p", "default_2d",
                                      "--fold", "3", "--set", "data.folds=3"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: data.fold=3 is out of range: data.folds=3 makes folds 0..2"
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_fold_run_trains_on_the_other_folds_and_validates_on_its_own(dataset, tmp_path):
    config = Config.load("default_2d", [*TINY_2D, f"data.root={dataset}", "data.fold=2", "train.steps=1",
                                        "train.val_cases=5"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.run()
    folds = json.loads((dataset / FOLDS_FILE).read_text())
    assert [c.case for c in trainer.policy.train_cases] == folds[2]["train"]
    assert [c.case for c in trainer.policy.val_cases] == folds[2]["val"]
    saved = Config.load(tmp_path / "run" / "config.yaml")  # the resolved config records the fold
    assert (saved.data.fold, saved.data.folds, saved.data.fold_seed) == (2, 5, 12345)
    # evaluation and calibration of the run read its held-out fold as "val"; the test split stays as it is
    layout = load_dataset(dataset)
    assert held_out_layout(layout, [saved.data], "val").splits["val"] == folds[2]["val"]
    assert held_out_layout(layout, [saved.data], "test") is layout
    other = Config.load("default_2d", ["data.fold=3"]).data
    with pytest.raises(MedTextSegError, match=r"trained on different folds \(2, 3\) .* evaluate the ensemble on the "
                                              r"test split"):
        held_out_layout(layout, [saved.data, other], "val")


def test_the_train_command_prints_and_keeps_its_fold(dataset, tmp_path):
    run = tmp_path / "run"
    args = ["train", "-d", str(dataset), "-o", str(run), "-p", "default_2d", "--fold", "4", "--no-plan",
            *[a for item in [*TINY_2D, "train.steps=1", "train.val_cases=1"] for a in ("--set", item)]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"fold 4 of 5: 6 training and 1 validation cases ({dataset / FOLDS_FILE}); the test split (1 case) " \
        "untouched" in result.output
    assert Config.load(run / "config.yaml").data.fold == 4
    resumed = CliRunner().invoke(app, ["train", "-d", str(dataset), "-o", str(run), "--resume", "--fold", "1"])
    assert resumed.exit_code == 2
    assert resumed.output.strip() == f"error: {run / 'config.yaml'}: the run trains fold 4; resume it with that " \
        "fold, not 1"
