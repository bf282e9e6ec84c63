"""The reference every accuracy benchmark carries: a text-blind MONAI ``UNet`` trained for the same wall time on the
same data, scored on the same prompts with the same metrics (2D or 3D, from the config's ``model.spatial_dims``).

On lesion data it learns "all lesions" (sigmoid) and answers every lesion prompt with them; it cannot answer anatomy
prompts. On data without lesion prompts (``aal``) it learns every label of ``dataset.json`` at once (softmax) and
answers each prompt with the union of the labels the prompt names, which the text-blind model is told. It trains
with MONAI's own parts (residual units, DiceCE, positive/negative crops 2:1, left-right flips of lesion data) at
the planned spacing and patch of the run it is compared with, in the precision that run trained in.

Any finished runs get their reference from the command line: it trains for the wall time of the slowest of them,
at the first one's plan and on its dataset (``--data`` for another), and prints Dice, HD95 and NSD per lesion
group of the test split (``OUT/results.md``, per prompt in ``OUT/records.json``, weights in ``OUT/unet.pt``)::

    .venv/bin/python benchmarks/monai_reference.py --runs RUN [RUN ...] [--data DIR] [--out OUT] [--seed 0]
        [--seconds S]

In code (``bench_textbcs.py``, ``bench_align_refine.py``, ``bench_variety.py``)::

    records, steps, seconds = reference(runs, data, out / "unet.pt")   # or train_unet + score_unet
    rows = group_summary(records)              # {"all": {"n", "dice", "hd95", "hd95_inf", "nsd"}, ...}
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import Compose, Invertd, RandCropByPosNegLabeld, RandFlipd, SpatialPadd

from medtextseg.config import Config
from medtextseg.data.dataset import PreparedCase, prepare_case
from medtextseg.data.io import read_array, read_geometry
from medtextseg.data.layout import CaseRecord, load_dataset
from medtextseg.data.transforms import preparation
from medtextseg.evaluation.metrics import segmentation_metrics
from medtextseg.evaluation.runner import prompt_target, result_group
from medtextseg.utils.precision import autocast, mixed_precision_dtype

sys.path.insert(0, str(Path(__file__).parent))
from results_table import write_results  # noqa: E402

LESION_KINDS = ("single", "all", "absent")


def lesion_target(prepared: PreparedCase) -> torch.Tensor:
    """The union of every lesion a case's prompts name ([*spatial] bool): what a text-blind model learns."""
    union = torch.zeros(prepared.image.shape[1:], dtype=torch.bool)
    for prompt in prepared.prompts:
        if prompt.kind in ("single", "all"):
            union |= prepared.target(prompt)
    return union


def has_lesion_prompts(data: Path) -> bool:
    return any(p.kind in LESION_KINDS for case in load_dataset(data).cases.values() for p in case.prompts)


def unet_target(prepared: PreparedCase, lesions: bool) -> torch.Tensor:
    """What the text-blind UNet learns for a case: the union of its lesions [1, *spatial] float (lesion data),
    or its label map [1, *spatial] long (every dataset label at once)."""
    if lesions:
        return lesion_target(prepared)[None].float()
    return prepared.label[None].long()


def training_seconds(run: Path) -> float:
    """Wall time of a finished training, from its log."""
    for line in reversed((run / "log.jsonl").read_text().splitlines()):
        record = json.loads(line)
        if record.get("event") == "end":
            return float(record["seconds"])
    raise RuntimeError(f"{run}: training has not finished")


def build_unet(config: Config, out_channels: int) -> UNet:
    """MONAI's UNet at the run's depth and strides (16-128 channels, two residual units a stage)."""
    strides = [max(s) if len(set(s)) == 1 else tuple(s) for s in config.model.strides[1:]]
    return UNet(config.model.spatial_dims, config.model.in_channels, out_channels, channels=(16, 32, 64, 128),
                strides=strides, num_res_units=2)


