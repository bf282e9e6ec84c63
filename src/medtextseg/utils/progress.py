"""Progress bars over a loop that may stop on a bad input."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def progress_bar(items: Iterable[T], description: str, show: bool = True,
                 transient: bool = False) -> Iterator[Iterable[T]]:
    """``items`` with a rich progress bar when ``show``, stopped however the ``with`` block ends.

    A ``rich.progress.track`` generator that a loop leaves by an exception stays open (the traceback holds
    it) with its live display and refresh thread; the next bar then waited for that display's lock for ever
    (a test run hung that way after a bad file stopped the dataset check).
    """
    if not show:
        yield items
        return
    from rich.progress import track

    bar = track(items, description=description, transient=transient)
    try:
        yield bar
    finally:
        close = getattr(bar, "close", None)  # a generator; a test may put a plain list in its place
        if close is not None:
            close()
