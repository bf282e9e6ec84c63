"""Progress over long work: a rich bar in a terminal, plain lines where the output is a file (``nohup ... >
log``, a cluster job), where a bar would only be drawn when it stops."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO, TypeVar

T = TypeVar("T")

PLAIN_LINES = 20  # lines a long loop writes to a log file: one every 5% (and one for each extra note)


def output_is_terminal() -> bool:
    """Whether rich would draw a live bar (standard output is a terminal)."""
    from rich.console import Console

    return Console().is_terminal


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class PlainProgress:
    """Progress as lines, ``LABEL done/total (p%) elapsed, remaining[, note]``: one every 5% of ``total``, one
    whenever there is a note (a validation Dice), and the last.

    Args:
        label: what is being done (``train``, ``evaluating test``).
        total: the count at the end.
        first: the count it starts from (a resumed run); elapsed time is measured from here.
        stream: where the lines go (default ``sys.stderr``).
    """

    def __init__(self, label: str, total: int, first: int = 0, stream: TextIO | None = None) -> None:
        self.label, self.total, self.first, self.stream = label, total, first, stream or sys.stderr
        self.every = max(1, total // PLAIN_LINES)
        self.started = time.perf_counter()

    def update(self, done: int, note: str = "") -> None:
        if not (note or done % self.every == 0 or done == self.total):
            return
        elapsed = time.perf_counter() - self.started
        remaining = elapsed / (done - self.first) * (self.total - done) if done > self.first else 0.0
        print(f"{self.label} {done}/{self.total} ({100 * done // max(self.total, 1)}%) {_duration(elapsed)} elapsed, "
              f"{_duration(remaining)} remaining" + (f", {note}" if note else ""), file=self.stream, flush=True)


@contextmanager
def progress_bar(items: Iterable[T], description: str, show: bool = True,
                 transient: bool = False) -> Iterator[Iterable[T]]:
    """``items`` with a rich progress bar when ``show``, stopped however the ``with`` block ends; where the
    output is not a terminal, a :class:`PlainProgress` line every 5% instead (``items`` of known length, a bar
    that is not ``transient``).

    A ``rich.progress.track`` generator that a loop leaves by an exception stays open (the traceback holds
    it) with its live display and refresh thread; the next bar then waited for that display's lock for ever
    (a test run hung that way after a bad file stopped the dataset check).
    """
    if not show:
        yield items
        return
    if not output_is_terminal():  # a transient bar leaves no trace in a log file either
        yield _with_lines(items, description) if hasattr(items, "__len__") and not transient else items
        return
    from rich.progress import track

    bar = track(items, description=description, transient=transient)
    try:
        yield bar
    finally:
        close = getattr(bar, "close", None)  # a generator; a test may put a plain list in its place
        if close is not None:
            close()


def _with_lines(items: Iterable[T], description: str) -> Iterator[T]:
    lines = PlainProgress(description, len(items))  # type: ignore[arg-type]
    for done, item in enumerate(items, start=1):
        yield item
        lines.update(done)
