"""Training samples: an image with K of its prompts, cropped to the patch, augmented, and the K targets.

Cases are prepared once (loaded, RAS, resampled, z-scored): in memory (:class:`PreparedCase`), or saved to the
preprocessed cache on disk and referenced (``data.preprocessed.CachedCase``), in which case an item loads its
case's arrays when it is drawn, so memory does not grow with the number of cases. Each item's randomness is
drawn from ``(seed, epoch, index)``, so a resumed, distributed or multi-worker run sees exactly the samples an
uninterrupted single-process run would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.transforms import (
    RandCropByPosNegLabeld,
    RandGaussianNoise,
    RandScaleIntensity,
    RandShiftIntensity,
    RandSpatialCropd,
    SpatialPad,
)
from torch import Tensor

from medtextseg.data.layout import CaseRecord, PromptRecord
from medtextseg.data.prompts import swap_left_right
from medtextseg.data.slices import axial_slice, draw_slice
from medtextseg.data.transforms import coordinate_channels, preparation
from medtextseg.data.vocabulary import PromptVocabulary

if TYPE_CHECKING:
    from medtextseg.data.preprocessed import CachedCase


@dataclass
class PreparedCase:
    """A case in model space. image: [C, *spatial] float32 z-scored; label: [*spatial] int64 or None;
    masks: mask-file targets by path, [*spatial] bool."""

    case: str
    image: Tensor
    label: Tensor | None
    masks: dict[Path, Tensor]
    prompts: list[PromptRecord]

    def target(self, prompt: PromptRecord) -> Tensor:
        """The prompt's binary target [*spatial] bool (all False for an absent target)."""
        if isinstance(prompt.target, Path):
            return self.masks[prompt.target]
        if not prompt.target:
            return torch.zeros(self.image.shape[1:], dtype=torch.bool)
        return torch.isin(self.label, torch.tensor(prompt.target, dtype=self.label.dtype))

    def load(self) -> PreparedCase:
        """The case itself (already in memory); a ``CachedCase`` loads its arrays here."""
        return self


def prepare_case(case: CaseRecord, spacing: list[float] | None, spatial_dims: int,
                 normalization: Sequence[Any] | None = None) -> PreparedCase:
    """Load ``case`` through ``transforms.preparation`` (RAS, ``spacing``, z-score or ``normalization`` per
    channel): image [C, *spatial] float32,
    label [*spatial] int64 (None without a label file), one [*spatial] bool mask per mask-file target."""
    mask_paths = sorted({p.target for p in case.prompts if isinstance(p.target, Path)})
    label_keys = (["label"] if case.label_path else []) + [f"mask{i}" for i in range(len(mask_paths))]
    data = {"image": [str(p) for p in case.image_paths]}
    if case.label_path:
        data["label"] = str(case.label_path)
    data.update({f"mask{i}": str(p) for i, p in enumerate(mask_paths)})
    out = preparation(spacing, label_keys, normalization)(data)

    def spatial(t: Tensor) -> Tensor:
        t = t.as_tensor() if hasattr(t, "as_tensor") else t
        return t[..., 0] if spatial_dims == 2 else t

    image = spatial(out["image"]).float().contiguous()
    label = spatial(out["label"][0]).round().long() if case.label_path else None
    masks = {p: spatial(out[f"mask{i}"][0]) > 0.5 for i, p in enumerate(mask_paths)}
    return PreparedCase(case.case, image, label, masks, case.prompts)


def random_patch(arrays: Mapping[str, Tensor], patch_size: Sequence[int], seed: int,
                 foreground: Tensor | None = None, pad_values: Mapping[str, float] | None = None) -> dict[str, Tensor]:
    """The same training patch of each of ``arrays`` (channel-first, one spatial shape), cut by MONAI: each is
    padded (centred, with zeros or ``pad_values[key]``) to ``patch_size`` where it is smaller, then the patch is
    centred 2 times in 3 on a voxel of ``foreground`` [1, *spatial] and 1 in 3 on a voxel outside it
    (``RandCropByPosNegLabeld``: nnU-Net's foreground oversampling), or placed anywhere (``RandSpatialCropd``)
    without a foreground voxel. ``seed`` decides the patch: the same seed cuts the same window."""
    values = pad_values or {}
    data = {key: SpatialPad(patch_size, value=values.get(key, 0))(array) for key, array in arrays.items()}
    if foreground is not None and foreground.any():
        data["foreground"] = SpatialPad(patch_size)(foreground)
        cut = RandCropByPosNegLabeld(list(arrays), "foreground", patch_size, pos=2, neg=1, num_samples=1,
                                     allow_smaller=False).set_random_state(seed)(data)[0]
    else:
        cut = RandSpatialCropd(list(arrays), patch_size, random_size=False).set_random_state(seed)(data)
    return {key: cut[key].as_tensor() if hasattr(cut[key], "as_tensor") else cut[key] for key in arrays}


