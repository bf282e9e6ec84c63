"""Imports run one way: down the layers docs/architecture.md states, except the exceptions listed here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "medtextseg"

# (importing file, imported layer) -> why it still runs up; issue 15 (typed checkpoint, typed config sections)
# removes them. A new entry needs a reason as good.
KNOWN_EXCEPTIONS = {
    ("inference/predictor.py", "training"): "checkpoints are loaded by training/checkpoint.py",
    ("config.py", "losses"): "the loss section checks term names against the registry",
    ("config.py", "data"): "the co-training section checks sparse-label planes",
}


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


def imported_layers(path: Path) -> set[str]:
    """The medtextseg layers ``path`` imports, at module level or inside functions."""
    layers = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
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


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from medtextseg.cli import app\n")
    assert imported_layers(module) == {"cli"}
    assert documented_layers()["cli"] < documented_layers()["models"]
