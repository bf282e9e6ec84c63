"""Two models on the same prompts: a paired test per prompt group (``medtextseg compare``).

A study compares configurations over seeds (one number per run). Two single evaluations of the same test split
can be compared more finely, prompt by prompt: every (case, prompt) scored by both models is one pair, and the
paired t-test and Wilcoxon signed-rank test of :func:`~medtextseg.study.statistics.paired_tests` say whether the
per-prompt differences are more than chance (TextBCS's t-tests between models; nnU-Net-style per-case
comparisons). Prompts of one case are not independent, so the tests are read as within this test split, not as
a population claim; a group's p-values are Holm-corrected over the models compared with the reference.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medtextseg.evaluation.metrics import OVERALL_GROUP
from medtextseg.study.statistics import holm, paired_tests
from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.errors import MedTextSegError


def _by_prompt(records: Sequence[Mapping[str, Any]], metric: str, name: str) -> dict[tuple[str, str], tuple]:
    """(case, prompt) -> (group, value) of one evaluation's ``metrics_per_prompt.json`` records."""
    pairs = {}
    for record in records:
        if metric not in record:
            raise MedTextSegError(f"evaluation {name!r}: its per-prompt records have no {metric!r}")
        pairs[(str(record["case"]), str(record["prompt"]))] = (str(record.get("group", record.get("kind"))),
                                                               float(record[metric]))
    return pairs


def paired_prompt_comparison(evaluations: Mapping[str, Sequence[Mapping[str, Any]]], metric: str = "dice",
                             reference: str | None = None) -> list[dict[str, Any]]:
    """Paired tests of every evaluation against ``reference`` (default: the first), per group and overall.

    Args:
        evaluations: name -> its per-prompt records (``metrics_per_prompt.json``: ``case``, ``prompt``,
            ``group``, the metric).
        metric: a per-prompt metric with finite values (``dice``, ``iou``, ...).
        reference: the evaluation the others are compared with.

    Returns:
        One row per (model, group): ``model``, ``reference``, ``group``, ``n`` (prompts both scored),
        ``mean_model``, ``mean_reference``, ``mean_difference`` (model - reference) with its 95% ``ci_low`` /
        ``ci_high``, ``t_p``, ``wilcoxon_p`` and ``wilcoxon_p_holm`` (Holm over the models, per group).

    Raises:
        MedTextSegError: fewer than two evaluations, an unknown reference, or a model that shares no prompt
            with the reference (another split or dataset).
    """
    if len(evaluations) < 2:
        raise MedTextSegError("a paired comparison needs at least two evaluations")
    reference = reference or next(iter(evaluations))
    if reference not in evaluations:
        raise MedTextSegError(f"reference {reference!r} is not one of the evaluations {sorted(evaluations)}")
    base = _by_prompt(evaluations[reference], metric, reference)
    rows: list[dict[str, Any]] = []
    for name, records in evaluations.items():
        if name == reference:
            continue
        other = _by_prompt(records, metric, name)
        shared = sorted(base.keys() & other.keys())
        if not shared:
            raise MedTextSegError(f"evaluations {name!r} and {reference!r} share no (case, prompt): evaluate "
                                  "both on the same dataset and split")
        groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for key in shared:
            pair = (other[key][1], base[key][1])
            groups[base[key][0]].append(pair)
            groups[OVERALL_GROUP].append(pair)
        for group in sorted(groups, key=lambda g: (g == OVERALL_GROUP, g)):
            model_values, reference_values = zip(*groups[group], strict=True)
            test = paired_tests(model_values, reference_values)
            rows.append({"model": name, "reference": reference, "group": group, "n": test["n"],
                         "mean_model": test["mean_a"], "mean_reference": test["mean_b"],
                         "mean_difference": test["mean_difference"], "ci_low": test["ci_low"],
                         "ci_high": test["ci_high"], "t_p": test["t_p"], "wilcoxon_p": test["wilcoxon_p"],
                         "unpaired": len(base) + len(other) - 2 * len(shared)})
    for group in {row["group"] for row in rows}:
        tested = [row for row in rows if row["group"] == group and row["wilcoxon_p"] is not None]
        for row, adjusted in zip(tested, holm([row["wilcoxon_p"] for row in tested]), strict=True):
            row["wilcoxon_p_holm"] = adjusted
    for row in rows:
        row.setdefault("wilcoxon_p_holm", None)
    return rows


def paired_table_markdown(rows: Sequence[Mapping[str, Any]], metric: str = "dice") -> str:
    """The rows of :func:`paired_prompt_comparison` as a Markdown table."""
    def number(value: Any, signed: bool = False) -> str:
        return "–" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}" if value >= 1e-3
                                          else f"{value:.1e}")

    lines = [f"| model | reference | group | prompts | {metric} model | {metric} reference | difference (95% CI) "
             "| paired t p | Wilcoxon p | Wilcoxon p (Holm) |", "|" + "---|" * 10]
    for row in rows:
        interval = (f"{number(row['mean_difference'], True)} ({number(row['ci_low'], True)}, "
                    f"{number(row['ci_high'], True)})" if row["ci_low"] is not None else
                    number(row["mean_difference"], True))
        lines.append(f"| {row['model']} | {row['reference']} | {row['group']} | {row['n']} | "
                     f"{number(row['mean_model'])} | {number(row['mean_reference'])} | {interval} | "
                     f"{number(row['t_p'])} | {number(row['wilcoxon_p'])} | {number(row['wilcoxon_p_holm'])} |")
    return "\n".join(lines) + "\n"


def write_paired_comparison(evaluations: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: str | Path,
                            metric: str = "dice", reference: str | None = None) -> Path:
    """Write :func:`paired_prompt_comparison` as ``paired_{metric}.md``, ``.csv`` and ``.json`` in
    ``out_dir``; returns the Markdown file's path."""
    rows = paired_prompt_comparison(evaluations, metric, reference)
    out_dir = Path(out_dir)
    columns = list(rows[0])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / f"paired_{metric}.csv", buffer.getvalue())
    write_text_atomic(out_dir / f"paired_{metric}.json", json.dumps(rows, indent=1) + "\n")
    names = ", ".join(name for name in evaluations if name != (reference or next(iter(evaluations))))
    return write_text_atomic(out_dir / f"paired_{metric}.md",
                             f"# {metric} per prompt: {names} against {reference or next(iter(evaluations))}\n\n"
                             "Pairs: the (case, prompt)s both evaluations scored. Tests: scipy's paired t-test and "
                             "Wilcoxon signed-rank, two-sided; prompts of one case are not independent.\n\n"
                             + paired_table_markdown(rows, metric))
