"""Loss-weight curricula: a term off during a warm-up, then ramped in, optionally only once training is stable.

A term listed in ``loss.schedules`` gets a factor in [0, 1] on its weight at every step:

    factor(step) = 0                                              before ``warmup_steps``, or while the gate is shut
                 = min(1, (step - warmup_steps + 1) / ramp_steps)  after (1 at once with ramp_steps = 0)

With ``gate: true`` the ramp waits, from ``warmup_steps`` on, until training is *stable*: the mean training loss of
the last ``stable_window`` steps differs from that of the window before by less than ``stable_change`` (relative),
or the latest validation Dice reaches ``stable_val_dice``; at ``latest_start`` it starts regardless. The factor is
then what the undelayed ramp would give at that step. Once open, the gate stays open; with ``retest`` it is tested
again at every step until ``latest_start`` and shuts while training is not stable, as Align-then-Refine's code
re-tests it each epoch (its auxiliary losses: warm-up 80 epochs, ramp 50, gate on a 5-epoch loss plateau or an EMA
Dice of 0.3, hard start at 130).

The state (gates opened, recent losses, last validation Dice) goes into every checkpoint, so a resumed run keeps it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from medtextseg.config import TermSchedule


class LossWeightSchedule:
    """Per-term weight factors for the current step, from ``loss.schedules``.

    Args:
        schedules: term name -> its ``TermSchedule``.
    """

    def __init__(self, schedules: Mapping[str, TermSchedule]) -> None:
        self.schedules = dict(schedules)
        window = max((s.stable_window for s in self.schedules.values() if s.gate), default=1)
        self.losses: deque[float] = deque(maxlen=2 * window)
        self.val_dice: float | None = None
        self.opened: dict[str, int] = {}  # term -> the step its gate opened

    def factors(self, step: int) -> dict[str, float]:
        """The factor of every scheduled term at ``step`` (opening gates whose condition now holds)."""
        return {name: self._factor(name, schedule, step) for name, schedule in self.schedules.items()}

    def _factor(self, name: str, schedule: TermSchedule, step: int) -> float:
        if step < schedule.warmup_steps:
            return 0.0
        if schedule.gate and (name not in self.opened or schedule.retest):
            if not (self._stable(schedule) or (schedule.latest_start is not None and step >= schedule.latest_start)):
                return 0.0
            self.opened.setdefault(name, step)
        if schedule.ramp_steps == 0:
            return 1.0
        return min(1.0, (step - schedule.warmup_steps + 1) / schedule.ramp_steps)

    def _stable(self, schedule: TermSchedule) -> bool:
        if (schedule.stable_val_dice is not None and self.val_dice is not None
                and self.val_dice >= schedule.stable_val_dice):
            return True
        window = schedule.stable_window
        if len(self.losses) < 2 * window:
            return False
        recent = list(self.losses)[-2 * window:]
        before, last = sum(recent[:window]) / window, sum(recent[window:]) / window
        return abs(last - before) / max(abs(before), 1e-12) < schedule.stable_change

    def observe_loss(self, loss: float) -> None:
        """Record one step's training loss (non-finite losses are skipped, as their steps are)."""
        if loss == loss and abs(loss) != float("inf"):
            self.losses.append(float(loss))

    def observe_validation(self, val_dice: float) -> None:
        self.val_dice = float(val_dice)

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "val_dice": self.val_dice, "opened": dict(self.opened)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.losses.extend(state.get("losses", []))
        self.val_dice = state.get("val_dice")
        self.opened = dict(state.get("opened", {}))
