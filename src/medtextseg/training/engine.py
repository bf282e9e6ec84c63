"""Training: a config in, a run folder out (resolved config, JSONL log, ``last.pt`` / ``best.pt``).

The engine owns the run folder and the loop; what one step does is a step policy (``training/steps/``),
chosen by ``train.step_policy``. The loop is step-based and deterministic by seed. A killed run resumes from
its last checkpoint with ``resume=True`` and continues exactly where it stopped (same samples, same optimiser
and RNG state). Under ``torchrun`` rank 0 validates, logs and writes checkpoints (a policy that cannot run
distributed refuses it).
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtextseg.config import Config
from medtextseg.data.planning import PLAN_FILE, Plan
from medtextseg.models.checkpoint import save_checkpoint
from medtextseg.models.factory import count_parameters
from medtextseg.models.trained import load_checkpoint
from medtextseg.training.distributed import (
    DistributedContext,
    decided_by_rank_0,
    init_distributed,
    shutdown_distributed,
)
from medtextseg.training.progress import StepProgress
from medtextseg.training.steps import step_policy
from medtextseg.training.validation import validation_dice
from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.folder_lock import folder_lock

LOG_EVERY = 10  # steps between log lines


#: A validation pass shorter than this never spaces the next ones out: a few seconds are not worth coarser
#: checkpoints, and a short run (a test, a smoke run) keeps the cadence it asked for.
MIN_VALIDATION_SECONDS = 5.0


def spaced_val_every(every: int, configured: int, budget: float | None, steps: int, train_seconds: float,
                     val_seconds: float) -> int:
    """The validation interval that keeps validation within ``budget`` of the training time.

    ``train_seconds`` were spent on the ``steps`` steps trained since the previous validation, which then took
    ``val_seconds``. The interval becomes the smallest multiple of ``configured`` (``train.val_every``) whose
    training time, at that pace, makes ``val_seconds`` at most ``budget`` of training plus validation; it never
    shrinks, and a pass shorter than :data:`MIN_VALIDATION_SECONDS` leaves it as it is.
    """
    if budget is None or steps <= 0 or train_seconds <= 0 or val_seconds < MIN_VALIDATION_SECONDS:
        return every
    # val <= budget (n * step_seconds + val)  <=>  n >= val (1 - budget) / (budget * step_seconds)
    needed = val_seconds * (1 - budget) / (budget * train_seconds / steps)
    return max(every, configured * math.ceil(needed / configured))


def truncate_log(log_path: Path, last_step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run restarts from."""
    if not log_path.is_file():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if record.get("step", 0) <= last_step:
            kept.append(line)
    write_text_atomic(log_path, "".join(f"{line}\n" for line in kept))


def check_run_folder(run_dir: Path, resume: bool, config: Config) -> None:
    """Refuse to start over a run (without ``resume``), to resume nothing, or to train without a dataset."""
    last = run_dir / "last.pt"
    if resume and not last.is_file():
        raise MedTextSegError(f"{run_dir}: nothing to resume (no last.pt); start without --resume")
    if not resume and last.is_file():
        raise MedTextSegError(f"{run_dir}: a run already exists here; pass --resume to continue it "
                              "or choose another --out")
    if config.data.root is None:
        raise MedTextSegError("config field 'data.root' is not set: pass --data DATASET_FOLDER")


def saved_plan(run_dir: Path) -> Plan | None:
    """The plan a run folder was started with (its ``plans.json``), or None."""
    return Plan.load(run_dir / PLAN_FILE) if (run_dir / PLAN_FILE).is_file() else None


