"""What the engine (``training/engine.py``) asks of a step policy: the one thing that differs between training
methods is how a step learns; the run folder, the seeds, the log, checkpoints, resuming, validation and the
progress bar are the engine's.

A policy is constructed with the config and the distributed context, then :meth:`StepPolicy.prepare` builds its
data, text, model and optimisers (in the seeded RNG state the engine set), and the engine calls
:meth:`StepPolicy.train_step` once per step. Policies do not import each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

from torch import nn

from medtextseg.config import Config
from medtextseg.data.dataset import PreparedCase
from medtextseg.data.layout import DatasetLayout
from medtextseg.data.planning import Plan
from medtextseg.text.cache import TextEmbeddingCache
from medtextseg.training.distributed import DistributedContext
from medtextseg.training.optimization import LearningRateFactor
from medtextseg.training.schedule import LossWeightSchedule


class StepPolicy(Protocol):
    """One way of training a step, registered by name in ``training/steps/__init__.py``.

    Attributes (set by :meth:`prepare`):
        label: the progress bar's name.
        model: the model saved in checkpoints and validated (not a DDP wrapper).
        text: the text cache, every text training and validation feeds the model already encoded.
        layout: the dataset (its channel names and dimensionality go into every checkpoint).
        val_cases: the cases validation scores, in memory, each with the prompts it is asked.
    """

    label: ClassVar[str]
    model: nn.Module
    text: TextEmbeddingCache
    layout: DatasetLayout
    val_cases: list[PreparedCase]

    @classmethod
    def check(cls, config: Config, plan: Plan | None) -> None:
        """Refuse a config, a plan or a launch (torchrun) the policy cannot train, before anything starts."""

    def __init__(self, config: Config, ctx: DistributedContext, progress: bool) -> None: ...

    def prepare(self, run_dir: Path, state: dict[str, Any] | None) -> None:
        """Build data, text, model and optimisers; then load the policy's part of a resumed run's ``state``
        (``last.pt``), or, with None, initialise a new run (weights from ``train.init_from``, ...)."""

    def start_record(self) -> dict[str, Any]:
        """The policy's fields of the log's first line."""

    def train_step(self, step: int) -> dict[str, float]:
        """One optimisation step (``step`` counted from 0); returns the values to log. A ``loss`` entry is
        averaged over the steps between log lines (and the ranks), the others are logged as they are."""

    def learning_rate(self) -> float:
        """The learning rate of the last step, for the log."""

    def observe_validation(self, val_dice: float) -> None:
        """Rank 0's validation Dice (schedules that wait for it)."""

    def share_decisions(self) -> None:
        """After validation, on every rank: take rank 0's decisions (a plateau's rate, early stopping)."""

    def stop_reason(self) -> dict[str, Any] | None:
        """Why training stops before ``train.steps`` (logged with the ``early_stop`` event), or None."""

    def state_dict(self) -> dict[str, Any]:
        """The policy's part of ``last.pt`` (optimisers, schedules; its own RNG under ``rng``)."""

    def close(self) -> None:
        """Release what must go before the process group does (the DDP wrapper)."""


class ValidationDecisions:
    """What validation decides, alike in every policy, from rank 0's Dice: the loss terms' gates (``schedule``)
    and the learning-rate factor's plateau and early stopping (``lr_factor``). A policy sets both in
    :meth:`StepPolicy.prepare`."""

    schedule: LossWeightSchedule
    lr_factor: LearningRateFactor

    def observe_validation(self, val_dice: float) -> None:
        self.schedule.observe_validation(val_dice)
        self.lr_factor.observe_validation(val_dice)

    def stop_reason(self) -> dict[str, Any] | None:
        return {"validations_without_improvement": self.lr_factor.stale} if self.lr_factor.stop else None


__all__ = ["StepPolicy", "ValidationDecisions"]
