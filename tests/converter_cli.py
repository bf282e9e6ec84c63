"""The converter tests' way to run ``medtextseg convert`` and read the summary line it prints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from medtextseg.cli import app

runner = CliRunner()


def cli_convert(name: str, src: Path, dst: Path, *args: str, **options: Any) -> Result:
    """``medtextseg convert NAME --src SRC --dst DST ARGS... --option KEY=VALUE...``."""
    pairs = [word for key, value in options.items() for word in ("--option", f"{key}={value}")]
    return runner.invoke(app, ["convert", name, "--src", str(src), "--dst", str(dst), *args, *pairs])


def convert_made_source(tmp_path_factory: Any, name: str, make: Callable[[Path], Path], *args: str,
                        **options: Any) -> tuple[Path, Path, Result]:
    """(src, dst, result): ``make(root)`` writes a source into a new folder, converted into its ``out``."""
    root = tmp_path_factory.mktemp(name)
    src = make(root)
    return src, root / "out", cli_convert(name, src, root / "out", *args, **options)


def printed(result: Result) -> str:
    """What the command printed, white space folded (rich wraps long lines)."""
    return " ".join(result.output.split())