class Trainer:
    """Trains the model a config describes on ``config.data.root`` into ``run_dir``, a step at a time by the
    config's step policy (``self.policy``)."""

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
                 plan: Plan | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.progress = progress
        policy = step_policy(config)
        policy.check(config, plan)  # before the process group starts: a refused launch leaves nothing running
        self.ctx: DistributedContext = init_distributed()
        check_run_folder(self.run_dir, resume, config)
        self.config = config
        self.plan = plan if plan is not None else saved_plan(self.run_dir)
        self.policy = policy(config, self.ctx, progress and self.ctx.is_main)

    @property
    def model(self) -> torch.nn.Module:
        return self.policy.model

    @property
    def text(self):
        return self.policy.text

    # ---------------------------------------------------------------- set-up
    def _setup(self) -> None:
        seed = self.config.train.seed + self.ctx.rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if self.config.train.num_threads:
            torch.set_num_threads(self.config.train.num_threads)
        state = load_checkpoint(self.run_dir / "last.pt") if self.resume else None
        self.policy.prepare(self.run_dir, state)
        self.step, self.best = 0, -1.0
        self.val_every = self.config.train.val_every  # grows when validation outgrows train.val_budget
        if state is not None:
            self._restore(state)

    def _restore(self, state: dict) -> None:
        self.step, self.best = int(state["step"]), float(state["best"])
        self.val_every = int(state.get("val_every", self.val_every))
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.ctx.is_main:
            truncate_log(self.run_dir / "log.jsonl", self.step)

    # ---------------------------------------------------------------- outputs
    def _state(self, full: bool) -> dict[str, Any]:
        layout = self.policy.layout
        state = {"model": self.model.state_dict(), "config": self.config.model_dump(mode="json"),
                 "text_encoder": self.text.encoder_name, "text_dim": self.text.dim, "step": self.step,
                 "best": self.best, "channel_names": layout.channel_names, "spatial_dims": layout.spatial_dims,
                 "plan": self.plan.to_dict() if self.plan else None}
        if full:  # what resuming needs besides the weights
            own = self.policy.state_dict()
            state |= own | {"val_every": self.val_every,
                            "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                                    "torch": torch.get_rng_state(), **own.get("rng", {})}}
        return state

    def _log(self, record: dict) -> None:
        with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _validate_and_save(self) -> dict[str, float]:
        scores: dict[str, float] = {}
        if self.ctx.is_main:
            if self.policy.val_cases:
                inference = self.config.inference
                scores = validation_dice(self.model, self.policy.val_cases, self.text, self.config.data.patch_size,
                                         inference.threshold, inference.presence_threshold,
                                         inference.min_component_voxels, self.config.data.slice_context,
                                         inference.autocast)
                self._log({"step": self.step, **scores})
                self.policy.observe_validation(scores["val_dice"])
            # without validation cases the latest weights count as the best
            if not scores or scores["val_dice"] > self.best:
                self.best = scores.get("val_dice", self.best)
                save_checkpoint(self.run_dir / "best.pt", self._state(full=False))
            save_checkpoint(self.run_dir / "last.pt", self._state(full=True))
        self.ctx.barrier()
        self.policy.share_decisions()  # rank 0 validated; every rank must take its decisions
        return scores

    def _keep_validation_within_budget(self, steps: int, train_seconds: float, val_seconds: float) -> None:
        """Space validations out (:func:`spaced_val_every`) when the last one outgrew ``train.val_budget``. Rank 0
        measured; every rank takes its decision."""
        every = spaced_val_every(self.val_every, self.config.train.val_every, self.config.train.val_budget, steps,
                                 train_seconds, val_seconds)
        every = int(self.ctx.from_main([float(every)])[0])
        if every != self.val_every and self.ctx.is_main:
            self._log({"step": self.step, "event": "val_every", "val_every": every,
                       "val_seconds": round(val_seconds, 2), "train_seconds": round(train_seconds, 2),
                       "val_budget": self.config.train.val_budget})
        self.val_every = every

    # ---------------------------------------------------------------- loop
    def run(self) -> Path:
        """Train to ``config.train.steps`` and return the run folder."""
        try:
            return self._run()
        finally:
            self.policy.close()  # before the process group goes (see StandardStep.close)
            shutdown_distributed()

    def _run(self) -> Path:
        ctx, config = self.ctx, self.config
        setup_started = time.perf_counter()
        self._setup()  # before the run folder exists: a bad dataset or config leaves nothing behind
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "config.yaml", config.to_yaml())
            if self.plan is not None:
                self.plan.save(self.run_dir / PLAN_FILE)
            if not self.resume:
                self._log({"step": 0, "event": "start", "parameters": count_parameters(self.model),
                           "world_size": ctx.world_size, "device": str(ctx.device), **self.policy.start_record(),
                           "setup_seconds": round(time.perf_counter() - setup_started, 2)})
        self.model.train()
        total = config.train.steps
        progress = StepProgress(self.policy.label, total, self.step, self.progress and ctx.is_main)
        started, window = time.perf_counter(), []
        since_validation, validated_at = started, self.step
        try:
            while self.step < total and self.policy.stop_reason() is None:
                parts = self.policy.train_step(self.step)
                self.step += 1
                if "loss" in parts:
                    window.append(parts["loss"])
                if self.step % LOG_EVERY == 0 or self.step == total:
                    # every rank joins the all-reduce of the mean loss; rank 0 writes it
                    loss = {"loss": ctx.mean(float(np.nanmean(window)))} if window else {}
                    if ctx.is_main:
                        self._log({"step": self.step, **loss, **{k: v for k, v in parts.items() if k != "loss"},
                                   "lr": self.policy.learning_rate(),
                                   "seconds": round(time.perf_counter() - started, 2)})
                    window = []
                scores = None
                if self.step % self.val_every == 0 or self.step == total:
                    validation_started = time.perf_counter()
                    scores = self._validate_and_save()
                    if self.step < total:
                        self._keep_validation_within_budget(self.step - validated_at,
                                                            validation_started - since_validation,
                                                            time.perf_counter() - validation_started)
                    since_validation, validated_at = time.perf_counter(), self.step
                progress.update(self.step, scores)
        except KeyboardInterrupt:
            if ctx.is_main:  # keep what was learnt: resume continues from here
                save_checkpoint(self.run_dir / "last.pt", self._state(full=True))
            raise
        finally:
            progress.stop()
        if ctx.is_main:
            reason = self.policy.stop_reason()
            if reason is not None:
                self._log({"step": self.step, "event": "early_stop", **reason})
            self._log({"step": self.step, "event": "end", "seconds": round(time.perf_counter() - started, 2),
                       "best_val_dice": self.best})
        return self.run_dir


def train(config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
          plan: Plan | None = None) -> Path:
    """Train ``config`` into ``run_dir`` (continuing its ``last.pt`` when ``resume``); return the run folder.

    ``plan`` (the dataset's plan, whose values ``config`` holds) is saved as ``RUN/plans.json`` and in every
    checkpoint. The co-training policy (``train.step_policy=cotraining``: sparse labels, several networks, RADA)
    takes no plan: its slice labels must keep their grid.

    The run folder is locked for the whole run (``utils/folder_lock.py``; under torchrun by rank 0, which
    writes): a second training into it stops at once, naming the process that holds it, on every rank. The CLI
    takes the lock before it plans, so that the second stops before measuring the dataset.

    Raises:
        MedTextSegError: the run folder is in use, or a bad config or dataset (nothing is left behind).
    """
    with ExitStack() as stack:
        decided_by_rank_0(lambda: stack.enter_context(folder_lock(run_dir)))  # every rank stops if rank 0 does
        return Trainer(config, run_dir, resume=resume, progress=progress, plan=plan).run()


__all__ = ["Trainer", "check_run_folder", "saved_plan", "train", "truncate_log"]
