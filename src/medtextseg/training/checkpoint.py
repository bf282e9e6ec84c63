"""Checkpoints: written atomically, carrying the config, so that a checkpoint alone can predict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medtextseg.utils.atomic import atomic_path
from medtextseg.utils.errors import MedTextSegError


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file, or ``best.pt`` (else ``last.pt``) of a run folder."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise MedTextSegError(f"{path}: no best.pt or last.pt in this run folder (has training started?)")
    if not path.is_file():
        raise MedTextSegError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise MedTextSegError(f"{path}: not a readable checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise MedTextSegError(f"{path}: not a medtextseg checkpoint (no model weights and config)")
    return state
