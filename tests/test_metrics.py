"""segmentation_metrics and summarize: hand-computed answers on tiny masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medtextseg.evaluation.metrics import (
    METRIC_KEYS,
    OVERALL_GROUP,
    average_precision,
    segmentation_metrics,
    summarize,
)
from medtextseg.utils.errors import MedTextSegError


def _line(length: int, start: int, stop: int) -> np.ndarray:
    """A [1, 1, length] mask, True on k in [start, stop)."""
    mask = np.zeros((1, 1, length), dtype=bool)
    mask[0, 0, start:stop] = True
    return mask


def _planes(shape: tuple[int, ...], axis: int, index: int) -> np.ndarray:
    """A one-voxel-thick plane (3D) or line (2D) across ``shape`` at ``index`` along ``axis``."""
    mask = np.zeros(shape, dtype=np.uint8)
    mask[(slice(None),) * axis + (index,)] = 1
    return mask


# ------------------------------------------------------------------------------------------ overlap


def test_overlap_metrics_of_two_boxes():
    # prediction k in [0, 6): 6 voxels; target k in [2, 10): 8 voxels; overlap k in [2, 6): 4 voxels.
    metrics = segmentation_metrics(_line(10, 0, 6), _line(10, 2, 10), spacing=(1.0, 1.0, 1.0))
    assert metrics["dice"] == pytest.approx(2 * 4 / (6 + 8))
    assert metrics["iou"] == pytest.approx(4 / 10)
    assert metrics["precision"] == pytest.approx(4 / 6)
    assert metrics["recall"] == pytest.approx(4 / 8)
    assert (metrics["pred_voxels"], metrics["target_voxels"]) == (6, 8)
    assert (metrics["pred_empty"], metrics["target_empty"]) == (False, False)


def test_identical_masks_are_perfect():
    mask = np.zeros((5, 6, 4), dtype=bool)
    mask[1:4, 2:5, 1:3] = True
    metrics = segmentation_metrics(mask, mask.copy(), spacing=(0.5, 0.5, 3.0))
    for key in ("dice", "iou", "precision", "recall", "nsd"):
        assert metrics[key] == pytest.approx(1.0)
    assert metrics["hd95"] == pytest.approx(0.0)
    assert metrics["assd"] == pytest.approx(0.0)


def test_types_are_plain_python():
    metrics = segmentation_metrics(_line(10, 0, 6), _line(10, 2, 10), spacing=(1.0, 1.0, 1.0))
    assert all(type(metrics[key]) is float for key in ("dice", "iou", "precision", "recall", "nsd",
                                                        "hd95", "assd"))
    assert type(metrics["pred_voxels"]) is int and type(metrics["pred_empty"]) is bool


def test_keys_are_metric_keys():
    metrics = segmentation_metrics(_line(10, 0, 6), _line(10, 2, 10), spacing=(1.0, 1.0, 1.0))
    assert set(metrics) == set(METRIC_KEYS)


# ------------------------------------------------------------------------------------------ agreement


def test_accuracy_and_kappa_by_hand():
    # k in [0, 20): prediction [0, 6), target [2, 10): TP 4, FP 2, FN 4, TN 10.
    # p_o = 14/20 = 0.7; p_e = (6 * 8 + 14 * 12) / 20^2 = 0.54; kappa = (0.7 - 0.54) / (1 - 0.54) = 0.16 / 0.46.
    metrics = segmentation_metrics(_line(20, 0, 6), _line(20, 2, 10), spacing=(1.0, 1.0, 1.0))
    assert metrics["pixel_accuracy"] == pytest.approx(0.7)
    assert metrics["kappa"] == pytest.approx(0.16 / 0.46)


def test_kappa_is_negative_when_worse_than_chance():
    # k in [0, 10): TP 4, FP 2, FN 4, TN 0. p_o = 0.4; p_e = (6 * 8 + 4 * 2) / 100 = 0.56; kappa = -0.16 / 0.44.
    metrics = segmentation_metrics(_line(10, 0, 6), _line(10, 2, 10), spacing=(1.0, 1.0, 1.0))
    assert metrics["pixel_accuracy"] == pytest.approx(0.4)
    assert metrics["kappa"] == pytest.approx(-0.16 / 0.44)


def test_f1_is_dice():
    metrics = segmentation_metrics(_line(20, 0, 6), _line(20, 2, 10), spacing=(1.0, 1.0, 1.0))
    assert metrics["f1"] == metrics["dice"] == pytest.approx(8 / 14)


def test_kappa_matches_scikit_learn_and_never_exceeds_one():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(3)
    for fraction in (0.05, 0.3, 0.7):
        target = rng.random((6, 7, 5)) < fraction
        prediction = target ^ (rng.random(target.shape) < 0.2)  # flip a fifth of the voxels
        metrics = segmentation_metrics(prediction, target, spacing=(1.0, 1.0, 1.0))
        assert metrics["kappa"] == pytest.approx(cohen_kappa_score(target.ravel(), prediction.ravel()))
        assert -1.0 <= metrics["kappa"] <= 1.0
        assert metrics["pixel_accuracy"] == pytest.approx(np.mean(prediction == target))
    identical = rng.random((4, 4)) < 0.5
    assert segmentation_metrics(identical, identical, spacing=(1.0, 1.0))["kappa"] == pytest.approx(1.0)


def test_kappa_of_identical_constant_masks_is_one():
    # p_e = 1: kappa is 0/0 by the formula, defined as 1 (the masks are identical).
    for fill in (False, True):
        mask = np.full((3, 4), fill)
        metrics = segmentation_metrics(mask, mask.copy(), spacing=(1.0, 1.0))
        assert metrics["kappa"] == 1.0 and metrics["pixel_accuracy"] == 1.0


def test_kappa_of_opposite_constant_masks_is_zero():
    # Prediction all foreground, target all background: p_o = 0, p_e = 0, kappa 0 (not nan).
    metrics = segmentation_metrics(np.ones((3, 4), bool), np.zeros((3, 4), bool), spacing=(1.0, 1.0))
    assert metrics["kappa"] == 0.0 and metrics["pixel_accuracy"] == 0.0


# ------------------------------------------------------------------------------------------ average precision


def test_average_precision_by_hand():
    # Ranked: 0.8 (background), 0.4 (target), 0.35 (target), 0.1. Recall steps 0.5 at precision 1/2, then 0.5
    # at precision 2/3: AP = 0.5 * 1/2 + 0.5 * 2/3.
    probability = np.array([[0.1, 0.4], [0.35, 0.8]])
    target = np.array([[0, 1], [1, 0]])
    assert average_precision(probability, target) == pytest.approx(0.5 / 2 + 0.5 * 2 / 3)


def test_average_precision_of_a_perfect_ranking_and_of_ties():
    target = np.array([0, 0, 1, 1], bool)
    assert average_precision(np.array([0.1, 0.2, 0.6, 0.9]), target) == pytest.approx(1.0)
    # One tied value: a single threshold with precision 2/4 at recall 1.
    assert average_precision(np.full(4, 0.5), target) == pytest.approx(0.5)
    assert average_precision(np.array([0.2, 0.3]), np.array([1, 1])) == pytest.approx(1.0)  # all foreground


@pytest.mark.parametrize(("peak", "expected"), [(0.3, 1.0), (0.5, 1.0), (0.51, 0.0)])
def test_average_precision_of_an_empty_target_follows_the_threshold(peak, expected):
    # Nothing to rank: 1 when no voxel would be predicted (probability > 0.5), else 0, as dice.
    probability = np.array([0.0, 0.1, peak])
    assert average_precision(probability, np.zeros(3, bool)) == expected
    assert average_precision(probability, np.zeros(3, bool), threshold=0.6) == 1.0


def test_average_precision_errors():
    with pytest.raises(MedTextSegError, match=r"same shape, got probability \(3,\) and target \(4,\)"):
        average_precision(np.zeros(3), np.zeros(4))
    with pytest.raises(MedTextSegError, match=r"finite and in \[0, 1\], got values from -2 to 3; apply a sigmoid"):
        average_precision(np.array([-2.0, 3.0]), np.array([0, 1]))
    with pytest.raises(MedTextSegError, match=r"finite and in \[0, 1\]"):
        average_precision(np.array([np.nan, 0.5]), np.array([0, 1]))
    with pytest.raises(MedTextSegError, match=r"target must be a binary mask"):
        average_precision(np.array([0.2, 0.5]), np.array([0, 2]))


# ------------------------------------------------------------------------------------------ surfaces


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_distances_of_parallel_planes_use_the_spacing_of_their_axis(axis):
    # Planes 3 voxels apart along `axis`: every surface point is exactly 3 * spacing[axis] from the other.
    spacing = (0.5, 1.25, 3.0)
    shape = (7, 7, 7)
    metrics = segmentation_metrics(_planes(shape, axis, 1), _planes(shape, axis, 4), spacing=spacing)
    assert metrics["hd95"] == pytest.approx(3 * spacing[axis])
    assert metrics["assd"] == pytest.approx(3 * spacing[axis])
    assert metrics["dice"] == 0.0


def test_distances_in_2d():
    metrics = segmentation_metrics(_planes((6, 8), 1, 2), _planes((6, 8), 1, 7), spacing=(0.7, 0.4))
    assert metrics["hd95"] == pytest.approx(5 * 0.4)
    assert metrics["assd"] == pytest.approx(5 * 0.4)


@pytest.mark.parametrize(("tolerance", "expected"), [(1.9, 0.0), (2.0, 1.0), (2.5, 1.0)])
def test_nsd_tolerance_is_inclusive_and_in_mm(tolerance, expected):
    # One voxel apart along k, 2 mm voxels: all surface points are 2 mm from the other surface.
    shape = (4, 4, 6)
    metrics = segmentation_metrics(_planes(shape, 2, 2), _planes(shape, 2, 3), spacing=(1.0, 1.0, 2.0),
                                   nsd_tolerance_mm=tolerance)
    assert metrics["nsd"] == pytest.approx(expected)


def test_nsd_counts_the_surface_within_tolerance_from_both_sides():
    # Target: row i=2 (10 voxels). Prediction: row i=3 at j<5 (1 mm away) and row i=7 at j>=5 (5 mm away).
    # Within 1 mm: 5 of 10 prediction points, and 5 of 10 target points (j<5; (2, 5) is sqrt(2) mm from
    # (3, 4)). NSD = (5 + 5) / (10 + 10).
    target = np.zeros((10, 10), dtype=bool)
    target[2, :] = True
    prediction = np.zeros((10, 10), dtype=bool)
    prediction[3, :5] = True
    prediction[7, 5:] = True
    metrics = segmentation_metrics(prediction, target, spacing=(1.0, 1.0), nsd_tolerance_mm=1.0)
    assert metrics["nsd"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------ edge cases


def test_both_empty_is_a_correct_answer():
    empty = np.zeros((3, 4, 5), dtype=bool)
    metrics = segmentation_metrics(empty, empty, spacing=(1.0, 1.0, 1.0))
    assert {key: metrics[key] for key in ("dice", "iou", "precision", "recall", "nsd", "hd95", "assd")} == {
        "dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "nsd": 1.0, "hd95": 0.0, "assd": 0.0}
    assert (metrics["f1"], metrics["kappa"], metrics["pixel_accuracy"]) == (1.0, 1.0, 1.0)
    assert metrics["pred_empty"] and metrics["target_empty"]


def test_false_positive_on_an_empty_target():
    empty = np.zeros((1, 1, 10), dtype=bool)
    metrics = segmentation_metrics(_line(10, 2, 4), empty, spacing=(1.0, 1.0, 1.0))
    assert {key: metrics[key] for key in ("dice", "iou", "precision", "recall", "nsd", "f1", "kappa")} == {
        "dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 1.0, "nsd": 0.0, "f1": 0.0, "kappa": 0.0}
    assert metrics["pixel_accuracy"] == pytest.approx(1 - 2 / 10)  # 2 false positives of 10 voxels
    assert math.isinf(metrics["hd95"]) and math.isinf(metrics["assd"])
    assert not metrics["pred_empty"] and metrics["target_empty"]


def test_missed_target():
    empty = np.zeros((1, 1, 10), dtype=bool)
    metrics = segmentation_metrics(empty, _line(10, 2, 4), spacing=(1.0, 1.0, 1.0))
    assert {key: metrics[key] for key in ("dice", "iou", "precision", "recall", "nsd", "f1", "kappa")} == {
        "dice": 0.0, "iou": 0.0, "precision": 1.0, "recall": 0.0, "nsd": 0.0, "f1": 0.0, "kappa": 0.0}
    assert metrics["pixel_accuracy"] == pytest.approx(1 - 2 / 10)  # 2 missed voxels of 10
    assert math.isinf(metrics["hd95"]) and math.isinf(metrics["assd"])
    assert metrics["pred_empty"] and not metrics["target_empty"]


# ------------------------------------------------------------------------------------------ errors


def test_shape_mismatch_raises():
    with pytest.raises(MedTextSegError, match=r"same shape, got prediction \(2, 3, 4\) and target \(2, 3, 5\)"):
        segmentation_metrics(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), spacing=(1, 1, 1))


def test_spacing_length_raises():
    with pytest.raises(MedTextSegError, match=r"spacing needs one value \(mm\) per axis of the 3D masks, got 2"):
        segmentation_metrics(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), spacing=(1.0, 1.0))


def test_non_positive_spacing_raises():
    with pytest.raises(MedTextSegError, match=r"spacing must be positive and finite, got \(1.0, 0.0\)"):
        segmentation_metrics(np.zeros((2, 3)), np.zeros((2, 3)), spacing=(1.0, 0.0))


def test_non_binary_mask_raises():
    probability = np.full((2, 3), 0.7)
    with pytest.raises(MedTextSegError, match=r"prediction must be a binary mask .*threshold it first"):
        segmentation_metrics(probability, np.zeros((2, 3)), spacing=(1.0, 1.0))


def test_wrong_dimensionality_raises():
    with pytest.raises(MedTextSegError, match=r"masks must be 2D \[X, Y\] or 3D \[X, Y, Z\], got shape \(4,\)"):
        segmentation_metrics(np.zeros(4), np.zeros(4), spacing=(1.0,))


# ------------------------------------------------------------------------------------------ summarize


def _record(kind: str, dice: float, *, hd95: float = 1.0, pred_empty: bool = False,
            target_empty: bool = False, **extra) -> dict:
    return {"case": "c", "prompt": "p", "kind": kind, "dice": dice, "iou": dice / 2, "precision": dice,
            "recall": 1.0, "nsd": dice, "hd95": hd95, "assd": hd95 / 2, "pred_voxels": 0 if pred_empty else 5,
            "target_voxels": 0 if target_empty else 5, "pred_empty": pred_empty, "target_empty": target_empty,
            **extra}


def _records() -> list[dict]:
    return [
        _record("single", 0.8, hd95=2.0, n_lesions=2),
        _record("single", 0.4, hd95=4.0, n_lesions=1),
        _record("single", 0.0, hd95=math.inf, pred_empty=True, n_lesions=2),  # a miss
        _record("absent", 1.0, hd95=0.0, pred_empty=True, target_empty=True, n_lesions=1),
        _record("absent", 1.0, hd95=0.0, pred_empty=True, target_empty=True, n_lesions=1),
        _record("absent", 0.0, hd95=math.inf, target_empty=True, n_lesions=2),  # a false positive
    ]


def test_summary_means_std_and_infinite_counts():
    rows = {row["group"]: row for row in summarize(_records())}
    assert list(rows) == ["absent", "single", OVERALL_GROUP]  # alphabetical, overall last
    single = rows["single"]
    assert single["n"] == 3
    assert single["dice_mean"] == pytest.approx(0.4)
    assert single["dice_std"] == pytest.approx(np.std([0.8, 0.4, 0.0]))  # population std
    assert single["iou_mean"] == pytest.approx(0.2)
    assert single["hd95_mean"] == pytest.approx(3.0)  # finite values only: (2 + 4) / 2
    assert single["hd95_inf"] == 1 and single["assd_inf"] == 1
    assert single["assd_mean"] == pytest.approx(1.5)
    assert single["empty_correct"] is None and single["n_empty_target"] == 0
    assert single["false_positive_cases"] == 0 and single["missed_cases"] == 1


def test_summary_empty_correct_and_false_positives():
    rows = {row["group"]: row for row in summarize(_records())}
    absent = rows["absent"]
    assert absent["empty_correct"] == pytest.approx(2 / 3)
    assert absent["false_positive_cases"] == 1 and absent["n_empty_target"] == 3
    assert absent["hd95_mean"] == pytest.approx(0.0) and absent["hd95_inf"] == 1
    overall = rows[OVERALL_GROUP]
    assert overall["n"] == 6
    assert overall["dice_mean"] == pytest.approx((0.8 + 0.4 + 0.0 + 1.0 + 1.0 + 0.0) / 6)
    assert overall["hd95_inf"] == 2
    assert overall["empty_correct"] == pytest.approx(2 / 3)


def test_summary_groups_by_any_key_numerically():
    rows = summarize(_records(), group_by="n_lesions")
    assert [row["group"] for row in rows] == ["1", "2", OVERALL_GROUP]
    assert all(row["group_by"] == "n_lesions" for row in rows)
    one = rows[0]
    assert one["n"] == 3 and one["dice_mean"] == pytest.approx((0.4 + 1.0 + 1.0) / 3)
    assert one["empty_correct"] == pytest.approx(1.0)


def test_summary_all_infinite_distances_give_none_mean():
    rows = summarize([_record("single", 0.0, hd95=math.inf, pred_empty=True)])
    assert rows[0]["hd95_mean"] is None and rows[0]["hd95_inf"] == 1


def test_summary_reports_the_new_metrics():
    records = [dict(_record("single", 0.8), f1=0.8, pixel_accuracy=0.9, kappa=0.5, average_precision=0.7),
               dict(_record("single", 0.4), f1=0.4, pixel_accuracy=0.7, kappa=-0.1, average_precision=0.5)]
    row = summarize(records)[0]
    assert row["f1_mean"] == pytest.approx(0.6) and row["pixel_accuracy_mean"] == pytest.approx(0.8)
    assert row["kappa_mean"] == pytest.approx(0.2) and row["kappa_std"] == pytest.approx(0.3)
    assert row["average_precision_mean"] == pytest.approx(0.6)


def test_summary_of_records_without_the_new_metrics_gives_none():
    # Records written before f1, pixel_accuracy, kappa existed (and without average_precision) still summarize.
    row = summarize(_records())[0]
    for name in ("f1", "pixel_accuracy", "kappa", "average_precision"):
        assert row[f"{name}_mean"] is None and row[f"{name}_std"] is None
    assert row["dice_mean"] == pytest.approx(2 / 3)


def test_summary_of_a_metric_in_some_records_only_raises():
    records = [dict(_record("single", 0.8), average_precision=0.7), _record("single", 0.4)]
    with pytest.raises(MedTextSegError, match=r"average_precision is in some records but missing or None in "
                                              r"records \[1\]"):
        summarize(records)


def test_summary_missing_group_key_raises():
    with pytest.raises(MedTextSegError, match=r"record 0 \(case 'c', prompt 'p'\) has no key group_by='size'"):
        summarize(_records(), group_by="size")


def test_summary_missing_metric_raises():
    record = _record("single", 0.5)
    del record["nsd"]
    with pytest.raises(MedTextSegError, match=r"lacks metric keys \['nsd'\]"):
        summarize([record])


def test_summary_group_named_like_the_overall_row_raises():
    with pytest.raises(MedTextSegError, match=r"has kind='overall', the name of the summary row"):
        summarize([_record(OVERALL_GROUP, 0.5)])


def test_summary_of_nothing_raises():
    with pytest.raises(MedTextSegError, match=r"records is empty"):
        summarize([])


def test_maximum_hausdorff_is_set_by_one_stray_voxel_where_hd95_is_not():
    target = np.zeros((40, 40, 4), bool)
    target[5:25, 5:25, 1:3] = True
    prediction = target.copy()
    prediction[38, 38, 3] = True  # one false-positive voxel far away: ~19 voxels from the box's corner
    m = segmentation_metrics(prediction, target, spacing=(2.0, 2.0, 3.0))
    corner = math.dist((38 * 2.0, 38 * 2.0, 3 * 3.0), (24 * 2.0, 24 * 2.0, 2 * 3.0))
    assert m["hd"] == pytest.approx(corner)  # the maximum, in mm
    assert m["hd95"] < 2.0 < m["hd"]  # the 95th percentile ignores one voxel of a large surface
    assert segmentation_metrics(target, target, spacing=(1, 1, 1))["hd"] == 0.0
    assert segmentation_metrics(np.zeros_like(target), target, spacing=(1, 1, 1))["hd"] == math.inf


def test_summaries_of_records_written_before_the_maximum_hausdorff_leave_it_empty():
    target = np.zeros((8, 8, 2), bool)
    target[2:6, 2:6] = True
    record = {"kind": "anatomy", **segmentation_metrics(target, target, spacing=(1, 1, 1))}
    old = {key: value for key, value in record.items() if key != "hd"}
    [row, overall] = summarize([old])
    assert row["hd_mean"] is None and row["hd_inf"] is None and row["hd95_mean"] == 0.0
    assert summarize([record])[0]["hd_mean"] == 0.0


def test_class_means_weigh_every_class_alike():
    target = np.zeros((8, 8, 2), bool)
    target[2:6, 2:6] = True
    perfect = segmentation_metrics(target, target, spacing=(1, 1, 1))
    missed = segmentation_metrics(np.zeros_like(target), target, spacing=(1, 1, 1))
    # three prompts of a frequent class answered perfectly, one of a rare class missed
    records = [{"kind": "anatomy", "class": "gland", **perfect}] * 3 + [{"kind": "anatomy", "class": "apex", **missed}]
    overall = summarize(records)[-1]
    assert overall["dice_mean"] == pytest.approx(0.75)  # per prompt
    assert overall["dice_class_mean"] == pytest.approx(0.5) and overall["iou_class_mean"] == pytest.approx(0.5)
    assert overall["classes"] == 2
    without_class = [{k: v for k, v in r.items() if k != "class"} for r in records]  # falls back to the group
    assert summarize(without_class)[-1]["dice_class_mean"] == pytest.approx(0.75)
