"""Atomic file writes: a reader (or a killed process) never sees a half-written file.

Every output of medtextseg (masks, checkpoints, metrics, plots) is written into a temporary folder beside the
destination, under the destination's own name, and moved into place with ``os.replace``, which is atomic on
POSIX file systems. A write killed mid-way (SIGKILL) leaves only its temporary folder,
``.partial-NAME-XXXXXXXX``: the destination keeps its previous version, and the next process to lock the folder
removes the leftover (``remove_partial_writes``). Writing under the final name keeps multi-file formats right:
SimpleITK's ``mask.mhd`` names its data file ``mask.zraw``, which is moved into place first, the header last.
Files are created by the writer itself (not ``mkstemp``), so they get the mode the user's umask gives (0644 under
umask 022).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# a write's temporary folder: PREFIX, the destination's name up to its first dot, "-", mkdtemp's 8 characters
PARTIAL_PREFIX = ".partial-"
_PARTIAL = re.compile(rf"{re.escape(PARTIAL_PREFIX)}[^/]*-[a-z0-9_]{{8}}")


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path with the destination's name; move it (and any file written beside it, such as
    a ``.mhd`` header's ``.zraw``) into place only if the block succeeds. Nothing is left behind otherwise.

    Example:
        >>> with atomic_path("out/mask.nii.gz") as tmp:  # doctest: +SKIP
        ...     nib.save(image, tmp)
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{destination.name.split('.')[0]}-",
                                   dir=destination.parent))
    tmp = folder / destination.name
    try:
        yield tmp
        for companion in sorted(folder.iterdir()):  # data files first: the header never names a missing file
            if companion != tmp:
                os.replace(companion, destination.parent / companion.name)
        os.replace(tmp, destination)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def swap_folder_in(partial: str | os.PathLike, folder: str | os.PathLike, replaced_prefix: str = ".replaced-") -> None:
    """Put the finished folder ``partial`` in ``folder``'s place (both on one file system); the old ``folder``,
    if any, is moved aside under a hidden name first and removed after, so a reader sees one or the other whole."""
    partial, folder = Path(partial), Path(folder)
    if folder.exists():
        replaced = Path(tempfile.mkdtemp(prefix=f"{replaced_prefix}{folder.name}-", dir=folder.parent))
        os.replace(folder, replaced)  # onto the empty folder mkdtemp made: atomic
        os.replace(partial, folder)
        shutil.rmtree(replaced, ignore_errors=True)
    else:
        os.replace(partial, folder)


def write_text_atomic(destination: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``destination`` atomically and return the destination path."""
    with atomic_path(destination) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(destination)


def remove_partial_writes(folder: str | os.PathLike) -> list[str]:
    """Remove the temporary folders that writes killed mid-way (SIGKILL, power cut) left in ``folder``; return
    their names. Only for a folder no other process is writing into (one whose lock this process holds)."""
    folder = Path(folder)
    removed = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.is_symlink()
                     and _PARTIAL.fullmatch(p.name))
    for name in removed:
        shutil.rmtree(folder / name, ignore_errors=True)
    return removed
