"""Training: a config in, a run folder out (resolved config, JSONL log, ``last.pt`` / ``best.pt``).

The loop is step-based and deterministic by seed. A killed run resumes from its last checkpoint with
``resume=True`` and continues exactly where it stopped (same samples, same optimiser and RNG state).
Under ``torchrun`` the model is wrapped in DistributedDataParallel, each rank trains on its share of
the images (DistributedSampler), and rank 0 validates, logs and writes checkpoints.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from medtextseg.config import Config
from medtextseg.data.attribute_prompts import attribute_prompt_texts
from medtextseg.data.dataset import PreparedCase, PromptSampleDataset, collate_prompt_samples
from medtextseg.data.folds import apply_fold
from medtextseg.data.layout import load_dataset, verify_dataset
from medtextseg.data.paraphrase import paraphrase_pool
from medtextseg.data.planning import PLAN_FILE, Plan, check_config_fits_dataset
from medtextseg.data.preprocessed import PreprocessedCases, preprocess_cases
from medtextseg.data.prompts import swap_left_right
from medtextseg.data.sparse_labels import IGNORE_LABEL
from medtextseg.data.vocabulary import PromptVocabulary
from medtextseg.losses.segmentation import build_loss
from medtextseg.models.factory import count_parameters, create_model
from medtextseg.text.cache import TextEmbeddingCache, cached_text_encoder
from medtextseg.training.checkpoint import load_checkpoint, save_checkpoint
from medtextseg.training.distributed import (
    DistributedContext,
    decided_by_rank_0,
    init_distributed,
    shutdown_distributed,
)
from medtextseg.training.optimization import LearningRateFactor, build_optimizer
from medtextseg.training.progress import StepProgress
from medtextseg.training.schedule import LossWeightSchedule
from medtextseg.training.transfer import transfer_weights
from medtextseg.training.validation import validation_dice
from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.folder_lock import folder_lock

WHITENING_CHUNK = 256  # texts encoded and stacked at a time to fit the text whitening (model.text_whitening)


def text_cache_for(config: Config) -> TextEmbeddingCache:
    cache_dir = config.text.cache_dir if config.text.cache_dir is not None else "default"
    return cached_text_encoder(config.text.encoder, config.text.max_tokens, cache_dir, config.text.memory_prompts,
                               config.text.encoder_kind)


def preprocessed(layout, case_ids: list[str], config: Config, progress: bool, label: str = "") -> PreprocessedCases:
    """References to ``case_ids`` in the preprocessed cache at ``config.data.spacing`` (``data.cache_dir``),
    the missing ones prepared into it first; ``label`` names them in the progress bars."""
    return preprocess_cases(layout, case_ids, config.data.spacing, config.data.cache_dir, progress, label,
                            config.data.normalization)


def prepare_cases(layout, case_ids: list[str], config: Config, progress: bool,
                  description: str = "") -> list[PreparedCase]:
    """``case_ids`` prepared (through the preprocessed cache) and loaded into memory: image [C, *spatial]
    float32, label [*spatial] int64, masks [*spatial] bool. For a few cases (validation, tests); training reads
    its cases lazily (:func:`preprocessed`). ``description`` names the cases in the progress bars."""
    return [c.load() for c in preprocessed(layout, case_ids, config, progress, description).cases]


def training_prompt_texts(layout, case_ids: list[str], vocabulary: PromptVocabulary | None,
                          structured: Mapping[str, str] | None = None,
                          paraphrases: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Every text training can feed the model, to encode once before step 1 (never per step): the prompts of
    the cases, every wording of their classes when ``vocabulary`` (prompt sampling) is given, their structured
    forms when ``structured`` is, the rewordings ``paraphrases`` holds for the cases' prompts, and all of these
    with left and right swapped (the flip augmentation)."""
    records = [p for case in case_ids for p in layout.cases[case].prompts]
    prompts = {p.prompt for p in records}
    if paraphrases:
        prompts |= {text for p in prompts for text in paraphrases.get(p, ())}
    if vocabulary is not None:
        classes = {p.class_name for p in records if p.class_name}
        prompts |= {text for name in classes for text in vocabulary.phrasings(name)}
    if structured:
        prompts |= set(structured.values())
    prompts |= {swap_left_right(p) for p in prompts}
    return sorted(prompts)


@dataclass
class TrainingText:
    """What training knows of its text before step 1.

    Attributes:
        cache: the text cache, every training and validation text already encoded (in it or on its disk).
        structured: prompt -> its structured form (``data.structured_prompts``), or None.
        paraphrases: training prompt -> its rewordings (``data.paraphrases``), or None.
        whitening_texts: the texts the text whitening is fitted on (those of the training split).
    """

    cache: TextEmbeddingCache
    structured: dict[str, str] | None
    paraphrases: dict[str, tuple[str, ...]] | None
    whitening_texts: list[str]


