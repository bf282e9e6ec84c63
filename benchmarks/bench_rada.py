"""RADA on the synthetic 3D set with 10% of the training volumes labelled by three slices, one budget for all.

    .venv/bin/python benchmarks/bench_rada.py [--cases 40] [--steps 200] [--passes 2] [--out work/bench_rada]

Target: the transition zone ("segment the transition zone", label transition_zone). The dataset is made dense
(``synth``), then barely labelled (``sparsify --fraction 0.1``: for 10% of the training volumes, the sagittal, coronal
and axial slices with the most foreground of any label; the other training volumes unlabelled). Variants, ``--steps``
co-training iterations each, same network size:

* fully supervised: ``rada_single`` on the dense labels of every training volume (upper bound);
* sparse only: ``rada_single`` on the three annotated slices of the labelled volumes;
* co-training, text only: ``rada_text`` (three views, propagation, cross pseudo supervision);
* RADA: ``rada`` (the same + the region-aware image prototype of the annotated slices).

Beside them, the reference every benchmark carries (``medtextseg.evaluation.reference``): a text-blind MONAI UNet
(16-128 channels) trained for the wall time of the slowest variant on the same sparse labels, with MONAI's masked
Dice and a masked cross-entropy over the annotated voxels only (the labelled volumes; no propagation).

Scored on the test split with the model as predicted (3-network average, and each network): Dice, Jaccard, HD95
and ASSD (mm), mean +- std over cases. Also: the propagated labels' Dice against the true dense labels, by
distance from the annotated slice, next to copying the annotated slice unchanged. Finished runs are reused; the
table is printed and written to ``{out}/results.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from medtextseg.config import Config
from medtextseg.data.io import read_array, read_geometry
from medtextseg.data.label_propagation import propagate_slice_label
from medtextseg.data.layout import load_dataset
from medtextseg.data.sparse_labels import sparsify_dataset
from medtextseg.data.synthetic import make_synthetic_dataset
from medtextseg.data.transforms import preparation
from medtextseg.evaluation.metrics import segmentation_metrics
from medtextseg.evaluation.reference import (
    REFERENCE_NAME,
    train_unet,
    training_seconds,
    unet_probabilities,
)
from medtextseg.inference.sliding import prompt_probabilities
from medtextseg.models.trained import load_trained_model
from medtextseg.training.engine import train
from medtextseg.training.inputs import prepare_cases, text_cache_for

PROMPT = "segment the transition zone"
TARGET = ["cotraining.prompt=" + PROMPT, "cotraining.target_labels=[transition_zone]"]
VARIANTS = {"fully supervised (dense labels)": ("rada_single", "dense"),
            "sparse only (3 slices)": ("rada_single", "sparse"),
            "co-training, text only": ("rada_text", "sparse"),
            "RADA (text + region image)": ("rada", "sparse")}
DISTANCES = [(0, 0), (1, 2), (3, 5), (6, 10), (11, 20), (21, 999)]


def folder_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def schedule_overrides(steps: int) -> list[str]:
    """The presets' schedules are for 6000 steps (SGTC/RADA); scale them to ``steps`` in the same proportions."""
    return [f"cotraining.beta_ramp_steps={steps}", f"cotraining.beta_ramp_every={max(steps // 40, 1)}",
            f"train.step_every={max(steps * 5 // 12, 1)}", f"cotraining.alpha_every={max(steps // 6, 1)}"]


def benchmark_data(out: Path, cases: int) -> tuple[Path, Path]:
    """The dense synthetic set (``out/data_dense``) and its barely labelled copy (``out/data_sparse``), made once."""
    dense, sparse = out / "data_dense", out / "data_sparse"
    if not (dense / "dataset.json").is_file():
        make_synthetic_dataset(dense, num_cases=cases, spatial_dims=3, seed=0, progress=True)
    if not (sparse / "dataset.json").is_file():
        sparsify_dataset(dense, sparse, fraction=0.1, planes="SCA", rule="largest", seed=0)
    return dense, sparse


