"""``StepProgress``: the training progress bar (rich), or nothing when it is off; the same calls either way."""

from __future__ import annotations


class StepProgress:
    """A bar ``LABEL ━━━ step/total elapsed remaining val Dice x`` shown while training runs.

    Args:
        label: the bar's name (``train``, ``co-train``).
        total: the last step.
        completed: the step it starts from (a resumed run).
        enabled: False makes every call a no-op (no bar: tests, other ranks).
    """

    def __init__(self, label: str, total: int, completed: int, enabled: bool) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
        self.task = self.bar.add_task(label, total=total, completed=completed, info="")
        self.bar.start()

    def update(self, step: int, scores: dict[str, float] | None = None) -> None:
        """Move to ``step``; show the validation Dice when ``scores`` has one."""
        if self.bar is None:
            return
        if scores and "val_dice" in scores:
            self.bar.update(self.task, info=f"val Dice {scores['val_dice']:.3f}")
        self.bar.update(self.task, completed=step)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


__all__ = ["StepProgress"]