def prepare_training_text(config: Config, layout, train_ids: list[str], val_ids: list[str],
                          vocabulary: PromptVocabulary | None, ctx: DistributedContext) -> TrainingText:
    """Every text training and validation can feed the model, encoded once (rank 0 encodes, the others read
    its disk cache), and the texts the whitening is fitted on."""
    seed = config.train.seed
    structured = (attribute_prompt_texts(p for case in train_ids for p in layout.cases[case].prompts)
                  if config.data.structured_prompts > 0 else None)
    # rewordings of the training prompts only: validation keeps the dataset's own words
    paraphrases = (paraphrase_pool((p.prompt for case in train_ids for p in layout.cases[case].prompts),
                                   config.data.paraphrases, seed) if config.data.paraphrases else None)
    cache = text_cache_for(config)
    prompts = training_prompt_texts(layout, train_ids + val_ids, vocabulary, structured, paraphrases)
    if ctx.is_main:  # rank 0 encodes and fills the disk cache; the others then read it
        cache.warm(prompts)
    ctx.barrier()
    cache.warm(prompts)
    return TrainingText(cache, structured, paraphrases,
                        training_prompt_texts(layout, train_ids, vocabulary, structured, paraphrases))


def fit_text_whitening(model: nn.Module, text: TextEmbeddingCache, texts: list[str], device: torch.device) -> None:
    """Fit the model's text whitening (``model.text_whitening``) on every one of ``texts``, streamed through
    running moments in chunks of ``WHITENING_CHUNK`` (one padded [chunk, T, D] batch in memory at a time)."""
    model.fit_text_statistics(text(texts[start:start + WHITENING_CHUNK]).to(device)
                              for start in range(0, len(texts), WHITENING_CHUNK))


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


