"""``StepProgress``: the training progress bar (rich) in a terminal, a line every 5% in a log file, or nothing
when it is off; the same calls either way."""

from __future__ import annotations

import sys
import time
from typing import TextIO

PLAIN_LINES = 20  # lines a run writes to a log file (nohup, a cluster job), besides one per validation


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class StepProgress:
    """A bar ``LABEL ━━━ step/total elapsed remaining val Dice x`` shown while training runs.

    Where the output is not a terminal (``nohup ... > log``, a SLURM job's file) a bar would only be drawn when it
    stops, so the progress is written as plain lines instead, ``LABEL step/total (p%) elapsed, remaining[, val
    Dice x]``: one every 5% of the run and one after each validation.

    Args:
        label: the bar's name (``train``, ``co-train``).
        total: the last step.
        completed: the step it starts from (a resumed run).
        enabled: False makes every call a no-op (no bar: tests, other ranks).
        stream: where plain lines go (default ``sys.stderr``); a terminal gets the rich bar instead.
    """

    def __init__(self, label: str, total: int, completed: int, enabled: bool, stream: TextIO | None = None) -> None:
        self.bar = None
        self.plain: TextIO | None = None
        if not enabled:
            return
        from rich.console import Console

        if not Console().is_terminal:
            self.plain = stream or sys.stderr
            self.label, self.total, self.first = label, total, completed
            self.every = max(1, total // PLAIN_LINES)
            self.started = time.perf_counter()
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
        self.task = self.bar.add_task(label, total=total, completed=completed, info="")
        self.bar.start()

    def update(self, step: int, scores: dict[str, float] | None = None) -> None:
        """Move to ``step``; show the validation Dice when ``scores`` has one."""
        validated = bool(scores) and "val_dice" in scores
        if self.plain is not None:
            if validated or step % self.every == 0 or step == self.total:
                self._line(step, f", val Dice {scores['val_dice']:.3f}" if validated else "")
            return
        if self.bar is None:
            return
        if validated:
            self.bar.update(self.task, info=f"val Dice {scores['val_dice']:.3f}")
        self.bar.update(self.task, completed=step)

    def _line(self, step: int, info: str) -> None:
        elapsed = time.perf_counter() - self.started
        done = step - self.first
        remaining = elapsed / done * (self.total - step) if done > 0 else 0.0
        print(f"{self.label} {step}/{self.total} ({100 * step // self.total}%) {_duration(elapsed)} elapsed, "
              f"{_duration(remaining)} remaining{info}", file=self.plain, flush=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


__all__ = ["StepProgress"]
