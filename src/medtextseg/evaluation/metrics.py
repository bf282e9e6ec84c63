"""Per-prompt segmentation metrics (computed with MONAI) and their per-group summary.

Every metric compares one binary prediction with one binary target of the same 2D ``[X, Y]`` or 3D
``[X, Y, Z]`` grid. Overlap metrics come from ``monai.metrics`` (``compute_dice``, ``compute_iou``,
``get_confusion_matrix``); surface metrics (``compute_hausdorff_distance``,
``compute_average_surface_distance``, ``compute_surface_dice``) take the voxel spacing, so distances are in
millimetres. Pixel (voxel) accuracy and Cohen's kappa come from the confusion counts (TP, FP, FN, TN over all
N voxels); :func:`average_precision` ranks a probability map (scikit-learn).

* ``f1`` *is* ``dice``: for binary masks F1 = 2 TP / (2 TP + FP + FN) = Dice, so it is copied, not computed
  again. It is reported because papers list both (METHODS §3.7); a difference between them is a bug.
* ``pixel_accuracy`` = (TP + TN) / N. It is dominated by the background (a small lesion missed entirely
  still scores close to 1), so read it next to dice, never alone.
* ``kappa`` (Cohen's, binary) = (p_o - p_e) / (1 - p_e) with p_o the accuracy and p_e the agreement
  expected from the two masks' foreground fractions; computed as
  2 (TP TN - FN FP) / ((TP + FP)(FP + TN) + (TP + FN)(FN + TN)). It lies in [-1, 1] (0: chance agreement,
  negative: worse than chance); it can never exceed 1 (a published kappa of 5.3 is a bug).

Edge-case conventions
---------------------
MONAI returns nan or inf when a mask is empty. Text prompts make empty masks ordinary: an *absent* prompt
("the lesion in the left apex" when there is none) has an empty target, and the correct answer is an
empty prediction. So every case is decided here, explicitly, and no metric is ever nan::

    masks                                  dice=f1  iou  precision  recall  nsd  hd95, hd, assd  kappa  pixel_accuracy
    both empty (a correct answer)             1      1      1         1      1         0          1         1
    only the target empty (false positive)    0      0      0         1      0        inf         0     1 - FP / N
    only the prediction empty (a miss)        0      0      1         0      0        inf         0     1 - FN / N
    neither empty                          MONAI's values, all finite; kappa and accuracy from the counts

* Precision and recall use vacuous truth when their denominator is zero: with nothing predicted no
  predicted voxel is wrong (precision 1), with nothing to find nothing was missed (recall 1). This keeps
  every mean finite; the failure still shows in dice, iou, nsd and the other of the pair (0).
* The distances are inf when exactly one mask is empty: there is no surface to measure to.
  :func:`summarize` averages them over the finite values and counts the infinite ones separately.
* Kappa is undefined (0 / 0) when the expected agreement p_e is 1, which happens only when both masks are
  the same constant mask (both all background, or both all foreground): the masks are then identical and
  kappa is defined as 1. With exactly one mask empty, kappa is 0 (p_o = p_e), as the table says.
* :func:`average_precision` of an empty target (no positive voxel to rank) is defined like dice: 1 when
  no voxel's probability exceeds the threshold (the empty answer is right), else 0 (a false positive).
  It is not part of :func:`segmentation_metrics`, which sees the binary prediction only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from medtextseg.utils.errors import MedTextSegError

#: Metrics averaged with mean and std in :func:`summarize` (higher is better; all in [0, 1] except kappa, in
#: [-1, 1]).
OVERLAP_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "nsd", "f1", "pixel_accuracy", "kappa",
                                    "average_precision")
#: Overlap metrics a record may lack (records written before they existed) or hold as None
#: (``average_precision`` without a probability map); :func:`summarize` then reports their mean as None.
OPTIONAL_METRICS: tuple[str, ...] = ("f1", "pixel_accuracy", "kappa", "average_precision")
#: Distance metrics in mm (lower is better); may be inf, see the module docstring. ``hd`` is the maximum
#: (100th percentile) Hausdorff distance, which FiLM/CBN reports; one stray voxel far away sets it, so hd95 is
#: the robust one.
DISTANCE_METRICS: tuple[str, ...] = ("hd95", "hd", "assd")
#: Distance metrics a record may lack (records written before they existed); their summary is then None.
OPTIONAL_DISTANCE_METRICS: tuple[str, ...] = ("hd",)
#: Keys of the dict returned by :func:`segmentation_metrics` (all overlap metrics but ``average_precision``,
#: which needs the probability map: add ``record["average_precision"] = average_precision(...)`` yourself).
METRIC_KEYS: tuple[str, ...] = (*(name for name in OVERLAP_METRICS if name != "average_precision"),
                                *DISTANCE_METRICS, "pred_voxels", "target_voxels", "pred_empty", "target_empty")
#: ``group`` of the summary row over all records. Not "all": "all" is a prompt kind ("outline all lesions").
OVERALL_GROUP = "overall"


def _check_inputs(prediction: np.ndarray, target: np.ndarray,
                  spacing: Sequence[float], nsd_tolerance_mm: float) -> tuple[np.ndarray, np.ndarray]:
    prediction, target = np.asarray(prediction), np.asarray(target)
    if prediction.shape != target.shape:
        raise MedTextSegError(f"segmentation_metrics: prediction and target must have the same shape, "
                              f"got prediction {prediction.shape} and target {target.shape}")
    if prediction.ndim not in (2, 3):
        raise MedTextSegError(f"segmentation_metrics: masks must be 2D [X, Y] or 3D [X, Y, Z], "
                              f"got shape {prediction.shape}")
    if len(spacing) != prediction.ndim:
        raise MedTextSegError(f"segmentation_metrics: spacing needs one value (mm) per axis of the "
                              f"{prediction.ndim}D masks, got {len(spacing)}: {tuple(spacing)}")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise MedTextSegError(f"segmentation_metrics: spacing must be positive and finite, "
                              f"got {tuple(spacing)}")
    if not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise MedTextSegError(f"segmentation_metrics: nsd_tolerance_mm must be >= 0 and finite, "
                              f"got {nsd_tolerance_mm}")
    masks = []
    for name, mask in (("prediction", prediction), ("target", target)):
        # A probability map or a label map passed by mistake would give plausible-looking numbers.
        if mask.dtype != bool and np.any((mask != 0) & (mask != 1)):
            raise MedTextSegError(f"segmentation_metrics: {name} must be a binary mask (bool or 0/1), "
                                  f"found values {np.unique(mask)[:5].tolist()}...; threshold it first")
        masks.append(mask.astype(bool))
    return masks[0], masks[1]


def _agreement(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``pixel_accuracy`` and Cohen's ``kappa`` of two bool masks, from exact integer confusion counts."""
    tp = int(np.count_nonzero(prediction & target))
    fp = int(np.count_nonzero(prediction)) - tp
    fn = int(np.count_nonzero(target)) - tp
    tn = prediction.size - tp - fp - fn
    # kappa = (p_o - p_e) / (1 - p_e), multiplied through by N^2 / 2 (Python ints: no overflow, no rounding).
    denominator = (tp + fp) * (fp + tn) + (tp + fn) * (fn + tn)
    # denominator == 0 <=> p_e == 1 <=> both masks are the same constant mask: identical, so kappa = 1.
    kappa = 1.0 if denominator == 0 else 2 * (tp * tn - fn * fp) / denominator
    return {"pixel_accuracy": (tp + tn) / prediction.size, "kappa": kappa}


