"""Values of ``medtextseg convert --option KEY=VALUE``: one parser per type, one error form for every converter."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from typing import Any

from medtextseg.utils.errors import MedTextSegError


def option_error(converter: str, name: str, rule: str, value: Any) -> MedTextSegError:
    return MedTextSegError(f"{converter} converter: option {name} must be {rule}, got {value!r}")


def check_option_names(converter: str, options: Iterable[str], known: Sequence[str]) -> None:
    """Refuse an ``--option`` key the converter does not take, naming the closest known one and all of them."""
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MedTextSegError(f"--option {name}: unknown option{hint}; the {converter} converter takes "
                                  f"{', '.join(known)}")


def as_int(converter: str, name: str, value: Any, minimum: int) -> int:
    """An integer >= ``minimum`` from an int or a string like ``"3"`` or ``"3.0"``."""
    try:
        number = int(value) if not isinstance(value, bool) and float(value) == int(float(value)) else None
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or number < minimum:
        raise option_error(converter, name, f"an integer >= {minimum}", value)
    return number


def as_float(converter: str, name: str, value: Any, minimum: float, maximum: float = math.inf) -> float:
    """A finite number in [minimum, maximum]."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not minimum <= number <= maximum:
        raise option_error(converter, name, f"a number in [{minimum}, {maximum}]", value)
    return number


def as_list(converter: str, name: str, value: Any) -> list[str]:
    """``"a, b"`` or ``["a", "b"]`` -> ``["a", "b"]``."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise option_error(converter, name, "a comma-separated list", value)
    return [str(part).strip() for part in value]


def as_bool(converter: str, name: str, value: Any) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case), or a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise option_error(converter, name, "true or false", value)
