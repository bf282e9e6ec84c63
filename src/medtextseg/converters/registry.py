"""The converter registry: public dataset layouts by name, each with a one-line description.

A converter is a function in a module of this package, registered with its name::

    @register("nnunet", "labelled nnU-Net v2 raw dataset -> one prompt per (case, class)")
    def convert_nnunet(src: Path, dst: Path, *, overwrite: bool, spatial_dims: int, **options: str
                       ) -> ConversionSummary: ...

``options`` are the ``--option KEY=VALUE`` strings of ``medtextseg convert``; a converter parses them with its
:class:`~medtextseg.converters.option_values.ConverterOptions` model, which rejects keys it does not know with a
:class:`MedTextSegError` listing those it does. A converter that only reads a layout into a
:class:`~medtextseg.converters.nnunet.SourceDataset` registers with
:func:`~medtextseg.converters.nnunet.register_labelled` instead.

Discovery: the first call to :func:`converters` (or :func:`get_converter`) imports every module of
``medtextseg.converters`` except ``registry``, ``writer``, ``option_values`` and ``tables``, so a new converter
module registers itself just by existing: no list to keep up to date, no import to forget. The CLI builds ``convert
--help`` from it, so converter modules must import only light modules at their top (the standard library, numpy,
pydantic, :mod:`..writer`, :mod:`..option_values`) and the heavy ones (nibabel, SimpleITK, torch) inside their
functions. A module that fails to import does not break the other converters or the rest of the CLI: it is listed by
:func:`broken_modules` with its error, and shown there.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medtextseg.utils.errors import MedTextSegError

if TYPE_CHECKING:
    from medtextseg.converters.writer import ConversionSummary

ConverterFunction = Callable[..., "ConversionSummary"]

_NOT_CONVERTERS = frozenset({"registry", "writer", "option_values", "tables"})


@dataclass(frozen=True)
class ConverterInfo:
    """A registered converter: its name, one-line description, function and defining module."""

    name: str
    description: str
    function: ConverterFunction
    module: str


_REGISTRY: dict[str, ConverterInfo] = {}
_BROKEN: dict[str, str] = {}
_discovered = False


def register(name: str, description: str) -> Callable[[ConverterFunction], ConverterFunction]:
    """Decorator: register a converter function under ``name`` (several names may share one function).

    Raises:
        MedTextSegError: ``name`` is already taken by another function, or the description is not one line.
    """
    if not name or not name.replace("_", "").replace("-", "").isalnum() or name != name.lower():
        raise MedTextSegError(f"converter name {name!r} must be lower-case letters, digits, '-' or '_'")
    if not description.strip() or "\n" in description:
        raise MedTextSegError(f"converter {name!r}: the description must be one non-empty line")

    def decorate(function: ConverterFunction) -> ConverterFunction:
        known = _REGISTRY.get(name)
        if known is not None and (known.module, known.function.__qualname__) != (
                function.__module__, function.__qualname__):
            raise MedTextSegError(f"converter name {name!r} is registered twice: {known.module}."
                                  f"{known.function.__qualname__} and {function.__module__}.{function.__qualname__}")
        _REGISTRY[name] = ConverterInfo(name, description.strip(), function, function.__module__)
        return function

    return decorate


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import medtextseg.converters as package

    for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
        if module in _NOT_CONVERTERS or module.startswith("_"):
            continue
        try:
            importlib.import_module(f"{package.__name__}.{module}")
        except Exception as error:  # one broken converter must not take the others (or the CLI) down
            message = str(error).splitlines()[0] if str(error) else ""
            _BROKEN[module] = f"{type(error).__name__}: {message}".rstrip(": ")


def converters() -> dict[str, ConverterInfo]:
    """Every registered converter by name (sorted), after importing the converter modules."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def broken_modules() -> dict[str, str]:
    """Converter modules that failed to import: module name -> the error, one line."""
    _discover()
    return dict(_BROKEN)


def get_converter(name: str) -> ConverterFunction:
    """The converter function registered as ``name``.

    Raises:
        MedTextSegError: unknown name, with the closest registered one and the full list.
    """
    found = converters()
    if name in found:
        return found[name].function
    close = difflib.get_close_matches(name, list(found), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    broken = broken_modules()
    extra = f" (modules that failed to load: {'; '.join(f'{m}: {e}' for m, e in broken.items())})" if broken else ""
    raise MedTextSegError(f"unknown converter {name!r}{hint} Converters: {', '.join(found) or 'none'}{extra}")


def describe_converters() -> str:
    """One line per converter, ``name: description``, plus one per module that failed to load."""
    lines = [f"{info.name}: {info.description}" for info in converters().values()]
    lines += [f"(module {module} failed to load: {error})" for module, error in broken_modules().items()]
    return "\n".join(lines)


__all__ = ["ConverterInfo", "broken_modules", "converters", "describe_converters", "get_converter", "register"]