def map_and_binary_target(values: Any, target: Any, where: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(values, target)`` as arrays, checked: one shape, and a binary target (bool or 0/1).

    Raises:
        MedTextSegError: ``{where}: {name} and target must have the same shape, ...`` or ``{where}: target must be
            a binary mask ...``.
    """
    values, target = np.asarray(values), np.asarray(target)
    if values.shape != target.shape:
        raise MedTextSegError(f"{where}: {name} and target must have the same shape, "
                              f"got {name} {values.shape} and target {target.shape}")
    if target.dtype != bool and np.any((target != 0) & (target != 1)):
        raise MedTextSegError(f"{where}: target must be a binary mask (bool or 0/1), "
                              f"found values {np.unique(target)[:5].tolist()}...; binarize label maps first")
    return values, target


def average_precision(probability: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> float:
    """Average precision of a probability map ranking the voxels of one binary target.

    AP = sum_k (R_k - R_(k-1)) P_k over the distinct probability values taken as thresholds, highest first
    (precision P_k and recall R_k of ``probability >= value_k``), computed by scikit-learn's
    ``average_precision_score``; no interpolation, so it is not the 11-point VOC AP. Tied values form one
    step.

    Args:
        probability: foreground probabilities in [0, 1], any shape (``[X, Y]``, ``[X, Y, Z]``), float.
        target: binary mask (bool or 0/1) of the same shape.
        threshold: used only when the target is empty (see below); the predictor's
            ``inference.threshold``, where a voxel is foreground when ``probability > threshold``.

    Returns:
        A float in [0, 1]. A target with no foreground voxel has nothing to rank, so AP is undefined; like
        dice (module docstring) it is then 1.0 when no voxel's probability exceeds ``threshold`` (the empty
        answer is right) and 0.0 otherwise (a false positive). A target that is all foreground gives 1.0.

    Raises:
        MedTextSegError: shapes differ, the target is not binary, or probabilities are outside [0, 1] or
            not finite (logits passed by mistake).

    Example:
        >>> # ranked 0.8 (background), 0.4 (lesion), 0.35 (lesion), 0.1: AP = 0.5 * 1/2 + 0.5 * 2/3
        >>> round(average_precision(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 1, 1, 0])), 4)
        0.5833
    """
    probability, target = map_and_binary_target(probability, target, "average_precision", "probability")
    probability = probability.astype(float)
    if probability.size and not (np.isfinite(probability).all() and probability.min() >= 0.0
                                 and probability.max() <= 1.0):
        raise MedTextSegError(f"average_precision: probability must be finite and in [0, 1], got values "
                              f"from {np.nanmin(probability):.4g} to {np.nanmax(probability):.4g}; "
                              "apply a sigmoid to logits first")
    target = target.astype(bool).reshape(-1)
    if not target.any():
        return 0.0 if np.any(probability > threshold) else 1.0
    from sklearn.metrics import average_precision_score  # imported here: scikit-learn takes a second to import

    return float(average_precision_score(target, probability.reshape(-1)))


def segmentation_metrics(prediction: np.ndarray, target: np.ndarray, spacing: Sequence[float],
                         nsd_tolerance_mm: float = 1.0) -> dict[str, float | bool | int]:
    """Overlap and surface metrics of one binary prediction against one binary target.

    Args:
        prediction: binary mask, shape ``[X, Y]`` or ``[X, Y, Z]``, bool or 0/1.
        target: binary mask of the same shape.
        spacing: voxel size in mm along each axis, ``len(spacing) == prediction.ndim``.
        nsd_tolerance_mm: a surface point counts as correct in the normalized surface Dice (NSD) when it
            lies within this distance (inclusive) of the other surface.

    Returns:
        ``dice``, ``iou``, ``precision``, ``recall``, ``nsd``, ``f1`` (equal to ``dice``), ``pixel_accuracy``
        (floats in [0, 1]) and ``kappa`` (Cohen's, in [-1, 1]); ``hd95`` (95th percentile symmetric Hausdorff
        distance, mm), ``hd`` (the maximum one, mm) and ``assd`` (average symmetric surface distance, mm),
        floats that are inf when exactly one mask is empty; ``pred_voxels``, ``target_voxels`` (int);
        ``pred_empty``, ``target_empty`` (bool). Empty masks follow the module docstring's table.

    Raises:
        MedTextSegError: shapes differ, the masks are not 2D/3D or not binary, or ``spacing`` has the
            wrong length or a non-positive value.

    Example:
        >>> target = np.zeros((1, 1, 10), bool); target[0, 0, 2:10] = True
        >>> prediction = np.zeros((1, 1, 10), bool); prediction[0, 0, 0:6] = True
        >>> m = segmentation_metrics(prediction, target, spacing=(1.0, 1.0, 1.0))
        >>> [round(m[key], 4) for key in ("dice", "iou", "precision", "recall")]  # 4 of 6 and 4 of 8 overlap
        [0.5714, 0.4, 0.6667, 0.5]
    """
    prediction, target = _check_inputs(prediction, target, spacing, nsd_tolerance_mm)
    pred_voxels, target_voxels = int(prediction.sum()), int(target.sum())
    counts: dict[str, Any] = {"pred_voxels": pred_voxels, "target_voxels": target_voxels,
                              "pred_empty": pred_voxels == 0, "target_empty": target_voxels == 0}
    agreement = _agreement(prediction, target)
    if pred_voxels == 0 and target_voxels == 0:
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "nsd": 1.0, "f1": 1.0, **agreement,
                "hd95": 0.0, "hd": 0.0, "assd": 0.0, **counts}
    if target_voxels == 0:
        return {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 1.0, "nsd": 0.0, "f1": 0.0, **agreement,
                "hd95": math.inf, "hd": math.inf, "assd": math.inf, **counts}
    if pred_voxels == 0:
        return {"dice": 0.0, "iou": 0.0, "precision": 1.0, "recall": 0.0, "nsd": 0.0, "f1": 0.0, **agreement,
                "hd95": math.inf, "hd": math.inf, "assd": math.inf, **counts}

    # Imported here: MONAI takes seconds to import, and summaries, reports and the CLI's --help need none of it.
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_confusion_matrix_metric,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        compute_surface_dice,
        get_confusion_matrix,
    )

    # MONAI wants one-hot [B, C, *spatial]; our single channel is the foreground, so keep "background".
    y_pred = torch.from_numpy(prediction)[None, None].float()
    y = torch.from_numpy(target)[None, None].float()
    spacing = [float(s) for s in spacing]
    confusion = get_confusion_matrix(y_pred, y, include_background=True)
    with warnings.catch_warnings():
        # MONAI's own internal call to get_mask_edges triggers its deprecation warning (MONAI 1.5-1.6).
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        values = {
            "dice": compute_dice(y_pred, y, include_background=True, ignore_empty=False),
            "iou": compute_iou(y_pred, y, include_background=True, ignore_empty=False),
            "precision": compute_confusion_matrix_metric("precision", confusion),
            "recall": compute_confusion_matrix_metric("recall", confusion),
            "nsd": compute_surface_dice(y_pred, y, class_thresholds=[float(nsd_tolerance_mm)],
                                        include_background=True, spacing=spacing),
            "hd95": compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95,
                                               spacing=spacing),
            "hd": compute_hausdorff_distance(y_pred, y, include_background=True, spacing=spacing),
            "assd": compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True,
                                                     spacing=spacing),
        }
    metrics = {name: float(value.reshape(-1)[0]) for name, value in values.items()}
    # F1 of binary masks is Dice (2TP / (2TP + FP + FN)); copied so the two can never disagree.
    return metrics | {"f1": metrics["dice"], **agreement} | counts


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std())


def _group_sort_key(value: Any) -> tuple[int, float, str]:
    # Numbers (e.g. n_lesions) in numeric order first, then everything else alphabetically.
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _summarize_group(group: str, group_by: str, records: list[dict]) -> dict[str, Any]:
    row: dict[str, Any] = {"group": group, "group_by": group_by, "n": len(records)}
    for name in OVERLAP_METRICS:
        # Optional metrics are in every record or in none (checked by summarize): none gives None.
        row[f"{name}_mean"], row[f"{name}_std"] = _mean_std([float(r[name]) for r in records
                                                             if r.get(name) is not None])
    for name in DISTANCE_METRICS:
        values = [float(r[name]) for r in records if r.get(name) is not None]
        finite = [v for v in values if math.isfinite(v)]
        row[f"{name}_mean"], row[f"{name}_std"] = _mean_std(finite)
        row[f"{name}_inf"] = len(values) - len(finite) if values else None
    empty_target = [r for r in records if bool(r["target_empty"])]
    row["n_empty_target"] = len(empty_target)
    row["empty_correct"] = (sum(bool(r["pred_empty"]) for r in empty_target) / len(empty_target)
                            if empty_target else None)
    row["false_positive_cases"] = sum(not bool(r["pred_empty"]) for r in empty_target)
    row["missed_cases"] = sum(bool(r["pred_empty"]) and not bool(r["target_empty"]) for r in records)
    return row


def summarize(records: list[dict], group_by: str = "kind") -> list[dict]:
    """One summary row per value of ``record[group_by]``, then one row over all records.

    Args:
        records: one dict per (case, prompt), holding the keys of :func:`segmentation_metrics` and
            ``group_by`` (other keys such as ``case``, ``prompt`` or ``n_lesions`` are ignored), optionally
            ``average_precision``. Keys of :data:`OPTIONAL_METRICS` may be absent or None (in all records).
        group_by: any record key; numeric values (``n_lesions``) are sorted numerically, others
            alphabetically.

    Returns:
        Rows (dicts) with ``group`` (the value as str; the last row is :data:`OVERALL_GROUP`), ``group_by``,
        ``n``; ``{m}_mean`` and ``{m}_std`` (population std, ddof=0) for each of :data:`OVERLAP_METRICS`
        (None for an :data:`OPTIONAL_METRICS` name that the records lack); ``{d}_mean``/``{d}_std`` for each
        of :data:`DISTANCE_METRICS` over the finite values (None when none is finite) with ``{d}_inf``
        counting the infinite ones (None for ``hd`` when records written before it lack it); ``n_empty_target``;
        ``empty_correct``, the fraction of empty-target records answered with an empty prediction (None
        when the group has no empty target); ``false_positive_cases`` (empty target, non-empty prediction)
        and ``missed_cases`` (non-empty target, empty prediction); the overall row also has
        :func:`class_means`.

    Raises:
        MedTextSegError: no records, a record without ``group_by`` or a metric key, an optional metric in
            some records only, or a group value that equals :data:`OVERALL_GROUP`.
    """
    if not records:
        raise MedTextSegError("summarize: records is empty; evaluate at least one (case, prompt) first")
    groups: dict[Any, list[dict]] = {}
    for index, record in enumerate(records):
        where = f"record {index} (case {record.get('case')!r}, prompt {record.get('prompt')!r})"
        if group_by not in record:
            raise MedTextSegError(f"summarize: {where} has no key group_by={group_by!r}; "
                                  f"its keys are {sorted(record)}")
        missing = [key for key in (*OVERLAP_METRICS, *DISTANCE_METRICS, "pred_empty", "target_empty")
                   if key not in record and key not in (*OPTIONAL_METRICS, *OPTIONAL_DISTANCE_METRICS)]
        if missing:
            raise MedTextSegError(f"summarize: {where} lacks metric keys {missing}; "
                                  "build records from segmentation_metrics()")
        if str(record[group_by]) == OVERALL_GROUP:
            raise MedTextSegError(f"summarize: {where} has {group_by}={OVERALL_GROUP!r}, the name of the "
                                  "summary row over all records; rename that group")
        value = record[group_by]
        groups.setdefault(value if isinstance(value, Hashable) else str(value), []).append(record)
    for name in OPTIONAL_METRICS:
        lacking = [index for index, record in enumerate(records) if record.get(name) is None]
        if 0 < len(lacking) < len(records):
            raise MedTextSegError(f"summarize: {name} is in some records but missing or None in records "
                                  f"{lacking[:5]}{'...' if len(lacking) > 5 else ''}; a mean over a subset "
                                  f"would mislead, so give it to every record or to none")
    rows = [_summarize_group(str(value), group_by, groups[value])
            for value in sorted(groups, key=_group_sort_key)]
    rows.append(_summarize_group(OVERALL_GROUP, group_by, list(records)) | class_means(records, group_by))
    return rows


def class_means(records: list[dict], group_by: str = "kind") -> dict[str, float | None]:
    """``dice_class_mean`` and ``iou_class_mean``: the metric averaged per class, then over classes (mIoU as
    FiLM/CBN reports it), so a class with few prompts weighs as much as a frequent one. A record's class is its
    ``class`` (the prompt's class in ``prompts.jsonl``), else its ``group_by`` value."""
    classes: dict[str, list[dict]] = {}
    for record in records:
        classes.setdefault(str(record.get("class") or record[group_by]), []).append(record)
    return {f"{name}_class_mean": float(np.mean([np.mean([float(r[name]) for r in members])
                                                  for members in classes.values()]))
            for name in ("dice", "iou")} | {"classes": len(classes)}
