"""Co-training samples (RADA): volumes with sparse slice labels, what each network's view of their annotated
planes supervises, and the patches a step draws.

A labelled volume gives network k (``cotraining.views[k]``) the targets of its view's annotated slices, each
propagated through the volume (``label_propagation.py``, cached on disk) and weighted ``alpha ** distance``; a
densely labelled volume (no ``ignore`` voxel) weighs 1 everywhere. An unlabelled volume gives images only.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from medtextseg.config import CoTrainingConfig, DataConfig
from medtextseg.data.dataset import PreparedCase, augment_intensity, mirror_left_right, random_patch
from medtextseg.data.label_propagation import propagate_slice_label, slice_distance
from medtextseg.data.layout import DatasetLayout
from medtextseg.data.sparse_labels import IGNORE_LABEL, annotated_slices
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.planes import plane_axes
from medtextseg.utils.progress import progress_bar


@dataclass
class SparseSupervision:
    """What one view of one labelled volume supervises, before ``alpha`` is applied.

    labels: [P, *spatial] bool, the target from each of the view's P annotated slices (propagated or not);
    distance: [P, *spatial] float, slices from that annotated slice (inf where that slice says nothing);
    dense: the volume has no ignored voxel (weight 1 everywhere, the true target; distance 0, inf where a patch
    was padded).
    """

    labels: Tensor
    distance: Tensor
    dense: bool

    @cached_property
    def foreground(self) -> Tensor:
        """[*spatial] bool: the voxels some annotated slice labels as target (patches are centred on them)."""
        return (self.labels & torch.isfinite(self.distance)).any(0)

    @property
    def foreground_voxels(self) -> Tensor:
        """[F, 3] long: the coordinates of :attr:`foreground`."""
        return torch.nonzero(self.foreground)

    def crop(self, window: tuple[slice, ...]) -> SparseSupervision:
        """The same supervision restricted to a patch ``window`` of the volume."""
        return SparseSupervision(self.labels[(slice(None), *window)], self.distance[(slice(None), *window)],
                                 self.dense)

    def target_and_weight(self, alpha: float) -> tuple[Tensor, Tensor]:
        """[*spatial] float target in {0, 1} and weight in [0, 1] at decay base ``alpha``."""
        if self.dense:  # weight 1 but where the patch was padded
            return self.labels[0].float(), torch.isfinite(self.distance[0]).float()
        weights = torch.where(torch.isinf(self.distance), 0.0,
                              torch.pow(torch.tensor(alpha), self.distance.clamp(max=1e4)))
        best, plane = weights.max(0)
        target = self.labels.gather(0, plane[None])[0]
        return target.float(), best


def cotraining_target(layout: DatasetLayout, config: CoTrainingConfig) -> tuple[str, tuple[int, ...]]:
    """The prompt text and the label values it names (``cotraining.prompt``, ``cotraining.target_labels``)."""
    if not config.prompt or not config.prompt.strip():
        raise MedTextSegError("config field 'cotraining.prompt' is not set: give the sentence that names the "
                              "target, e.g. --set \"cotraining.prompt=segment the left atrium\"")
    names = config.target_labels or [n for n in layout.labels if n not in ("background", IGNORE_LABEL)]
    unknown = [n for n in names if n not in layout.labels or n in ("background", IGNORE_LABEL)]
    if unknown:
        raise MedTextSegError(f"config field 'cotraining.target_labels': {unknown[0]!r} is not a foreground "
                              f"label of {layout.root / 'dataset.json'} ({', '.join(layout.labels)})")
    return config.prompt.strip(), tuple(sorted(layout.labels[n] for n in names))


class SparseCases:
    """The training volumes of a co-training run: the labelled ones with one :class:`SparseSupervision` per
    view, the unlabelled ones, and the patches of a step.

    Patches come from the standard samples' MONAI pipeline (``data/dataset.py``): padded, cut 2 times in 3
    around the view's labelled foreground, flipped left-right with the prompt's sides swapped.

    Args:
        layout: the dataset; cases: its training cases, prepared (RAS, not resampled); target: the prompt and
        the label values it names (:func:`cotraining_target`); config: ``cotraining``; data: ``data`` (the patch
        size and augmentation); progress: show the propagation's progress bar.
    """

    def __init__(self, layout: DatasetLayout, cases: Sequence[PreparedCase], target: tuple[str, tuple[int, ...]],
                 config: CoTrainingConfig, data: DataConfig, progress: bool = False) -> None:
        self.layout, self.config, self.data = layout, config, data
        self.prompt, self.values = target
        values = torch.tensor(self.values)
        self.labelled: list[tuple[PreparedCase, list[SparseSupervision]]] = []
        self.unlabelled: list[PreparedCase] = []
        pending = []
        for case in cases:
            ignore = self.ignore_mask(case)
            if case.label is None or ignore.all():
                self.unlabelled.append(case)
            else:
                pending.append((case, torch.isin(case.label, values), ignore))
        if not pending:
            raise MedTextSegError(f"{layout.root}: no training volume has an annotated voxel")
        with progress_bar(pending, "propagating slice labels", show=progress) as bar:
            for case, target, ignore in bar:
                self.labelled.append((case, [self._supervision(case, target, ignore, view)
                                             for view in config.views]))

    def ignore_mask(self, case: PreparedCase) -> Tensor:
        """[*spatial] bool: the voxels nobody annotated (all of an unlabelled volume)."""
        value = self.layout.labels.get(IGNORE_LABEL)
        if case.label is None:
            return torch.ones(case.image.shape[1:], dtype=torch.bool)
        return case.label == value if value is not None else torch.zeros_like(case.label).bool()

    def _propagated(self, case: PreparedCase, target: Tensor, axis: int, index: int) -> Tensor:
        """The target propagated from slice ``index`` along ``axis`` through the volume, cached on disk."""
        folder = Path(self.config.cache_dir) if self.config.cache_dir else \
            self.layout.root / ".medtextseg_cache" / "propagation"
        key = hashlib.sha1(json.dumps([case.case, axis, index, self.config.propagation_iterations,
                                       int(target.sum()), list(target.shape)]).encode()).hexdigest()[:12]
        path = folder / f"{case.case}_axis{axis}_{index}_{key}.npy"
        if path.is_file():
            return torch.from_numpy(np.load(path))
        label_slice = target.select(axis, index).numpy()
        dense = propagate_slice_label(case.image[0].numpy(), label_slice, axis, index,
                                      iterations=self.config.propagation_iterations)
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
                if self.config.propagation:
                    labels.append(self._propagated(case, target, axis, index))
                else:  # only the annotated slice itself speaks
                    labels.append(target)
                    distance = torch.where(distance == 0, 0.0, math.inf)
                distances.append(distance)
        if not labels:  # none of this view's planes is annotated in this volume
            return SparseSupervision(torch.zeros((1, *target.shape), dtype=torch.bool),
                                     torch.full((1, *target.shape), math.inf), dense=False)
        return SparseSupervision(torch.stack(labels), torch.stack(distances), dense=False)

    # ---------------------------------------------------------------- patches
    def labelled_batch(self, view: int, alpha: float, rng: np.random.Generator
                       ) -> tuple[Tensor, Tensor, Tensor, list[str]]:
        """``cotraining.labelled_per_batch`` patches of labelled volumes as view ``view`` supervises them at decay
        base ``alpha``: images [B, C, *patch], targets and weights [B, 1, *patch], B prompts."""
        images, targets, weights, prompts = [], [], [], []
        for _ in range(self.config.labelled_per_batch):
            case, supervision = self.labelled[int(rng.integers(len(self.labelled)))]
            seen = supervision[view]
            # the labels and distances are cut with the image (a padded voxel is one no slice speaks for):
            # targets and weights are computed for the patch's voxels only, not the volume's
            patch = random_patch({"image": case.image, "labels": seen.labels, "distance": seen.distance},
                                 self.data.patch_size, int(rng.integers(2**31)), seen.foreground[None],
                                 pad_values={"distance": math.inf})
            target, weight = SparseSupervision(patch["labels"], patch["distance"], seen.dense).target_and_weight(alpha)
            image, (target, weight), prompt = self._augmented(patch["image"], [target[None], weight[None]], rng)
            images.append(image), targets.append(target), weights.append(weight), prompts.append(prompt)
        return torch.stack(images), torch.stack(targets), torch.stack(weights), prompts

    def unlabelled_batch(self, rng: np.random.Generator) -> tuple[Tensor, list[str]]:
        """``cotraining.unlabelled_per_batch`` patches of unlabelled volumes: images [B, C, *patch], B prompts."""
        images, prompts = [], []
        for _ in range(self.config.unlabelled_per_batch):
            case = self.unlabelled[int(rng.integers(len(self.unlabelled)))]
            patch = random_patch({"image": case.image}, self.data.patch_size, int(rng.integers(2**31)))
            image, _, prompt = self._augmented(patch["image"], [], rng)
            images.append(image), prompts.append(prompt)
        return torch.stack(images), prompts

    def _augmented(self, image: Tensor, maps: list[Tensor], rng: np.random.Generator
                   ) -> tuple[Tensor, list[Tensor], str]:
        """The standard samples' augmentation (``data/dataset.py``): a left-right flip with probability
        ``data.flip_left_right`` that swaps the prompt's sides, then ``data.intensity_augmentation``."""
        prompt = [self.prompt]
        if rng.random() < self.data.flip_left_right:
            (image, *maps), prompt = mirror_left_right([image, *maps], prompt)
        if self.data.intensity_augmentation:
            image = augment_intensity(image, rng)
        return image, maps, prompt[0]


__all__ = ["SparseCases", "SparseSupervision", "cotraining_target"]
