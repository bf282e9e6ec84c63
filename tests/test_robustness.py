"""Prompt robustness: every attribute prompt predicted as written and in each style, scored, summarised, plotted."""

from __future__ import annotations

import json
from itertools import product

import pytest

from medtextseg import MedTextSegError
from medtextseg.config import Config
from medtextseg.data.attribute_prompts import PROMPT_STYLES
from medtextseg.evaluation.robustness import prompt_robustness
from medtextseg.training.engine import train

TINY_2D = ["model.channels=[4,8,16]", "model.strides=[[1,1],[2,2],[2,2]]", "data.patch_size=[48,48]",
           "train.batch_images=2", "data.prompts_per_image=2", "train.val_every=2", "train.val_cases=1",
           "train.warmup_steps=1", "train.steps=3"]
STYLES = ("original", *PROMPT_STYLES)


@pytest.fixture(scope="module")
def tiny_run(dataset_2d, tmp_path_factory):
    config = Config.load("default_2d", [*TINY_2D, f"data.root={dataset_2d}"])
    return train(config, tmp_path_factory.mktemp("robustness") / "run", progress=False)


@pytest.fixture(scope="module")
def robustness(tiny_run, dataset_2d, tmp_path_factory):
    out = tmp_path_factory.mktemp("robustness_out")
    rows = prompt_robustness(tiny_run, dataset_2d, out, split="test", seed=0, progress=False)
    return rows, out


def test_writes_per_prompt_and_summary_files_with_a_row_per_style_and_group(robustness):
    rows, out = robustness
    for name in ("robustness_per_prompt.json", "robustness_per_prompt.csv", "robustness_summary.json",
                 "robustness_summary.csv", "robustness.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    records = json.loads((out / "robustness_per_prompt.json").read_text())
    groups = sorted({record["group"] for record in records})
    assert {"single_2plus", "absent"} <= set(groups)  # the test case has 2 lesions and an absent prompt
    assert sorted((row["style"], row["group"]) for row in rows) == sorted(product(STYLES, [*groups, "overall"]))
    assert json.loads((out / "robustness_summary.json").read_text()) == rows
    csv_lines = (out / "robustness_summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("style,group,n,n_target,dice_mean,dice_std") and len(csv_lines) == len(rows) + 1
    for row in rows:
        assert (row["dice_mean"] is None) == (row["group"] == "absent")
        assert (row["empty_correct"] is None) == (row["group"] not in ("absent", "overall"))
        if row["style"] == "original" and row["dice_mean"] is not None:
            assert row["dice_vs_original"] == 0.0


def test_every_style_rewrites_every_attribute_prompt(robustness):
    _, out = robustness
    records = json.loads((out / "robustness_per_prompt.json").read_text())
    by_prompt: dict[tuple[str, str], dict[str, str]] = {}
    for record in records:
        assert record["kind"] in ("single", "absent")
        assert (record["empty_correct"] is None) == (record["kind"] == "single")
        by_prompt.setdefault((record["case"], record["original_prompt"]), {})[record["style"]] = record["prompt"]
    for (_, original), texts in by_prompt.items():
        assert list(texts) == list(STYLES)
        assert texts["original"] == original
        assert all(texts[style] != original for style in PROMPT_STYLES), texts
    assert len(records) == len(by_prompt) * len(STYLES)


def test_results_are_deterministic_for_a_seed(robustness, tiny_run, dataset_2d, tmp_path):
    rows, out = robustness
    again = prompt_robustness(tiny_run, dataset_2d, tmp_path / "again", split="test", seed=0, progress=False)
    assert again == rows
    first = (out / "robustness_per_prompt.json").read_text()
    assert (tmp_path / "again" / "robustness_per_prompt.json").read_text() == first
    prompt_robustness(tiny_run, dataset_2d, tmp_path / "other", split="test", styles=("long", "unseen_synonyms"),
                      seed=1, progress=False)
    other = json.loads((tmp_path / "other" / "robustness_per_prompt.json").read_text())
    seed0 = {(r["case"], r["original_prompt"], r["style"]): r["prompt"] for r in json.loads(first)}
    assert any(seed0[(r["case"], r["original_prompt"], r["style"])] != r["prompt"] for r in other)


@pytest.mark.parametrize(("styles", "message"), [
    (("original", "shouty"), r"^prompt_robustness: unknown style 'shouty'; known styles: original, structured, "
                             r"short, long, unseen_synonyms$"),
    (("short", "short"), r"^prompt_robustness: styles must be distinct and at least one, got \['short', 'short'\]$"),
    ((), r"^prompt_robustness: styles must be distinct and at least one, got \[\]$"),
])
def test_bad_styles_fail_with_one_line(tmp_path, styles, message):
    with pytest.raises(MedTextSegError, match=message):
        prompt_robustness(tmp_path / "no_run", tmp_path / "no_data", tmp_path / "out", styles=styles, progress=False)
