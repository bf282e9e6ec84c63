"""Lesion-level detection metrics of the PI-CAI challenge, computed by ``picai_eval`` (DIAGNijmegen).

Voxel metrics (:mod:`medtextseg.evaluation.metrics`) say how well a mask overlaps the lesions; PI-CAI also asks
whether each lesion was *found* and how confident the model was. Its evaluation works on **detection maps**:
arrays of the image's shape in which every lesion candidate is one 3D-connected blob (26-connectivity) of one
constant confidence, zero elsewhere. :func:`detection_map` turns a probability (softmax) map into one with
``report_guided_annotation.extract_lesion_candidates``; :func:`lesion_detection_metrics` runs
``picai_eval.evaluate`` over all cases and returns

* ``auroc``: case-level AUROC. A case is positive when its ground truth holds a lesion; its score is the
  maximum of its detection map (the most confident candidate, 0 when there is none).
* ``ap``: lesion-level average precision. A candidate is a true positive when its overlap (IoU by default)
  with a ground-truth lesion is at least ``min_overlap`` (0.1 in PI-CAI); candidates and lesions are paired
  one to one (Hungarian matching); an unmatched lesion is a miss at confidence 0, an unmatched candidate a
  false positive. Ground-truth lesions are the 26-connected components of the mask.
* ``picai_score`` = (auroc + ap) / 2, the PI-CAI 22 ranking score.

Edge-case conventions
---------------------
``picai_eval`` returns nan (with scikit-learn warnings) or raises when a metric is undefined; here such a
metric is None and ``undefined_reason`` says why::

    cases                                       auroc     ap        picai_score   undefined_reason
    no ground-truth lesion in any case          None      None      None          "no case has a ..."
    every case has a lesion (no negative case)  None      picai's   None          "no case without ..."
    both kinds, nothing predicted anywhere      0.5       0.0       0.25          None
    both kinds                                  picai's values (floats in [0, 1])  None

With nothing predicted every case scores 0, a tie, hence AUROC 0.5 (picai_eval's value, kept); every lesion is
a miss, hence AP 0. ``picai_eval``'s negative zero (-0.0) is returned as 0.0.

Both packages print a citation banner to stdout when first imported; it is swallowed here so that commands
that write JSON to stdout stay parseable.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import sys
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from medtextseg.evaluation.metrics import map_and_binary_target
from medtextseg.utils.errors import MedTextSegError

#: String thresholds of ``extract_lesion_candidates`` (report_guided_annotation 0.3). "dynamic*" extract up to
#: ``num_lesions`` candidates one at a time, each grown down to (its peak / ``dynamic_threshold_factor``);
#: "-v2" fixes a bug of version 1; "-fast" uses one threshold, (global max / factor), for the whole map;
#: "-mean" gives a candidate the mean instead of the maximum probability of its voxels.
DYNAMIC_THRESHOLDS: tuple[str, ...] = ("dynamic-v2", "dynamic", "dynamic-v2-mean", "dynamic-mean", "dynamic-fast",
                                       "dynamic-fast-mean")
#: What :func:`lesion_detection_metrics` receives per case: "detection" maps (blobs of constant confidence),
#: "probability" maps (converted with :func:`detection_map`), or "auto" (decided per case, see there).
MapKind = Literal["auto", "detection", "probability"]
#: 26-connectivity, as picai_eval and report_guided_annotation use for candidates and ground-truth lesions.
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def _quiet_import(name: str) -> Any:
    """Import ``name`` without its stdout banner; a missing package becomes a MedTextSegError."""
    if name in sys.modules:
        return sys.modules[name]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return importlib.import_module(name)
    except ImportError as error:
        raise MedTextSegError(f"lesion detection metrics need {name} ({error}); "
                              "install it with `pip install picai_eval`") from error


def _as_3d(array: np.ndarray, where: str) -> np.ndarray:
    """``[X, Y, Z]`` unchanged, ``[X, Y]`` as ``[X, Y, 1]`` (both packages label with a 3x3x3 structure)."""
    if array.ndim == 2:
        return array[..., None]
    if array.ndim != 3:
        raise MedTextSegError(f"{where}: maps must be 2D [X, Y] or 3D [X, Y, Z], got shape {array.shape}")
    return array


def _check_confidences(values: np.ndarray, where: str, upper: float | None) -> np.ndarray:
    values = values.astype(np.float32)
    if values.size and not (np.isfinite(values).all() and values.min() >= 0.0
                            and (upper is None or values.max() <= upper)):
        allowed = "in [0, 1]" if upper is not None else ">= 0"
        raise MedTextSegError(f"{where}: values must be finite and {allowed}, got values from "
                              f"{np.nanmin(values):.4g} to {np.nanmax(values):.4g}; apply a sigmoid/softmax "
                              "to logits first")
    return values


def _is_detection_map(values: np.ndarray) -> bool:
    """True when every 26-connected blob of non-zero voxels of ``values`` ``[X, Y, Z]`` holds one value."""
    labels, count = ndimage.label(values > 0, structure=_CONNECTIVITY)
    if count == 0:
        return True
    index = np.arange(1, count + 1)
    return bool(np.array_equal(ndimage.minimum(values, labels, index), ndimage.maximum(values, labels, index)))


def detection_map(probability: np.ndarray, threshold: str | float = "dynamic-v2", min_voxels: int = 10,
                  num_lesions: int = 5, dynamic_threshold_factor: float = 2.5) -> np.ndarray:
    """Lesion candidates of a probability map, as a detection map for :func:`lesion_detection_metrics`.

    Calls ``report_guided_annotation.extract_lesion_candidates`` (the PI-CAI baselines' post-processing) and
    returns the first item of its result. Each candidate is one 26-connected blob whose voxels all hold the
    candidate's confidence (the maximum probability inside it, for the non-"-mean" thresholds).

    Args:
        probability: foreground probabilities in [0, 1], shape ``[X, Y, Z]`` or ``[X, Y]`` (processed as
            ``[X, Y, 1]``), any float or int dtype.
        threshold: how candidates are delimited, one of :data:`DYNAMIC_THRESHOLDS` or a float in (0, 1]:
            a candidate is then a connected blob of voxels with ``probability >= threshold``. The default,
            "dynamic-v2", extracts candidates one at a time from the highest remaining peak, each grown down to
            peak / ``dynamic_threshold_factor``, and stops below a peak of 0.01. Plain "dynamic" (version 1) can
            wipe out every candidate when the highest peak is a speck of at most ``min_voxels`` voxels;
            "-v2" only drops the speck.
        min_voxels: candidates of at most this many voxels are dropped (report_guided_annotation keeps a
            blob only when it has more than ``min_voxels_detection`` voxels).
        num_lesions: at most this many candidates per map ("dynamic*" thresholds only, not "dynamic-fast*").
        dynamic_threshold_factor: > 1; a larger factor gives larger candidates (dynamic thresholds only).

    Returns:
        float32 array of the input's shape: 0 outside candidates, the candidate's confidence (> 0) inside.
        All zeros when no candidate survives.

    Raises:
        MedTextSegError: the map is not 2D/3D, has values outside [0, 1] or not finite, or an argument is
            out of range.

    Example:
        >>> probability = np.zeros((8, 8, 8)); probability[2:5, 2:5, 2:5] = 0.9; probability[2, 2, 2] = 0.95
        >>> np.unique(detection_map(probability)).tolist()  # one 27-voxel candidate at its peak, 0.95
        [0.0, 0.949999988079071]
    """
    where = "detection_map"
    probability = np.asarray(probability)
    values = _check_confidences(_as_3d(probability, where), f"{where}: probability", upper=1.0)
    if isinstance(threshold, str):
        if threshold not in DYNAMIC_THRESHOLDS:
            raise MedTextSegError(f"{where}: threshold must be a float in (0, 1] or one of "
                                  f"{list(DYNAMIC_THRESHOLDS)}, got {threshold!r}")
    elif not (isinstance(threshold, (int, float)) and 0.0 < float(threshold) <= 1.0):
        raise MedTextSegError(f"{where}: threshold must be a float in (0, 1] or one of "
                              f"{list(DYNAMIC_THRESHOLDS)}, got {threshold!r}")
    if isinstance(min_voxels, bool) or not isinstance(min_voxels, (int, np.integer)) or min_voxels < 0:
        raise MedTextSegError(f"{where}: min_voxels must be an int >= 0, got {min_voxels!r}")
    if isinstance(num_lesions, bool) or not isinstance(num_lesions, (int, np.integer)) or num_lesions < 1:
        raise MedTextSegError(f"{where}: num_lesions must be an int >= 1, got {num_lesions!r}")
    # With a factor <= 1 the dynamic loop of report_guided_annotation never ends (nothing lies above the peak).
    if not (math.isfinite(dynamic_threshold_factor) and dynamic_threshold_factor > 1.0):
        raise MedTextSegError(f"{where}: dynamic_threshold_factor must be finite and > 1, "
                              f"got {dynamic_threshold_factor!r}")
    rga = _quiet_import("report_guided_annotation")
    hard_blobs = rga.extract_lesion_candidates(
        values, threshold=threshold if isinstance(threshold, str) else float(threshold),
        min_voxels_detection=int(min_voxels), num_lesions_to_extract=int(num_lesions),
        dynamic_threshold_factor=float(dynamic_threshold_factor))[0]
    return np.asarray(hard_blobs, dtype=np.float32).reshape(probability.shape)


def _case_maps(index: int, case: Any, kind: MapKind, extraction: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(detection map float32, ground truth int32)``, both ``[X, Y, Z]``, of case ``index``."""
    where = f"lesion_detection_metrics: case {index}"
    if not (isinstance(case, (tuple, list)) and len(case) == 2):
        raise MedTextSegError(f"{where} must be a pair (prediction map, ground-truth mask), got {type(case).__name__}")
    prediction, target = map_and_binary_target(case[0], case[1], where, "prediction")
    target = _as_3d(target, where).astype(np.int32)
    if kind == "probability":
        return _as_3d(detection_map(prediction, **extraction), where), target
    values = _check_confidences(_as_3d(prediction, where), f"{where}: prediction",
                                upper=None if kind == "detection" else 1.0)
    if _is_detection_map(values):
        return values, target
    if kind == "detection":
        raise MedTextSegError(f"{where}: not a detection map (a connected blob holds several values); "
                              "pass kind='probability' to extract lesion candidates from a probability map")
    return _as_3d(detection_map(prediction, **extraction), where), target


def lesion_detection_metrics(cases: Sequence[tuple[np.ndarray, np.ndarray]], kind: MapKind = "auto",
                             min_overlap: float = 0.1, overlap: Literal["IoU", "DSC"] = "IoU",
                             threshold: str | float = "dynamic-v2", min_voxels: int = 10
                             ) -> dict[str, float | int | str | None]:
    """PI-CAI case-level AUROC, lesion-level AP and ranking score over cases, by ``picai_eval.evaluate``.

    Args:
        cases: one ``(prediction, target)`` pair per case (patient): ``prediction`` a detection map or a
            probability map, ``target`` the binary ground-truth lesion mask (bool or 0/1) of the same shape
            ``[X, Y, Z]`` or ``[X, Y]`` (as ``[X, Y, 1]``). An empty target is a negative (lesion-free) case.
        kind: "detection": each prediction is already a detection map (blobs of constant confidence >= 0);
            "probability": each is a probability map in [0, 1], converted with :func:`detection_map`;
            "auto": per case, a map whose every 26-connected non-zero blob holds one value (a binary mask
            included) is taken as a detection map, any other as a probability map.
        min_overlap: overlap, in (0, 1], a candidate needs with a lesion to count as its detection.
        overlap: "IoU" (PI-CAI) or "DSC", the overlap measure.
        threshold, min_voxels: passed to :func:`detection_map` for probability maps.

    Returns:
        ``auroc``, ``ap``, ``picai_score``: floats in [0, 1], or None when undefined (module docstring);
        ``undefined_reason``: None, or a one-line reason for a None metric; ``cases``: number of cases;
        ``positive_cases``: cases with a ground-truth lesion; ``lesions``: ground-truth lesions (26-connected
        components); ``candidates``: lesion candidates over all detection maps; ``detected_lesions``: lesions
        matched by a candidate (at any confidence).

    Raises:
        MedTextSegError: no cases, a pair with different shapes, a non-binary target, values out of range,
            a non-detection map with ``kind="detection"``, or an argument out of range.
    """
    if kind not in ("auto", "detection", "probability"):
        raise MedTextSegError(f"lesion_detection_metrics: kind must be 'auto', 'detection' or 'probability', "
                              f"got {kind!r}")
    if overlap not in ("IoU", "DSC"):
        raise MedTextSegError(f"lesion_detection_metrics: overlap must be 'IoU' or 'DSC', got {overlap!r}")
    if not (isinstance(min_overlap, (int, float)) and 0.0 < float(min_overlap) <= 1.0):
        raise MedTextSegError(f"lesion_detection_metrics: min_overlap must be in (0, 1], got {min_overlap!r}")
    if len(cases) == 0:
        raise MedTextSegError("lesion_detection_metrics: cases is empty; give at least one (prediction, target)")
    extraction = {"threshold": threshold, "min_voxels": min_voxels}
    maps = [_case_maps(index, case, kind, extraction) for index, case in enumerate(cases)]

    picai_eval = _quiet_import("picai_eval")
    result = picai_eval.evaluate(y_det=[detection for detection, _ in maps], y_true=[target for _, target in maps],
                                 min_overlap=float(min_overlap), overlap_func=overlap, num_parallel_calls=1,
                                 verbose=0)
    positive_cases = sum(int(target) for target in result.case_target.values())
    lesions = int(result.num_lesions)
    reasons = []
    # Only computed when defined: picai_eval gives nan (AUROC) or raises (AP without any lesion entry) otherwise.
    auroc: float | None = None
    if positive_cases == 0:
        reasons.append("no case has a ground-truth lesion: AUROC and AP are undefined")
    elif positive_cases == len(maps):
        reasons.append("no case without a lesion: AUROC is undefined")
    else:
        auroc = float(result.auroc) + 0.0
    ap = float(result.AP) + 0.0 if lesions > 0 else None  # + 0.0 turns picai_eval's -0.0 into 0.0
    score = None if auroc is None or ap is None else float(result.score) + 0.0  # (auroc + ap) / 2
    candidates = sum(int(ndimage.label(detection > 0, structure=_CONNECTIVITY)[1]) for detection, _ in maps)
    detected = sum(1 for is_lesion, confidence, _ in result.lesion_results_flat if is_lesion and confidence > 0)
    return {"auroc": auroc, "ap": ap, "picai_score": score,
            "undefined_reason": "; ".join(reasons) if reasons else None,
            "cases": int(result.num_cases), "positive_cases": positive_cases, "lesions": lesions,
            "candidates": candidates, "detected_lesions": detected}
