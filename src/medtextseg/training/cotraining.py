"""RADA's dataset reading, schedules, pseudo labels and region prototypes, used by the co-training step
(``training/steps/cotraining.py``; METHODS.md 2.4-2.8).

What one step does, for network k = 1..N in turn:

1. draw its own batch (``data/sparse_dataset.py``): ``labelled_per_batch`` patches of labelled volumes with the
   targets and voxel weights of its view (``cotraining.views[k]``: the annotated planes it learns from), and
   ``unlabelled_per_batch`` patches of unlabelled volumes;
2. supervised loss ``L_sup``, the terms of ``loss`` (RADA: ``(weighted Dice + weighted BCE) / 2``) on the
   labelled patches, voxel-weighted. A voxel's target and
   weight come from the annotated slice of one of its view's planes, propagated through the volume
   (``data/label_propagation.py``) and weighted ``alpha(t) ** distance``; the plane with the larger weight wins,
   and the annotated slices themselves weigh 1. ``alpha(t)`` falls to 0 along a cosine, moving supervision
   from the propagated labels to the true slices;
3. cross pseudo supervision: each other network j labels the unlabelled patches (no gradient); voxels whose
   entropy, averaged over ``uncertainty_passes`` noisy copies of the input, is below ``h(t)`` train network k
   by ``cotraining.pseudo_loss`` (RADA: BCE);
4. ``L_k = (1 - 2 beta(t)) L_sup + beta(t) sum_j L_u^j``, one SGD step of network k's own optimiser.

A densely labelled volume (no ``ignore`` voxel) weighs 1 everywhere: the same step with one network and
no unlabelled patches is the fully supervised baseline, and on sparse labels without propagation the
sparse-only baseline. Networks whose dynamic head fuses a region prototype (``model.blocks.dynamic_head.region_dim``)
get it from the annotated slices (``models/region_encoder.py``) before step 1. One process only (no torchrun).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtextseg.config import Config, CoTrainingConfig
from medtextseg.config.blocks import DynamicHeadOptions
from medtextseg.data.dataset import PreparedCase
from medtextseg.data.layout import DatasetLayout, PromptRecord, load_dataset
from medtextseg.data.sparse_dataset import SparseCases, cotraining_target
from medtextseg.data.sparse_labels import annotated_slices
from medtextseg.models.output import ModelOutput
from medtextseg.text.batch import TextBatch
from medtextseg.training.inputs import prepare_cases, training_splits
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.planes import plane_axes


def sparse_training_cases(config: Config, progress: bool) -> tuple[DatasetLayout, SparseCases, list[PreparedCase]]:
    """Read ``data.root`` for co-training: (the dataset, its training volumes with the supervision of each
    view, the dense validation volumes loaded, each asked the one question this model is trained to answer).

    Raises:
        MedTextSegError: a fold is set, the dataset or model is not 3D, the channels differ from the dataset's,
            or cross pseudo supervision has no unlabelled volume.
    """
    if config.data.fold is not None:  # a fold's val cases would be sparse training volumes
        raise MedTextSegError("config field 'data.fold': co-training takes no folds (its training volumes carry "
                              "sparse or no labels, and validation needs dense ones); leave data.fold unset")
    layout = load_dataset(config.data.root)
    if layout.spatial_dims != 3 or config.model.spatial_dims != 3:
        raise MedTextSegError(f"{layout.root}: co-training from orthogonal slices needs a 3D dataset and a 3D "
                              "model (model.spatial_dims=3)")
    if len(layout.channel_names) != config.model.in_channels:
        raise MedTextSegError(f"config field 'model.in_channels' is {config.model.in_channels} but "
                              f"{layout.root / 'dataset.json'} declares {len(layout.channel_names)} channels")
    train_ids, val_ids = training_splits(layout, config, progress)
    target = cotraining_target(layout, config.cotraining)  # before any case is prepared
    cases = SparseCases(layout, prepare_cases(layout, train_ids, config, progress, "training"), target,
                        config.cotraining, config.data, progress)
    if config.cotraining.unlabelled_per_batch and not cases.unlabelled and config.model.networks > 1:
        raise MedTextSegError(f"{layout.root}: no unlabelled training volume for cross pseudo supervision; set "
                              "cotraining.unlabelled_per_batch=0")
    val_cases = [PreparedCase(c.case, c.image, c.label, c.masks,
                              [PromptRecord(c.case, cases.prompt, cases.values, "anatomy")])
                 for c in prepare_cases(layout, val_ids, config, progress, "validation") if c.label is not None]
    return layout, cases, val_cases


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


def cross_pseudo_loss(others: Sequence[nn.Module], image: Tensor, text: TextBatch, logits: Tensor,
                      loss: Callable[..., tuple[Tensor, dict]], config: CoTrainingConfig,
                      threshold: float) -> tuple[Tensor, float]:
    """``sum_j L_u^j``: ``loss`` of network k's ``logits`` [U, 1, *p] on the unlabelled patches ``image``
    [U, C, *p] against each other network's certain pseudo labels (:func:`certain_pseudo_labels`); and the mean
    fraction of voxels certain enough to count."""
    total, kept = torch.zeros((), device=logits.device), []
    for network in others:
        pseudo, mask = certain_pseudo_labels(network, image, text, config.uncertainty_passes, config.noise_std,
                                             config.noise_clip, threshold)
        value, _ = loss(ModelOutput(logits=logits), pseudo, mask)
        total = total + value
        kept.append(float(mask.mean()))
    return total, sum(kept) / len(kept)


def region_dim(config: Config) -> int:
    """Width of the region-aware prototype the networks' dynamic heads fuse with the text (0: none)."""
    head = config.model.blocks.get(DynamicHeadOptions.kind)
    return head.region_dim if isinstance(head, DynamicHeadOptions) else 0


