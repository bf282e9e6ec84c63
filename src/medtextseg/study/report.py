"""The report of a repeated-run study: per-run tables, statistics over seeds, pairwise tests and plots.

A study runs M configurations (e.g. 4 losses) with N seeds each, evaluates every run on the same test split
and calls :func:`write_study_report` with one dict per run. Each run contributes **one value per group and
metric**: the group's mean over its (case, prompt) records, as :func:`~medtextseg.evaluation.metrics.summarize`
computes it. The statistics are then over runs (seeds), as in METHODS §3.6 (mean ± std over 10 runs, 95% CIs,
Shapiro–Wilk), never over the pooled records of all runs.

``runs`` schema
---------------
::

    {
        "configuration": "dice-loss",     # str, non-empty: what the study compares
        "seed": 0,                        # int; one run per (configuration, seed)
        "summary": [...],                 # the run's summarize() rows (group, group_by, n, dice_mean, ...)
        # or, instead of "summary":
        "records": [...],                 # its per-prompt records, summarized here by group_by
        "run_dir": "runs/dice-loss-s0",   # anything else: scalar values are copied to runs.csv
    }

Files written (atomically, in ``out_dir``)
-----------------------------------------
* ``runs.csv``: one row per run x group: configuration, seed, group, n (records), the group mean of each
  metric (``dice_mean``, ...; ``hd95_inf`` counts records with an infinite distance), extra run keys.
* ``summary.csv``: one row per metric x group x configuration: n runs, mean, std (ddof=1), 95% CI of the
  mean (Student t), median, min, max, Shapiro–Wilk W and p, notes.
* ``comparisons.csv``: the primary metric (the first of ``metrics``), per group, every pair of
  configurations: paired t-test and Wilcoxon over shared seeds, Holm-adjusted across the pairs of the group
  (``family`` ``configurations``). With a ``reference`` (a study's text-blind MONAI UNet), it is left out of
  those pairs and each configuration is compared with it instead, Holm-adjusted across that family
  (``family`` ``reference``), so adding the reference does not change the configurations' own tests.
* ``summary.md``: the two tables above in Markdown, with the notes (e.g. too few runs for a statistic).
* ``violin.png``: per group, a violin per configuration of its per-run values of the primary metric, the
  runs drawn on top (one colour per seed); ``runs.png``: the same values against the seed, one line per
  configuration, so that one bad seed stands out.
* ``study.json``: everything above (strict JSON; None for undefined statistics).

With fewer than 2 runs of a configuration the report is still written: std, CI and tests are None ("–") and
the notes say that they need >= 2 runs (3 for Shapiro–Wilk).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medtextseg.evaluation.metrics import DISTANCE_METRICS, OVERALL_GROUP, summarize
from medtextseg.evaluation.tables import (
    COMPARABLE_METRICS,
    csv_text,
    dump_json,
    markdown_table,
    summary_key,
    table_columns,
    to_builtin,
)
from medtextseg.study.statistics import compare_configurations, describe, seed_key
from medtextseg.utils.atomic import atomic_path, write_text_atomic
from medtextseg.utils.errors import MedTextSegError

PathLike = str | os.PathLike

#: Metrics reported when none are named; the first is the primary metric (tests and plots).
DEFAULT_METRICS: tuple[str, ...] = ("dice", "iou", "nsd", "hd95")
#: Metrics a study can report: any of :data:`medtextseg.evaluation.tables.COMPARABLE_METRICS`.
STUDY_METRICS: tuple[str, ...] = COMPARABLE_METRICS
#: Keys of a run dict that are not copied to ``runs.csv`` as extra columns.
_RUN_KEYS = ("configuration", "seed", "summary", "records")
_SUMMARY_COLUMNS = ("metric", "group", "configuration", "n", "seeds", "mean", "std", "sem", "ci_low", "ci_high",
                    "confidence", "median", "min", "max", "shapiro_w", "shapiro_p", "notes")
_COMPARISON_COLUMNS = ("metric", "group", "configuration_a", "configuration_b", "n", "seeds", "mean_a", "mean_b",
                       "mean_difference", "ci_low", "ci_high", "confidence", "t_statistic", "t_p", "t_p_holm",
                       "wilcoxon_statistic", "wilcoxon_p", "wilcoxon_p_holm", "notes", "family")


# ------------------------------------------------------------------------------------------------ inputs


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if not metrics:
        raise MedTextSegError(f"write_study_report: metrics is empty; name at least one of {list(STUDY_METRICS)}")
    unknown = [metric for metric in metrics if metric not in STUDY_METRICS]
    if unknown:
        raise MedTextSegError(f"write_study_report: unknown metrics {unknown}; valid: {list(STUDY_METRICS)}")
    if len(set(metrics)) != len(metrics):
        raise MedTextSegError(f"write_study_report: metrics must not repeat, got {list(metrics)}")
    return metrics


def _run_name(run: Mapping[str, Any], index: int) -> str:
    return f"run {index} ({run.get('configuration')!r}, seed {run.get('seed')!r})"


def _run_rows(run: Mapping[str, Any], index: int, group_by: str | None) -> list[dict[str, Any]]:
    """The run's summary rows, summarizing its records first when it gives records."""
    where = _run_name(run, index)
    has_summary, has_records = "summary" in run, "records" in run
    if has_summary == has_records:
        raise MedTextSegError(f"write_study_report: {where} needs exactly one of 'summary' (summarize() rows) "
                              f"and 'records' (per-prompt metrics), got keys {sorted(run)}")
    if has_records:
        return summarize(list(run["records"]), group_by=group_by or "kind")
    rows = run["summary"]
    if not isinstance(rows, Sequence) or not rows or not all(isinstance(row, Mapping) for row in rows):
        raise MedTextSegError(f"write_study_report: {where} 'summary' must be a non-empty list of summarize() "
                              f"rows (dicts), got {type(rows).__name__}")
    for row in rows:
        if "group" not in row:
            raise MedTextSegError(f"write_study_report: {where} has a summary row without 'group': "
                                  f"keys {sorted(row)}")
    return [dict(row) for row in rows]