def run_overrides(data: Path, steps: int, channels: str, passes: int) -> list[str]:
    """The ``--set`` list every benchmark run shares: data, steps, size, entropy passes, target, schedules."""
    return [f"data.root={data}", f"train.steps={steps}", f"train.val_every={max(steps // 4, 1)}",
            f"model.channels={channels}", f"cotraining.uncertainty_passes={passes}", *TARGET,
            *schedule_overrides(steps)]


def finished(run: Path) -> bool:
    """Whether the run's log records its end (a finished run is reused, not trained again)."""
    log = run / "log.jsonl"
    return log.is_file() and '"event": "end"' in log.read_text()


def summarize_cases(records: list[dict]) -> dict:
    """Mean and std over cases of Dice, Jaccard, HD95 and ASSD (finite values only)."""
    summary = {}
    for metric, key in (("dice", "dice"), ("jaccard", "iou"), ("hd95", "hd95"), ("assd", "assd")):
        finite = [r[key] for r in records if np.isfinite(r[key])]
        summary[metric] = (float(np.mean(finite)), float(np.std(finite))) if finite else (None, None)
    return summary


def evaluate_reference(sparse: Path, runs: list[Path], out: Path) -> dict:
    """The text-blind MONAI UNet on the sparse labels for the wall time of the slowest of ``runs`` (weights in
    ``out``), scored like the variants on the file grid of the test volumes."""
    config = Config.load(runs[0] / "config.yaml")
    seconds = max(training_seconds(run) for run in runs)
    unet, steps = train_unet(sparse, config, seconds, out, target_labels=config.cotraining.target_labels)
    layout = load_dataset(sparse)
    values = [layout.labels[n] for n in config.cotraining.target_labels]
    transform = preparation(config.data.spacing, normalization=config.data.normalization)
    records = []
    for case in layout.split("test"):
        prediction = unet_probabilities(unet, case, config, transform)[0] > 0.5
        geometry = read_geometry(case.image_paths[0])
        records.append(segmentation_metrics(prediction, np.isin(read_array(case.label_path), values),
                                            geometry.spacing))
    return {"average": summarize_cases(records), "steps": steps, "seconds": seconds}


def evaluate(run: Path, data: Path) -> dict:
    """Dice, Jaccard, HD95, ASSD (mean, std over the test cases) of the run's best.pt, per network and averaged."""
    trained = load_trained_model(run / "best.pt")
    config, model = trained.config, trained.network
    layout = load_dataset(data)
    test = prepare_cases(layout, layout.splits["test"], config, False, "")
    text = text_cache_for(config)
    values = torch.tensor([layout.labels[n] for n in config.cotraining.target_labels])
    spacing = [float(s) for s in np.linalg.norm(np.asarray(_affine(layout, test[0].case))[:3, :3], axis=0)]
    members = [None] + (list(range(config.model.networks)) if config.model.networks > 1 else [])
    results = {}
    for member in members:
        records = []
        for case in test:
            probability = prompt_probabilities(model, case.image, text([PROMPT]), config.data.patch_size,
                                               network=member)[0]
            prediction = (probability > 0.5).numpy()
            target = torch.isin(case.label, values).numpy()
            records.append(segmentation_metrics(prediction, target, spacing))
        results["average" if member is None else f"network {member + 1}"] = summarize_cases(records)
    return results


def _affine(layout, case: str) -> np.ndarray:
    import nibabel as nib

    return nib.load(str(layout.cases[case].image_paths[0])).affine


