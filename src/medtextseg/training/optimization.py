"""Optimiser and learning-rate schedule from ``config.train``: each method's paper names its own.

* ``train.optimizer``: ``adamw`` (the default's), ``adam`` (TextBCS) or ``sgd`` with momentum and Nesterov
  (nnU-Net, Align-then-Refine, RADA's SGTC base).
* ``train.schedule``, after ``train.warmup_steps`` of linear warm-up: ``cosine`` to 1% of the rate (the
  default's), ``poly`` (nnU-Net's ``(1 - t)^0.9``), ``step`` (x ``step_gamma`` every ``step_every`` steps:
  SGTC's x0.1 every 2500) or ``plateau`` (x ``plateau_factor`` when the validation Dice has not improved for
  ``plateau_patience`` validations, as ReduceLROnPlateau; TextBCS).
* ``train.early_stopping``: stop when the validation Dice has not improved for that many validations.

:func:`apply_update` is the one optimiser step every step policy takes: skipped on a loss that is not finite,
gradients clipped to ``train.grad_clip``, float16 loss scaling where the precision needs it.

The factor is a callable object inside ``LambdaLR``, so its plateau state is saved with the scheduler's in
``last.pt`` and a resumed run continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from medtextseg.config import TrainConfig


def build_optimizer(parameters: Iterable[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``train.optimizer`` names, at ``train.lr`` with ``train.weight_decay``."""
    if train.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov,
                               weight_decay=train.weight_decay)
    optimizer = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return optimizer(parameters, lr=train.lr, weight_decay=train.weight_decay)


_NO_SCALING = torch.amp.GradScaler("cpu", enabled=False)  # passes the loss and the step through, keeps no state


def apply_update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter],
                 grad_clip: float, scaler: torch.amp.GradScaler | None = None) -> bool:
    """Back-propagate ``loss`` (a scalar) and step ``optimizer``, its gradients clipped to ``grad_clip`` (norm over
    ``parameters``). A loss that is not finite skips the update rather than poison the weights: returns whether
    the update was taken. ``scaler``: float16's loss scaling (a disabled one, or None, changes nothing)."""
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return False
    scaler = scaler or _NO_SCALING
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return True


class LearningRateFactor:
    """``factor(step)``: the multiplier of ``train.lr`` at a step (warm-up, then ``train.schedule``), and the
    validation bookkeeping of the ``plateau`` schedule and of early stopping (:meth:`observe_validation`).

    Attributes:
        best: the best validation Dice seen; stale: validations since it improved; scale: the plateau
            schedule's accumulated reduction; stop: early stopping has been reached.
    """

    def __init__(self, train: TrainConfig) -> None:
        self.schedule, self.warmup, self.total = train.schedule, train.warmup_steps, train.steps
        self.poly_power, self.step_every, self.step_gamma = train.poly_power, train.step_every, train.step_gamma
        self.plateau_patience, self.plateau_factor = train.plateau_patience, train.plateau_factor
        self.early_stopping = train.early_stopping
        self.best, self.stale, self.scale, self.stop = -math.inf, 0, 1.0, False

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        if self.schedule == "cosine":
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))
        if self.schedule == "poly":
            return (1 - progress) ** self.poly_power
        if self.schedule == "step":
            return self.step_gamma ** ((step - self.warmup) // self.step_every)
        return self.scale  # plateau

    def observe_validation(self, score: float) -> bool:
        """Record a validation Dice; returns (and keeps in ``stop``) whether early stopping says to stop."""
        if score > self.best:
            self.best, self.stale = score, 0
        else:
            self.stale += 1
            if self.schedule == "plateau" and self.stale % self.plateau_patience == 0:
                self.scale *= self.plateau_factor
        self.stop = self.early_stopping is not None and self.stale >= self.early_stopping
        return self.stop

    def shared_state(self) -> list[float]:
        """What the validating rank decided, as floats to broadcast to the other ranks."""
        return [self.best, float(self.stale), self.scale, float(self.stop)]

    def set_shared_state(self, values: list[float]) -> None:
        self.best, self.stale, self.scale, self.stop = values[0], int(values[1]), values[2], bool(values[3])