def train_unet(data: Path, config: Config, seconds: float, out: Path, seed: int = 0,
               max_steps: int | None = None) -> tuple[UNet, int]:
    """A text-blind MONAI UNet trained for ``seconds`` of wall time (or ``max_steps``, if that comes first), 2
    images a step (loaded from ``out`` when it exists): all lesions (sigmoid), or every label of the dataset
    (softmax) where it has no lesion prompts; ``seed`` seeds its weights, crops, flips and case draws. Returns the
    model and the steps it trained."""
    layout = load_dataset(data)
    lesions = has_lesion_prompts(data)
    model = build_unet(config, 1 if lesions else max(layout.labels.values()) + 1)
    if out.is_file():
        saved = torch.load(out, weights_only=True)
        model.load_state_dict(saved["model"])
        return model, saved["steps"]
    torch.manual_seed(seed)
    cases = [prepare_case(layout.cases[c], config.data.spacing, config.model.spatial_dims,
                          config.data.normalization) for c in layout.splits["train"]]
    # padded to the patch where an image is narrower (a plan may span the whole width): the UNet needs whole patches
    pad = SpatialPadd(["image", "label"], config.data.patch_size)
    samples = [pad({"image": c.image, "label": unet_target(c, lesions)}) for c in cases]
    crop = RandCropByPosNegLabeld(["image", "label"], "label", config.data.patch_size, pos=2, neg=1, num_samples=1,
                                  allow_smaller=True)
    # a left-right flip would swap left and right structures' labels: only lesion data (one class) is flipped
    flip = RandFlipd(["image", "label"], prob=0.5 if lesions else 0.0, spatial_axis=0)
    crop.set_random_state(seed)
    flip.set_random_state(seed)
    loss_function = DiceCELoss(sigmoid=True) if lesions else DiceCELoss(softmax=True, to_onehot_y=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-5)
    rng = np.random.default_rng(seed)
    half = mixed_precision_dtype(config.train.amp, torch.device("cpu"))  # the precision ours trained in
    started, steps = time.perf_counter(), 0
    model.train()
    while time.perf_counter() - started < seconds and (max_steps is None or steps < max_steps):
        batch = [flip(crop(samples[i])[0]) for i in rng.choice(len(samples), size=2, replace=False)]
        image = torch.stack([torch.as_tensor(b["image"]) for b in batch])
        label = torch.stack([torch.as_tensor(b["label"]) for b in batch])
        with autocast(torch.device("cpu"), half):
            logits = model(image)
        loss = loss_function(logits.float(), label)
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


def _answer(model: UNet, case: CaseRecord, config: Config, transform: Compose,
            mirror_axes: tuple[int, ...]) -> np.ndarray:
    """The UNet's probabilities for one case on the file's grid [K, *file spatial] (a 2D model reads the one slice
    of a 2D case; its answer keeps the file's singleton axis)."""
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


@torch.no_grad()
def score_unet(model: UNet, data: Path, config: Config, mirror_axes: tuple[int, ...] = ()) -> list[dict]:
    """Per-prompt Dice of the UNet's answers on the file grid: all lesions for every lesion prompt, or the
    union of the labels each prompt names (data without lesion prompts); ``mirror_axes``: mirror test-time
    augmentation along these spatial axes. Returns [{"case", "prompt", "group", "dice", "hd95", "nsd"}, ...] over
    the test split (HD95 in mm, inf where one of the two masks is empty)."""
    layout = load_dataset(data)
    lesions = has_lesion_prompts(data)
    model.eval()
    transform = preparation(config.data.spacing, normalization=config.data.normalization)  # once; inverted per case
    records = []
    for case in layout.split("test"):
        probabilities = _answer(model, case, config, transform, mirror_axes)
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
            records.append({"case": case.case, "prompt": prompt.prompt, "group": result_group(prompt),
                            **{name: metrics[name] for name in ("dice", "hd95", "nsd")}})
    return records


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="finished run folders")
    parser.add_argument("--data", type=Path, help="dataset (default: the first run's data.root)")
    parser.add_argument("--out", type=Path, default=Path("work/monai_reference"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, help="training time (default: that of the slowest run)")
    args = parser.parse_args()
    records, steps, seconds = reference(args.runs, args.data, args.out / "unet.pt", args.seed, args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "records.json").write_text(json.dumps(records, indent=1))
    rows = [{"group": group, **row} for group, row in group_summary(records).items()]
    given = f"--seconds {seconds:g}" if args.seconds is not None else f"the slowest of {len(args.runs)} runs"
    write_results(rows, ["group", "n", "dice", "hd95", "hd95_inf", "nsd"], args.out,
                  f"MONAI UNet, text-blind: {steps} steps in {seconds / 60:.1f} min ({given}); lesion prompts of "
                  "the test split (absent: Dice 1 = answered empty)")


if __name__ == "__main__":
    main()