def _check_runs(runs: Sequence[Mapping[str, Any]], group_by: str | None) -> tuple[list[dict[str, Any]], str]:
    """Validated runs ``{"configuration", "seed", "rows", "extra"}`` and the group_by key they share."""
    if isinstance(runs, Mapping) or not isinstance(runs, Sequence) or not runs:
        raise MedTextSegError("write_study_report: runs must be a non-empty list of dicts "
                              "{'configuration': str, 'seed': int, 'summary': summarize() rows}")
    checked, seen = [], set()
    for index, run in enumerate(runs):
        if not isinstance(run, Mapping):
            raise MedTextSegError(f"write_study_report: run {index} must be a dict, got {type(run).__name__}")
        configuration, seed = run.get("configuration"), run.get("seed")
        if not isinstance(configuration, str) or not configuration.strip():
            raise MedTextSegError(f"write_study_report: {_run_name(run, index)} needs 'configuration', a "
                                  f"non-empty string, got {configuration!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise MedTextSegError(f"write_study_report: {_run_name(run, index)} needs 'seed', an integer, "
                                  f"got {seed!r}")
        if (configuration, int(seed)) in seen:
            raise MedTextSegError(f"write_study_report: {_run_name(run, index)} repeats a (configuration, seed) "
                                  "pair; each run must be one configuration with one seed")
        seen.add((configuration, int(seed)))
        extra = {key: value for key, value in run.items() if key not in _RUN_KEYS
                 and (value is None or isinstance(value, (str, int, float, bool, os.PathLike, np.generic)))}
        checked.append({"configuration": configuration, "seed": int(seed), "rows": _run_rows(run, index, group_by),
                        "extra": extra})
    keys = {str(row["group_by"]) for run in checked for row in run["rows"] if row.get("group_by") is not None}
    if len(keys) > 1:
        raise MedTextSegError(f"write_study_report: the runs' summaries are grouped by different keys "
                              f"{sorted(keys)}; summarize every run with the same group_by")
    if group_by is not None and keys and keys != {group_by}:
        raise MedTextSegError(f"write_study_report: group_by={group_by!r} but the summaries are grouped by "
                              f"{sorted(keys)[0]!r}; pass records instead, or group_by=None")
    return checked, group_by or (keys.pop() if keys else "group")


