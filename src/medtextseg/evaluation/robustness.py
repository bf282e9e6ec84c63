"""Prompt robustness: does a trained model still find the named lesion when the prompt is worded differently?

Every prompt of a split that names a lesion by its attributes (kinds ``single`` and ``absent``) is predicted as
written ("original") and rewritten in each style of :data:`~medtextseg.data.attribute_prompts.PROMPT_STYLES`
(same attributes, other words), then scored against the same target. A model that learned the attributes
keeps its Dice across styles; one that learned the generator's phrasings loses it.

Files written (atomically, in ``out_dir``)
-----------------------------------------
* ``robustness_per_prompt.json`` / ``.csv``: one row per (case, prompt, style): case, kind, group (as
  :func:`~medtextseg.evaluation.runner.result_group` gives it), style, prompt (the text predicted),
  original_prompt, dice, empty_correct (absent prompts: the answer was empty; None otherwise) and the other
  keys of :func:`~medtextseg.evaluation.metrics.segmentation_metrics`. JSON and CSV encode as in
  :mod:`medtextseg.evaluation.tables` (inf as null + ``{key}_nonfinite``).
* ``robustness_summary.json`` / ``.csv``: one row per style x group (``overall`` last for each style): n,
  n_target, dice_mean / dice_std over the prompts with a target (None for ``absent``), dice_vs_original,
  n_empty_target, empty_correct (fraction of absent prompts answered empty), false_positive_cases.
* ``robustness.png``: grouped bars, one bar per style in each group: mean Dice with ±std error bars; for
  ``absent``, the fraction answered empty (Dice is 1 exactly for an empty answer there).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medtextseg.data.attribute_prompts import PROMPT_STYLES, can_restyle, restyle
from medtextseg.data.dimensions import metric_grid
from medtextseg.data.io import read_array, read_geometry
from medtextseg.data.layout import load_dataset, verify_dataset
from medtextseg.evaluation.figures import grouped_bars
from medtextseg.evaluation.metrics import segmentation_metrics, summarize
from medtextseg.evaluation.runner import prompt_target, result_group
from medtextseg.evaluation.tables import write_table
from medtextseg.inference.predictor import Predictor
from medtextseg.utils.atomic import atomic_path
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.progress import progress_bar

__all__ = ["ORIGINAL_STYLE", "prompt_robustness"]

#: The pseudo-style of the prompt as written in prompts.jsonl.
ORIGINAL_STYLE = "original"
PER_PROMPT_STEM = "robustness_per_prompt"
SUMMARY_STEM = "robustness_summary"
_PER_PROMPT_LEADING = ("case", "kind", "group", "style", "prompt", "original_prompt", "dice", "empty_correct")
_SUMMARY_COLUMNS = ("style", "group", "n", "n_target", "dice_mean", "dice_std", "dice_vs_original",
                    "n_empty_target", "empty_correct", "false_positive_cases")


def _check_styles(styles: Sequence[str]) -> tuple[str, ...]:
    styles = (styles,) if isinstance(styles, str) else tuple(styles)
    known = (ORIGINAL_STYLE, *PROMPT_STYLES)
    unknown = [style for style in styles if style not in known]
    if unknown:
        raise MedTextSegError(f"prompt_robustness: unknown style {unknown[0]!r}; known styles: {', '.join(known)}")
    if not styles or len(set(styles)) != len(styles):
        raise MedTextSegError(f"prompt_robustness: styles must be distinct and at least one, got {list(styles)}")
    return styles


def _variant_rng(seed: int, case: str, number: int, style: str) -> np.random.Generator:
    # One stream per (case, prompt, style): a variant's wording does not depend on which other styles, cases
    # or splits are evaluated (crc32, unlike hash(), is the same in every process).
    return np.random.default_rng([seed, zlib.crc32(case.encode()), number, zlib.crc32(style.encode())])


def _summary_rows(records: list[dict[str, Any]], styles: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per style x group (see the module docstring), from ``summarize`` over each style's records."""
    rows = []
    for style in styles:
        style_records = [record for record in records if record["style"] == style]
        with_target = [record for record in style_records if not record["target_empty"]]
        # Dice over prompts with a target only: for an absent prompt it just restates empty_correct.
        target_rows = {row["group"]: row for row in summarize(with_target, group_by="group")} if with_target else {}
        for row in summarize(style_records, group_by="group"):
            target_row = target_rows.get(row["group"], {})
            rows.append({"style": style, "group": row["group"], "n": row["n"], "n_target": target_row.get("n", 0),
                         "dice_mean": target_row.get("dice_mean"), "dice_std": target_row.get("dice_std"),
                         "dice_vs_original": None, "n_empty_target": row["n_empty_target"],
                         "empty_correct": row["empty_correct"], "false_positive_cases": row["false_positive_cases"]})
    original = {row["group"]: row["dice_mean"] for row in rows if row["style"] == ORIGINAL_STYLE}
    for row in rows:
        if row["dice_mean"] is not None and original.get(row["group"]) is not None:
            row["dice_vs_original"] = row["dice_mean"] - original[row["group"]]
    return rows


