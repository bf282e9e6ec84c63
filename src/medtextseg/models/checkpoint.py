"""Checkpoint files (``best.pt``, ``last.pt``): written atomically, carrying the config, so that one alone can predict.

A checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain data only, never code. A
pickle can name any function to call while it is read, so a shared ``best.pt`` that needs more than that
is refused rather than run. The only non-plain objects medtextseg itself stores are numpy's RNG state in
``last.pt`` (an array and its dtype), which are allow-listed by name. The weights in a model package (``.zip``,
:mod:`medtextseg.models.package_format`) are read by :func:`read_state` too;
:func:`medtextseg.models.trained.load_checkpoint` opens either envelope.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from medtextseg.utils.atomic import atomic_path
from medtextseg.utils.errors import MedTextSegError


def _numpy_rng_globals() -> list[Any]:
    """The classes and the constructor an ndarray (``np.random.get_state()[1]``) is pickled with."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def checkpoint_file(path: str | Path) -> Path:
    """The file a checkpoint argument names: the file itself, or ``best.pt`` (else ``last.pt``) of a run folder."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise MedTextSegError(f"{path}: no best.pt or last.pt in this run folder (has training started?)")
    return path


def read_state(source: BinaryIO, name: str) -> dict[str, Any]:
    """A checkpoint's state from an open binary file, tensors and plain data only; ``name`` is what errors quote.

    Raises:
        MedTextSegError: a file that would need code to load (a pickled payload), an unreadable one, or a dict
            without model weights and config.
    """
    try:
        with torch.serialization.safe_globals(_numpy_rng_globals()):
            state = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names the global it refused ("... GLOBAL posix.system ..."): say which
        found = re.search(r"GLOBAL\s+([\w.]+)", str(error))
        detail = f"it calls {found.group(1)}" if found else "it is not tensors and plain data"
        raise MedTextSegError(f"{name}: refused, loading it would run code ({detail}); "
                              "medtextseg loads only weights and plain data. Use a checkpoint written by "
                              "medtextseg train from a source you trust") from None
    except Exception as error:
        raise MedTextSegError(f"{name}: not a readable checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise MedTextSegError(f"{name}: not a medtextseg checkpoint (no model weights and config)")
    return state


__all__ = ["checkpoint_file", "read_state", "save_checkpoint"]
