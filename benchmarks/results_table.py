"""Write a benchmark's result rows as ``results.json`` and ``results.md`` in its folder, and print them as a table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def cell(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def write_results(results: Sequence[dict[str, Any]], columns: Sequence[str], out_dir: Path, title: str) -> None:
    """results: one dict per row; columns: the keys shown, in order (all keys go to the JSON)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(list(results), indent=1))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in results]
    (out_dir / "results.md").write_text(f"# {title}\n\n" + "\n".join(lines) + "\n")
    table = Table(title=title)
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for row in results:
        table.add_row(*(cell(row.get(c)) for c in columns))
    Console(width=250).print(table)
