"""The text-blind reference every accuracy comparison carries: a MONAI ``UNet`` trained for the same wall time on
the same data, scored on the same prompts with the same metrics (2D or 3D, from the config's
``model.spatial_dims``).

What it learns, from the data (:func:`reference_task`):

* **lesions** (data with lesion prompts): the union of every lesion of a case (sigmoid); it answers every lesion
  prompt (``single``, ``all``, ``absent``) with that union and cannot answer anatomy prompts;
* **labels** (data without lesion prompts, e.g. ``aal``): every label of ``dataset.json`` at once (softmax); it
  answers each prompt with the union of the labels the prompt names, which the text-blind model is told;
* **named labels** (``target_labels``, e.g. RADA's one structure): those labels against the rest (sigmoid).

Sparse labels (a dataset with an ``ignore`` label, :mod:`medtextseg.data.sparse_labels`) train on the annotated
voxels only: MONAI's ``MaskedDiceLoss`` plus a cross-entropy weighted by the same mask, volumes without an annotated
voxel left out, and the output's bias set at the start to the classes' frequencies among the annotated voxels
(RetinaNet's prior initialisation), so that voxels no annotation reaches do not start at one half. Measured on three
annotated slices per labelled volume (``benchmarks/bench_rada.py``), this reference answers the target over most of
the volume away from the slices all the same: it starts from the prior (test Dice 0.85 after 60 steps on a small
set) and drifts away from it as it trains (0.14 after 300; 0.07 without the prior).

It trains with MONAI's parts (residual units, Dice + CE, positive/negative crops 2:1, left-right flips of lesion
data) at the planned spacing and patch of the run it is compared with, in the precision that run trained in.
``benchmarks/monai_reference.py`` is its command line, and a study with ``reference: true`` carries it as a
configuration.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.losses import MaskedDiceLoss
from monai.networks.nets import UNet
from monai.transforms import Compose, Invertd, RandCropByPosNegLabeld, RandFlipd, SpatialPadd

from medtextseg.config import Config
from medtextseg.data.dataset import PreparedCase, prepare_case
from medtextseg.data.io import read_array, read_geometry
from medtextseg.data.layout import CaseRecord, DatasetLayout, load_dataset
from medtextseg.data.sparse_labels import IGNORE_LABEL
from medtextseg.data.transforms import preparation
from medtextseg.evaluation.metrics import segmentation_metrics
from medtextseg.evaluation.runner import prompt_target, result_group
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.precision import autocast, mixed_precision_dtype

LESION_KINDS = ("single", "all", "absent")
#: The name a study and a benchmark table give the reference.
REFERENCE_NAME = "MONAI UNet (text-blind)"


@dataclass(frozen=True)
class ReferenceTask:
    """What the text-blind model learns. ``mode``: ``lesions`` (one sigmoid channel), ``labels`` (softmax over
    label values 0 .. ``classes`` - 1) or ``named`` (one sigmoid channel: ``values`` against the rest);
    ``ignore``: the label value of unannotated voxels, None for dense labels."""

    mode: str
    values: tuple[int, ...] = ()
    classes: int = 2
    ignore: int | None = None

    @property
    def out_channels(self) -> int:
        return self.classes if self.mode == "labels" else 1


def has_lesion_prompts(data: Path) -> bool:
    return any(p.kind in LESION_KINDS for case in load_dataset(data).cases.values() for p in case.prompts)


def reference_task(layout: DatasetLayout, target_labels: Sequence[str] | None = None) -> ReferenceTask:
    """The task of :func:`train_unet` on ``layout``: the ``target_labels`` when named, else lesions where the
    data has lesion prompts, else every label."""
    ignore = layout.labels.get(IGNORE_LABEL)
    if target_labels:
        unknown = [name for name in target_labels if name not in layout.labels]
        if unknown:
            raise MedTextSegError(f"reference: target labels {unknown} are not in dataset.json's labels "
                                  f"{sorted(layout.labels)}")
        return ReferenceTask("named", tuple(layout.labels[name] for name in target_labels), ignore=ignore)
    if any(p.kind in LESION_KINDS for case in layout.cases.values() for p in case.prompts):
        return ReferenceTask("lesions", ignore=ignore)
    values = [value for name, value in layout.labels.items() if name != IGNORE_LABEL]
    return ReferenceTask("labels", classes=max(values) + 1, ignore=ignore)


def case_target(prepared: PreparedCase, task: ReferenceTask) -> torch.Tensor:
    """What the UNet learns for a case [1, *spatial]: float 0/1 (lesions, named labels) or long label values
    (labels). Unannotated voxels hold 0; :func:`annotated` says which they are."""
    if task.mode == "labels":
        label = prepared.label.clone()
        if task.ignore is not None:
            label[label == task.ignore] = 0
        return label[None]
    if task.mode == "named":
        return torch.isin(prepared.label, torch.tensor(task.values))[None].float()
    union = torch.zeros(prepared.image.shape[1:], dtype=torch.bool)
    for prompt in prepared.prompts:
        if prompt.kind in ("single", "all"):
            union |= prepared.target(prompt)
    return union[None].float()


def annotated(prepared: PreparedCase, task: ReferenceTask) -> torch.Tensor:
    """Where the case is annotated [1, *spatial] float 0/1: everywhere for dense labels."""
    if task.ignore is None or prepared.label is None:
        return torch.ones((1, *prepared.image.shape[1:]))
    return (prepared.label != task.ignore)[None].float()


def training_seconds(run: Path) -> float:
    """Wall time of a finished training, from its log."""
    for line in reversed((run / "log.jsonl").read_text().splitlines()):
        record = json.loads(line)
        if record.get("event") == "end":
            return float(record["seconds"])
    raise MedTextSegError(f"{run}: training has not finished (no end in its log.jsonl)")


def build_unet(config: Config, out_channels: int) -> UNet:
    """MONAI's UNet at the run's depth and strides, two residual units a stage, 16 channels doubled at every
    stage (16-128 at the default's four)."""
    strides = [max(s) if len(set(s)) == 1 else tuple(s) for s in config.model.strides[1:]]
    channels = tuple(16 * 2**level for level in range(len(strides) + 1))
    return UNet(config.model.spatial_dims, config.model.in_channels, out_channels, channels=channels,
                strides=strides, num_res_units=2)


def _samples(layout: DatasetLayout, config: Config, task: ReferenceTask) -> list[dict]:
    """The training cases as padded crop inputs {"image", "label", "annotated", "fg", "bg"}: the patch centres
    (flat indices of the annotated target's voxels, and of every other voxel), cases without an annotated voxel
    left out. Negative centres are any voxel outside the annotated target, as the co-trainer cuts its sparse
    patches (``data/sparse_dataset.py``)."""
    pad = SpatialPadd(["image", "label", "annotated"], config.data.patch_size)
    samples = []
    for case_id in layout.splits["train"]:
        prepared = prepare_case(layout.cases[case_id], config.data.spacing, config.model.spatial_dims,
                                config.data.normalization)
        sample = pad({"image": prepared.image, "label": case_target(prepared, task),
                      "annotated": annotated(prepared, task)})
        seen = torch.as_tensor(sample["annotated"])[0].flatten() > 0
        inside = torch.as_tensor(sample["label"])[0].flatten() > 0
        if seen.any():
            samples.append(sample | {"fg": torch.nonzero(seen & inside)[:, 0].numpy(),
                                     "bg": torch.nonzero(~(seen & inside))[:, 0].numpy()})
    if not samples:
        raise MedTextSegError(f"reference: no training case of {layout.root} has an annotated voxel")
    return samples


def _start_at_prior(model: UNet, samples: list[dict], task: ReferenceTask) -> None:
    """Set the output convolution's bias [K] to the log-odds (sigmoid) or log-frequencies (softmax) of the classes
    among the annotated voxels of ``samples`` (the last convolution's, which adds to the output), so that a voxel
    no loss reaches starts near the prior."""
    seen = torch.cat([torch.as_tensor(s["label"])[torch.as_tensor(s["annotated"]) > 0].flatten() for s in samples])
    convolutions = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    output = [m for m in model.modules() if isinstance(m, convolutions)][-1]
    with torch.no_grad():
        if task.mode == "labels":
            counts = torch.bincount(seen.long(), minlength=task.classes).double().clamp_min(1)
            output.bias.copy_((counts / counts.sum()).log())
        else:
            prior = seen.double().mean().clamp(1e-3, 0.5)
            output.bias.fill_(float(torch.logit(prior)))


def _loss(task: ReferenceTask) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Dice + cross-entropy over the annotated voxels: logits [N, K, *S], target [N, 1, *S], mask [N, 1, *S]."""
    if task.mode == "labels":
        dice = MaskedDiceLoss(softmax=True, to_onehot_y=True)

        def labels_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            ce = F.cross_entropy(logits, target[:, 0].long(), reduction="none")
            return dice(logits, target, mask) + (ce * mask[:, 0]).sum() / mask.sum().clamp_min(1)
        return labels_loss
    dice = MaskedDiceLoss(sigmoid=True)

    def binary_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=mask, reduction="sum")
        return dice(logits, target, mask) + bce / mask.sum().clamp_min(1)
    return binary_loss


def train_unet(data: Path, config: Config, seconds: float, out: Path, seed: int = 0, max_steps: int | None = None,
               target_labels: Sequence[str] | None = None) -> tuple[UNet, int]:
    """A text-blind MONAI UNet trained for ``seconds`` of wall time (or ``max_steps``, if that comes first), 2
    images a step, on the task :func:`reference_task` finds (``target_labels``: those labels); loaded from
    ``out`` when it exists. ``seed`` seeds its weights, crops, flips and case draws. Returns the model and the
    steps it trained."""
    layout = load_dataset(data)
    task = reference_task(layout, target_labels)
    model = build_unet(config, task.out_channels)
    if out.is_file():
        saved = torch.load(out, weights_only=True)
        model.load_state_dict(saved["model"])
        return model, saved["steps"]
    torch.manual_seed(seed)
    samples = _samples(layout, config, task)
    if task.ignore is not None:
        _start_at_prior(model, samples, task)
    keys = ["image", "label", "annotated"]
    crop = RandCropByPosNegLabeld(keys, "label", config.data.patch_size, pos=2, neg=1, num_samples=1,
                                  fg_indices_key="fg", bg_indices_key="bg", allow_smaller=True)
    # a left-right flip would swap left and right structures' labels: only lesions (one class) are flipped
    flip = RandFlipd(keys, prob=0.5 if task.mode == "lesions" else 0.0, spatial_axis=0)
    crop.set_random_state(seed)
    flip.set_random_state(seed)
    loss_function = _loss(task)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-5)
    rng = np.random.default_rng(seed)
    half = mixed_precision_dtype(config.train.amp, torch.device("cpu"))  # the precision ours trained in
    started, steps = time.perf_counter(), 0
    model.train()
    while time.perf_counter() - started < seconds and (max_steps is None or steps < max_steps):
        draw = rng.choice(len(samples), size=2, replace=len(samples) < 2)
        with warnings.catch_warnings():  # a case without the target: MONAI warns at every crop, then crops anywhere
            warnings.filterwarnings("ignore", message="Num foregrounds 0")
            batch = [flip(crop(samples[i])[0]) for i in draw]
        image, label, mask = (torch.stack([torch.as_tensor(b[key]) for b in batch]) for key in keys)
        with autocast(torch.device("cpu"), half):
            logits = model(image)
        loss = loss_function(logits.float(), label, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "steps": steps}, out)
    return model, steps


def mirrored(model: UNet, axes: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s probabilities averaged over the unflipped window and one flip per spatial axis in ``axes``
    (sigmoid for one output channel, else softmax); windows [N, C, *spatial] -> [N, K, *spatial]."""
    def probabilities(windows: torch.Tensor) -> torch.Tensor:
        def answer(x: torch.Tensor) -> torch.Tensor:
            logits = model(x)
            return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
        total = answer(windows)
        for axis in axes:
            total = total + answer(windows.flip(2 + axis)).flip(2 + axis)
        return total / (1 + len(axes))
    return probabilities


@torch.no_grad()
def unet_probabilities(model: UNet, case: CaseRecord, config: Config, transform: Compose,
                       mirror_axes: tuple[int, ...] = ()) -> np.ndarray:
    """The UNet's probabilities for one case on the file's grid [K, *file spatial]: sliding windows of the patch
    (overlap 0.25, Gaussian), inverted by MONAI to the file (a 2D model reads the one slice of a 2D case; its
    answer keeps the file's singleton axis). ``transform``: ``preparation(config.data.spacing, ...)``."""
    model.eval()
    data = transform({"image": [str(p) for p in case.image_paths]})
    image = data["image"]
    pixels = image.as_tensor()[None].float()
    if config.model.spatial_dims == 2:
        pixels = pixels[..., 0]
    prediction = sliding_window_inference(pixels, config.data.patch_size, 4, mirrored(model, mirror_axes),
                                          overlap=0.25, mode="gaussian")[0]
    if config.model.spatial_dims == 2:
        prediction = prediction[..., None]
    prediction = MetaTensor(prediction, meta=image.meta)
    prediction.applied_operations = image.applied_operations
    return Invertd("prediction", transform, orig_keys="image", nearest_interp=False)(
        {"prediction": prediction, "image": image})["prediction"].as_tensor().numpy()


def score_unet(model: UNet, data: Path, config: Config, mirror_axes: tuple[int, ...] = (),
               split: str = "test") -> list[dict]:
    """Per-prompt metrics of the UNet's answers on the file grid: all lesions for every lesion prompt, or the
    union of the labels each prompt names (data without lesion prompts; mask-file targets are left out);
    ``mirror_axes``: mirror test-time augmentation along these spatial axes. Returns one record per answered
    prompt of ``split``: {"case", "prompt", "kind", "group", **segmentation_metrics} (HD95 in mm, inf where one
    of the two masks is empty)."""
    layout = load_dataset(data)
    lesions = reference_task(layout).mode == "lesions"
    transform = preparation(config.data.spacing, normalization=config.data.normalization)  # once; inverted per case
    records = []
    for case in layout.split(split):
        probabilities = unet_probabilities(model, case, config, transform, mirror_axes)
        label = read_array(case.label_path)
        answer = (probabilities[0] > 0.5 if lesions else probabilities.argmax(0)).reshape(label.shape)
        geometry = read_geometry(case.image_paths[0])
        for prompt in case.prompts:
            if lesions and prompt.kind not in LESION_KINDS:
                continue
            if not lesions and isinstance(prompt.target, Path):  # a mask-file target names no label
                continue
            mask = answer if lesions else np.isin(answer, prompt.target)
            metrics = segmentation_metrics(mask, prompt_target(case, prompt, label), geometry.spacing)
            records.append({"case": case.case, "prompt": prompt.prompt, "kind": prompt.kind,
                            "group": result_group(prompt), **metrics})
    return records


def answers_every_prompt(data: Path, records: list[dict], split: str = "test") -> bool:
    """Whether ``records`` hold every prompt of the split: only then is their overall mean comparable with a
    text-guided model's (on lesion data the reference cannot answer anatomy prompts)."""
    return len(records) == sum(len(case.prompts) for case in load_dataset(data).split(split))


def reference(runs: list[Path], data: Path | None, weights: Path, seed: int = 0,
              seconds: float | None = None) -> tuple[list[dict], int, float]:
    """Train (or read back from ``weights``) the reference for finished ``runs``: the wall time of the slowest
    (or ``seconds``), the first one's plan (its saved config), its dataset unless ``data`` is given; score it on
    the test split. Returns the per-prompt records, the steps it trained and the seconds it was given."""
    config = Config.load(runs[0] / "config.yaml")
    data = data or Path(config.data.root)
    seconds = seconds if seconds is not None else max(training_seconds(run) for run in runs)
    unet, steps = train_unet(data, config, seconds, weights, seed)
    return score_unet(unet, data, config), steps, seconds


def group_summary(records: list[dict]) -> dict[str, dict]:
    """Per prompt group: {"n", "dice" (mean), "hd95" (mean over finite values, None without any), "hd95_inf"
    (count of infinite ones), "nsd" (mean)}."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["group"], []).append(record)
    summary = {}
    for group, members in groups.items():
        finite = [r["hd95"] for r in members if math.isfinite(r["hd95"])]
        summary[group] = {"n": len(members), "dice": float(np.mean([r["dice"] for r in members])),
                          "hd95": float(np.mean(finite)) if finite else None, "hd95_inf": len(members) - len(finite),
                          "nsd": float(np.mean([r["nsd"] for r in members]))}
    return summary