class Trainer:
    """Trains the model a config describes on ``config.data.root`` into ``run_dir``."""

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
                 plan: Plan | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.progress = progress
        self.ctx: DistributedContext = init_distributed()
        check_run_folder(self.run_dir, resume, config)
        self.config = config
        self.plan = plan if plan is not None else saved_plan(self.run_dir)

    # ---------------------------------------------------------------- set-up
    def _setup(self) -> None:
        config, ctx = self.config, self.ctx
        seed = config.train.seed
        random.seed(seed + ctx.rank)
        np.random.seed(seed + ctx.rank)
        torch.manual_seed(seed + ctx.rank)
        if config.train.num_threads:
            torch.set_num_threads(config.train.num_threads)

        self.layout = apply_fold(load_dataset(config.data.root), config.data)  # data.fold: its train/val
        vocabulary = self._sampling_vocabulary()
        check_config_fits_dataset(config, self.layout)
        if IGNORE_LABEL in self.layout.labels:
            raise MedTextSegError(f"{self.layout.root}: has sparse labels (dataset.json declares {IGNORE_LABEL!r}); "
                                  "train it with a co-training preset: rada, rada_text or rada_single")
        if config.model.networks > 1:
            raise MedTextSegError("config field 'model.networks' > 1 needs cotraining.enabled=true")
        train_ids, val_ids = self.layout.splits.get("train", []), self.layout.splits.get("val", [])
        if not train_ids:
            raise MedTextSegError(f"{self.layout.root}: the train split is empty")
        val_ids = val_ids[: config.train.val_cases]
        # every case a split names, test cases too: evaluation must not meet a bad file after hours of training
        verify_dataset(self.layout, self.layout.cases_in_splits(), progress=self.progress and ctx.is_main)
        show = self.progress and ctx.is_main
        # rank 0 prepares what the cache misses; the others then read it. Training cases stay on disk, referenced
        # (loaded when drawn: memory does not grow with their number); the few validation cases are loaded.
        cases = preprocessed(self.layout, train_ids + val_ids, config, show) if ctx.is_main else None
        ctx.barrier()
        if cases is None:
            cases = preprocessed(self.layout, train_ids + val_ids, config, False)
        self.preprocessed = cases
        self.train_cases = cases.cases[: len(train_ids)]
        self.val_cases = [c.load() for c in cases.cases[len(train_ids):]]

        training_text = prepare_training_text(config, self.layout, train_ids, val_ids, vocabulary, ctx)
        self.text = training_text.cache
        structured, paraphrases = training_text.structured, training_text.paraphrases

        self.model = create_model(config.model, self.text.dim).to(ctx.device)
        if config.model.text_whitening and not self.resume:  # a resumed run has them in its checkpoint
            fit_text_whitening(self.model, self.text, training_text.whitening_texts, ctx.device)
        self.optimizer = build_optimizer(self.model.parameters(), config.train)
        self.lr_factor = LearningRateFactor(config.train)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.loss = build_loss(config.loss)
        self.schedule = LossWeightSchedule(config.loss.schedules)
        self.dataset = PromptSampleDataset(self.train_cases, config.data.patch_size, config.data.prompts_per_image,
                                           config.data.kind_weights, config.data.flip_left_right,
                                           config.data.intensity_augmentation, seed, config.model.coordinates,
                                           vocabulary, structured, config.data.structured_prompts,
                                           paraphrases=paraphrases,
                                           paraphrase_probability=config.data.paraphrase_probability)
        self.sampler = DistributedSampler(self.dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                          shuffle=True, seed=seed, drop_last=True)
        per_rank = len(self.sampler)
        if per_rank < config.train.batch_images:
            raise MedTextSegError(f"config field 'train.batch_images' is {config.train.batch_images} but each "
                                  f"of {ctx.world_size} process(es) has only {per_rank} training images")
        self.steps_per_epoch = per_rank // config.train.batch_images
        self.step = 0
        self.best = -1.0
        if self.resume:
            self._restore(load_checkpoint(self.run_dir / "last.pt"))
        elif config.train.init_from:
            report = transfer_weights(self.model, config.train.init_from, config.train.init_exclude)
            if ctx.is_main:
                write_text_atomic(self.run_dir / "init_transfer.json", json.dumps(report, indent=1))
        self.network = (DistributedDataParallel(self.model, device_ids=[ctx.device] if ctx.device.type == "cuda"
                                                else None) if ctx.enabled else self.model)
        self.use_amp = config.train.amp and ctx.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    def _sampling_vocabulary(self) -> PromptVocabulary | None:
        """The dataset's prompt vocabulary when ``data.prompt_sampling`` is on, else None."""
        if not self.config.data.prompt_sampling:
            return None
        if self.layout.vocabulary is None:
            raise MedTextSegError(f"config field 'data.prompt_sampling' is on but {self.layout.root} has no "
                                  "prompt_vocabulary.json; add one (docs/dataset_format.md) or turn it off")
        return self.layout.vocabulary

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best = int(state["step"]), float(state["best"])
        self.schedule.load_state_dict(state.get("schedule", {}))
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.ctx.is_main:
            truncate_log(self.run_dir / "log.jsonl", self.step)

    # ---------------------------------------------------------------- outputs
    def _state(self, full: bool) -> dict:
        state = {"model": self.model.state_dict(), "config": self.config.model_dump(mode="json"),
                 "text_encoder": self.text.encoder_name, "text_dim": self.text.dim, "step": self.step,
                 "best": self.best, "channel_names": self.layout.channel_names,
                 "spatial_dims": self.layout.spatial_dims, "plan": self.plan.to_dict() if self.plan else None}
        if full:
            state |= {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                      "schedule": self.schedule.state_dict(),
                      "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                              "torch": torch.get_rng_state()}}
        return state

    def _log(self, record: dict) -> None:
        with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _validate_and_save(self) -> dict[str, float]:
        scores: dict[str, float] = {}
        if self.ctx.is_main:
            if self.val_cases:
                scores = validation_dice(self.model, self.val_cases, self.text, self.config.data.patch_size,
                                         self.config.inference.threshold, self.config.inference.presence_threshold,
                                         self.config.inference.min_component_voxels)
                self._log({"step": self.step, **scores})
                self.schedule.observe_validation(scores["val_dice"])
                self.lr_factor.observe_validation(scores["val_dice"])
            # without validation cases the latest weights count as the best
            if not scores or scores["val_dice"] > self.best:
                self.best = scores.get("val_dice", self.best)
                save_checkpoint(self.run_dir / "best.pt", self._state(full=False))
            save_checkpoint(self.run_dir / "last.pt", self._state(full=True))
        self.ctx.barrier()
        # rank 0 validates; every rank must take its decisions (the plateau's rate, early stopping)
        self.lr_factor.set_shared_state(self.ctx.from_main(self.lr_factor.shared_state()))
        return scores

    # ---------------------------------------------------------------- loop
    def _batches(self):
        """Batches from the current step on; the epoch and the position in it follow from the step."""
        while True:
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch)
            self.dataset.epoch = epoch
            batches = list(BatchSampler(self.sampler, self.config.train.batch_images, drop_last=True))
            # items are seeded by (seed, epoch, index): workers load and augment them, but cannot change them
            loader = DataLoader(self.dataset, batch_sampler=batches[skip:], collate_fn=collate_prompt_samples,
                                num_workers=self.config.train.num_workers)
            yield from loader

    def _train_step(self, batch: dict) -> dict[str, float]:
        device = self.ctx.device
        image = batch["image"].to(device, non_blocking=True)
        targets = batch["targets"].to(device, non_blocking=True)
        text = self.text(batch["prompts"]).to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=self.use_amp):
            output = self.network(image, text, batch["image_index"].to(device))
        factors = self.schedule.factors(self.step)
        loss, parts = self.loss(output, targets, factors=factors)
        parts |= {f"factor.{name}": value for name, value in factors.items()}
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):  # skip the update rather than poison the weights
            self.scheduler.step()
            return {"loss": float("nan"), **parts}
        value = float(loss.detach())
        self.schedule.observe_loss(value)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"loss": value, **parts}

    def run(self) -> Path:
        """Train to ``config.train.steps`` and return the run folder."""
        try:
            return self._run()
        finally:
            # Drop the DDP wrapper while the process group is still registered: if its reducer held the
            # group's last reference, the gloo destructor would join worker threads that wait for the GIL
            # this thread holds, and the process would hang at exit (seen in CI, torch 2.13).
            self.network = None
            shutdown_distributed()

    def _run(self) -> Path:
        ctx, config = self.ctx, self.config
        setup_started = time.perf_counter()
        self._setup()  # before the run folder exists: a bad dataset or config leaves nothing behind
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if ctx.is_main:
            write_text_atomic(self.run_dir / "config.yaml", config.to_yaml())
            if self.plan is not None:
                self.plan.save(self.run_dir / PLAN_FILE)
            if not self.resume:
                self._log({"step": 0, "event": "start", "parameters": count_parameters(self.model),
                           "world_size": ctx.world_size, "device": str(ctx.device),
                           "cases_prepared": self.preprocessed.prepared,
                           "cases_read": len(self.preprocessed.cases) - self.preprocessed.prepared,
                           "setup_seconds": round(time.perf_counter() - setup_started, 2)})
        self.model.train()
        total = config.train.steps
        progress = StepProgress("train", total, self.step, self.progress and ctx.is_main)
        started, window = time.perf_counter(), []
        try:
            batches = self._batches()
            while self.step < total and not self.lr_factor.stop:
                parts = self._train_step(next(batches))
                self.step += 1
                window.append(parts["loss"])
                if ctx.is_main and (self.step % 10 == 0 or self.step == total):
                    self._log({"step": self.step, "loss": ctx.mean(float(np.nanmean(window))),
                               **{k: v for k, v in parts.items() if k != "loss"},
                               "lr": self.scheduler.get_last_lr()[0],
                               "seconds": round(time.perf_counter() - started, 2)})
                    window = []
                elif ctx.enabled and (self.step % 10 == 0 or self.step == total):
                    ctx.mean(float(np.nanmean(window)))  # every rank joins the all-reduce
                    window = []
                scores = self._validate_and_save() if self.step % config.train.val_every == 0 or \
                    self.step == total else None
                progress.update(self.step, scores)
        except KeyboardInterrupt:
            if ctx.is_main:  # keep what was learnt: resume continues from here
                save_checkpoint(self.run_dir / "last.pt", self._state(full=True))
            raise
        finally:
            progress.stop()
        if ctx.is_main:
            if self.lr_factor.stop:
                self._log({"step": self.step, "event": "early_stop", "validations_without_improvement":
                           self.lr_factor.stale})
            self._log({"step": self.step, "event": "end", "seconds": round(time.perf_counter() - started, 2),
                       "best_val_dice": self.best})
        return self.run_dir