def _row_value(row: Mapping[str, Any], metric: str, where: str) -> float | None:
    key = summary_key(metric)
    if key not in row:
        raise MedTextSegError(f"write_study_report: {where}, group {row['group']!r}: the summary row has no "
                              f"{key!r} (summarize() writes it); choose other metrics")
    value = row[key]
    if value is not None and not (isinstance(value, (int, float, np.integer, np.floating))
                                  and not isinstance(value, bool) and math.isfinite(value)):
        raise MedTextSegError(f"write_study_report: {where}, group {row['group']!r}: {key} must be a finite "
                              f"number or None, got {value!r}")
    return None if value is None else float(value)


def _groups(runs: list[dict[str, Any]]) -> list[str]:
    """Groups in the order of the first run's summary, later-found ones next, the overall row last."""
    order: dict[str, None] = {}
    for run in runs:
        order.update((str(row["group"]), None) for row in run["rows"])
    groups = [group for group in order if group != OVERALL_GROUP]
    return groups + [OVERALL_GROUP] if OVERALL_GROUP in order else groups


# ------------------------------------------------------------------------------------------------ tables


def _runs_table(runs: list[dict[str, Any]], metrics: tuple[str, ...]) -> list[dict[str, Any]]:
    table = []
    for index, run in enumerate(runs):
        for row in run["rows"]:
            entry: dict[str, Any] = {"configuration": run["configuration"], "seed": run["seed"],
                                     "group": str(row["group"]), "n": row.get("n")}
            for metric in metrics:
                entry[summary_key(metric)] = _row_value(row, metric, f"run {index} ({run['configuration']!r}, "
                                                                    f"seed {run['seed']})")
                if metric in DISTANCE_METRICS:
                    entry[f"{metric}_inf"] = row.get(f"{metric}_inf")
            table.append(entry | {key: value for key, value in run["extra"].items() if key not in entry})
    return table


def _per_run_values(runs_table: list[dict[str, Any]], metric: str, group: str,
                    configuration: str) -> dict[int, float | None]:
    return {entry["seed"]: entry[summary_key(metric)] for entry in runs_table
            if entry["group"] == group and entry["configuration"] == configuration}


