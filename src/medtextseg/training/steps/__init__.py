"""Step policies by name: ``train.step_policy`` picks one, the engine (``training/engine.py``) runs it.

A new way of training a step is a module of this package with a class that does what
``training/steps/base.py`` asks, listed here under the name the config gives (and in ``TrainConfig.step_policy``).
"""

from __future__ import annotations

from medtextseg.config import Config
from medtextseg.training.steps.base import StepPolicy
from medtextseg.training.steps.cotraining import CoTrainingStep
from medtextseg.training.steps.standard import StandardStep

STEP_POLICIES: dict[str, type[StepPolicy]] = {"standard": StandardStep, "cotraining": CoTrainingStep}


def step_policy(config: Config) -> type[StepPolicy]:
    """The step policy ``config.train.step_policy`` names."""
    return STEP_POLICIES[config.train.step_policy]


__all__ = ["STEP_POLICIES", "StepPolicy", "step_policy"]