def saved_plan(run_dir: Path) -> Plan | None:
    """The plan a run folder was started with (its ``plans.json``), or None."""
    return Plan.load(run_dir / PLAN_FILE) if (run_dir / PLAN_FILE).is_file() else None


def train(config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
          plan: Plan | None = None) -> Path:
    """Train ``config`` into ``run_dir`` (continuing its ``last.pt`` when ``resume``); return the run folder.

    ``plan`` (the dataset's plan, whose values ``config`` holds) is saved as ``RUN/plans.json`` and in every
    checkpoint. ``cotraining.enabled`` hands the run to the co-trainer (sparse labels, several networks: RADA),
    which takes no plan: its slice labels must keep their grid.

    The run folder is locked for the whole run (``utils/folder_lock.py``; under torchrun by rank 0, which
    writes): a second training into it stops at once, naming the process that holds it, on every rank. The CLI takes the
    lock before it plans, so that the second stops before measuring the dataset.

    Raises:
        MedTextSegError: the run folder is in use, or a bad config or dataset (nothing is left behind).
    """
    with ExitStack() as stack:
        decided_by_rank_0(lambda: stack.enter_context(folder_lock(run_dir)))  # every rank stops if rank 0 does
        if config.cotraining.enabled:
            from medtextseg.training.cotraining import CoTrainer

            if plan is not None:
                raise MedTextSegError("co-training runs unplanned (sparse slice labels keep their grid); pass no "
                                      "plan")
            return CoTrainer(config, run_dir, resume=resume, progress=progress).run()
        return Trainer(config, run_dir, resume=resume, progress=progress, plan=plan).run()


__all__ = ["Trainer", "load_checkpoint", "text_cache_for", "train"]
