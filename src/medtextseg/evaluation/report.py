"""Write evaluation results: per-prompt records, group summaries, run comparisons, overlays and loss curves.

Every file is written atomically (:mod:`medtextseg.utils.atomic`), so a reader never sees half a table.

File formats
------------
* JSON is strict (``allow_nan=False``): a non-finite float (an ``hd95`` of inf, see
  :mod:`medtextseg.evaluation.metrics`) is written as ``null`` with a sibling key ``"{key}_nonfinite"``
  holding ``"inf"``, ``"-inf"`` or ``"nan"``. :func:`read_records` restores the floats.
* CSV writes such floats as ``inf`` / ``nan`` (which ``float()`` and pandas read back), ``None`` as an empty
  cell, and lists or dicts as JSON text.
* Plots use matplotlib's Agg canvas directly (no pyplot state, no display needed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table

from medtextseg.evaluation.metrics import DISTANCE_METRICS, OVERALL_GROUP, OVERLAP_METRICS
from medtextseg.utils.atomic import atomic_path, write_text_atomic
from medtextseg.utils.errors import MedTextSegError

PathLike = str | os.PathLike

RECORDS_JSON = "metrics_per_prompt.json"
RECORDS_CSV = "metrics_per_prompt.csv"
#: Columns placed first in the per-prompt table, when present.
_LEADING_KEYS = ("case", "prompt", "kind")
#: Metrics :func:`comparison_table` can compare (``{metric}_mean`` of a summary row, or the key itself).
COMPARABLE_METRICS: tuple[str, ...] = (*OVERLAP_METRICS, *DISTANCE_METRICS, "empty_correct")
TARGET_COLOR = "lime"  # pure (0, 1, 0): tells target contours apart from prediction ones in any image
PREDICTION_COLOR = "red"
_MAP_COLORS = {"probability": "viridis", "uncertainty": "magma"}


# --------------------------------------------------------------------------------------------- JSON, CSV


def _to_builtin(value: Any) -> Any:
    """numpy scalars and arrays, tuples, paths -> JSON-ready builtins (non-finite floats -> None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _to_builtin(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_to_builtin(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _encode_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A record with each non-finite top-level float as null plus a ``{key}_nonfinite`` flag."""
    encoded: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        encoded[key] = _to_builtin(value)
        if isinstance(value, float) and not math.isfinite(value):
            encoded[f"{key}_nonfinite"] = str(value)  # "inf", "-inf" or "nan"
    return encoded


def _dump_json(payload: Any) -> str:
    # allow_nan=False: fail here rather than write Infinity/NaN tokens that strict parsers reject.
    return json.dumps(payload, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _csv_cell(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, (Mapping, list, tuple, np.ndarray)):
        return json.dumps(_to_builtin(value), ensure_ascii=False)
    if isinstance(value, float):
        return repr(value)  # full precision; inf -> "inf", nan -> "nan"
    return value


def _columns(rows: Sequence[Mapping[str, Any]], leading: Sequence[str] = ()) -> list[str]:
    seen = {key: None for key in leading if any(key in row for row in rows)}
    for row in rows:
        seen.update((key, None) for key in row if key not in seen)
    return list(seen)


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_cell(row.get(key)) for key in columns})
    return buffer.getvalue()


def write_table(rows: Sequence[Mapping[str, Any]], out_dir: PathLike, stem: str,
                leading: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write rows as ``{stem}.json`` (a list of objects) and ``{stem}.csv`` (``leading`` columns first).

    Returns:
        ``(json_path, csv_path)``; see the module docstring for how non-finite floats are written.
    """
    out_dir = Path(out_dir)
    json_path = write_text_atomic(out_dir / f"{stem}.json", _dump_json([_encode_row(row) for row in rows]))
    csv_path = write_text_atomic(out_dir / f"{stem}.csv", _csv_text(rows, _columns(rows, leading)))
    return json_path, csv_path


def write_records(records: Sequence[Mapping[str, Any]], out_dir: PathLike) -> tuple[Path, Path]:
    """Write per-(case, prompt) metrics as ``metrics_per_prompt.json`` and ``metrics_per_prompt.csv``.

    Args:
        records: one dict per (case, prompt): ``case``, ``prompt``, ``kind``, the keys of
            :func:`~medtextseg.evaluation.metrics.segmentation_metrics`, and anything else (kept).
        out_dir: folder, created if needed.

    Returns:
        ``(json_path, csv_path)``. The JSON is a list of objects; see the module docstring for inf.
    """
    return write_table(records, out_dir, Path(RECORDS_JSON).stem, _LEADING_KEYS)


def read_records(json_path: PathLike) -> list[dict[str, Any]]:
    """Read ``metrics_per_prompt.json`` back, restoring non-finite floats (inverse of :func:`write_records`).

    Raises:
        MedTextSegError: the file is not a JSON list of objects.
    """
    try:
        payload = json.loads(Path(json_path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MedTextSegError(f"{json_path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(payload, list) or not all(isinstance(item, dict) for item in payload):
        raise MedTextSegError(f"{json_path}: expected a JSON list of records (objects), "
                              f"as written by write_records")
    records = []
    for item in payload:
        record = {key: value for key, value in item.items() if not key.endswith("_nonfinite")}
        for key, value in item.items():
            if key.endswith("_nonfinite") and key[: -len("_nonfinite")] in record:
                record[key[: -len("_nonfinite")]] = float(value)
        records.append(record)
    return records


# --------------------------------------------------------------------------------------------- summaries


def _mean_std_text(row: Mapping[str, Any], metric: str, digits: int) -> str:
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    text = "–" if mean is None else f"{mean:.{digits}f} ± {(std or 0.0):.{digits}f}"
    if metric in DISTANCE_METRICS and row.get(f"{metric}_inf"):
        text += f" ({row[f'{metric}_inf']} inf)"
    return text


def _empty_correct_text(row: Mapping[str, Any]) -> str:
    fraction, n_empty = row.get("empty_correct"), row.get("n_empty_target", 0)
    if fraction is None:
        return "–"
    return f"{fraction:.2f} ({round(fraction * n_empty)}/{n_empty})"


_SUMMARY_HEADER = ("group", "n", *OVERLAP_METRICS, *(f"{name} (mm)" for name in DISTANCE_METRICS), "empty correct",
                   "FP cases")


def _summary_cells(row: Mapping[str, Any]) -> list[str]:
    return [str(row["group"]), str(row["n"]),
            *(_mean_std_text(row, metric, 3) for metric in OVERLAP_METRICS),
            *(_mean_std_text(row, metric, 2) for metric in DISTANCE_METRICS),
            _empty_correct_text(row), str(row.get("false_positive_cases", "–"))]


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(cells) for cells in body)]) + "\n"


def write_summary(rows: Sequence[Mapping[str, Any]], out_dir: PathLike,
                  title: str = "Segmentation metrics") -> Path:
    """Write :func:`~medtextseg.evaluation.metrics.summarize` rows as ``summary.json``, ``summary.csv``
    and ``summary.md`` (a Markdown table of mean ± std per metric and group, n, empty_correct).

    Returns:
        The path of ``summary.md``.
    """
    out_dir = Path(out_dir)
    write_text_atomic(out_dir / "summary.json", _dump_json([_encode_row(row) for row in rows]))
    write_text_atomic(out_dir / "summary.csv", _csv_text(rows, _columns(rows, ("group", "group_by", "n"))))
    group_by = rows[0].get("group_by", "group") if rows else "group"
    lines = [f"# {title}", "",
             f"One row per `{group_by}`, then `{OVERALL_GROUP}`. Mean ± std (ddof=0) over (case, prompt) "
             "records. hd95, hd (maximum) and assd in mm, over the finite values; `(k inf)` counts the records where "
             "exactly one mask is empty. *empty correct*: the fraction of empty targets answered with an "
             "empty mask. *FP cases*: empty targets answered with a non-empty mask.", "",
             _markdown_table(_SUMMARY_HEADER, [_summary_cells(row) for row in rows])]
    overall = rows[-1] if rows else {}
    if overall.get("iou_class_mean") is not None:
        lines.append(f"Class means (each prompt class weighs alike, mIoU): Dice {overall['dice_class_mean']:.3f}, "
                     f"IoU {overall['iou_class_mean']:.3f} over {overall['classes']} classes.\n")
    return write_text_atomic(out_dir / "summary.md", "\n".join(lines))


def render_table(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> Table:
    """A ``rich`` table of summary rows for the terminal (same cells as ``summary.md``)."""
    table = Table(title=title, header_style="bold")
    for index, name in enumerate(_SUMMARY_HEADER):
        table.add_column(name, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*_summary_cells(row), style="bold" if row["group"] == OVERALL_GROUP else None)
    return table


# ------------------------------------------------------------------------------------------ comparisons


def _value_key(metric: str) -> str:
    return metric if metric == "empty_correct" else f"{metric}_mean"


def comparison_table(summaries: Mapping[str, Sequence[Mapping[str, Any]]], metric: str = "dice",
                     reference: str | None = None) -> list[dict[str, Any]]:
    """One row per group, one column per run, plus each run's difference to the reference run.

    Args:
        summaries: run name -> its :func:`~medtextseg.evaluation.metrics.summarize` rows, e.g.
            ``{"text-guided": rows_a, "image-only": rows_b}``; all grouped by the same key.
        metric: one of :data:`COMPARABLE_METRICS`; the value compared is the group mean
            (``empty_correct`` is itself a fraction).
        reference: the run differences are taken against; default: the last run (the baseline goes last).

    Returns:
        Dicts ``{"group", "metric", <run>: value or None, "<run> - <reference>": difference or None}``, in the
        first run's group order, groups found only in later runs next, ``overall`` last.

    Raises:
        MedTextSegError: no runs, an unknown metric or reference, a run named ``group`` or ``metric``, or
            runs grouped by different keys.

    Example:
        >>> a = [{"group": "single", "dice_mean": 0.8}, {"group": "overall", "dice_mean": 0.7}]
        >>> b = [{"group": "single", "dice_mean": 0.5}, {"group": "overall", "dice_mean": 0.6}]
        >>> comparison_table({"text": a, "image": b})[0]
        {'group': 'single', 'metric': 'dice', 'text': 0.8, 'image': 0.5, 'text - image': 0.30000000000000004}
    """
    if not summaries:
        raise MedTextSegError("comparison_table: summaries is empty; pass {run name: summarize(...) rows}")
    if metric not in COMPARABLE_METRICS:
        raise MedTextSegError(f"comparison_table: metric must be one of {list(COMPARABLE_METRICS)}, "
                              f"got {metric!r}")
    runs = list(summaries)
    reference = runs[-1] if reference is None else reference
    if reference not in summaries:
        raise MedTextSegError(f"comparison_table: reference must be one of the runs {runs}, "
                              f"got {reference!r}")
    clashes = [run for run in runs if run in ("group", "metric")]
    if clashes:
        raise MedTextSegError(f"comparison_table: run names {clashes} clash with the columns 'group' and "
                              "'metric'; rename those runs")
    group_keys = {row.get("group_by") for rows in summaries.values() for row in rows}
    if len(group_keys) > 1:
        raise MedTextSegError(f"comparison_table: runs are grouped by different keys "
                              f"{sorted(map(str, group_keys))}; summarize every run with the same group_by")
    groups: dict[str, None] = {}
    for rows in summaries.values():
        groups.update((str(row["group"]), None) for row in rows if row["group"] != OVERALL_GROUP)
    if any(row["group"] == OVERALL_GROUP for rows in summaries.values() for row in rows):
        groups[OVERALL_GROUP] = None
    lookup = {run: {str(row["group"]): row.get(_value_key(metric)) for row in rows}
              for run, rows in summaries.items()}
    table = []
    for group in groups:
        row: dict[str, Any] = {"group": group, "metric": metric}
        row.update((run, lookup[run].get(group)) for run in runs)
        base = row[reference]
        for run in runs:
            if run != reference:
                value = row[run]
                row[f"{run} - {reference}"] = None if value is None or base is None else value - base
        table.append(row)
    return table


def _format_value(value: Any, signed: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    return str(value)


def write_comparison(summaries: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: PathLike,
                     metric: str = "dice", reference: str | None = None) -> dict[str, Path]:
    """Write :func:`comparison_table` as ``comparison_{metric}.md/.csv/.json`` and a grouped bar chart
    ``comparison_{metric}.png`` (group means with ±std error bars where the summaries have them).

    Returns:
        ``{"md": path, "csv": path, "json": path, "png": path}``.
    """
    out_dir = Path(out_dir)
    table = comparison_table(summaries, metric=metric, reference=reference)
    runs = list(summaries)
    stem = f"comparison_{metric}"
    columns = _columns(table, ("group", "metric"))
    paths = {
        "json": write_text_atomic(out_dir / f"{stem}.json", _dump_json([_encode_row(row) for row in table])),
        "csv": write_text_atomic(out_dir / f"{stem}.csv", _csv_text(table, columns)),
    }
    header = [column for column in columns if column != "metric"]
    differences = {column for column in header if column not in runs and column != "group"}
    body = [[_format_value(row[column], signed=column in differences) for column in header] for row in table]
    paths["md"] = write_text_atomic(out_dir / f"{stem}.md",
                                    f"# {metric}: {' vs '.join(runs)}\n\nMean {metric} per group.\n\n"
                                    + _markdown_table(header, body))

    figure = Figure(figsize=(max(5.0, 1.0 + len(table) * (0.4 + 0.4 * len(runs))), 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    series = {}
    for run in runs:
        stds = {str(row["group"]): row.get(f"{metric}_std") for row in summaries[run]}
        series[run] = ([row[run] for row in table],
                       [stds.get(row["group"]) or 0.0 for row in table] if metric != "empty_correct" else None)
    grouped_bars(axes, [row["group"] for row in table], series, _format_value, fontsize=7)
    axes.set_ylabel(f"{metric} (mm)" if metric in DISTANCE_METRICS else metric)
    if metric not in DISTANCE_METRICS:
        axes.set_ylim(0, 1.1)
    group_by = next((row.get("group_by") for rows in summaries.values() for row in rows), None)
    axes.set_title(f"mean {metric} by {group_by or 'group'}")
    axes.legend(fontsize=8)
    with atomic_path(out_dir / f"{stem}.png") as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    paths["png"] = out_dir / f"{stem}.png"
    return paths


def grouped_bars(axes, groups: Sequence[str], series: Mapping[str, tuple[Sequence[float | None],
                                                                        Sequence[float] | None]],
                 label: Callable[[Any], str], fontsize: int = 6) -> None:
    """Bars side by side per group, one colour per series (name -> (heights, error bars or None)); None heights
    are gaps; every bar is labelled with ``label(height)``."""
    width = 0.8 / len(series)
    positions = np.arange(len(groups))
    for index, (name, (heights, errors)) in enumerate(series.items()):
        values = [np.nan if h is None else h for h in heights]
        bars = axes.bar(positions + (index - (len(series) - 1) / 2) * width, values, width, label=name,
                        yerr=errors, capsize=2)
        axes.bar_label(bars, labels=[label(h) for h in heights], fontsize=fontsize, padding=2)
    axes.set_xticks(positions, list(groups), rotation=30 if len(groups) > 6 else 0)


# ----------------------------------------------------------------------------------------------- overlays


def radiological_view(slice_ij: np.ndarray) -> np.ndarray:
    """An axial slice ``[X, Y]`` of a RAS+ volume as a ``[rows, columns]`` image in radiological convention.

    RAS+ (NIfTI, ``nibabel.as_closest_canonical``): i grows toward the patient's Right, j toward Anterior.
    Radiological display: viewed from the feet, patient Left on the image's right, Anterior up. So rows
    run along j with the largest j (most anterior) on top, and columns along i with the largest i (patient
    right) on the left: transpose, then flip both axes.
    """
    return np.asarray(slice_ij).T[::-1, ::-1]


def _check_overlay_inputs(image: np.ndarray, arrays: Mapping[str, np.ndarray | None]) -> None:
    if image.ndim not in (2, 3):
        raise MedTextSegError(f"save_overlay: image must be [X, Y] or [X, Y, Z] (one channel), "
                              f"got shape {image.shape}")
    for name, array in arrays.items():
        if array is not None and np.shape(array) != image.shape:
            raise MedTextSegError(f"save_overlay: {name} must have the image's shape {image.shape}, "
                                  f"got {np.shape(array)}")


def _pick_slice(target: np.ndarray, prediction: np.ndarray) -> int:
    for mask in (target, prediction):
        per_slice = mask.reshape(-1, mask.shape[-1]).sum(axis=0)
        if per_slice.any():
            return int(per_slice.argmax())
    return target.shape[-1] // 2


def save_overlay(image: np.ndarray, target: np.ndarray, prediction: np.ndarray, out_path: PathLike,
                 title: str, probability: np.ndarray | None = None,
                 spacing: Sequence[float] | None = None, uncertainty: np.ndarray | None = None) -> Path:
    """Save a PNG of one axial slice: the image in grey, target contour green, prediction contour red.

    Args:
        image: ``[X, Y, Z]`` or ``[X, Y]`` (one channel), RAS+ voxel order (i toward patient Right, j toward
            Anterior, k toward Superior); any intensity range (shown between its 0.5 and 99.5 percentiles).
        target: binary mask of the image's shape.
        prediction: binary mask of the image's shape.
        out_path: the PNG to write (folders created).
        title: the figure's title (e.g. case and prompt).
        probability: optional map in [0, 1] of the image's shape, shown in a panel of its own.
        spacing: optional voxel size (mm) per axis, so that anisotropic voxels display at true aspect.
        uncertainty: optional map in [0, 1] of the image's shape, shown in a panel of its own.

    The slice k is the one with the most target voxels, else the most prediction voxels, else the middle;
    it is shown in radiological convention (see :func:`radiological_view`).

    Returns:
        ``out_path`` as a Path.

    Raises:
        MedTextSegError: an array's shape differs from the image's, or the image is not 2D/3D.
    """
    image = np.asarray(image, dtype=float)
    maps = {name: np.asarray(volume, dtype=float) for name, volume in
            (("probability", probability), ("uncertainty", uncertainty)) if volume is not None}
    _check_overlay_inputs(image, {"target": target, "prediction": prediction, **maps})
    target, prediction = np.asarray(target) > 0, np.asarray(prediction) > 0
    if image.ndim == 2:  # one axial slice
        image, target, prediction = image[..., None], target[..., None], prediction[..., None]
        maps = {name: volume[..., None] for name, volume in maps.items()}
    k = _pick_slice(target, prediction)
    volumes = {"image": image, "target": target, "prediction": prediction, **maps}
    view = {name: radiological_view(volume[..., k]) for name, volume in volumes.items()}
    aspect = 1.0 if spacing is None else float(spacing[1]) / float(spacing[0])  # row height / column width

    panels = 1 + len(maps)
    figure = Figure(figsize=(4.8 * panels, 5.2), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title)
    low, high = np.percentile(view["image"], [0.5, 99.5])
    axes = figure.add_subplot(1, panels, 1)
    axes.imshow(view["image"], cmap="gray", vmin=low, vmax=high if high > low else low + 1,
                interpolation="nearest", aspect=aspect)
    axes.set_title(f"axial k={k} of {image.shape[-1]}  green: target  red: prediction", fontsize=8)
    overlays = [axes]
    for panel, name in enumerate(maps, start=2):
        map_axes = figure.add_subplot(1, panels, panel)
        shown = map_axes.imshow(view[name], cmap=_MAP_COLORS[name], vmin=0.0, vmax=1.0,
                                interpolation="nearest", aspect=aspect)
        figure.colorbar(shown, ax=map_axes, fraction=0.046, label=name)
        map_axes.set_title(name, fontsize=8)
        overlays.append(map_axes)
    for ax in overlays:
        for name, color in (("target", TARGET_COLOR), ("prediction", PREDICTION_COLOR)):
            if view[name].any():  # contour of an all-zero array has nothing to draw and warns
                ax.contour(view[name].astype(float), levels=[0.5], colors=[color], linewidths=1.5)
        ax.set_axis_off()
        # Orientation letters so a reader can check the convention on the picture itself.
        for x, letter, align in ((0.01, "R", "left"), (0.99, "L", "right"), (0.5, "A", "center")):
            ax.text(x, 0.5 if letter != "A" else 0.99, letter, transform=ax.transAxes, color="white",
                    fontsize=7, ha=align, va="center" if letter != "A" else "top",
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.0, "linewidth": 0})
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return out_path


# ---------------------------------------------------------------------------------------------- loss curves


def _read_log(log_path: Path) -> tuple[list[tuple[int, float]], dict[str, list[tuple[int, float]]]]:
    """``(train [(step, loss)], {val_key: [(step, value)]})`` from a JSONL training log."""
    train: list[tuple[int, float]] = []
    validation: dict[str, list[tuple[int, float]]] = {}
    try:
        lines = Path(log_path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise MedTextSegError(f"{log_path}: cannot read the training log ({error.strerror})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise MedTextSegError(f"{log_path}:{number}: not a JSON line ({error.msg})") from None
        if not isinstance(entry, dict):
            continue
        values = {key: value for key, value in entry.items() if (key == "loss" or key.startswith("val_"))
                  and isinstance(value, (int, float)) and not isinstance(value, bool)}
        if not values:  # e.g. a header line with the config
            continue
        if not isinstance(entry.get("step"), int):
            raise MedTextSegError(f"{log_path}:{number}: a line with {sorted(values)} needs an integer "
                                  f"'step', got {entry.get('step')!r}")
        for key, value in values.items():
            if key == "loss":
                train.append((entry["step"], float(value)))
            else:
                validation.setdefault(key, []).append((entry["step"], float(value)))
    if not train and not validation:
        raise MedTextSegError(f"{log_path}: no 'loss' or 'val_*' entries to plot")
    return train, validation


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` values (fewer at the start), ignoring non-finite values.

    Example:
        >>> moving_average([1.0, 3.0, 5.0, 7.0], window=2).tolist()
        [1.0, 2.0, 4.0, 6.0]
    """
    array = np.asarray(values, dtype=float)
    finite = np.isfinite(array)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, array, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    end = np.arange(1, len(array) + 1)
    start = np.maximum(0, end - max(1, window))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums[end] - sums[start]) / (counts[end] - counts[start])


def save_loss_curves(logs: Mapping[str, PathLike], out_path: PathLike, title: str | None = None) -> Path:
    """Plot several runs' training logs on one figure (one colour per run) and save it as a PNG.

    Args:
        logs: run name -> JSONL log. Lines ``{"step": int, "loss": float, ...}`` are training steps;
            lines with ``val_*`` keys (``{"step": int, "val_dice": float}``) are validations. Other lines
            (no loss, no val_* key) are skipped.
        out_path: the PNG to write.
        title: figure title (default: "training").

    Training loss is drawn raw (light) and as a trailing moving average (window: a twentieth of the steps,
    at least 1); ``val_loss`` on the same axis (dashed), every other ``val_*`` metric on a second y axis.

    Returns:
        ``out_path`` as a Path.

    Raises:
        MedTextSegError: no logs, an unreadable or malformed log (with its line number), or a log with
            nothing to plot.
    """
    if not logs:
        raise MedTextSegError("save_loss_curves: logs is empty; pass {run name: log path}")
    parsed = {name: _read_log(Path(path)) for name, path in logs.items()}
    figure = Figure(figsize=(10.0, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes = figure.add_subplot()
    metric_axes = None
    colors = [f"C{index % 10}" for index in range(len(parsed))]
    markers = "osD^v<>"
    for (name, (train, validation)), color in zip(parsed.items(), colors, strict=True):
        label = f"{name}: " if len(parsed) > 1 else ""
        if train:
            steps, losses = (np.asarray(column) for column in zip(*sorted(train), strict=True))
            loss_axes.plot(steps, losses, color=color, alpha=0.25, linewidth=0.8)
            window = max(1, len(losses) // 20)
            loss_axes.plot(steps, moving_average(losses, window), color=color, linewidth=1.8,
                           label=f"{label}loss (mean of {window})")
        for index, (key, points) in enumerate(sorted(validation.items())):
            steps, values = zip(*sorted(points), strict=True)
            if key == "val_loss":
                loss_axes.plot(steps, values, color=color, linestyle="--", marker=".", label=f"{label}{key}")
                continue
            if metric_axes is None:
                metric_axes = loss_axes.twinx()
            metric_axes.plot(steps, values, color=color, linestyle=":", marker=markers[index % len(markers)],
                             markersize=4, label=f"{label}{key}")
    loss_axes.set_xlabel("step")
    loss_axes.set_ylabel("loss")
    handles, labels = loss_axes.get_legend_handles_labels()
    if metric_axes is not None:
        metric_axes.set_ylabel("validation metric")
        low, high = metric_axes.get_ylim()
        if low >= -0.05 and high <= 1.05:  # Dice-like: show the full [0, 1] range
            metric_axes.set_ylim(0.0, 1.0)
        more_handles, more_labels = metric_axes.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:  # outside the axes: curves are never hidden behind it
        figure.legend(handles, labels, fontsize=8, loc="outside right upper")
    loss_axes.set_title(title or "training")
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return out_path


def save_loss_curve(log_path: PathLike, out_path: PathLike, title: str | None = None) -> Path:
    """Plot one run's JSONL training log (see :func:`save_loss_curves`) and save it as a PNG."""
    return save_loss_curves({Path(log_path).stem: log_path}, out_path, title=title)