def propagation_quality(dense: Path, sparse: Path, config: Config) -> dict:
    """Dice of propagated vs true labels per distance bucket, over the labelled volumes' annotated planes."""
    from medtextseg.data.sparse_labels import IGNORE_LABEL, annotated_slices

    sparse_layout, dense_layout = load_dataset(sparse), load_dataset(dense)
    ignore = sparse_layout.labels[IGNORE_LABEL]
    value = dense_layout.labels["transition_zone"]
    sums = {"propagated": {b: [0, 0] for b in DISTANCES}, "copied slice": {b: [0, 0] for b in DISTANCES}}
    for case_id in sparse_layout.splits["train"]:
        sparse_case = prepare_cases(sparse_layout, [case_id], config, False, "")[0]
        mask = (sparse_case.label == ignore).numpy()
        if mask.all():
            continue
        truth = (prepare_cases(dense_layout, [case_id], config, False, "")[0].label == value).numpy()
        for axis, indices in annotated_slices(mask).items():
            for index in indices:
                label_slice = np.take(truth, index, axis=axis)
                propagated = propagate_slice_label(sparse_case.image[0].numpy(), label_slice, axis, index)
                copied = np.broadcast_to(np.expand_dims(label_slice, axis), truth.shape)
                for d in range(truth.shape[axis]):
                    distance = abs(d - index)
                    bucket = next(b for b in DISTANCES if b[0] <= distance <= b[1])
                    true_slice = np.take(truth, d, axis=axis)
                    for name, guess in (("propagated", propagated), ("copied slice", copied)):
                        guess_slice = np.take(guess, d, axis=axis)
                        sums[name][bucket][0] += 2 * int((guess_slice & true_slice).sum())
                        sums[name][bucket][1] += int(guess_slice.sum() + true_slice.sum())
    return {name: {f"{a}-{b}" if a != b else str(a): (n / d if d else None) for (a, b), (n, d) in buckets.items()}
            for name, buckets in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--passes", type=int, default=2, help="cotraining.uncertainty_passes (RADA: 8)")
    parser.add_argument("--channels", default="[8,16,32,64]")
    parser.add_argument("--out", type=Path, default=Path("work/bench_rada"))
    args = parser.parse_args()
    dense, sparse = benchmark_data(args.out, args.cases)
    results: dict = {"settings": vars(args) | {"out": str(args.out)}}
    for name, (preset, data_name) in VARIANTS.items():
        data = dense if data_name == "dense" else sparse
        run = args.out / folder_name(name)
        if not finished(run):
            config = Config.load(preset, run_overrides(data, args.steps, args.channels, args.passes))
            train(config, run, resume=(run / "last.pt").is_file())
        results[name] = evaluate(run, data)
        print(name, json.dumps(results[name]["average"]), flush=True)
    runs = [args.out / folder_name(name) for name in VARIANTS]
    reference = evaluate_reference(sparse, runs, args.out / "monai_unet.pt")
    results[REFERENCE_NAME] = {"average": reference["average"]}
    print(REFERENCE_NAME, json.dumps(reference), flush=True)
    config = Config.load("rada", [f"data.root={sparse}", *TARGET])
    results["propagation"] = propagation_quality(dense, sparse, config)

    lines = [f"RADA benchmark: {args.cases} synthetic volumes, 10% of the training volumes labelled by 3 slices, "
             f"{args.steps} steps per variant (schedules scaled from 6000), uncertainty passes {args.passes}, "
             f"channels {args.channels}; {REFERENCE_NAME}: {reference['steps']} steps in "
             f"{reference['seconds'] / 60:.1f} min on the sparse labels (masked loss)", "",
             "| variant | network | Dice | Jaccard | HD95 (mm) | ASSD (mm) |", "|---|---|---|---|---|---|"]
    for name in [*VARIANTS, REFERENCE_NAME]:
        for network, metrics in results[name].items():
            cells = [f"{m:.3f} ± {s:.3f}" if m is not None else "–" for m, s in
                     (metrics[k] for k in ("dice", "jaccard", "hd95", "assd"))]
            lines.append(f"| {name} | {network} | " + " | ".join(cells) + " |")
    buckets = list(next(iter(results["propagation"].values())))
    lines += ["", "Propagated labels vs the true dense labels (Dice), by distance from the annotated slice:", "",
              "| labels | " + " | ".join(f"d={b}" for b in buckets) + " |", "|---|" + "---|" * len(buckets)]
    for name, row in results["propagation"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" if v is not None else "–" for v in row.values()) + " |")
    text = "\n".join(lines)
    print(text)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
