"""The standard step: a batch of images with K prompts each from the MONAI sample pipeline (``data/dataset.py``,
batched by ``training/batches.py``), the loss of ``config.loss``, one AdamW (``train.optimizer``) step with warm-up
and ``train.schedule``; DistributedDataParallel under torchrun, each rank on its share of the images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.nn.parallel import DistributedDataParallel

from medtextseg.config import Config
from medtextseg.data.planning import Plan
from medtextseg.losses.segmentation import build_loss
from medtextseg.models.factory import create_model
from medtextseg.training.batches import PromptBatches
from medtextseg.training.distributed import DistributedContext
from medtextseg.training.inputs import dense_training_cases, fit_text_whitening, prepare_training_text
from medtextseg.training.optimization import LearningRateFactor, apply_update, build_optimizer
from medtextseg.training.schedule import LossWeightSchedule
from medtextseg.training.steps.base import ValidationDecisions
from medtextseg.training.transfer import transfer_weights
from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.precision import autocast, mixed_precision_dtype, precision_name


class StandardStep(ValidationDecisions):
    """One network, dense labels, prompts sampled by kind (``training/steps/base.py`` says what the engine asks)."""

    label: ClassVar[str] = "train"

    @classmethod
    def check(cls, config: Config, plan: Plan | None) -> None:
        """Everything is checked once the dataset is read (:meth:`prepare`)."""

    def __init__(self, config: Config, ctx: DistributedContext, progress: bool) -> None:
        self.config, self.ctx, self.progress = config, ctx, progress
        self.stream = None

    def prepare(self, run_dir: Path, state: dict[str, Any] | None) -> None:
        config, ctx = self.config, self.ctx
        data = dense_training_cases(config, ctx, self.progress)
        self.layout, self.preprocessed = data.layout, data.preprocessed
        self.train_cases, self.val_cases = data.train_cases, data.val_cases
        text = prepare_training_text(config, data.layout, data.train_ids, data.val_ids, data.vocabulary, ctx)
        self.text = text.cache
        self.model = create_model(config.model, self.text.dim).to(ctx.device)
        if config.model.whitens_text and state is None:  # a resumed run has them in its checkpoint
            fit_text_whitening(self.model, self.text, text.whitening_texts, ctx.device)
        self.optimizer = build_optimizer(self.model.parameters(), config.train)
        self.lr_factor = LearningRateFactor(config.train)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.loss = build_loss(config.loss)
        self.schedule = LossWeightSchedule(config.loss.schedules)
        self.batches = PromptBatches(config, data.train_cases, ctx, data.vocabulary, text)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.schedule.load_state_dict(state.get("schedule", {}))
        elif config.train.init_from:
            report = transfer_weights(self.model, config.train.init_from, config.train.init_exclude)
            if ctx.is_main:
                write_text_atomic(run_dir / "init_transfer.json", json.dumps(report, indent=1))
        self.network = (DistributedDataParallel(self.model, device_ids=[ctx.device] if ctx.device.type == "cuda"
                                                else None) if ctx.enabled else self.model)
        self.precision = mixed_precision_dtype(config.train.amp, ctx.device)
        # loss scaling keeps float16 gradients from underflowing; bfloat16 has float32's range and needs none
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == torch.float16)

    def start_record(self) -> dict[str, Any]:
        return {"precision": precision_name(self.precision), "cases_prepared": self.preprocessed.prepared,
                "cases_read": len(self.preprocessed.cases) - self.preprocessed.prepared}

    def train_step(self, step: int) -> dict[str, float]:
        if self.stream is None:
            self.stream = self.batches.from_step(step)
        return self.learn(next(self.stream), step)

    def learn(self, batch: dict, step: int) -> dict[str, float]:
        """One update of the network from ``batch``; ``step`` sets the loss terms' schedule factors."""
        device = self.ctx.device
        image = batch["image"].to(device, non_blocking=True)
        targets = batch["targets"].to(device, non_blocking=True)
        text = self.text(batch["prompts"]).to(device)
        with autocast(device, self.precision):
            output = self.network(image, text, batch["image_index"].to(device))
        if self.precision is not None:
            output = output.float()
        factors = self.schedule.factors(step)
        loss, parts = self.loss(output, targets, factors=factors)
        parts |= {f"factor.{name}": value for name, value in factors.items()}
        updated = apply_update(loss, self.optimizer, self.model.parameters(), self.config.train.grad_clip,
                               self.scaler)
        self.scheduler.step()
        if not updated:
            return {"loss": float("nan"), **parts}
        value = float(loss.detach())
        self.schedule.observe_loss(value)
        return {"loss": value, **parts}

    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def share_decisions(self) -> None:
        self.lr_factor.set_shared_state(self.ctx.from_main(self.lr_factor.shared_state()))

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "schedule": self.schedule.state_dict()}

    def close(self) -> None:
        # Drop the DDP wrapper while the process group is still registered: if its reducer held the
        # group's last reference, the gloo destructor would join worker threads that wait for the GIL
        # this thread holds, and the process would hang at exit (seen in CI, torch 2.13).
        self.network = None
        self.stream = None


__all__ = ["StandardStep"]
