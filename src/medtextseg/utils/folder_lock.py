"""One writer per output folder: an advisory lock that `train` takes on its run folder and `predict` on its -o.

Two trainings into one ``--out`` left ``last.pt`` from one, ``best.pt`` and ``config.yaml`` from the other and
an interleaved log; two predictions into one ``-o`` mixed their masks. The second process now stops at once
with one line naming the folder and the process that holds it.

The lock is ``flock`` on ``FOLDER/.medtextseg.lock`` (POSIX): the kernel releases it when the holder exits,
however it ends (a SIGKILL included), so a lock is never stale; the file's text is only the holder's pid, for
the message. Taking the lock removes what a killed holder's atomic writes left (their temporary folders).
The holder removes the file when it is done, and the folder too when it created it and nothing
else was written there (a command that failed early leaves nothing behind).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from pathlib import Path

from medtextseg.utils.atomic import remove_partial_writes
from medtextseg.utils.errors import MedTextSegError

LOCK_NAME = ".medtextseg.lock"


def _create_folder(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; return those made, deepest first.

    Raises:
        MedTextSegError: ``folder`` or a parent is a file, or the folder cannot be created (permissions,
            read-only file system).
    """
    if folder.exists() and not folder.is_dir():
        raise MedTextSegError(f"{folder}: is a file, not a folder; choose an output folder")
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as error:  # a parent is a file, no permission, read-only file system, NUL, ...
        reason = error.strerror if isinstance(error, OSError) else str(error)
        raise MedTextSegError(f"{folder}: cannot create the folder ({reason}); choose a writable output "
                              "folder") from None
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) that are empty, stopping at the first that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _holder(fd: int) -> str:
    """The pid the holder wrote into the lock file ("unknown" while it is still writing it)."""
    text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    return text if text.isdigit() else "unknown"


# folders this process holds, by (device, inode): taking one again (the CLI's train, then the trainer) is a no-op
_HELD: set[tuple[int, int]] = set()


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) for the ``with`` block; yields the folder.

    Re-entrant: in a process that already holds the folder's lock it does nothing. Under torchrun only rank 0
    (which writes) takes it; the other ranks pass.

    Raises:
        MedTextSegError: another process holds it (naming its pid), or the folder cannot be created or
            written.
    """
    folder = Path(folder)
    created = _create_folder(folder)
    identity = (folder.stat().st_dev, folder.stat().st_ino)
    if identity in _HELD or int(os.environ.get("RANK", "0")) != 0:
        yield folder
        return
    path = folder / LOCK_NAME
    try:
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as error:
                raise MedTextSegError(f"{folder}: cannot write into the folder ({error.strerror}); choose a "
                                      "writable output folder") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise MedTextSegError(f"{folder}: in use by another medtextseg process (pid {holder}, which holds "
                                      f"{LOCK_NAME}); wait for it to end or choose another output folder") from None
            # the holder may have removed the file between our open and our lock: then lock the new one
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(current, os.fstat(fd)):
                break
            os.close(fd)
    except MedTextSegError:
        _remove_if_empty(created)
        raise
    _HELD.add(identity)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        remove_partial_writes(folder)  # what a killed holder's writes left: no one else writes here now
        yield folder
    finally:
        _HELD.discard(identity)
        # removed while still held, so that no other process can lock this file and think it the folder's lock
        path.unlink(missing_ok=True)
        os.close(fd)
        _remove_if_empty(created)


_COMMAND_SCOPE: ContextVar[ExitStack | None] = ContextVar("medtextseg_command_scope", default=None)


@contextmanager
def command_scope() -> Iterator[None]:
    """The span of one CLI command: locks taken with :func:`lock_until_command_ends` are released at its end."""
    with ExitStack() as stack:
        token = _COMMAND_SCOPE.set(stack)
        try:
            yield
        finally:
            _COMMAND_SCOPE.reset(token)


def lock_until_command_ends(folder: str | Path) -> Path:
    """Take the lock of ``folder`` (see :func:`folder_lock`) until the running CLI command ends: one line in a
    command's body, without indenting what follows.

    Raises:
        MedTextSegError: as :func:`folder_lock`.
        RuntimeError: called outside a command (outside :func:`command_scope`).
    """
    stack = _COMMAND_SCOPE.get()
    if stack is None:
        raise RuntimeError("lock_until_command_ends needs a command_scope (the CLI's user_errors gives one)")
    return stack.enter_context(folder_lock(folder))
