"""Evaluation results as tables: per-prompt records, group summaries and run comparisons in JSON, CSV and
Markdown, and the terminal's ``rich`` table.

Every file is written atomically (:mod:`medtextseg.utils.atomic`), so a reader never sees half a table.

File formats
------------
* JSON is strict (``allow_nan=False``): a non-finite float (an ``hd95`` of inf, see
  :mod:`medtextseg.evaluation.metrics`) is written as ``null`` with a sibling key ``"{key}_nonfinite"``
  holding ``"inf"``, ``"-inf"`` or ``"nan"``. :func:`read_records` restores the floats.
* CSV writes such floats as ``inf`` / ``nan`` (which ``float()`` and pandas read back), ``None`` as an empty
  cell, and lists or dicts as JSON text.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from medtextseg.evaluation.metrics import DISTANCE_METRICS, OVERALL_GROUP, OVERLAP_METRICS
from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.errors import MedTextSegError

PathLike = str | os.PathLike

RECORDS_JSON = "metrics_per_prompt.json"
RECORDS_CSV = "metrics_per_prompt.csv"
#: Columns placed first in the per-prompt table, when present.
_LEADING_KEYS = ("case", "prompt", "kind")
#: Metrics :func:`comparison_table` can compare (``{metric}_mean`` of a summary row, or the key itself).
COMPARABLE_METRICS: tuple[str, ...] = (*OVERLAP_METRICS, *DISTANCE_METRICS, "empty_correct")


# --------------------------------------------------------------------------------------------- JSON, CSV


def to_builtin(value: Any) -> Any:
    """numpy scalars and arrays, tuples, paths -> JSON-ready builtins (non-finite floats -> None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): to_builtin(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_builtin(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def encode_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A record with each non-finite top-level float as null plus a ``{key}_nonfinite`` flag."""
    encoded: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        encoded[key] = to_builtin(value)
        if isinstance(value, float) and not math.isfinite(value):
            encoded[f"{key}_nonfinite"] = str(value)  # "inf", "-inf" or "nan"
    return encoded


def dump_json(payload: Any) -> str:
    # allow_nan=False: fail here rather than write Infinity/NaN tokens that strict parsers reject.
    return json.dumps(payload, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _csv_cell(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, (Mapping, list, tuple, np.ndarray)):
        return json.dumps(to_builtin(value), ensure_ascii=False)
    if isinstance(value, float):
        return repr(value)  # full precision; inf -> "inf", nan -> "nan"
    return value


def table_columns(rows: Sequence[Mapping[str, Any]], leading: Sequence[str] = ()) -> list[str]:
    seen = {key: None for key in leading if any(key in row for row in rows)}
    for row in rows:
        seen.update((key, None) for key in row if key not in seen)
    return list(seen)


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
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
    json_path = write_text_atomic(out_dir / f"{stem}.json", dump_json([encode_row(row) for row in rows]))
    csv_path = write_text_atomic(out_dir / f"{stem}.csv", csv_text(rows, table_columns(rows, leading)))
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


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
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
    write_text_atomic(out_dir / "summary.json", dump_json([encode_row(row) for row in rows]))
    write_text_atomic(out_dir / "summary.csv", csv_text(rows, table_columns(rows, ("group", "group_by", "n"))))
    group_by = rows[0].get("group_by", "group") if rows else "group"
    lines = [f"# {title}", "",
             f"One row per `{group_by}`, then `{OVERALL_GROUP}`. Mean ± std (ddof=0) over (case, prompt) "
             "records. hd95, hd (maximum) and assd in mm, over the finite values; `(k inf)` counts the records where "
             "exactly one mask is empty. *empty correct*: the fraction of empty targets answered with an "
             "empty mask. *FP cases*: empty targets answered with a non-empty mask.", "",
             markdown_table(_SUMMARY_HEADER, [_summary_cells(row) for row in rows])]
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


def summary_key(metric: str) -> str:
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
    lookup = {run: {str(row["group"]): row.get(summary_key(metric)) for row in rows}
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


def format_value(value: Any, signed: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    return str(value)


def write_comparison_tables(table: Sequence[Mapping[str, Any]], runs: Sequence[str], out_dir: PathLike,
                            metric: str) -> dict[str, Path]:
    """Write a :func:`comparison_table` as ``comparison_{metric}.json/.csv/.md``; returns ``{format: path}``."""
    out_dir = Path(out_dir)
    stem = f"comparison_{metric}"
    columns = table_columns(table, ("group", "metric"))
    paths = {
        "json": write_text_atomic(out_dir / f"{stem}.json", dump_json([encode_row(row) for row in table])),
        "csv": write_text_atomic(out_dir / f"{stem}.csv", csv_text(table, columns)),
    }
    header = [column for column in columns if column != "metric"]
    differences = {column for column in header if column not in runs and column != "group"}
    body = [[format_value(row[column], signed=column in differences) for column in header] for row in table]
    paths["md"] = write_text_atomic(out_dir / f"{stem}.md",
                                    f"# {metric}: {' vs '.join(runs)}\n\nMean {metric} per group.\n\n"
                                    + markdown_table(header, body))
    return paths
