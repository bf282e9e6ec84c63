"""The co-training step (RADA): each of ``model.networks`` networks in turn learns from its view's sparse
supervision and the other networks' confident pseudo labels, with its own optimiser (``train.optimizer``; RADA's
SGD, x0.1 every 2500 steps, as its presets state) at the rate ``train.schedule`` gives every network alike
(``training/cotraining.py`` says what a step does). One process only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from medtextseg.config import Config
from medtextseg.data.planning import Plan
from medtextseg.data.prompts import swap_left_right
from medtextseg.losses.segmentation import build_loss
from medtextseg.models.factory import create_model
from medtextseg.models.output import ModelOutput
from medtextseg.training.cotraining import (
    alpha_at,
    beta_at,
    cross_pseudo_loss,
    entropy_threshold,
    region_dim,
    region_prototypes,
    sparse_training_cases,
)
from medtextseg.training.distributed import DistributedContext
from medtextseg.training.inputs import text_cache_for
from medtextseg.training.optimization import LearningRateFactor, apply_update, build_optimizer
from medtextseg.training.schedule import LossWeightSchedule
from medtextseg.training.steps.base import ValidationDecisions
from medtextseg.utils.errors import MedTextSegError


class CoTrainingStep(ValidationDecisions):
    """Trains ``config.model.networks`` networks on a sparsely (or densely) labelled dataset."""

    label: ClassVar[str] = "co-train"

    @classmethod
    def check(cls, config: Config, plan: Plan | None) -> None:
        """The config is checked at load (``Config._check_cotraining``); here the launch and the plan."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise MedTextSegError("co-training (train.step_policy=cotraining) runs in one process; start it "
                                  "without torchrun")
        if plan is not None:
            raise MedTextSegError("co-training runs unplanned (sparse slice labels keep their grid); pass no plan")

    def __init__(self, config: Config, ctx: DistributedContext, progress: bool) -> None:
        self.config, self.ctx, self.progress, self.device = config, ctx, progress, ctx.device

    def prepare(self, run_dir: Path, state: dict[str, Any] | None) -> None:
        config = self.config
        self.layout, self.cases, self.val_cases = sparse_training_cases(config, self.progress)
        self.text = text_cache_for(config)
        self.text.warm(sorted({self.cases.prompt, swap_left_right(self.cases.prompt)}))
        self.model = create_model(config.model, self.text.dim).to(self.device)
        self.members = list(self.model.members) if config.model.networks > 1 else [self.model]
        self.optimizers = [build_optimizer(m.parameters(), config.train) for m in self.members]
        self.lr_factor = LearningRateFactor(config.train)
        self.supervised_loss = build_loss(config.loss)
        self.pseudo_loss = build_loss(config.cotraining.pseudo_loss)
        self.schedule = LossWeightSchedule(config.loss.schedules)
        self.rng = np.random.default_rng(config.train.seed)
        self.region_slices: list[int] = []
        if state is not None:
            self.model.load_state_dict(state["model"])
            for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
                optimizer.load_state_dict(saved)
            self.schedule.load_state_dict(state.get("schedule", {}))
            if "lr_factor" in state:  # the plateau schedule's and early stopping's bookkeeping
                self.lr_factor.set_shared_state(state["lr_factor"])
            self.rng.bit_generator.state = state["rng"]["generator"]
        elif region_dim(config):
            for member, (prototype, slices) in zip(self.members, region_prototypes(config, self.cases), strict=True):
                member.region_fusion.set_prototype(prototype.to(self.device))
                self.region_slices.append(slices)

    def start_record(self) -> dict[str, Any]:
        record = {"labelled_volumes": len(self.cases.labelled), "unlabelled_volumes": len(self.cases.unlabelled),
                  "prompt": self.cases.prompt, "target": list(self.cases.values)}
        return record | ({"region_slices": self.region_slices} if self.region_slices else {})

    def train_step(self, step: int) -> dict[str, float]:
        config = self.config
        lr = config.train.lr * self.lr_factor(step)
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        alpha, beta = alpha_at(step, config), beta_at(step, config)
        threshold = entropy_threshold(step, config)
        factors = self.schedule.factors(step)
        record: dict[str, float] = {}
        for k in range(len(self.members)):  # f1, then f2, then f3: each sees the others' latest weights
            record |= self._network_step(k, alpha, beta, threshold, factors)
        self.schedule.observe_loss(float(np.mean([record[f"net{k}.loss"] for k in range(len(self.members))])))
        return record | {f"factor.{name}": value for name, value in factors.items()} | {"alpha": alpha, "beta": beta}

    def _network_step(self, k: int, alpha: float, beta: float, threshold: float,
                      factors: dict[str, float]) -> dict[str, float]:
        config, device = self.config.cotraining, self.device
        member, optimizer = self.members[k], self.optimizers[k]
        image, target, weight, prompts = self.cases.labelled_batch(k, alpha, self.rng)
        others = [j for j in range(len(self.members)) if j != k]
        unlabelled = others and config.unlabelled_per_batch > 0
        if unlabelled:
            image_u, prompts_u = self.cases.unlabelled_batch(self.rng)
            image = torch.cat([image, image_u])
            prompts = prompts + prompts_u
        image, target, weight = image.to(device), target.to(device), weight.to(device)
        text = self.text(prompts).to(device)
        output = member(image, text)
        labelled = target.shape[0]
        head = ModelOutput(logits=output.logits[:labelled],
                            presence=None if output.presence is None else output.presence[:labelled])
        supervised, parts = self.supervised_loss(head, target, weight, factors=factors)  # config.loss
        record = {f"net{k}.supervised": float(supervised.detach()), **{f"net{k}.{n}": v for n, v in parts.items()}}
        loss = supervised
        if unlabelled:
            rows = torch.arange(labelled, image.shape[0], device=device)
            pseudo, certain = cross_pseudo_loss([self.members[j] for j in others], image[rows],
                                                text.index(rows.cpu()).to(device), output.logits[labelled:],
                                                self.pseudo_loss, config, threshold)
            loss = (1 - 2 * beta) * supervised + beta * pseudo
            record |= {f"net{k}.pseudo": float(pseudo.detach()), f"net{k}.certain": certain}
        record[f"net{k}.loss"] = float(loss.detach())
        apply_update(loss, optimizer, member.parameters(), self.config.train.grad_clip)
        return record

    def learning_rate(self) -> float:
        return self.optimizers[0].param_groups[0]["lr"]

    def share_decisions(self) -> None:
        """One process: nothing to share."""

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers], "schedule": self.schedule.state_dict(),
                "lr_factor": self.lr_factor.shared_state(), "rng": {"generator": self.rng.bit_generator.state}}

    def close(self) -> None:
        """Nothing to release."""


__all__ = ["CoTrainingStep"]
