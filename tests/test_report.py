"""report: strict JSON with inf, CSV rows, Markdown summaries, comparisons, overlay and loss-curve PNGs."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from matplotlib.image import imread
from rich.console import Console

from medtextseg.evaluation.figures import radiological_view, save_loss_curve, save_loss_curves, save_overlay
from medtextseg.evaluation.metrics import OVERALL_GROUP, summarize
from medtextseg.evaluation.report import write_comparison
from medtextseg.evaluation.tables import comparison_table, read_records, render_table, write_records, write_summary
from medtextseg.utils.errors import MedTextSegError


def _strict_json(path):
    """Parse JSON, failing on the Infinity / NaN tokens that strict parsers reject."""
    def reject(token):
        raise AssertionError(f"{path} contains the non-standard token {token}")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def _record(case: str, kind: str, dice: float, hd95: float, pred_empty=False, target_empty=False) -> dict:
    return {"case": case, "prompt": f"{kind} of {case}", "kind": kind, "dice": dice, "iou": dice,
            "precision": dice, "recall": dice, "nsd": dice, "hd95": hd95, "assd": hd95,
            "pred_voxels": 0 if pred_empty else 3, "target_voxels": 0 if target_empty else 3,
            "pred_empty": pred_empty, "target_empty": target_empty, "meta": {"n_lesions": 2}}


RECORDS = [
    _record("a", "single", 0.9, 1.5),
    _record("b", "single", 0.5, 2.5),
    _record("a", "absent", 1.0, 0.0, pred_empty=True, target_empty=True),
    _record("b", "absent", 0.0, math.inf, target_empty=True),
]


# ------------------------------------------------------------------------------------------ records


def test_write_records_json_is_strict_and_flags_inf(tmp_path):
    json_path, csv_path = write_records(RECORDS, tmp_path / "eval")
    assert json_path.name == "metrics_per_prompt.json" and csv_path.name == "metrics_per_prompt.csv"
    payload = _strict_json(json_path)
    assert len(payload) == 4
    assert payload[3]["hd95"] is None and payload[3]["hd95_nonfinite"] == "inf"
    assert payload[0]["hd95"] == 1.5 and "hd95_nonfinite" not in payload[0]
    assert payload[0]["meta"] == {"n_lesions": 2}


def test_write_records_csv_rows_and_inf(tmp_path):
    _, csv_path = write_records(RECORDS, tmp_path)
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert list(rows[0])[:3] == ["case", "prompt", "kind"]
    assert rows[3]["hd95"] == "inf" and math.isinf(float(rows[3]["hd95"]))
    assert float(rows[1]["dice"]) == 0.5
    assert json.loads(rows[0]["meta"]) == {"n_lesions": 2}


def test_read_records_restores_inf(tmp_path):
    json_path, _ = write_records(RECORDS, tmp_path)
    assert read_records(json_path) == RECORDS


def test_read_records_rejects_other_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}')
    with pytest.raises(MedTextSegError, match=r"x.json: expected a JSON list of records"):
        read_records(path)


def test_records_accept_numpy_scalars(tmp_path):
    record = dict(RECORDS[0], dice=np.float32(0.25), pred_voxels=np.int64(3), pred_empty=np.bool_(False))
    json_path, _ = write_records([record], tmp_path)
    payload = _strict_json(json_path)[0]
    assert payload["dice"] == 0.25 and payload["pred_voxels"] == 3 and payload["pred_empty"] is False


# ------------------------------------------------------------------------------------------ summary


def test_write_summary_files(tmp_path):
    rows = summarize(RECORDS)
    md_path = write_summary(rows, tmp_path, "Synthetic prostate")
    assert md_path == tmp_path / "summary.md"
    text = md_path.read_text(encoding="utf-8")
    assert text.startswith("# Synthetic prostate")
    # single: dice 0.9 and 0.5 -> 0.700 ± 0.200; absent: one of two empty targets answered empty.
    assert "| single | 2 | 0.700 ± 0.200 |" in text
    assert "| absent | 2 |" in text and "0.50 (1/2)" in text and "(1 inf)" in text
    assert f"| {OVERALL_GROUP} | 4 |" in text
    summary = _strict_json(tmp_path / "summary.json")
    assert [row["group"] for row in summary] == ["absent", "single", OVERALL_GROUP]
    assert summary[1]["empty_correct"] is None
    with (tmp_path / "summary.csv").open(newline="", encoding="utf-8") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [row["group"] for row in csv_rows] == ["absent", "single", OVERALL_GROUP]
    assert float(csv_rows[1]["dice_mean"]) == pytest.approx(0.7)


def test_render_table_lists_every_group():
    table = render_table(summarize(RECORDS), title="eval")
    assert table.row_count == 3
    console = Console(record=True, width=250)
    console.print(table)
    text = console.export_text()
    assert "single" in text and OVERALL_GROUP in text and "0.700 ± 0.200" in text


# ------------------------------------------------------------------------------------------ comparison


def _two_runs() -> dict[str, list[dict]]:
    text = summarize(RECORDS)
    worse = [dict(record, dice=record["dice"] / 2) for record in RECORDS[:2]]
    image = summarize(worse)  # no "absent" group
    return {"text-guided": text, "image-only": image}


def test_comparison_table_values_and_differences():
    table = comparison_table(_two_runs())
    assert [row["group"] for row in table] == ["absent", "single", OVERALL_GROUP]
    single = table[1]
    assert single["text-guided"] == pytest.approx(0.7) and single["image-only"] == pytest.approx(0.35)
    assert single["text-guided - image-only"] == pytest.approx(0.35)
    absent = table[0]
    assert absent["image-only"] is None and absent["text-guided - image-only"] is None


def test_comparison_table_reference_and_metric():
    table = comparison_table(_two_runs(), metric="empty_correct", reference="text-guided")
    assert table[0] == {"group": "absent", "metric": "empty_correct", "text-guided": 0.5, "image-only": None,
                        "image-only - text-guided": None}


def test_comparison_table_unknown_metric_raises():
    with pytest.raises(MedTextSegError, match=r"metric must be one of \['dice', .*\], got 'dsc'"):
        comparison_table(_two_runs(), metric="dsc")


def test_comparison_table_unknown_reference_raises():
    with pytest.raises(MedTextSegError, match=r"reference must be one of the runs \['text-guided', "):
        comparison_table(_two_runs(), reference="baseline")


def test_comparison_table_mixed_grouping_raises():
    runs = {"a": summarize(RECORDS, group_by="kind"), "b": summarize(RECORDS, group_by="case")}
    with pytest.raises(MedTextSegError, match=r"grouped by different keys \['case', 'kind'\]"):
        comparison_table(runs)


def test_write_comparison_files(tmp_path):
    paths = write_comparison(_two_runs(), tmp_path)
    assert {path.name for path in paths.values()} == {f"comparison_dice.{ext}" for ext in ("md", "csv", "json",
                                                                                          "png")}
    assert len(_strict_json(paths["json"])) == 3
    with paths["csv"].open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[1]["group"] == "single" and float(rows[1]["text-guided - image-only"]) == pytest.approx(0.35)
    assert "| single | 0.700 | 0.350 | +0.350 |" in paths["md"].read_text(encoding="utf-8")
    picture = imread(paths["png"])
    assert picture.ndim == 3 and picture[..., :3].std() > 0.05


# ------------------------------------------------------------------------------------------ overlay


def _colour_pixels(picture: np.ndarray, colour: str) -> np.ndarray:
    red, green, blue = picture[..., 0], picture[..., 1], picture[..., 2]
    if colour == "green":
        return np.argwhere((green > 0.8) & (red < 0.3) & (blue < 0.3))
    return np.argwhere((red > 0.8) & (green < 0.3) & (blue < 0.3))


def test_radiological_view_puts_patient_right_left_and_anterior_up():
    slice_ij = np.arange(6).reshape(2, 3)  # [X=2 (i), Y=3 (j)]
    view = radiological_view(slice_ij)
    assert view.shape == (3, 2)
    # Top-left: the most anterior (max j) and most rightward (max i) voxel; bottom-right: i=0, j=0.
    np.testing.assert_array_equal(view, [[5, 2], [4, 1], [3, 0]])


def test_overlay_draws_contours_where_expected(tmp_path):
    image = np.linspace(0.0, 1.0, 16 * 14 * 5).reshape(16, 14, 5)
    target = np.zeros(image.shape, dtype=bool)
    target[10:14, 9:12, 3] = True  # patient right, anterior: top-left of the picture
    target[10:11, 9:10, 1] = True  # fewer voxels on slice 1: slice 3 must be chosen
    prediction = np.zeros(image.shape, dtype=bool)
    prediction[2:5, 2:5, 3] = True  # patient left, posterior: bottom-right; only on slice 3
    path = save_overlay(image, target, prediction, tmp_path / "overlay" / "case.png", title="synth_001: lesion")
    picture = imread(path)
    green, red = _colour_pixels(picture, "green"), _colour_pixels(picture, "red")
    assert len(green) > 10 and len(red) > 10
    green_row, green_col = green.mean(axis=0)
    red_row, red_col = red.mean(axis=0)
    assert green_col < red_col and green_row < red_row


def test_overlay_with_probability_has_a_second_panel(tmp_path):
    image = np.random.default_rng(0).normal(size=(12, 12))  # 2D [X, Y]
    target = np.zeros((12, 12), dtype=bool)
    target[3:7, 3:7] = True
    prediction = np.roll(target, 2, axis=0)
    one = imread(save_overlay(image, target, prediction, tmp_path / "one.png", title="2D"))
    two = imread(save_overlay(image, target, prediction, tmp_path / "two.png", title="2D",
                              probability=prediction * 0.9))
    assert two.shape[1] > 1.8 * one.shape[1]
    assert len(_colour_pixels(two, "red")) > len(_colour_pixels(one, "red"))  # red drawn on both panels


def test_overlay_of_empty_masks_is_written(tmp_path):
    image = np.zeros((8, 8, 3))
    empty = np.zeros((8, 8, 3), dtype=bool)
    picture = imread(save_overlay(image, empty, empty, tmp_path / "empty.png", title="absent"))
    assert len(_colour_pixels(picture, "green")) == 0 and len(_colour_pixels(picture, "red")) == 0


def test_overlay_shape_mismatch_raises(tmp_path):
    with pytest.raises(MedTextSegError, match=r"prediction must have the image's shape \(4, 4, 2\), got \(4, 4\)"):
        save_overlay(np.zeros((4, 4, 2)), np.zeros((4, 4, 2)), np.zeros((4, 4)), tmp_path / "x.png", title="x")


# ------------------------------------------------------------------------------------------ loss curves


def _write_log(path, steps: int = 60, offset: float = 0.0):
    lines = [json.dumps({"config": {"lr": 1e-3}})]  # a header line without loss: skipped
    for step in range(steps):
        lines.append(json.dumps({"step": step, "loss": 1.0 / (1 + step) + offset + 0.05 * math.sin(step),
                                 "lr": 1e-3}))
        if step % 10 == 9:
            lines.append(json.dumps({"step": step, "val_dice": step / steps, "val_loss": 0.5}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_loss_curve_png(tmp_path):
    path = save_loss_curve(_write_log(tmp_path / "train_log.jsonl"), tmp_path / "plots" / "loss.png")
    picture = imread(path)
    assert picture.ndim == 3 and picture.shape[0] > 200 and picture.shape[1] > 400
    non_white = (picture[..., :3] < 0.9).any(axis=-1).mean()
    assert 0.01 < non_white < 0.5  # axes, lines and text; not blank, not filled


def test_loss_curves_overlay_runs(tmp_path):
    logs = {"text-guided": _write_log(tmp_path / "a.jsonl"), "image-only": _write_log(tmp_path / "b.jsonl", 40, 0.2)}
    picture = imread(save_loss_curves(logs, tmp_path / "both.png", title="runs"))
    # Runs are C0 (blue) and C1 (orange): both colours appear.
    blue = ((picture[..., 2] > 0.6) & (picture[..., 0] < 0.3)).sum()
    orange = ((picture[..., 0] > 0.9) & (picture[..., 1] > 0.4) & (picture[..., 1] < 0.6)
              & (picture[..., 2] < 0.2)).sum()
    assert blue > 50 and orange > 50


def test_loss_curve_malformed_line_raises(tmp_path):
    log = tmp_path / "bad.jsonl"
    log.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "loss": \n', encoding="utf-8")
    with pytest.raises(MedTextSegError, match=r"bad.jsonl:2: not a JSON line"):
        save_loss_curve(log, tmp_path / "bad.png")


def test_loss_curve_missing_step_raises(tmp_path):
    log = tmp_path / "nostep.jsonl"
    log.write_text('{"loss": 1.0}\n', encoding="utf-8")
    with pytest.raises(MedTextSegError, match=r"nostep.jsonl:1: a line with \['loss'\] needs an integer 'step'"):
        save_loss_curve(log, tmp_path / "x.png")


def test_loss_curve_empty_log_raises(tmp_path):
    log = tmp_path / "empty.jsonl"
    log.write_text('{"config": 1}\n', encoding="utf-8")
    with pytest.raises(MedTextSegError, match=r"empty.jsonl: no 'loss' or 'val_\*' entries to plot"):
        save_loss_curve(log, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
