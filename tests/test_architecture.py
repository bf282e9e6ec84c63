"""Imports run one way: down the layers docs/architecture.md states, except the exceptions listed here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "medtextseg"

# (importing file, imported layer) -> why it still runs up. None is left (the last, config -> losses, went when the
# loss terms moved below the config); a new entry needs a reason.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


# groups of modules that import each other (at module level or inside functions), as module names -> why. None is
# left: a new one needs a reason as good as the ones issue 15 removed (the two trainers, checkpoint <-> package,
# the encoder kinds <-> their picker, the block registry <-> its catalogue).
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def documented_layers() -> dict[str, int]:
    """Layer name -> depth (0 = top) from the ``Layers:`` line of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    line = re.search(r"^Layers: (.+)$", text, re.MULTILINE)
    assert line, "docs/architecture.md has no 'Layers: a > b, c > ...' line"
    return {name.strip(): depth for depth, group in enumerate(line.group(1).split(">"))
            for name in group.split(",")}


def layer_of(path: Path) -> str:
    """The layer a source file belongs to: its top-level package, or its module name (``cli``, ``config``)."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def runtime_imports(path: Path) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of ``path`` that can run: at module level or inside functions, not under
    ``if TYPE_CHECKING:`` (type hints only, never executed)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and ast.unparse(node.test).endswith("TYPE_CHECKING") for stmt in node.body
                   for inner in ast.walk(stmt)}
    return [node for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in typing_only]


def imported_layers(path: Path) -> set[str]:
    """The medtextseg layers ``path`` imports (:func:`runtime_imports`)."""
    layers = set()
    for node in runtime_imports(path):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        layers |= {name.split(".")[1] for name in names if name.startswith("medtextseg.")}
    return layers


def test_every_import_runs_down_the_documented_layers():
    layers = documented_layers()
    layers["__init__"] = 0  # the package's own __init__ sits on top (it re-exports the API lazily)
    upward, used = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        source = layer_of(path)
        assert source in layers, f"{path.relative_to(PACKAGE)}: layer {source!r} is not in docs/architecture.md"
        for target in imported_layers(path) - {source}:
            assert target in layers, f"{path.relative_to(PACKAGE)} imports {target!r}, a layer the docs lack"
            key = (path.relative_to(PACKAGE).as_posix(), target)
            if layers[target] <= layers[source]:
                if key in KNOWN_EXCEPTIONS:
                    used.add(key)
                else:
                    upward.append(f"{key[0]} imports {target} (layer {layers[target]} is not below {source}'s "
                                  f"{layers[source]})")
    assert not upward, "imports against docs/architecture.md's layers:\n" + "\n".join(upward)
    assert used == set(KNOWN_EXCEPTIONS), f"exceptions no longer needed: {sorted(set(KNOWN_EXCEPTIONS) - used)}"


def module_name(path: Path) -> str:
    """``training/steps/__init__.py`` -> ``training.steps``; the package's own ``__init__.py`` -> ``__init__``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The medtextseg modules ``path`` imports (:func:`runtime_imports`), by their :func:`module_name`."""
    found = set()
    for node in runtime_imports(path):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medtextseg":
            base = node.module.removeprefix("medtextseg").lstrip(".") or "__init__"
            # "from medtextseg.training import inputs" imports the module training.inputs
            found |= {f"{base}.{a.name}" if base != "__init__" else a.name for a in node.names} | {base}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("medtextseg.") for a in node.names if a.name.startswith("medtextseg.")}
    return found & modules


def import_cycles() -> set[frozenset[str]]:
    """The groups of modules that import each other (the strongly connected components of the import graph)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: imported_modules(path, set(paths)) - {name} for name, path in paths.items()}
    order, low, stack, groups = {}, {}, [], set()

    def visit(name: str) -> None:  # Tarjan's algorithm
        order[name] = low[name] = len(order)
        stack.append(name)
        for other in graph[name]:
            if other not in order:
                visit(other)
                low[name] = min(low[name], low[other])
            elif other in stack:
                low[name] = min(low[name], order[other])
        if low[name] == order[name]:
            group = {stack.pop()}
            while name not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.add(frozenset(group))

    for name in sorted(graph):
        if name not in order:
            visit(name)
    return groups


def test_no_import_cycle_but_the_known_ones():
    cycles, known = import_cycles(), set(KNOWN_CYCLES)
    assert not cycles - known, f"modules importing each other: {[sorted(c) for c in cycles - known]}"
    assert not known - cycles, f"cycles no longer there: {[sorted(c) for c in known - cycles]}"


def test_the_cycle_check_sees_a_lazy_import_back(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from medtextseg.cli import app\n"
                      "def f():\n    from medtextseg.training import engine\n")
    assert imported_modules(module, {"cli", "training", "training.engine"}) == {"training", "training.engine"}


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from medtextseg.api import Model\n"
                      "def f():\n    from medtextseg.cli import app\n")
    assert imported_layers(module) == {"cli"}
    assert documented_layers()["cli"] < documented_layers()["models"]