def region_prototypes(config: Config, cases: SparseCases) -> list[tuple[Tensor, int]]:
    """Per network, its region prototype (the mean normalised region embedding of the annotated slices of its
    ``cotraining.prompt_views`` entry, by default its supervision view) and how many slices it averages."""
    from medtextseg.models.region_encoder import create_region_encoder

    encoder, dim = create_region_encoder(config.cotraining.region_encoder)
    if dim != region_dim(config):
        raise MedTextSegError(f"config field 'model.blocks.dynamic_head.region_dim' is {region_dim(config)} but "
                              f"cotraining.region_encoder gives {dim}-wide embeddings")
    values = torch.tensor(cases.values)
    prototypes = []
    field = "prompt_views" if config.cotraining.prompt_views is not None else "views"
    for view in getattr(config.cotraining, field):
        vectors = []
        for case, _ in cases.labelled:
            target = torch.isin(case.label, values).float()
            ignore = cases.ignore_mask(case)
            slices = annotated_slices(ignore.numpy())
            for axis in plane_axes(view, f"cotraining.{field}"):
                # a dense volume: its largest cross-section stands in for an annotated slice
                indices = slices.get(axis, []) if ignore.any() else \
                    [int(target.sum(tuple(a for a in range(3) if a != axis)).argmax())]
                for index in indices:
                    image = case.image[0].select(axis, index)
                    vectors.append(F.normalize(encoder(image[None].expand(3, -1, -1), target.select(axis, index)),
                                               dim=0))
        if not vectors:
            raise MedTextSegError(f"cotraining.{field} entry {view!r}: no labelled volume is annotated on these "
                                  "planes, so there is no region to describe")
        prototypes.append((torch.stack(vectors).mean(0), len(vectors)))
    return prototypes


__all__ = ["alpha_at", "beta_at", "certain_pseudo_labels", "cross_pseudo_loss", "entropy_threshold",
           "region_dim", "region_prototypes", "sigmoid_rampup", "sparse_training_cases"]