def mirror_left_right(arrays: Sequence[Tensor], texts: Sequence[str]) -> tuple[list[Tensor], list[str]]:
    """The flip augmentation: ``arrays`` (channel-first) mirrored along spatial axis 0, which is the patient's
    left-right in RAS, and ``texts`` with left and right swapped, so that the words follow the anatomy."""
    return [array.flip(1) for array in arrays], [swap_left_right(text) for text in texts]


def augment_intensity(image: Tensor, rng: np.random.Generator) -> Tensor:
    """MONAI's intensity augmentation (scale, shift, Gaussian noise), each seeded from ``rng``."""
    for transform in (RandScaleIntensity(0.1, prob=0.5), RandShiftIntensity(0.1, prob=0.5),
                      RandGaussianNoise(prob=0.3, std=0.05)):
        transform.set_random_state(int(rng.integers(2**31)))
        image = transform(image)
    return image.as_tensor() if hasattr(image, "as_tensor") else image


class PromptSampleDataset(torch.utils.data.Dataset):
    """Item i: case i with ``prompts_per_image`` prompts drawn by kind weight, as a training sample.

    Returns a dict: ``image`` [C (+ spatial coordinate channels), *patch] float32; ``targets``
    [K, 1, *patch] float32 in {0, 1}; ``prompts`` list of K strings (left/right swapped when the sample
    was mirrored); ``kinds`` list of K.

    With a ``vocabulary`` (prompt sampling), a chosen prompt that has a ``class_name`` is reworded by
    ``vocabulary.render`` with the item's own generator: reproducible by seed, different per sample and step.
    With ``structured`` (prompt text -> its structured attribute form, ``attribute_prompts``), a chosen prompt
    found there is replaced by that form with probability ``structured_probability``. With ``paraphrases``
    (prompt text -> its rewordings, :func:`medtextseg.data.paraphrase.paraphrase_pool`), a chosen text found
    there is replaced by one of its rewordings with probability ``paraphrase_probability``.

    ``cases`` may be in memory (``PreparedCase``) or references to the preprocessed cache (``CachedCase``, loaded
    when an item is drawn): the items are the same tensors either way.

    Volumes [C, X, Y, Z] with a 2D ``patch_size`` (a 2D model on a 3D dataset): each item is one axial slice of
    its case (:func:`medtextseg.data.slices.draw_slice`: two in three through a chosen prompt's target), with
    ``slice_context`` neighbouring slices on either side as channels, so ``image`` is
    [C * (2 * slice_context + 1) (+ 2 coordinate channels), *patch]; the targets are the slice's, empty for a
    prompt whose target the slice misses.
    """

    def __init__(self, cases: Sequence[PreparedCase | CachedCase], patch_size: list[int], prompts_per_image: int,
                 kind_weights: dict[str, float], flip_left_right: float = 0.5,
                 intensity_augmentation: bool = True, seed: int = 0, coordinates: bool = False,
                 vocabulary: PromptVocabulary | None = None, structured: Mapping[str, str] | None = None,
                 structured_probability: float = 0.0, *,
                 paraphrases: Mapping[str, Sequence[str]] | None = None,
                 paraphrase_probability: float = 0.0, slice_context: int = 0) -> None:
        self.cases = [c for c in cases if c.prompts]
        self.patch_size = list(patch_size)
        self.k = prompts_per_image
        self.kind_weights = kind_weights
        self.flip_left_right = flip_left_right
        self.intensity_augmentation = intensity_augmentation
        self.seed = seed
        self.coordinates = coordinates
        self.vocabulary = vocabulary
        self.structured = structured if structured and structured_probability > 0 else None
        self.structured_probability = structured_probability
        self.paraphrases = paraphrases if paraphrases and paraphrase_probability > 0 else None
        self.paraphrase_probability = paraphrase_probability
        self.slice_context = slice_context
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.cases)

    def _choose_prompts(self, case: PreparedCase, rng: np.random.Generator) -> list[PromptRecord]:
        kinds = [p.kind for p in case.prompts]
        counts = {k: kinds.count(k) for k in set(kinds)}
        weights = np.array([self.kind_weights.get(k, 1.0) / counts[k] for k in kinds], dtype=float)
        if weights.sum() <= 0:
            weights = np.ones(len(kinds))
        weights /= weights.sum()
        distinct = min(self.k, int(np.count_nonzero(weights)))
        chosen = list(rng.choice(len(kinds), size=distinct, replace=False, p=weights))
        if len(chosen) < self.k:  # fewer usable prompts than slots: repeat some
            chosen += list(rng.choice(len(kinds), size=self.k - len(chosen), replace=True, p=weights))
        return [case.prompts[i] for i in chosen]

    def _reworded(self, text: str, rng: np.random.Generator) -> str:
        rewordings = self.paraphrases.get(text)
        if not rewordings or rng.random() >= self.paraphrase_probability:
            return text
        return rewordings[int(rng.integers(len(rewordings)))]

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        case = self.cases[index].load()  # a reference reads its arrays now, in the worker that draws the item
        prompts = self._choose_prompts(case, rng)
        targets = torch.stack([case.target(p) for p in prompts]).float()  # [K, *spatial]
        image = case.image
        if image.ndim - 1 == len(self.patch_size) + 1:  # a volume for a 2D model: one axial slice of it
            index = draw_slice(targets, rng)
            image, targets = axial_slice(image, index, self.slice_context), targets[..., index]
        channels = image.shape[0]
        coordinates = coordinate_channels(image.shape[1:]) if self.coordinates else image[:0]
        stacked = torch.cat([image, coordinates, targets])  # cropped together: coordinates stay whole-image
        first_target = channels + coordinates.shape[0]
        seed = int(rng.integers(2**31))
        present = [i for i in range(len(prompts)) if targets[i].any()]
        foreground = None
        if present:
            # Two crops in three are centred on a voxel of ONE prompt's target, drawn in turn, as nnU-Net
            # oversamples foreground: centred on the union, a patch smaller than the image would keep showing
            # the largest target and rarely the small one another prompt names. (The draw uses the crop's own
            # seed, so the item's other random choices are those of the union-centred sampler before it.)
            foreground = targets[present[int(np.random.default_rng(seed).integers(len(present)))]][None]
        stacked = random_patch({"stacked": stacked}, self.patch_size, seed, foreground)["stacked"]
        image, coordinates = stacked[:channels], stacked[channels:first_target]
        targets = stacked[first_target:]
        texts = [p.prompt for p in prompts]
        if self.vocabulary is not None:  # reworded before the flip, so that the flip swaps the new words
            texts = [self.vocabulary.render(p.class_name, rng) if p.class_name else t
                     for p, t in zip(prompts, texts, strict=True)]
        if self.structured is not None:  # draws only when on, so the other runs keep their random stream
            texts = [self.structured[p.prompt] if p.prompt in self.structured
                     and rng.random() < self.structured_probability else t for p, t in zip(prompts, texts, strict=True)]
        if self.paraphrases is not None:  # also drawn only when on
            texts = [self._reworded(t, rng) for t in texts]
        if rng.random() < self.flip_left_right:
            # the coordinates are not mirrored: they say where patient right is, whatever the anatomy
            (image, targets), texts = mirror_left_right([image, targets], texts)
        if self.intensity_augmentation:
            image = augment_intensity(image, rng)
        image = torch.cat([image, coordinates]) if self.coordinates else image
        return {"image": image.float().contiguous(), "targets": targets[:, None].contiguous(),
                "prompts": texts, "kinds": [p.kind for p in prompts]}


def collate_prompt_samples(items: list[dict]) -> dict:
    """Batch N items: ``image`` [N, C, *patch]; ``targets`` [N*K, 1, *patch]; ``prompts`` N*K strings;
    ``image_index`` [N*K] long, the image row of each prompt."""
    counts = [len(item["prompts"]) for item in items]
    return {
        "image": torch.stack([item["image"] for item in items]),
        "targets": torch.cat([item["targets"] for item in items]),
        "prompts": [p for item in items for p in item["prompts"]],
        "kinds": [k for item in items for k in item["kinds"]],
        "image_index": torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts)),
    }
