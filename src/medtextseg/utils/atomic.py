"""Atomic file writes: a reader (or a killed process) never sees a half-written file.

Every output of medtextseg (masks, checkpoints, metrics, plots) is written to a temporary file in the
destination folder and moved into place with ``os.replace``, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; move it into place only if the block succeeds.

    The temporary name keeps the destination's full suffix (``.nii.gz``, ``.png``) so that writers which
    choose a format by extension (nibabel, SimpleITK, matplotlib) behave as for the final name.

    Example:
        >>> with atomic_path("out/mask.nii.gz") as tmp:  # doctest: +SKIP
        ...     nib.save(image, tmp)
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(destination.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name.split('.')[0]}-", suffix=suffix,
                                    dir=destination.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, destination)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(destination: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``destination`` atomically and return the destination path."""
    with atomic_path(destination) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(destination)
