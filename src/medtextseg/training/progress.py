"""``StepProgress``: the training progress bar (rich) in a terminal, a line every 5% in a log file, or nothing
when it is off; the same calls either way."""

from __future__ import annotations

from typing import TextIO

from medtextseg.utils.progress import PlainProgress, output_is_terminal


class StepProgress:
    """A bar ``LABEL ━━━ step/total elapsed remaining val Dice x`` shown while training runs.

    Where the output is not a terminal (``nohup ... > log``, a SLURM job's file) a bar would only be drawn when it
    stops, so the progress is written as plain lines instead (:class:`PlainProgress`): one every 5% of the run and
    one after each validation.

    Args:
        label: the bar's name (``train``, ``co-train``).
        total: the last step.
        completed: the step it starts from (a resumed run).
        enabled: False makes every call a no-op (no bar: tests, other ranks).
        stream: where plain lines go (default ``sys.stderr``); a terminal gets the rich bar instead.
    """

    def __init__(self, label: str, total: int, completed: int, enabled: bool, stream: TextIO | None = None) -> None:
        self.bar = None
        self.plain: PlainProgress | None = None
        if not enabled:
            return
        if not output_is_terminal():
            self.plain = PlainProgress(label, total, completed, stream)
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
        self.task = self.bar.add_task(label, total=total, completed=completed, info="")
        self.bar.start()

    def update(self, step: int, scores: dict[str, float] | None = None) -> None:
        """Move to ``step``; show the validation Dice when ``scores`` has one."""
        info = f"val Dice {scores['val_dice']:.3f}" if scores and "val_dice" in scores else ""
        if self.plain is not None:
            self.plain.update(step, info)
        elif self.bar is not None:
            if info:
                self.bar.update(self.task, info=info)
            self.bar.update(self.task, completed=step)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


__all__ = ["StepProgress"]
