"""Where the time of one prediction goes, stage by stage (issue 18): files in, masks written.

    .venv/bin/python benchmarks/profile_prediction.py -m RUN -i CHANNEL [-i CHANNEL ...] \
        (-p PROMPT ... | --prompts-from prompts.jsonl --prompts N) [--repeats 3] [--out DIR] [--label NAME]
    .venv/bin/python benchmarks/profile_prediction.py -m RUN --volume 512,512,300 --volume-spacing 0.7,0.7,1 ...

One process, the model loaded once; the first call is a warm-up (imports, the text cache), then ``--repeats``
timed calls of ``Predictor.iter_predict``, each answer's mask written as it comes (``Segmentation.save``), as
``medtextseg predict`` does. Stages are timed by wrapping the library's own steps (nothing is re-implemented here):

* reading: MONAI's ``LoadImaged``; preparation: the rest of the preparation (RAS, resampling, normalisation);
* text: the prompts' embeddings (from the cache); encoder / decoder: forward hooks on ``model.encoder`` /
  ``model.decoder``, summed over windows; network other: the rest of the model's forward (text summary, presence);
* blending: MONAI's sliding window minus the network calls it made (cropping, Gaussian weighting, stitching);
* inversion: ``Invertd`` (back to the file's grid); threshold: the rest (thresholds, clipping, checks);
* writing: ``Segmentation.save`` of every mask.

Wall and CPU seconds (``time.process_time``: the machine may be shared, CPU time is what this process used)
are medians over the repeats; peak RSS is the process's (``ru_maxrss``) after the run, "grown" its rise over
the RSS with the model loaded and the prompts encoded, beside the prediction's own memory estimate
(:mod:`medtextseg.inference.memory`). ``--volume`` writes a
synthetic image of that shape and spacing (smooth noise, one file per channel) under ``--out`` first.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

STAGES = ["reading", "preparation", "text", "encoder", "decoder", "network_other", "blending", "inversion",
          "threshold", "writing", "total"]


class Clock:
    """Wall and CPU seconds per stage, accumulated while wrapped calls run."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    def wrap(self, stage: str, function):
        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.wall[stage] += time.perf_counter() - wall
                self.cpu[stage] += time.process_time() - cpu
        return timed

    def hooks(self, module: torch.nn.Module, stage: str) -> None:
        started: list[tuple[float, float]] = []

        def before(*_):
            started.append((time.perf_counter(), time.process_time()))

        def after(*_):
            wall, cpu = started.pop()
            self.wall[stage] += time.perf_counter() - wall
            self.cpu[stage] += time.process_time() - cpu

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)


def instrument(predictor, clock: Clock) -> None:
    """Wrap the library's steps (class attributes: every call in this process is timed)."""
    import monai.transforms
    from monai.transforms import Compose

    import medtextseg.inference.predictor as predictor_module
    import medtextseg.inference.sliding as sliding_module

    monai.transforms.LoadImaged.__call__ = clock.wrap("reading", monai.transforms.LoadImaged.__call__)
    monai.transforms.Invertd.__call__ = clock.wrap("inversion", monai.transforms.Invertd.__call__)
    predictor_module.Segmentation.save = clock.wrap("writing", predictor_module.Segmentation.save)
    original_preparation = predictor_module.preparation

    def preparation(*args, **kwargs) -> Compose:
        compose = original_preparation(*args, **kwargs)
        timed = clock.wrap("reading+preparation", compose.__call__)

        class Timed(type(compose)):
            def __call__(self, *a, **k):
                return timed(*a, **k)
        compose.__class__ = Timed
        return compose

    predictor_module.preparation = preparation
    sliding_module.sliding_window_inference = clock.wrap("sliding", sliding_module.sliding_window_inference)
    predictor.text.__class__.__call__ = clock.wrap("text", predictor.text.__class__.__call__)
    clock.hooks(predictor.model, "network")
    clock.hooks(predictor.model.encoder, "encoder")
    clock.hooks(predictor.model.decoder, "decoder")


def stages(clock: Clock, predict: float, write: float, which: dict[str, float]) -> dict[str, float]:
    """The named stages from the raw accumulators (``which``: clock.wall or clock.cpu)."""
    reading = which["reading"]
    network = which["network"]
    row = {"reading": reading, "preparation": which["reading+preparation"] - reading, "text": which["text"],
           "encoder": which["encoder"], "decoder": which["decoder"],
           "network_other": network - which["encoder"] - which["decoder"],
           "blending": which["sliding"] - network, "inversion": which["inversion"]}
    row["threshold"] = predict - (which["reading+preparation"] + which["text"] + which["sliding"]
                                  + which["inversion"])
    row["writing"] = write
    row["total"] = predict + write
    return row


