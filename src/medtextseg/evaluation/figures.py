"""Evaluation results as figures: grouped bars, overlays of masks and maps on slices, loss curves.

Plots use matplotlib's Agg canvas directly (no pyplot state, no display needed) and are written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medtextseg.evaluation.metrics import DISTANCE_METRICS
from medtextseg.evaluation.tables import format_value
from medtextseg.utils.atomic import atomic_path
from medtextseg.utils.errors import MedTextSegError

PathLike = str | os.PathLike

TARGET_COLOR = "lime"  # pure (0, 1, 0): tells target contours apart from prediction ones in any image
PREDICTION_COLOR = "red"
_MAP_COLORS = {"probability": "viridis", "uncertainty": "magma"}


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


def save_comparison_chart(table: Sequence[Mapping[str, Any]], summaries: Mapping[str, Sequence[Mapping[str, Any]]],
                          out_path: PathLike, metric: str) -> Path:
    """A grouped bar chart of a :func:`~medtextseg.evaluation.tables.comparison_table`: group means per run, with
    ±std error bars where the summaries have them."""
    runs = list(summaries)
    figure = Figure(figsize=(max(5.0, 1.0 + len(table) * (0.4 + 0.4 * len(runs))), 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    series = {}
    for run in runs:
        stds = {str(row["group"]): row.get(f"{metric}_std") for row in summaries[run]}
        series[run] = ([row[run] for row in table],
                       [stds.get(row["group"]) or 0.0 for row in table] if metric != "empty_correct" else None)
    grouped_bars(axes, [row["group"] for row in table], series, format_value, fontsize=7)
    axes.set_ylabel(f"{metric} (mm)" if metric in DISTANCE_METRICS else metric)
    if metric not in DISTANCE_METRICS:
        axes.set_ylim(0, 1.1)
    group_by = next((row.get("group_by") for rows in summaries.values() for row in rows), None)
    axes.set_title(f"mean {metric} by {group_by or 'group'}")
    axes.legend(fontsize=8)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    return out_path


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
