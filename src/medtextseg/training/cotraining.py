"""``CoTrainer``: barely-supervised training of one or more networks from sparse slice labels (RADA).

What one step does, for network k = 1..N in turn (METHODS.md 2.4-2.8):

1. draw its own batch: ``labelled_per_batch`` patches of labelled volumes with the targets and voxel weights
   of its view (``cotraining.views[k]``: the annotated planes it learns from), and ``unlabelled_per_batch``
   patches of unlabelled volumes;
2. supervised loss ``L_sup = (weighted Dice + weighted BCE) / 2`` on the labelled patches. A voxel's target and
   weight come from the annotated slice of one of its view's planes, propagated through the volume
   (``data/label_propagation.py``) and weighted ``alpha(t) ** distance``; the plane with the larger weight wins,
   and the annotated slices themselves weigh 1. ``alpha(t)`` falls to 0 along a cosine, moving supervision
   from the propagated labels to the true slices;
3. cross pseudo supervision: each other network j labels the unlabelled patches (no gradient); voxels whose
   entropy, averaged over ``uncertainty_passes`` noisy copies of the input, is below ``h(t)`` train network k
   by BCE;
4. ``L_k = (1 - 2 beta(t)) L_sup + beta(t) sum_j L_u^j``, one SGD step of network k's own optimiser.

A densely labelled volume (no ``ignore`` voxel) weighs 1 everywhere: the same trainer with one network and
no unlabelled patches is the fully supervised baseline, and on sparse labels without propagation the
sparse-only baseline. Networks with ``model.region_dim`` get their region-aware prototype from the annotated
slices (``models/region_encoder.py``) before step 1. One process only (no torchrun).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtextseg.config import Config, LossConfig
from medtextseg.data.dataset import PreparedCase
from medtextseg.data.label_propagation import propagate_slice_label, slice_distance
from medtextseg.data.layout import DatasetLayout, PromptRecord, load_dataset, verify_dataset
from medtextseg.data.prompts import swap_left_right
from medtextseg.data.sparse_labels import IGNORE_LABEL, annotated_slices, plane_axes
from medtextseg.losses.segmentation import build_loss
from medtextseg.models.factory import count_parameters, create_model
from medtextseg.models.output import ModelOutput
from medtextseg.text.batch import TextBatch
from medtextseg.training.checkpoint import load_checkpoint, save_checkpoint
from medtextseg.training.progress import StepProgress
from medtextseg.training.trainer import check_run_folder, prepare_cases, text_cache_for, truncate_log
from medtextseg.training.validation import validation_dice
from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.errors import MedTextSegError


def sigmoid_rampup(step: float, length: float) -> float:
    """``exp(-5 (1 - min(step, length) / length)^2)``: 0.0067 at 0, 1 from ``length`` on (SGTC's ramps.py)."""
    phase = 1.0 - min(max(step, 0.0), length) / length
    return math.exp(-5.0 * phase * phase)


def alpha_at(step: int, config: Config) -> float:
    """Decay base of the propagated labels' weights: ``alpha0 (1 + cos(pi t_k / T)) / 2``, t_k = step rounded
    down to ``alpha_every``, T = ``train.steps``."""
    every = config.cotraining.alpha_every
    held = every * (step // every)
    return config.cotraining.alpha * 0.5 * (1 + math.cos(math.pi * min(held / config.train.steps, 1.0)))


def beta_at(step: int, config: Config) -> float:
    """Weight of each other network's pseudo labels: ``beta_max`` times the sigmoid ramp, raised stepwise."""
    every = config.cotraining.beta_ramp_every
    return config.cotraining.beta * sigmoid_rampup(every * (step // every), config.cotraining.beta_ramp_steps)


def entropy_threshold(step: int, config: Config) -> float:
    """``h(t) = (0.75 + 0.25 r(t; T)) ln 2``: pseudo labels must be more certain early in training."""
    return (0.75 + 0.25 * sigmoid_rampup(step, config.train.steps)) * math.log(2)


@dataclass
class SparseSupervision:
    """What one view of one labelled volume supervises, before ``alpha`` is applied.

    labels: [P, *spatial] bool, the target from each of the view's P annotated slices (propagated or not);
    distance: [P, *spatial] float, slices from that annotated slice (inf where that slice says nothing);
    dense: the volume has no ignored voxel (weight 1 everywhere, the true target).
    """

    labels: Tensor
    distance: Tensor
    dense: bool

    @cached_property
    def foreground_voxels(self) -> Tensor:
        """[F, 3] long: the voxels some annotated slice labels as target (patches are centred on them)."""
        return torch.nonzero((self.labels & torch.isfinite(self.distance)).any(0))

    def crop(self, window: tuple[slice, ...]) -> SparseSupervision:
        """The same supervision restricted to a patch ``window`` of the volume."""
        return SparseSupervision(self.labels[(slice(None), *window)], self.distance[(slice(None), *window)],
                                 self.dense)

    def target_and_weight(self, alpha: float) -> tuple[Tensor, Tensor]:
        """[*spatial] float target in {0, 1} and weight in [0, 1] at decay base ``alpha``."""
        if self.dense:
            return self.labels[0].float(), torch.ones(self.labels.shape[1:])
        weights = torch.where(torch.isinf(self.distance), 0.0,
                              torch.pow(torch.tensor(alpha), self.distance.clamp(max=1e4)))
        best, plane = weights.max(0)
        target = self.labels.gather(0, plane[None])[0]
        return target.float(), best


def certain_pseudo_labels(network: nn.Module, image: Tensor, text: TextBatch, passes: int, std: float,
                          clip: float, threshold: float) -> tuple[Tensor, Tensor]:
    """Network j's pseudo label of ``image`` [B, C, *p] and where it is certain enough.

    Returns (pseudo [B, 1, *p] float in {0, 1}, mask [B, 1, *p] float): the mask keeps voxels whose binary
    entropy of the mean probability over ``passes`` noisy copies is below ``threshold``. The network stays in its
    mode, as in SGTC's code (in training mode a batch-norm network also updates its running statistics).
    """
    with torch.no_grad():
        pseudo = (network(image, text).logits > 0).float()
        mean = torch.zeros_like(pseudo)
        for _ in range(passes):
            noise = (torch.randn_like(image) * std).clamp(-clip, clip)
            mean += torch.sigmoid(network(image + noise, text).logits.float())
        mean /= passes
        entropy = -(mean * torch.log(mean + 1e-6) + (1 - mean) * torch.log(1 - mean + 1e-6))
    return pseudo, (entropy < threshold).float()


class CoTrainer:
    """Trains ``config.model.networks`` networks on a sparsely (or densely) labelled dataset into ``run_dir``."""

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True) -> None:
        self.config, self.run_dir, self.resume, self.progress = config, Path(run_dir), resume, progress
        check_run_folder(self.run_dir, resume, config)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise MedTextSegError("co-training (cotraining.enabled) runs in one process; start it without torchrun")
        if config.data.spacing is not None:
            raise MedTextSegError("config field 'data.spacing' must be null for co-training: resampling would move "
                                  "the annotated slices off the grid")
        if config.model.coordinates:
            raise MedTextSegError("config field 'model.coordinates' must be false for co-training (the patches "
                                  "carry no coordinate channels)")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # ---------------------------------------------------------------- data
    def _target(self, layout: DatasetLayout) -> tuple[str, tuple[int, ...]]:
        """The prompt text and the label values it names (``cotraining.prompt``, ``cotraining.target_labels``)."""
        config = self.config.cotraining
        if not config.prompt or not config.prompt.strip():
            raise MedTextSegError("config field 'cotraining.prompt' is not set: give the sentence that names the "
                                  "target, e.g. --set \"cotraining.prompt=segment the left atrium\"")
        names = config.target_labels or [n for n in layout.labels if n not in ("background", IGNORE_LABEL)]
        unknown = [n for n in names if n not in layout.labels or n in ("background", IGNORE_LABEL)]
        if unknown:
            raise MedTextSegError(f"config field 'cotraining.target_labels': {unknown[0]!r} is not a foreground "
                                  f"label of {layout.root / 'dataset.json'} ({', '.join(layout.labels)})")
        return config.prompt.strip(), tuple(sorted(layout.labels[n] for n in names))

    def _cache_folder(self) -> Path:
        folder = self.config.cotraining.cache_dir
        return Path(folder) if folder else Path(self.config.data.root) / ".medtextseg_cache" / "propagation"

    def _propagated(self, case: PreparedCase, target: Tensor, axis: int, index: int) -> Tensor:
        """The target propagated from slice ``index`` along ``axis`` through the volume, cached on disk."""
        config = self.config.cotraining
        key = hashlib.sha1(json.dumps([case.case, axis, index, config.propagation_iterations,
                                       int(target.sum()), list(target.shape)]).encode()).hexdigest()[:12]
        path = self._cache_folder() / f"{case.case}_axis{axis}_{index}_{key}.npy"
        if path.is_file():
            return torch.from_numpy(np.load(path))
        label_slice = target.select(axis, index).numpy()
        dense = propagate_slice_label(case.image[0].numpy(), label_slice, axis, index,
                                      iterations=config.propagation_iterations)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, dense)
        tmp.replace(path)
        return torch.from_numpy(dense)

    def _supervision(self, case: PreparedCase, target: Tensor, ignore: Tensor, view: str) -> SparseSupervision:
        if not ignore.any():
            return SparseSupervision(target[None], torch.zeros((1, *target.shape)), dense=True)
        slices = annotated_slices(ignore.numpy())
        labels, distances = [], []
        for axis in plane_axes(view, "cotraining.views"):
            for index in slices.get(axis, []):
                distance = torch.from_numpy(slice_distance(tuple(target.shape), axis, index)).float()
                if self.config.cotraining.propagation:
                    labels.append(self._propagated(case, target, axis, index))
                else:  # only the annotated slice itself speaks
                    labels.append(target)
                    distance = torch.where(distance == 0, 0.0, math.inf)
                distances.append(distance)
        if not labels:  # none of this view's planes is annotated in this volume
            return SparseSupervision(torch.zeros((1, *target.shape), dtype=torch.bool),
                                     torch.full((1, *target.shape), math.inf), dense=False)
        return SparseSupervision(torch.stack(labels), torch.stack(distances), dense=False)

    def _prepare_data(self) -> None:
        config = self.config
        if config.data.fold is not None:  # a fold's val cases would be sparse training volumes
            raise MedTextSegError("config field 'data.fold': co-training takes no folds (its training volumes carry "
                                  "sparse or no labels, and validation needs dense ones); leave data.fold unset")
        layout = load_dataset(config.data.root)
        self.layout = layout
        if layout.spatial_dims != 3 or config.model.spatial_dims != 3:
            raise MedTextSegError(f"{layout.root}: co-training from orthogonal slices needs a 3D dataset and a 3D "
                                  "model (model.spatial_dims=3)")
        if len(layout.channel_names) != config.model.in_channels:
            raise MedTextSegError(f"config field 'model.in_channels' is {config.model.in_channels} but "
                                  f"{layout.root / 'dataset.json'} declares {len(layout.channel_names)} channels")
        train_ids = layout.splits.get("train", [])
        val_ids = layout.splits.get("val", [])[: config.train.val_cases]
        if not train_ids:
            raise MedTextSegError(f"{layout.root}: the train split is empty")
        verify_dataset(layout, layout.cases_in_splits(), progress=self.progress)  # test cases too
        self.prompt, self.values = self._target(layout)
        values = torch.tensor(self.values)
        ignore_value = layout.labels.get(IGNORE_LABEL)
        cases = prepare_cases(layout, train_ids, config, self.progress, "training")
        self.labelled: list[tuple[PreparedCase, list[SparseSupervision]]] = []
        self.unlabelled: list[PreparedCase] = []
        pending = []
        for case in cases:
            if case.label is None:
                self.unlabelled.append(case)
                continue
            ignore = case.label == ignore_value if ignore_value is not None else torch.zeros_like(case.label).bool()
            if ignore.all():
                self.unlabelled.append(case)
            else:
                pending.append((case, torch.isin(case.label, values), ignore))
        if not pending:
            raise MedTextSegError(f"{layout.root}: no training volume has an annotated voxel")
        iterator = pending
        if self.progress:
            from rich.progress import track

            iterator = track(pending, description="propagating slice labels", transient=True)
        for case, target, ignore in iterator:
            self.labelled.append((case, [self._supervision(case, target, ignore, view)
                                         for view in config.cotraining.views]))
        if config.cotraining.unlabelled_per_batch and not self.unlabelled and config.model.networks > 1:
            raise MedTextSegError(f"{layout.root}: no unlabelled training volume for cross pseudo supervision; set "
                                  "cotraining.unlabelled_per_batch=0")
        # validation asks the one question this model is trained to answer
        self.val_cases = [PreparedCase(c.case, c.image, c.label, c.masks,
                                       [PromptRecord(c.case, self.prompt, self.values, "anatomy")])
                          for c in prepare_cases(layout, val_ids, config, self.progress, "validation")
                          if c.label is not None]

    # ---------------------------------------------------------------- batches
    def _window(self, shape: torch.Size, foreground: Tensor | None, rng: np.random.Generator) -> tuple[slice, ...]:
        """A random patch of a ``shape`` volume (all of an axis shorter than the patch); 2 in 3 centred on one
        of the ``foreground`` voxels [F, 3]."""
        patch = self.config.data.patch_size
        if foreground is not None and len(foreground) and rng.random() < 2 / 3:
            centre = foreground[int(rng.integers(len(foreground)))].tolist()
            start = [int(np.clip(c - p // 2, 0, max(s - p, 0))) for c, p, s in zip(centre, patch, shape, strict=True)]
        else:
            start = [int(rng.integers(0, max(s - p, 0) + 1)) for s, p in zip(shape, patch, strict=True)]
        return tuple(slice(b, b + p) for b, p in zip(start, patch, strict=True))

    def _pad(self, array: Tensor) -> Tensor:
        """``array`` [..., *spatial] zero-padded (centred) to the patch size where it is smaller."""
        pads = [max(p - s, 0) for p, s in zip(self.config.data.patch_size, array.shape[-3:], strict=True)]
        if not any(pads):
            return array
        return F.pad(array, [x for pad in reversed(pads) for x in (pad // 2, pad - pad // 2)])

    def _labelled_batch(self, network: int, alpha: float, rng: np.random.Generator) -> tuple[Tensor, Tensor, Tensor,
                                                                                             list[str]]:
        images, targets, weights, prompts = [], [], [], []
        for _ in range(self.config.cotraining.labelled_per_batch):
            case, supervision = self.labelled[int(rng.integers(len(self.labelled)))]
            view = supervision[network]
            # the patch is chosen first: targets and weights are computed for its voxels only, not the volume's
            window = self._window(case.image.shape[1:], view.foreground_voxels, rng)
            target, weight = view.crop(window).target_and_weight(alpha)
            image, target, weight = (self._pad(a) for a in (case.image[(slice(None), *window)], target[None],
                                                            weight[None]))
            image, (target, weight), prompt = self._flip(image, [target, weight], rng)
            images.append(image), targets.append(target), weights.append(weight), prompts.append(prompt)
        return torch.stack(images), torch.stack(targets), torch.stack(weights), prompts

    def _unlabelled_batch(self, rng: np.random.Generator) -> tuple[Tensor, list[str]]:
        images, prompts = [], []
        for _ in range(self.config.cotraining.unlabelled_per_batch):
            case = self.unlabelled[int(rng.integers(len(self.unlabelled)))]
            image = self._pad(case.image[(slice(None), *self._window(case.image.shape[1:], None, rng))])
            image, _, prompt = self._flip(image, [], rng)
            images.append(image), prompts.append(prompt)
        return torch.stack(images), prompts

    def _flip(self, image: Tensor, maps: list[Tensor], rng: np.random.Generator) -> tuple[Tensor, list[Tensor], str]:
        """Random flips along axes 0 (left-right: the prompt's sides are swapped with it) and 1."""
        prompt = self.prompt
        for axis in (0, 1):
            if rng.random() < 0.5:
                image, maps = image.flip(axis + 1), [m.flip(axis + 1) for m in maps]
                if axis == 0:
                    prompt = swap_left_right(prompt)
        return image, maps, prompt

    # ---------------------------------------------------------------- set-up
    def _setup(self) -> None:
        config = self.config
        random.seed(config.train.seed)
        np.random.seed(config.train.seed)
        torch.manual_seed(config.train.seed)
        if config.train.num_threads:
            torch.set_num_threads(config.train.num_threads)
        self._prepare_data()
        self.text = text_cache_for(config)
        self.text.warm(sorted({self.prompt, swap_left_right(self.prompt)}))
        self.model = create_model(config.model, self.text.dim).to(self.device)
        self.members = list(self.model.members) if config.model.networks > 1 else [self.model]
        self.optimizers = [torch.optim.SGD(m.parameters(), lr=config.train.lr, momentum=config.cotraining.momentum,
                                           weight_decay=config.train.weight_decay) for m in self.members]
        supervised = LossConfig(terms={"dice": 0.5, "bce": 0.5}, presence_weight=config.loss.presence_weight,
                                deep_supervision_weights=None)
        self.supervised_loss = build_loss(supervised)
        self.pseudo_loss = build_loss(LossConfig(terms={"bce": 1.0}, presence_weight=0.0,
                                                 deep_supervision_weights=None))
        self.rng = np.random.default_rng(config.train.seed)
        self.step, self.best = 0, -1.0
        if self.resume:
            self._restore(load_checkpoint(self.run_dir / "last.pt"))
        elif config.model.region_dim:
            self._set_region_prototypes()

    def _set_region_prototypes(self) -> None:
        """Network k's prototype: the mean normalised region embedding of its view's annotated slices."""
        from medtextseg.models.region_encoder import create_region_encoder

        encoder, dim = create_region_encoder(self.config.cotraining.region_encoder)
        if dim != self.config.model.region_dim:
            raise MedTextSegError(f"config field 'model.region_dim' is {self.config.model.region_dim} but "
                                  f"cotraining.region_encoder gives {dim}-wide embeddings")
        values = torch.tensor(self.values)
        ignore_value = self.layout.labels.get(IGNORE_LABEL)
        self.region_slices = []
        for member, view in zip(self.members, self.config.cotraining.views, strict=True):
            vectors = []
            for case, _ in self.labelled:
                target = torch.isin(case.label, values).float()
                ignore = case.label == ignore_value if ignore_value is not None else torch.zeros_like(target).bool()
                slices = annotated_slices(ignore.numpy())
                for axis in plane_axes(view, "cotraining.views"):
                    # a dense volume: its largest cross-section stands in for an annotated slice
                    indices = slices.get(axis, []) if ignore.any() else \
                        [int(target.sum(tuple(a for a in range(3) if a != axis)).argmax())]
                    for index in indices:
                        image = case.image[0].select(axis, index)
                        vectors.append(F.normalize(encoder(image[None].expand(3, -1, -1),
                                                           target.select(axis, index)), dim=0))
            if not vectors:
                raise MedTextSegError(f"cotraining.views entry {view!r}: no labelled volume is annotated on these "
                                      "planes, so there is no region to describe")
            member.region_fusion.set_prototype(torch.stack(vectors).mean(0).to(self.device))
            self.region_slices.append(len(vectors))

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self.step, self.best = int(state["step"]), float(state["best"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        self.rng.bit_generator.state = state["rng"]["generator"]
        truncate_log(self.run_dir / "log.jsonl", self.step)

    def _state(self, full: bool) -> dict:
        state = {"model": self.model.state_dict(), "config": self.config.model_dump(mode="json"),
                 "text_encoder": self.text.encoder_name, "text_dim": self.text.dim, "step": self.step,
                 "best": self.best, "channel_names": self.layout.channel_names, "spatial_dims": 3}
        if full:
            state |= {"optimizers": [o.state_dict() for o in self.optimizers],
                      "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                              "torch": torch.get_rng_state(), "generator": self.rng.bit_generator.state}}
        return state

    def _log(self, record: dict) -> None:
        with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    # ---------------------------------------------------------------- loop
    def _network_step(self, k: int, alpha: float, beta: float, threshold: float) -> dict[str, float]:
        config, device = self.config.cotraining, self.device
        member, optimizer = self.members[k], self.optimizers[k]
        image, target, weight, prompts = self._labelled_batch(k, alpha, self.rng)
        others = [j for j in range(len(self.members)) if j != k]
        unlabelled = others and config.unlabelled_per_batch > 0
        if unlabelled:
            image_u, prompts_u = self._unlabelled_batch(self.rng)
            image = torch.cat([image, image_u])
            prompts = prompts + prompts_u
        image, target, weight = image.to(device), target.to(device), weight.to(device)
        text = self.text(prompts).to(device)
        output = member(image, text)
        labelled = target.shape[0]
        head = ModelOutput(logits=output.logits[:labelled],
                            presence=None if output.presence is None else output.presence[:labelled])
        supervised, _ = self.supervised_loss(head, target, weight)
        record = {f"net{k}.supervised": float(supervised.detach())}
        loss = supervised
        if unlabelled:
            rows = torch.arange(labelled, image.shape[0], device=device)
            tail = ModelOutput(logits=output.logits[labelled:])
            pseudo_total, kept = 0.0, []
            for j in others:
                pseudo, mask = certain_pseudo_labels(
                    self.members[j], image[rows], text.index(rows.cpu()).to(device), config.uncertainty_passes,
                    config.noise_std, config.noise_clip, threshold)
                value, _ = self.pseudo_loss(tail, pseudo, mask)
                pseudo_total = pseudo_total + value
                kept.append(float(mask.mean()))
            loss = (1 - 2 * beta) * supervised + beta * pseudo_total
            record |= {f"net{k}.pseudo": float(pseudo_total.detach()), f"net{k}.certain": float(np.mean(kept))}
        optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):  # skip the update rather than poison the weights
            loss.backward()
            torch.nn.utils.clip_grad_norm_(member.parameters(), self.config.train.grad_clip)
            optimizer.step()
        return record

    def _validate_and_save(self) -> dict[str, float]:
        scores: dict[str, float] = {}
        if self.val_cases:
            inference = self.config.inference
            scores = validation_dice(self.model, self.val_cases, self.text, self.config.data.patch_size,
                                     inference.threshold, inference.presence_threshold,
                                     inference.min_component_voxels)
            self._log({"step": self.step, "val_dice": scores["val_dice"]})
        if not scores or scores["val_dice"] > self.best:
            self.best = scores.get("val_dice", self.best)
            save_checkpoint(self.run_dir / "best.pt", self._state(full=False))
        save_checkpoint(self.run_dir / "last.pt", self._state(full=True))
        return scores

    def run(self) -> Path:
        """Train to ``train.steps`` and return the run folder (``best.pt``, ``last.pt``, ``log.jsonl``)."""
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._setup()
        write_text_atomic(self.run_dir / "config.yaml", config.to_yaml())
        if not self.resume:
            record = {"step": 0, "event": "start", "parameters": count_parameters(self.model),
                      "labelled_volumes": len(self.labelled), "unlabelled_volumes": len(self.unlabelled),
                      "prompt": self.prompt, "target": list(self.values), "device": str(self.device)}
            if getattr(self, "region_slices", None):
                record["region_slices"] = self.region_slices
            self._log(record)
        for member in self.members:
            member.train()
        progress = StepProgress("co-train", config.train.steps, self.step, self.progress)
        started = time.perf_counter()
        try:
            while self.step < config.train.steps:
                lr = config.train.lr * config.cotraining.lr_gamma ** (self.step // config.cotraining.lr_step)
                for optimizer in self.optimizers:
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                alpha, beta = alpha_at(self.step, config), beta_at(self.step, config)
                threshold = entropy_threshold(self.step, config)
                record: dict[str, float] = {}
                for k in range(len(self.members)):  # f1, then f2, then f3: each sees the others' latest weights
                    record |= self._network_step(k, alpha, beta, threshold)
                self.step += 1
                if self.step % 10 == 0 or self.step == config.train.steps:
                    self._log({"step": self.step, **record, "alpha": alpha, "beta": beta, "lr": lr,
                               "seconds": round(time.perf_counter() - started, 2)})
                scores = self._validate_and_save() if self.step % config.train.val_every == 0 or \
                    self.step == config.train.steps else None
                progress.update(self.step, scores)
        except KeyboardInterrupt:
            save_checkpoint(self.run_dir / "last.pt", self._state(full=True))  # resume continues from here
            raise
        finally:
            progress.stop()
        self._log({"step": self.step, "event": "end", "seconds": round(time.perf_counter() - started, 2),
                   "best_val_dice": self.best})
        return self.run_dir


__all__ = ["CoTrainer", "SparseSupervision", "alpha_at", "beta_at", "entropy_threshold", "sigmoid_rampup"]
