"""Reading a JSON file a user gave us, with one-line errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtextseg.utils.errors import MedTextSegError


def json_type(value: Any) -> str:
    """How a message names a parsed JSON (or YAML) value's type: "a list", "a string", ..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def read_json(path: str | Path, missing_hint: str = "", expect_object: bool = False) -> Any:
    """Parse ``path``; a missing file, invalid JSON or (with ``expect_object``) a non-object top level raises
    MedTextSegError naming the file (``missing_hint`` is appended in parentheses when the file is missing)."""
    path = Path(path)
    if not path.is_file():
        raise MedTextSegError(f"{path}: file not found" + (f" ({missing_hint})" if missing_hint else ""))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MedTextSegError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if expect_object and not isinstance(data, dict):
        raise MedTextSegError(f"{path}: expected a JSON object")
    return data