def summarize_study(runs: Sequence[Mapping[str, Any]], metrics: Sequence[str] = DEFAULT_METRICS,
                    group_by: str | None = None, confidence: float = 0.95,
                    reference: str | None = None) -> dict[str, Any]:
    """Everything :func:`write_study_report` writes, in memory (the content of ``study.json``).

    Args:
        runs: one dict per run, see the module docstring's schema.
        metrics: names from :data:`STUDY_METRICS`; the first is the primary metric, which is tested and plotted.
        group_by: ``None`` uses the key the summaries were grouped by (``"kind"`` to summarize records);
            a name must match the summaries' key, and groups records given as ``records``.
        confidence: level of the intervals, in (0, 1).
        reference: the configuration every other one is compared with apart (its own test family), not
            among the pairs; None: every pair.

    Returns:
        ``{"metrics", "primary_metric", "group_by", "confidence", "reference", "configurations" (in first-seen order),
        "seeds" ({configuration: sorted seeds}), "groups", "notes" (list of str), "runs" (runs.csv rows),
        "summary" (summary.csv rows, ``notes`` a list), "comparisons" (comparisons.csv rows)}``.

    Raises:
        MedTextSegError: empty or malformed runs (missing configuration, non-integer seed, a repeated
            (configuration, seed), neither or both of summary and records), an unknown or repeated metric,
            a summary without the metric's column, or summaries grouped by different keys.
    """
    metrics = _check_metrics(metrics)
    checked, group_by = _check_runs(runs, group_by)
    configurations = list(dict.fromkeys(run["configuration"] for run in checked))
    seeds = {name: sorted((run["seed"] for run in checked if run["configuration"] == name), key=seed_key)
             for name in configurations}
    groups = _groups(checked)
    runs_table = _runs_table(checked, metrics)

    notes = []
    few = {name: len(values) for name, values in seeds.items() if len(values) < 3}
    if any(count < 2 for count in few.values()):
        notes.append("statistics need >= 2 runs per configuration (std, 95% CI, paired tests) and >= 3 for "
                     f"Shapiro-Wilk; runs per configuration: {few}")
    elif few:
        notes.append(f"Shapiro-Wilk needs >= 3 runs per configuration; runs per configuration: {few}")
    if reference is not None and reference not in configurations:
        raise MedTextSegError(f"write_study_report: reference {reference!r} is not among the runs' "
                              f"configurations {configurations}")
    compared = [name for name in configurations if name != reference]
    if len(compared) < 2:
        notes.append("one configuration: no pairwise comparison")

    summary = []
    for metric in metrics:
        for group in groups:
            for configuration in configurations:
                values = _per_run_values(runs_table, metric, group, configuration)
                if not values:  # no run of this configuration has the group
                    continue
                present = [seed for seed in seeds[configuration] if values.get(seed) is not None]
                stats = describe([values[seed] for seed in present], confidence)
                absent = [seed for seed in seeds[configuration] if seed not in present]
                if absent:
                    stats["notes"].append(f"no {metric} value for seeds {absent}")
                summary.append({"metric": metric, "group": group, "configuration": configuration,
                                "seeds": present, **stats})

    primary = metrics[0]
    comparisons = []
    for group in groups:
        table = {name: _per_run_values(runs_table, primary, group, name) for name in compared}
        for row in compare_configurations(table, confidence):
            comparisons.append({"family": "configurations", "metric": primary, "group": group, **row})
    for group in groups if reference is not None else []:
        table = {name: _per_run_values(runs_table, primary, group, name) for name in configurations}
        if not any(value is not None for value in table[reference].values()):
            continue  # a group the reference cannot answer (anatomy prompts, for a lesion reference)
        for row in compare_configurations(table, confidence, against=reference):
            comparisons.append({"family": "reference", "metric": primary, "group": group, **row})
    return {"metrics": list(metrics), "primary_metric": primary, "group_by": group_by, "confidence": confidence,
            "reference": reference,
            "configurations": configurations, "seeds": seeds, "groups": groups, "notes": notes,
            "runs": runs_table, "summary": summary, "comparisons": comparisons}


# ---------------------------------------------------------------------------------------------- Markdown


def _digits(metric: str) -> int:
    return 2 if metric in DISTANCE_METRICS else 4