def _save_chart(rows: Sequence[Mapping[str, Any]], styles: tuple[str, ...], out_path: Path, title: str) -> Path:
    """Grouped bars: per group, one bar per style (Dice ± std; the fraction answered empty for ``absent``)."""
    groups = list(dict.fromkeys(str(row["group"]) for row in rows))
    by_key = {(row["style"], str(row["group"])): row for row in rows}
    figure = Figure(figsize=(max(6.0, 1.5 + len(groups) * (0.5 + 0.35 * len(styles))), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    series = {}
    for style in styles:
        heights, errors = [], []
        for group in groups:
            row = by_key.get((style, group), {})
            if row.get("dice_mean") is not None:
                heights.append(row["dice_mean"])
                errors.append(row.get("dice_std") or 0.0)
            else:  # a group without targets (absent): the fraction answered empty, which has no spread
                heights.append(row.get("empty_correct"))
                errors.append(0.0)
        series[style] = (heights, errors)
    grouped_bars(axes, groups, series, lambda h: "–" if h is None else f"{h:.2f}")
    axes.set_xticks(range(len(groups)), [f"{group}\n(answered empty)" if all(
        by_key.get((s, group), {}).get("dice_mean") is None for s in styles) else group for group in groups])
    axes.set_ylabel("Dice")
    axes.set_ylim(0, 1.15)
    axes.set_title(title)
    axes.legend(fontsize=7, ncols=min(len(styles), 5), loc="upper center")
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    return out_path


def prompt_robustness(run: str | Path, data_root: str | Path, out_dir: str | Path, split: str = "test",
                      styles: Sequence[str] = (ORIGINAL_STYLE, *PROMPT_STYLES), seed: int = 0,
                      progress: bool = True) -> list[dict]:
    """Predict every attribute prompt of a split as written and in each style; score and write the comparison.

    Args:
        run: a run folder or checkpoint (see :class:`~medtextseg.inference.predictor.Predictor`).
        data_root: the dataset folder.
        out_dir: where the files of the module docstring go (created if needed).
        split: the dataset split whose cases are evaluated.
        styles: ``"original"`` and/or names of :data:`~medtextseg.data.attribute_prompts.PROMPT_STYLES`.
        seed: draws the wordings of the styles that have several; the same seed gives the same prompts.
        progress: show a progress bar.

    Returns:
        The summary rows, one per style x group (``overall`` last for each style).

    Raises:
        MedTextSegError: an unknown or repeated style, a bad dataset, or a split without attribute prompts.
    """
    styles = _check_styles(styles)
    out_dir = Path(out_dir)
    layout = load_dataset(data_root)
    cases = layout.split(split)
    verify_dataset(layout, [c.case for c in cases], progress=progress)
    predictor = Predictor(run)
    records: list[dict[str, Any]] = []
    with progress_bar(cases, f"prompt robustness on {split}", progress) as iterator:
        for case in iterator:
            # Every variant of the case's attribute prompts, predicted in one call: the image is prepared once.
            variants = [(number, prompt, style,
                         prompt.prompt if style == ORIGINAL_STYLE
                         else restyle(prompt.meta, prompt.kind, style, _variant_rng(seed, case.case, number, style)))
                        for number, prompt in enumerate(case.prompts) if can_restyle(prompt.meta, prompt.kind)
                        for style in styles]
            if not variants:
                continue
            geometry = read_geometry(case.image_paths[0])
            label = read_array(case.label_path) if case.label_path else None
            results = predictor.predict(case.image_paths, [text for *_, text in variants], uncertainty=False)
            spatial, spacing = metric_grid(geometry, layout.spatial_dims)
            targets: dict[int, np.ndarray] = {}
            for (number, prompt, style, text), result in zip(variants, results, strict=True):
                if number not in targets:
                    targets[number] = prompt_target(case, prompt, label).reshape(spatial)
                metrics = segmentation_metrics(result.mask.reshape(spatial) > 0, targets[number], spacing)
                records.append({"case": case.case, "kind": prompt.kind, "group": result_group(prompt), "style": style,
                                "prompt": text, "original_prompt": prompt.prompt,
                                "empty_correct": bool(metrics["pred_empty"]) if metrics["target_empty"] else None,
                                "n_lesions": prompt.meta.get("n_lesions"), **metrics})
    if not records:
        raise MedTextSegError(f"{layout.root}: split {split!r} has no prompt that names a lesion by its attributes "
                              f"(kinds single/absent with side, zone, size or shape in meta) to restyle")
    rows = _summary_rows(records, styles)
    write_table(records, out_dir, PER_PROMPT_STEM, _PER_PROMPT_LEADING)
    write_table(rows, out_dir, SUMMARY_STEM, _SUMMARY_COLUMNS)
    _save_chart(rows, styles, out_dir / "robustness.png",
                f"prompt robustness: {Path(run).name} on {layout.root.name} ({split})")
    return rows
