"""Reporting stages that compose :mod:`~medtextseg.evaluation.tables` and :mod:`~medtextseg.evaluation.figures`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medtextseg.evaluation.figures import save_comparison_chart
from medtextseg.evaluation.tables import comparison_table, write_comparison_tables

PathLike = str | os.PathLike


def write_comparison(summaries: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: PathLike,
                     metric: str = "dice", reference: str | None = None) -> dict[str, Path]:
    """Write :func:`~medtextseg.evaluation.tables.comparison_table` as ``comparison_{metric}.md/.csv/.json`` and a
    grouped bar chart ``comparison_{metric}.png`` (group means with ±std error bars where the summaries have them).

    Returns:
        ``{"md": path, "csv": path, "json": path, "png": path}``.
    """
    table = comparison_table(summaries, metric=metric, reference=reference)
    paths = write_comparison_tables(table, list(summaries), out_dir, metric)
    paths["png"] = save_comparison_chart(table, summaries, Path(out_dir) / f"comparison_{metric}.png", metric)
    return paths