def synthetic_volume(out: Path, shape: tuple[int, ...], spacing: tuple[float, ...], channels: int) -> list[Path]:
    """``channels`` NIfTI files of smooth noise on a ``shape`` grid of ``spacing`` mm (LPS-stored like scanners')."""
    import nibabel as nib
    from scipy import ndimage

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    for channel in range(channels):
        path = out / f"volume_{'x'.join(map(str, shape))}_{channel:04d}.nii.gz"
        if not path.is_file():
            generator = np.random.default_rng(channel)
            coarse = generator.standard_normal(tuple(max(2, s // 16) for s in shape)).astype(np.float32)
            volume = ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape, strict=True)], order=1)
            nib.save(nib.Nifti1Image(volume[tuple(slice(0, s) for s in shape)].astype(np.float32), affine),
                     str(path))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", type=Path, required=True)
    parser.add_argument("-i", "--image", type=Path, action="append", default=[])
    parser.add_argument("-p", "--prompt", action="append", default=[])
    parser.add_argument("--prompts-from", type=Path, help="a prompts.jsonl: its first --prompts distinct prompts")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--volume", help="X,Y,Z: a synthetic image of this shape instead of -i")
    parser.add_argument("--volume-spacing", default="1,1,1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="inference.KEY=VALUE")
    parser.add_argument("--out", type=Path, default=Path("work/profile_prediction"))
    parser.add_argument("--label", default="case")
    args = parser.parse_args()

    from medtextseg.api import load_model

    prompts = list(args.prompt)
    if args.prompts_from:
        for line in args.prompts_from.read_text().splitlines():
            prompt = json.loads(line)["prompt"]
            if prompt not in prompts and len(prompts) < args.prompts:
                prompts.append(prompt)
    started = time.perf_counter()
    predictor = load_model(args.model, "cpu")
    load_s = time.perf_counter() - started
    predictor.set_inference(args.set)
    predictor.progress = False
    images = args.image
    if args.volume:
        shape = tuple(int(s) for s in args.volume.split(","))
        spacing = tuple(float(s) for s in args.volume_spacing.split(","))
        images = synthetic_volume(args.out / "volumes", shape, spacing, predictor.config.model.in_channels)
    from medtextseg.data.io import read_geometry

    geometry = read_geometry(images[0])
    estimate = predictor._check_memory(geometry, len(images), len(prompts), False, False, str(images[0]))
    predictor.text(prompts)
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    clock = Clock()
    instrument(predictor, clock)
    masks = args.out / args.label
    masks.mkdir(parents=True, exist_ok=True)
    walls, cpus = [], []
    for repeat in range(args.warmup + args.repeats):
        clock.wall.clear()
        clock.cpu.clear()
        wall, cpu = time.perf_counter(), time.process_time()
        # as medtextseg predict does: each answer written as it comes
        for number, result in enumerate(predictor.iter_predict(images, prompts, uncertainty=False)):
            result.save(masks / f"mask_{number:02d}.nii.gz")
        del result
        total_wall, total_cpu = time.perf_counter() - wall, time.process_time() - cpu
        write_wall, write_cpu = clock.wall["writing"], clock.cpu["writing"]
        predict_wall, predict_cpu = total_wall - write_wall, total_cpu - write_cpu
        if repeat >= args.warmup:
            walls.append(stages(clock, predict_wall, write_wall, clock.wall))
            cpus.append(stages(clock, predict_cpu, write_cpu, clock.cpu))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {"label": args.label, "shape": list(geometry.shape), "spacing": [round(s, 3) for s in geometry.spacing],
               "channels": len(images), "prompts": len(prompts), "planned_spacing": predictor.config.data.spacing,
               "patch": predictor.config.data.patch_size, "autocast": predictor.config.inference.autocast,
               "load_model_s": round(load_s, 3),
               "peak_rss_mb": round(peak_mb), "baseline_rss_mb": round(baseline_mb),
               "grown_mb": round(peak_mb - baseline_mb), "estimate_mb": round(estimate.total / 2**20),
               "estimate_parts_mb": {k: round(v / 2**20) for k, v in estimate.parts().items()},
               "repeats": args.repeats,
               "wall_s": {k: round(statistics.median(r[k] for r in walls), 4) for k in STAGES},
               "cpu_s": {k: round(statistics.median(r[k] for r in cpus), 4) for k in STAGES}}
    summary["decoder_per_prompt_cpu_s"] = round(summary["cpu_s"]["decoder"] / len(prompts), 4)
    (args.out / f"{args.label}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    print("| stage | " + " | ".join(STAGES) + " |", file=sys.stderr)
    for kind in ("wall_s", "cpu_s"):
        print(f"| {kind} | " + " | ".join(f"{summary[kind][k]:.3f}" for k in STAGES) + " |", file=sys.stderr)


if __name__ == "__main__":
    main()
