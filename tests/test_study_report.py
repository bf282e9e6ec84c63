"""study.report: the files of a repeated-run study, their rows and their numbers, and bad runs."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from matplotlib.image import imread
from scipy import stats

from medtextseg.evaluation.metrics import OVERALL_GROUP
from medtextseg.study.report import summarize_study, write_study_report
from medtextseg.study.statistics import holm
from medtextseg.utils.errors import MedTextSegError

T_975_2 = 4.302653  # Student t quantile, 0.975, df = 2 (printed tables)

# Group mean Dice of each run: configuration -> group -> [seed 0, seed 1, seed 2].
DICE = {
    "dice-loss": {"absent": [1.0, 0.9, 0.95], "single": [0.70, 0.80, 0.90], OVERALL_GROUP: [0.80, 0.84, 0.92]},
    "jaccard-loss": {"absent": [0.9, 0.9, 0.85], "single": [0.60, 0.75, 0.80], OVERALL_GROUP: [0.70, 0.80, 0.82]},
}


def _row(group: str, dice: float | None, hd95: float | None = 4.0, **extra) -> dict:
    return {"group": group, "group_by": "kind", "n": 5, "dice_mean": dice, "dice_std": 0.1, "iou_mean": dice,
            "nsd_mean": dice, "hd95_mean": hd95, "hd95_std": 1.0, "hd95_inf": 1, "empty_correct": None, **extra}


def _runs(dice: dict = DICE, seeds: tuple[int, ...] = (0, 1, 2)) -> list[dict]:
    return [{"configuration": configuration, "seed": seed, "run_dir": f"runs/{configuration}-{seed}",
             "summary": [_row(group, values[index], hd95=3.0 + index) for group, values in groups.items()]}
            for configuration, groups in dice.items() for index, seed in enumerate(seeds)]


def _read_csv(path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _strict_json(path):
    def reject(token):
        raise AssertionError(f"{path} contains the non-standard token {token}")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("study")
    return write_study_report(_runs(), out_dir, metrics=("dice", "hd95"), title="Loss study")


# ------------------------------------------------------------------------------------------ files


def test_every_file_is_written(report):
    assert set(report) == {"runs_csv", "summary_csv", "summary_md", "comparisons_csv", "violin_png", "runs_png",
                           "study_json"}
    assert [report[key].name for key in sorted(report)] == [
        "comparisons.csv", "runs.csv", "runs.png", "study.json", "summary.csv", "summary.md", "violin.png"]
    assert all(path.is_file() and path.stat().st_size > 0 for path in report.values())


def test_runs_csv_has_one_row_per_run_and_group(report):
    rows = _read_csv(report["runs_csv"])
    assert len(rows) == 2 * 3 * 3  # configurations x seeds x groups
    assert list(rows[0])[:4] == ["configuration", "seed", "group", "n"]
    assert {"dice_mean", "hd95_mean", "hd95_inf", "run_dir"} <= set(rows[0])
    row = next(r for r in rows if r["configuration"] == "jaccard-loss" and r["seed"] == "1" and r["group"] == "single")
    assert float(row["dice_mean"]) == 0.75 and float(row["hd95_mean"]) == 4.0
    assert row["run_dir"] == "runs/jaccard-loss-1" and row["n"] == "5"


def test_summary_csv_mean_std_and_ci(report):
    rows = _read_csv(report["summary_csv"])
    assert len(rows) == 2 * 3 * 2  # metrics x groups x configurations
    row = next(r for r in rows if (r["metric"], r["group"], r["configuration"]) == ("dice", "single", "dice-loss"))
    # 0.7, 0.8, 0.9: mean 0.8, std 0.1, CI 0.8 ± t(0.975, 2) * 0.1 / sqrt(3).
    assert int(row["n"]) == 3 and json.loads(row["seeds"]) == [0, 1, 2]
    assert float(row["mean"]) == pytest.approx(0.8) and float(row["std"]) == pytest.approx(0.1)
    half_width = T_975_2 * 0.1 / math.sqrt(3)
    assert float(row["ci_low"]) == pytest.approx(0.8 - half_width, abs=1e-5)
    assert float(row["ci_high"]) == pytest.approx(0.8 + half_width, abs=1e-5)
    assert float(row["shapiro_p"]) == pytest.approx(stats.shapiro([0.7, 0.8, 0.9]).pvalue)
    assert float(row["median"]) == pytest.approx(0.8) and float(row["min"]) == 0.7
    hd95 = next(r for r in rows if (r["metric"], r["group"], r["configuration"]) == ("hd95", "absent", "dice-loss"))
    assert float(hd95["mean"]) == pytest.approx(4.0)  # 3, 4, 5 mm


def test_comparisons_csv_paired_tests_of_the_primary_metric(report):
    rows = _read_csv(report["comparisons_csv"])
    assert [(r["group"], r["configuration_a"], r["configuration_b"]) for r in rows] == [
        ("absent", "dice-loss", "jaccard-loss"), ("single", "dice-loss", "jaccard-loss"),
        (OVERALL_GROUP, "dice-loss", "jaccard-loss")]
    assert {r["metric"] for r in rows} == {"dice"}
    single = rows[1]
    # Differences 0.10, 0.05, 0.10: mean 1/12, sd 0.05 / sqrt(3), t = 5 with df 2, whose two-sided
    # p = 1 - t / sqrt(2 + t^2) (closed form of the t distribution with 2 degrees of freedom).
    assert float(single["mean_difference"]) == pytest.approx(1 / 12)
    assert float(single["t_statistic"]) == pytest.approx(5.0)
    assert float(single["t_p"]) == pytest.approx(1 - 5 / math.sqrt(27))
    assert float(single["t_p_holm"]) == pytest.approx(float(single["t_p"]))  # one pair per group: m = 1
    assert float(single["wilcoxon_p"]) == pytest.approx(0.25)  # 3 positive differences: 2 / 2^3
    assert "smallest two-sided Wilcoxon p is 2/2^3" in single["notes"]


def test_summary_md_tables(report):
    text = report["summary_md"].read_text(encoding="utf-8")
    assert text.startswith("# Loss study\n")
    assert "2 configurations, 6 runs" in text and "grouped by `kind`" in text
    assert "## dice\n" in text and "## hd95 (mm, lower is better" in text
    assert "| single | dice-loss | 3 | 0.8000 ± 0.1000 | [0.5516, 1.0484] | 0.8000 [0.7000, 0.9000] |" in text
    assert "## Pairwise comparisons: dice" in text
    assert "| single | dice-loss | jaccard-loss | 3 | +0.0833 | [+0.0116, +0.1550] | 0.038 | 0.038 | 0.250 |" in text
    assert "> **Note:** every comparison: 3 pairs: the smallest two-sided Wilcoxon p is 2/2^3 = 0.25" in text


def test_study_json_holds_everything(report):
    payload = _strict_json(report["study_json"])
    assert payload["title"] == "Loss study" and payload["primary_metric"] == "dice"
    assert payload["metrics"] == ["dice", "hd95"] and payload["group_by"] == "kind"
    assert payload["configurations"] == ["dice-loss", "jaccard-loss"]
    assert payload["seeds"] == {"dice-loss": [0, 1, 2], "jaccard-loss": [0, 1, 2]}
    assert payload["groups"] == ["absent", "single", OVERALL_GROUP]
    assert len(payload["runs"]) == 18 and len(payload["summary"]) == 12 and len(payload["comparisons"]) == 3
    assert payload["files"]["violin_png"] == "violin.png"
    assert payload["notes"] == []


@pytest.mark.parametrize("key", ["violin_png", "runs_png"])
def test_plots_are_images_with_content(report, key):
    image = imread(report[key])
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 600  # three panels side by side
    assert np.std(image[..., :3]) > 0.05  # not a blank canvas


# ------------------------------------------------------------------------------------------ few runs


def test_one_seed_still_writes_and_says_why_statistics_are_missing(tmp_path):
    paths = write_study_report(_runs(seeds=(7,), dice={"a": {"single": [0.8]}, "b": {"single": [0.7]}}),
                               tmp_path, metrics=("dice",))
    text = paths["summary_md"].read_text(encoding="utf-8")
    assert "statistics need >= 2 runs per configuration" in text and "{'a': 1, 'b': 1}" in text
    assert "| single | a | 1 | 0.8000 | – | 0.8000 [0.8000, 0.8000] | – |" in text
    summary = _read_csv(paths["summary_csv"])
    assert summary[0]["std"] == "" and summary[0]["ci_low"] == "" and summary[0]["shapiro_p"] == ""
    comparisons = _read_csv(paths["comparisons_csv"])
    assert float(comparisons[0]["mean_difference"]) == pytest.approx(0.1) and comparisons[0]["t_p"] == ""
    assert all(path.is_file() for path in paths.values())


def test_two_seeds_have_a_ci_but_no_shapiro():
    study = summarize_study(_runs(seeds=(0, 1), dice={"a": {"single": [0.8, 0.9]}, "b": {"single": [0.7, 0.8]}}),
                            metrics=("dice",))
    assert study["notes"] == ["Shapiro-Wilk needs >= 3 runs per configuration; runs per configuration: "
                              "{'a': 2, 'b': 2}"]
    row = study["summary"][0]
    assert row["ci_low"] is not None and row["shapiro_p"] is None


def test_one_configuration_has_no_comparison(tmp_path):
    paths = write_study_report(_runs(dice={"only": DICE["dice-loss"]}), tmp_path)
    assert "Only one configuration: nothing to compare." in paths["summary_md"].read_text(encoding="utf-8")
    assert _read_csv(paths["comparisons_csv"]) == []
    assert paths["comparisons_csv"].read_text(encoding="utf-8").startswith("metric,group,configuration_a,")


def test_a_run_without_a_group_is_a_missing_value():
    runs = _runs()
    runs[-1]["summary"] = [row for row in runs[-1]["summary"] if row["group"] != "absent"]  # jaccard-loss seed 2
    study = summarize_study(runs, metrics=("dice",))
    row = next(r for r in study["summary"] if (r["group"], r["configuration"]) == ("absent", "jaccard-loss"))
    assert row["n"] == 2 and row["seeds"] == [0, 1] and row["mean"] == pytest.approx(0.9)
    assert "no dice value for seeds [2]" in row["notes"]
    comparison = next(r for r in study["comparisons"] if r["group"] == "absent")
    assert comparison["seeds"] == [0, 1]


def test_a_none_metric_is_a_missing_value():
    runs = _runs()
    runs[0]["summary"][0]["hd95_mean"] = None  # dice-loss seed 0, absent: every hd95 infinite
    study = summarize_study(runs, metrics=("hd95",))
    row = next(r for r in study["summary"] if (r["group"], r["configuration"]) == ("absent", "dice-loss"))
    assert row["n"] == 2 and row["mean"] == pytest.approx(4.5)  # seeds 1 and 2: 4 and 5 mm


def test_holm_is_applied_within_each_group():
    dice = dict(DICE, **{"tversky-loss": {"absent": [0.8, 0.85, 0.9], "single": [0.65, 0.66, 0.7],
                                          OVERALL_GROUP: [0.75, 0.7, 0.8]}})
    study = summarize_study(_runs(dice=dice), metrics=("dice",))
    single = [row for row in study["comparisons"] if row["group"] == "single"]
    assert len(single) == 3
    assert [row["t_p_holm"] for row in single] == pytest.approx(holm([row["t_p"] for row in single]))


def test_records_are_summarized_by_group_by():
    def record(kind: str, dice: float) -> dict:
        return {"case": "c", "prompt": "p", "kind": kind, "size": "small", "dice": dice, "iou": dice,
                "precision": dice, "recall": dice, "nsd": dice, "hd95": 1.0, "assd": 1.0, "pred_empty": False,
                "target_empty": False}

    runs = [{"configuration": "a", "seed": seed, "records": [record("single", 0.5 + seed / 10),
                                                              record("all", 0.9)]} for seed in (0, 1)]
    study = summarize_study(runs, metrics=("dice",))
    assert study["group_by"] == "kind" and study["groups"] == ["all", "single", OVERALL_GROUP]
    row = next(r for r in study["summary"] if r["group"] == OVERALL_GROUP)
    assert row["mean"] == pytest.approx(np.mean([(0.5 + 0.9) / 2, (0.6 + 0.9) / 2]))
    by_size = summarize_study(runs, metrics=("dice",), group_by="size")
    assert by_size["groups"] == ["small", OVERALL_GROUP]


# ------------------------------------------------------------------------------------------ errors


def test_no_runs_raises():
    with pytest.raises(MedTextSegError, match=r"runs must be a non-empty list of dicts"):
        summarize_study([])


def test_repeated_run_raises():
    runs = _runs()
    runs.append(dict(runs[0]))
    with pytest.raises(MedTextSegError, match=r"run 6 \('dice-loss', seed 0\) repeats a \(configuration, seed\)"):
        summarize_study(runs)


def test_seed_must_be_an_integer():
    runs = _runs()
    runs[1]["seed"] = "1"
    with pytest.raises(MedTextSegError, match=r"run 1 \('dice-loss', seed '1'\) needs 'seed', an integer, got '1'"):
        summarize_study(runs)


def test_configuration_must_be_named():
    runs = _runs()
    runs[0]["configuration"] = ""
    with pytest.raises(MedTextSegError, match=r"needs 'configuration', a non-empty string, got ''"):
        summarize_study(runs)


def test_unknown_metric_raises():
    with pytest.raises(MedTextSegError, match=r"unknown metrics \['dise'\]; valid: \['dice', 'iou'"):
        summarize_study(_runs(), metrics=("dise",))


def test_summary_and_records_together_raise():
    runs = _runs()
    runs[0]["records"] = []
    with pytest.raises(MedTextSegError, match=r"run 0 .* needs exactly one of 'summary' .* and 'records'"):
        summarize_study(runs)


def test_metric_missing_from_the_summary_raises():
    with pytest.raises(MedTextSegError, match=r"group 'absent': the summary row has no 'kappa_mean'"):
        summarize_study(_runs(), metrics=("kappa",))


def test_summaries_grouped_differently_raise():
    runs = _runs()
    runs[0]["summary"] = [dict(row, group_by="n_lesions") for row in runs[0]["summary"]]
    with pytest.raises(MedTextSegError, match=r"grouped by different keys \['kind', 'n_lesions'\]"):
        summarize_study(runs)


def test_group_by_must_match_the_summaries():
    with pytest.raises(MedTextSegError, match=r"group_by='group' but the summaries are grouped by 'kind'"):
        summarize_study(_runs(), group_by="group")


def test_a_reference_is_compared_with_each_configuration_apart_and_leaves_their_own_tests_unchanged():
    three = DICE | {"tversky-loss": {"absent": [0.8, 0.95, 0.9], "single": [0.65, 0.7, 0.95],
                                     OVERALL_GROUP: [0.75, 0.8, 0.9]}}
    unet = {"absent": [0.5, 0.6, 0.55], "single": [0.9, 0.85, 0.95]}  # no overall: it answers lesions only
    alone = summarize_study(_runs(three), metrics=("dice",))
    both = summarize_study(_runs(three | {"UNet": unet}), metrics=("dice",), reference="UNet")
    assert [r for r in both["comparisons"] if r["family"] == "configurations"] == alone["comparisons"]
    against = [r for r in both["comparisons"] if r["family"] == "reference"]
    assert {(r["group"], r["configuration_a"], r["configuration_b"]) for r in against} == {
        (group, name, "UNet") for group in ("absent", "single") for name in three}  # overall: no UNet value
    absent = [r for r in against if r["group"] == "absent"]
    assert [r["t_p_holm"] for r in absent] == pytest.approx(holm([r["t_p"] for r in absent]))
    dice_loss = next(r for r in absent if r["configuration_a"] == "dice-loss")
    assert dice_loss["mean_difference"] == pytest.approx(0.95 - 0.55)
    with pytest.raises(MedTextSegError, match="reference 'MONAI' is not among"):
        summarize_study(_runs(three), metrics=("dice",), reference="MONAI")
