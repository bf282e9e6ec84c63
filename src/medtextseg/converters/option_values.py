"""Converter options as pydantic models: one field per ``--option KEY=VALUE``, one error form for every converter.

A converter declares its options as a :class:`ConverterOptions` subclass whose fields are typed with the rules
below (:func:`integer_in`, :func:`number_in`, :func:`boolean`, :func:`one_of`, :func:`name_list`, :func:`number_list`,
:func:`existing_path`, :func:`optional_path`, :func:`optional_text`, or :func:`rule` for another); each takes a
Python value or the string the command line gives. :meth:`ConverterOptions.parse` refuses an unknown option, naming
the closest known one and all of them, and a bad value in one line that names the option, its rule and the value::

    --option lesion_sets: unknown option (did you mean 'lesion_set'?); the picai converter takes images, labels, ...
    picai converter: option max_lesions must be an integer >= 1, got '0'

A model, in a converter module (``Annotated`` and ``ClassVar`` from :mod:`typing`)::

    class TinyOptions(ConverterOptions):
        converter: ClassVar[str] = "tiny"
        slices: Annotated[str, one_of("foreground", "all")] = "foreground"
        max_lesions: Annotated[int, integer_in(1)] = 10

    TinyOptions.parse({"max_lesions": "3"}).max_lesions  # 3
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from medtextseg.utils.errors import MedTextSegError

__all__ = ["ConverterOptions", "OptionRuleError", "boolean", "check_option_names", "existing_path", "integer_in",
           "name_list", "number_in", "number_list", "one_of", "option_error", "optional_path", "optional_text", "rule"]

Options = TypeVar("Options", bound="ConverterOptions")


class OptionRuleError(ValueError):
    """A value breaks its option's rule; the message is the rule (``"an integer >= 1"``)."""


def option_error(converter: str, name: str, must: str, value: Any) -> MedTextSegError:
    return MedTextSegError(f"{converter} converter: option {name} must be {must}, got {value!r}")


def check_option_names(converter: str, options: Iterable[str], known: Sequence[str]) -> None:
    """Refuse an ``--option`` key the converter does not take, naming the closest known one and all of them."""
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MedTextSegError(f"--option {name}: unknown option{hint}; the {converter} converter takes "
                                  f"{', '.join(known)}")


# -------------------------------------------------------------------- rules
def rule(text: str, parse: Callable[[Any], Any]) -> BeforeValidator:
    """A field rule: ``parse(value)``, or :class:`OptionRuleError` with ``text`` (what the value must be) when it
    raises ``ValueError`` or ``TypeError``; a :class:`MedTextSegError` it raises is the message as is."""

    def check(value: Any) -> Any:
        try:
            return parse(value)
        except MedTextSegError:
            raise
        except (TypeError, ValueError, OverflowError):
            raise OptionRuleError(text) from None

    check.rule = text  # type: ignore[attr-defined]
    return BeforeValidator(check)


def _to_int(value: Any, minimum: int, maximum: int | None) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)):
        raise ValueError(value)
    number = int(float(value))
    if number < minimum or (maximum is not None and number > maximum):
        raise ValueError(value)
    return number


def _to_float(value: Any, minimum: float, maximum: float) -> float:
    number = float(value) if not isinstance(value, bool) else math.nan
    if not minimum <= number <= maximum:
        raise ValueError(value)
    return number


def _to_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise ValueError(value)
    return [str(part).strip() for part in value]


def integer_in(minimum: int, maximum: int | None = None) -> BeforeValidator:
    """An integer in [minimum, maximum] from an int or a string like ``"3"`` or ``"3.0"``."""
    text = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    return rule(text, lambda value: _to_int(value, minimum, maximum))


def number_in(minimum: float, maximum: float = math.inf) -> BeforeValidator:
    """A finite number in [minimum, maximum]."""
    text = f"a number >= {minimum}" if maximum == math.inf else f"a number in [{minimum}, {maximum}]"
    return rule(text, lambda value: _to_float(value, minimum, maximum))


def boolean() -> BeforeValidator:
    """true/false, yes/no, on/off, 1/0 (any case), or a bool."""
    words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}

    def parse(value: Any) -> bool:
        if isinstance(value, bool):
            return value
        return words[str(value).strip().lower()] if str(value).strip().lower() in words else _refuse(value)

    return rule("true or false", parse)


def one_of(*values: str) -> BeforeValidator:
    """One of ``values``, in any case; the value as spelled in ``values``."""
    spelled = {value.lower(): value for value in values}

    def parse(value: Any) -> str:
        return spelled.get(str(value).strip().lower()) or _refuse(value)

    return rule(f"one of {', '.join(values)}", parse)


def name_list(text: str = "a non-empty comma-separated list") -> BeforeValidator:
    """``"a, b"`` or ``["a", "b"]`` -> ``("a", "b")``, at least one."""
    return rule(text, lambda value: tuple(_to_list(value)) or _refuse(value))


def number_list(text: str, minimum: float, maximum: float,
                check: Callable[[tuple[float, ...]], bool]) -> BeforeValidator:
    """``"0.7,0.1,0.2"`` or a sequence -> a tuple of numbers in [minimum, maximum] for which ``check`` holds."""

    def parse(value: Any) -> tuple[float, ...]:
        found = tuple(_to_float(part, minimum, maximum) for part in _to_list(value))
        return found if check(found) else _refuse(value)

    return rule(text, parse)


def existing_path() -> BeforeValidator:
    """A file or folder that exists."""

    def parse(value: Any) -> Path:
        return Path(value) if Path(value).exists() else _refuse(value)

    return rule("an existing file or folder", parse)


def optional_path() -> BeforeValidator:
    """A path, or None for an empty value."""
    return rule("a path", lambda value: Path(value) if value not in (None, "") else None)


def optional_text() -> BeforeValidator:
    """A text, or None for an empty value."""
    return rule("a text", lambda value: str(value) if value not in (None, "") else None)


def _refuse(value: Any) -> Any:
    raise ValueError(value)


# -------------------------------------------------------------------- the model
class ConverterOptions(BaseModel):
    """The options of a converter (named by ``converter``), one typed field each; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    converter: ClassVar[str] = ""

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(cls.model_fields)

    @classmethod
    def parse(cls: type[Options], options: Mapping[str, Any], converter: str | None = None) -> Options:
        """Validate ``--option`` strings or Python values into the model.

        Args:
            converter: the name in messages, when several converters share the model (default: ``converter``).

        Raises:
            MedTextSegError: one line: an unknown option (with the closest known one), a missing required one, or
                a value that breaks its rule.
        """
        name = converter or cls.converter
        check_option_names(name, options, cls.option_names())
        try:
            return cls.model_validate(dict(options))
        except ValidationError as errors:
            raise cls._one_line(name, errors.errors()[0]) from None

    @classmethod
    def _one_line(cls, converter: str, error: Any) -> MedTextSegError:
        field = str(error["loc"][0]) if error.get("loc") else ""
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, MedTextSegError):
            return cause
        if isinstance(cause, OptionRuleError):
            return option_error(converter, field, str(cause), error.get("input"))
        if error["type"] == "missing":
            rules = [getattr(m.func, "rule", "") for m in cls.model_fields[field].metadata if hasattr(m, "func")]
            return MedTextSegError(f"{converter} converter: --option {field}=... is required"
                                   + "".join(f", {rule}" for rule in rules if rule))
        return option_error(converter, field, error["msg"].lower(), error.get("input"))