def _number(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _p_text(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _metric_heading(metric: str) -> str:
    if metric in DISTANCE_METRICS:
        return f"{metric} (mm, lower is better; each run's mean over its finite values)"
    if metric == "empty_correct":
        return "empty_correct (fraction of empty targets answered with an empty mask)"
    return metric


def _summary_markdown(study: Mapping[str, Any], title: str) -> str:
    confidence = round(study["confidence"] * 100)
    n_runs = len({(row["configuration"], row["seed"]) for row in study["runs"]})
    lines = [f"# {title}", "",
             f"{len(study['configurations'])} configurations, {n_runs} runs (seeds: "
             + ", ".join(f"{name} {seeds}" for name, seeds in study["seeds"].items())
             + f"), grouped by `{study['group_by']}`. Each run gives one value per group: its mean over the "
             "group's (case, prompt) records. Below, over runs: mean ± std (ddof=1), the "
             f"{confidence}% CI of the mean (Student t), median [min, max], and the Shapiro–Wilk p (below 0.05 "
             "the runs do not look normal: trust the Wilcoxon test over the t-test). – : undefined, see notes.",
             ""]
    lines += [f"> **Note:** {note}" for note in study["notes"]]
    if study["notes"]:
        lines.append("")
    header = ["group", "configuration", "n", "mean ± std", f"{confidence}% CI", "median [min, max]",
              "Shapiro–Wilk p", "notes"]
    for metric in study["metrics"]:
        digits = _digits(metric)
        body = []
        for row in (row for row in study["summary"] if row["metric"] == metric):
            spread = _number(row["mean"], digits) + ("" if row["std"] is None else f" ± {_number(row['std'], digits)}")
            interval = "–" if row["ci_low"] is None else (
                f"[{_number(row['ci_low'], digits)}, {_number(row['ci_high'], digits)}]")
            middle = "–" if row["median"] is None else (
                f"{_number(row['median'], digits)} [{_number(row['min'], digits)}, {_number(row['max'], digits)}]")
            body.append([row["group"], row["configuration"], str(row["n"]), spread, interval, middle,
                         _p_text(row["shapiro_p"]), "; ".join(row["notes"])])
        lines += [f"## {_metric_heading(metric)}", "", markdown_table(header, body)]
    lines += _comparisons_markdown(study)
    return "\n".join(lines)


def _comparisons_markdown(study: Mapping[str, Any]) -> list[str]:
    lines = _family_markdown(study, "configurations", f"## Pairwise comparisons: {study['primary_metric']}",
                             "the pairs of the same group")
    if study["reference"] is not None:
        lines += [""] + _family_markdown(
            study, "reference", f"## Against the reference, {study['reference']}: {study['primary_metric']}",
            "the configurations compared with the reference in the same group (a family apart from the pairs "
            "above)")
    return lines


def _family_markdown(study: Mapping[str, Any], family: str, heading: str, holm_over: str) -> list[str]:
    metric, confidence = study["primary_metric"], round(study["confidence"] * 100)
    rows = [row for row in study["comparisons"] if row["family"] == family]
    lines = [heading, ""]
    if not rows:
        return lines + ["Only one configuration: nothing to compare.", ""]
    direction = "lower is better" if metric in DISTANCE_METRICS else "higher is better"
    lines += [f"Paired over the seeds both configurations ran. Difference = A − B ({metric}: {direction}), with "
              f"its {confidence}% CI. Two-sided paired t-test and Wilcoxon signed-rank test; *Holm*: "
              f"Holm–Bonferroni adjusted over {holm_over} (each test separately).", ""]
    shared = [note for note in rows[0]["notes"] if all(note in row["notes"] for row in rows)]
    lines += [f"> **Note:** every comparison: {note}" for note in shared] + ([""] if shared else [])
    header = ["group", "A", "B", "n", "A − B", f"{confidence}% CI", "t p", "t p (Holm)", "Wilcoxon p",
              "Wilcoxon p (Holm)", "notes"]
    digits = _digits(metric)
    body = [[row["group"], row["configuration_a"], row["configuration_b"], str(row["n"]),
             _number(row["mean_difference"], digits, signed=True),
             "–" if row["ci_low"] is None else
             f"[{_number(row['ci_low'], digits, True)}, {_number(row['ci_high'], digits, True)}]",
             _p_text(row["t_p"]), _p_text(row["t_p_holm"]), _p_text(row["wilcoxon_p"]),
             _p_text(row["wilcoxon_p_holm"]), "; ".join(note for note in row["notes"] if note not in shared)]
            for row in rows]
    return lines + [markdown_table(header, body)]


# ------------------------------------------------------------------------------------------------- plots


def _figure(study: Mapping[str, Any], width_per_panel: float) -> tuple[Figure, list[Any]]:
    """A figure with one panel per group, three panels a row."""
    count = len(study["groups"])
    columns = min(3, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(width_per_panel * columns + 1.2, 3.6 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(rows, columns, index + 1) for index in range(count)]


def _seed_colors(study: Mapping[str, Any]) -> dict[int, str]:
    all_seeds = sorted({seed for seeds in study["seeds"].values() for seed in seeds}, key=seed_key)
    return {seed: f"C{index % 10}" for index, seed in enumerate(all_seeds)}


def _metric_label(metric: str) -> str:
    return f"{metric} (mm, lower is better)" if metric in DISTANCE_METRICS else metric


def _save(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return path


def _violin_plot(study: Mapping[str, Any], path: Path, title: str) -> Path:
    metric, configurations = study["primary_metric"], study["configurations"]
    figure, panels = _figure(study, max(3.8, 1.0 + 0.9 * len(configurations)))
    colors = _seed_colors(study)
    for axes, group in zip(panels, study["groups"], strict=True):
        for position, configuration in enumerate(configurations):
            values = {seed: value for (seed, value) in _per_run_values(study["runs"], metric, group,
                                                                         configuration).items()
                      if value is not None}
            points = np.asarray(list(values.values()), dtype=float)
            if points.size >= 2 and np.ptp(points) > 0:  # a KDE needs two distinct values
                parts = axes.violinplot([points], positions=[position], widths=0.7, showextrema=False)
                for body in parts["bodies"]:  # grey: colours belong to the seeds
                    body.set_facecolor("0.6")
                    body.set_edgecolor("0.4")
                    body.set_alpha(0.35)
            if points.size:
                axes.hlines(points.mean(), position - 0.25, position + 0.25, colors="black", linewidth=1.5)
            for offset, (seed, value) in enumerate(sorted(values.items(), key=lambda item: seed_key(item[0]))):
                jitter = 0.12 * (offset / max(1, len(values) - 1) - 0.5) if len(values) > 1 else 0.0
                axes.scatter(position + jitter, value, color=colors[seed], s=22, zorder=3, edgecolors="black",
                             linewidths=0.4, label=f"seed {seed}")
        axes.set_xticks(range(len(configurations)), configurations,
                        rotation=30 if len(configurations) > 3 else 0, ha="right" if len(configurations) > 3
                        else "center")
        axes.set_xlim(-0.6, len(configurations) - 0.4)
        axes.set_title(f"{study['group_by']} = {group}", fontsize=10)
        axes.set_ylabel(_metric_label(metric))
        axes.grid(axis="y", alpha=0.3)
    _seed_legend(figure, panels)
    figure.suptitle(f"{title}: {metric} per run (violin: spread over seeds; dot: one run; bar: mean)")
    return _save(figure, path)


def _seed_legend(figure: Figure, panels: list[Any]) -> None:
    by_label: dict[str, Any] = {}
    for axes in panels:
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
            by_label.setdefault(label, handle)
    if by_label and len(by_label) <= 20:
        figure.legend(list(by_label.values()), list(by_label), fontsize=8, loc="outside right upper")


def _runs_plot(study: Mapping[str, Any], path: Path, title: str) -> Path:
    metric = study["primary_metric"]
    all_seeds = sorted({seed for seeds in study["seeds"].values() for seed in seeds}, key=seed_key)
    figure, panels = _figure(study, max(3.8, 1.5 + 0.45 * len(all_seeds)))
    markers = "osD^v<>PX"
    for axes, group in zip(panels, study["groups"], strict=True):
        for index, configuration in enumerate(study["configurations"]):
            values = _per_run_values(study["runs"], metric, group, configuration)
            heights = [np.nan if values.get(seed) is None else values[seed] for seed in all_seeds]
            axes.plot(range(len(all_seeds)), heights, marker=markers[index % len(markers)], color=f"C{index % 10}",
                      linewidth=1.0, markersize=5, label=configuration)
        axes.set_xticks(range(len(all_seeds)), [str(seed) for seed in all_seeds])
        axes.set_xlabel("seed")
        axes.set_ylabel(_metric_label(metric))
        axes.set_title(f"{study['group_by']} = {group}", fontsize=10)
        axes.grid(alpha=0.3)
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=8, loc="outside right upper", title="configuration")
    figure.suptitle(f"{title}: {metric} of every run, by seed (a gap: no value)")
    return _save(figure, path)


# ------------------------------------------------------------------------------------------------ writer


def _flatten_notes(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(row, notes="; ".join(row["notes"])) for row in rows]


def write_study_report(runs: Sequence[Mapping[str, Any]], out_dir: PathLike,
                       metrics: Sequence[str] = DEFAULT_METRICS, group_by: str | None = None,
                       title: str = "Study", confidence: float = 0.95, reference: str | None = None
                       ) -> dict[str, Path]:
    """Write a repeated-run study's tables, statistics and plots (see the module docstring for the files).

    Args:
        runs: one dict per (configuration, seed) run: ``configuration`` (str), ``seed`` (int) and either
            ``summary`` (the run's :func:`~medtextseg.evaluation.metrics.summarize` rows) or ``records``
            (its per-prompt metric records); other scalar keys are copied to ``runs.csv``.
        out_dir: the folder to write to (created).
        metrics: names from :data:`STUDY_METRICS` (any overlap or distance metric, or ``empty_correct``);
            the first is the primary metric, which is tested pairwise and plotted.
        group_by: ``None`` uses the key the summaries were grouped by (``"kind"`` for records); a name
            must match the summaries' key and groups ``records``.
        title: the report's title (Markdown heading, figure titles).
        confidence: level of the confidence intervals, in (0, 1).
        reference: a configuration compared with each other one apart, not among the pairs (the study's
            text-blind MONAI UNet); None: every pair.

    Returns:
        ``{"runs_csv", "summary_csv", "summary_md", "comparisons_csv", "violin_png", "runs_png",
        "study_json"}`` -> paths. Fewer than 2 runs per configuration still writes everything, with
        undefined statistics as "–" (CSV: empty, JSON: null) and a note.

    Raises:
        MedTextSegError: see :func:`summarize_study`.

    Example:
        >>> runs = [{"configuration": loss, "seed": seed, "summary": summarize(records[loss, seed])}
        ...         for loss in ("dice", "tversky") for seed in (0, 1, 2)]  # doctest: +SKIP
        >>> write_study_report(runs, "study/report", metrics=("dice", "hd95"))["summary_md"]  # doctest: +SKIP
        PosixPath('study/report/summary.md')
    """
    study = summarize_study(runs, metrics=metrics, group_by=group_by, confidence=confidence, reference=reference)
    out_dir = Path(out_dir)
    paths = {
        "runs_csv": write_text_atomic(out_dir / "runs.csv", csv_text(
            study["runs"], table_columns(study["runs"], ("configuration", "seed", "group", "n")))),
        "summary_csv": write_text_atomic(out_dir / "summary.csv", csv_text(
            _flatten_notes(study["summary"]), _SUMMARY_COLUMNS)),
        "comparisons_csv": write_text_atomic(out_dir / "comparisons.csv", csv_text(
            _flatten_notes(study["comparisons"]), _COMPARISON_COLUMNS)),
        "summary_md": write_text_atomic(out_dir / "summary.md", _summary_markdown(study, title)),
        "violin_png": _violin_plot(study, out_dir / "violin.png", title),
        "runs_png": _runs_plot(study, out_dir / "runs.png", title),
    }
    paths["study_json"] = write_text_atomic(out_dir / "study.json", dump_json(to_builtin(
        {"title": title, **study, "files": {key: path.name for key, path in paths.items()}})))
    return paths
