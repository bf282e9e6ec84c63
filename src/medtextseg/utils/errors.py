"""The one error family users catch: every bad input raises ``MedTextSegError`` with a one-line message.

It subclasses ``ValueError`` so that generic callers that catch bad values keep working. The CLI prints
the message alone (no traceback) and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class MedTextSegError(ValueError):
    """Bad input (file, config field, prompt, ...). The message names the file or field and the rule."""


def refuse_same_folder(src: Path, dst: Path) -> None:
    """Raise when ``dst`` is ``src`` (a dataset written into its own source would be read back as input)."""
    if Path(src).resolve() == Path(dst).resolve():
        raise MedTextSegError(f"--dst {dst}: must differ from --src")
