"""Prediction from files to masks written: ours (1 / 8 / 32 prompts) against a text-blind MONAI UNet (issue 18).

    .venv/bin/python benchmarks/bench_prediction.py [--volumes fine brain] [--prompts 1 8 32] [--repeats 3]
        [--autocast none bf16 auto] [--mirror none lr] [--threads 1] [--out work/bench_prediction]

Every row runs in a fresh process (its peak RSS is its own): the model is loaded and one untimed prediction
warms it up (imports, the prompt-embedding cache), then ``--repeats`` timed predictions, each from the channel
files to every mask written, give the median wall and CPU seconds; peak RSS is the process's maximum
(``ru_maxrss``, the model and libraries included) and "grown" what the predictions added to it.

* ours: ``Predictor.iter_predict`` with each mask saved as it comes (what ``medtextseg predict`` does): RAS,
  resampling to the run's planned spacing, z-score, one sliding-window pass for up to ``inference.prompt_chunk``
  prompts, the maps back on the file's grid, thresholded, written;
* MONAI UNet: MONAI's own pipeline on the same files: ``LoadImaged`` (the channels stacked), ``Orientationd``,
  ``Spacingd`` to the same spacing, ``NormalizeIntensityd``, ``sliding_window_inference`` (Gaussian, overlap
  0.25, sw_batch_size 1) of a ``UNet`` (channels 16-128, strides 2, 2 residual units; untrained: weights do not
  change its time) with the patch rounded up to a multiple of 8, sigmoid > 0.5, ``Invertd`` (nearest) and
  ``SaveImage``. One mask: it cannot be told what to segment. It runs in each row's precision as ours does
  (``--autocast``: bf16 or auto put its network under the same ``torch.autocast``) and with the same test-time
  augmentation (``--mirror lr``: each window also read mirrored left-right, ours with the prompt's sides
  swapped, the default of new runs; ``none``: one pass), so each ratio compares like with like.

Volumes: ``fine``, a 96 x 96 x 24 three-channel synthetic case (0.5 x 0.5 x 3 mm) with the ``fine`` run of
``benchmarks/bench_variety.py``; ``brain``, the 1 mm Colin27 head (181 x 217 x 181) with the AAL run of the
README. ``--run-fine``/``--run-brain`` and ``--fine``/``--brain`` (files) point elsewhere. Prompts are the
first distinct prompts of the run's dataset (``prompts.jsonl``). The table (``results.md``/``results.json`` in
``--out``) gives each row's ratio to the UNet of the same precision and to one prompt of the same precision.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORK = Path("work")
BRAIN = Path("/usr/share/mricron/templates/ch2.nii.gz")


def volumes(work: Path) -> dict[str, tuple[Path, list[Path], Path]]:
    """Each volume's (run, channel files, the run's prompts.jsonl) under ``work``."""
    fine = work / "bench_variety/fine"
    return {"fine": (fine / "run", [fine / f"data/imagesTr/synth_026_000{c}.nii.gz" for c in range(3)],
                     fine / "data/prompts.jsonl"),
            "brain": (work / "aal/run", [BRAIN], work / "aal/data/prompts.jsonl")}


COLUMNS = ["volume", "method", "autocast", "mirror", "prompts", "wall_s", "cpu_s", "over_unet", "over_1_prompt",
           "peak_rss_mb", "grown_mb", "rss_over_1_prompt"]


def distinct_prompts(path: Path, count: int) -> list[str]:
    prompts: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        prompt = json.loads(line)["prompt"]
        if prompt not in prompts:
            prompts.append(prompt)
        if len(prompts) == count:
            return prompts
    return [prompts[k % len(prompts)] + ("" if k < len(prompts) else f" ({k})") for k in range(count)]


def timed(once, repeats: int, out: Path) -> tuple[float, float]:
    """Median wall and CPU seconds of ``repeats`` calls after one untimed call."""
    once(out / "warmup")
    walls, cpus = [], []
    for repeat in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        once(out / f"r{repeat}")
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


MIRROR_AXES = {"none": [], "lr": [0]}


def ours(run: Path, images: list[Path], prompts: list[str], autocast: str, mirror: str, repeats: int, out: Path):
    from medtextseg import load_model

    predictor = load_model(run, "cpu", mirror_axes=MIRROR_AXES[mirror])
    predictor.set_inference([f"inference.autocast={autocast}"])
    predictor.progress = False

    def once(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for number, answer in enumerate(predictor.iter_predict(images, prompts, uncertainty=False)):
            answer.save(folder / f"mask_{number:02d}.nii.gz")

    return timed(once, repeats, out)


def monai_unet(run: Path, images: list[Path], autocast: str, mirror: str, repeats: int, out: Path):
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet
    from monai.transforms import Compose, Invertd, LoadImaged, NormalizeIntensityd, Orientationd, SaveImage, Spacingd

    from medtextseg.config import Config
    from medtextseg.models.trained import load_checkpoint
    from medtextseg.utils.precision import autocast as autocast_to
    from medtextseg.utils.precision import inference_dtype

    config = Config.from_dict(load_checkpoint(run)["config"])
    patch = [-(-size // 8) * 8 for size in config.data.patch_size]
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=len(images), out_channels=1, channels=(16, 32, 64, 128),
               strides=(2, 2, 2), num_res_units=2).eval()
    transform = Compose([LoadImaged("image", ensure_channel_first=True, image_only=True),
                         Orientationd("image", axcodes="RAS"), Spacingd("image", pixdim=config.data.spacing),
                         NormalizeIntensityd("image", channel_wise=True)])
    axes = MIRROR_AXES[mirror]

    def probability(windows: torch.Tensor) -> torch.Tensor:  # [W, C, *patch] -> [W, 1, *patch]
        total = torch.sigmoid(net(windows).float())
        for axis in axes:
            total = total + torch.sigmoid(net(windows.flip(2 + axis)).float()).flip(2 + axis)
        return total / (1 + len(axes))

    def once(folder: Path) -> None:
        image = transform({"image": [str(p) for p in images]})["image"]
        with torch.no_grad(), autocast_to(torch.device("cpu"), inference_dtype(autocast, torch.device("cpu"))):
            probabilities = sliding_window_inference(image[None], patch, 1, probability, overlap=0.25,
                                                     mode="gaussian")
        mask = (probabilities[0] > 0.5).float()
        mask.applied_operations = image.applied_operations
        mask = Invertd("mask", transform, orig_keys="image", nearest_interp=True)({"mask": mask, "image": image})
        SaveImage(output_dir=str(folder), output_postfix="mask", separate_folder=False, print_log=False,
                  output_dtype="uint8")(mask["mask"])

    return timed(once, repeats, out), sum(p.numel() for p in net.parameters())


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    run, images, prompts_file = volumes(args.work)[args.volume]
    run = args.run or run
    images = args.image or images
    out = args.out / "rows" / f"{args.volume}_{args.method}_{args.autocast}_{args.mirror}_{args.count}"
    extra = {}
    if args.method == "ours":
        prompts = distinct_prompts(args.prompts_file or prompts_file, args.count)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        wall, cpu = ours(run, images, prompts, args.autocast, args.mirror, args.repeats, out)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        (wall, cpu), extra["unet_parameters"] = monai_unet(run, images, args.autocast, args.mirror, args.repeats,
                                                           out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak / 1024, "grown_mb": (peak - before) / 1024,
                      **extra}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", nargs="+", default=["fine", "brain"], choices=["fine", "brain"])
    parser.add_argument("--prompts", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--autocast", nargs="+", default=["none", "bf16"], choices=["none", "bf16", "auto"])
    parser.add_argument("--mirror", nargs="+", default=["none", "lr"], choices=sorted(MIRROR_AXES),
                        help="test-time augmentation of both models: none, or a left-right mirrored pass too")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("work/bench_prediction"))
    parser.add_argument("--work", type=Path, default=WORK, help="the folder holding the runs and data (work/)")
    # one row (a worker process)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--volume", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help="the run for --volumes' single volume (default: see above)")
    parser.add_argument("--image", type=Path, action="append", help="its channel files (default: see above)")
    parser.add_argument("--prompts-file", type=Path, help="its prompts.jsonl (default: see above)")
    args = parser.parse_args()
    if args.worker:
        args.autocast, args.mirror = args.autocast[0], args.mirror[0]
        worker(args)
        return
    from results_table import write_results

    rows = []
    for volume in args.volumes:
        jobs = [job for autocast in args.autocast for mirror in args.mirror
                for job in [("unet", autocast, mirror, 1)] + [("ours", autocast, mirror, count)
                                                              for count in args.prompts]]
        for method, autocast, mirror, count in jobs:
            command = [sys.executable, __file__, "--worker", "--volume", volume, "--method", method, "--autocast",
                       autocast, "--mirror", mirror, "--count", str(count), "--repeats", str(args.repeats),
                       "--threads",
                       str(args.threads), "--out", str(args.out), "--work", str(args.work)]
            for option, value in (("--run", args.run), ("--prompts-file", args.prompts_file)):
                command += [option, str(value)] if value else []
            for image in args.image or []:
                command += ["--image", str(image)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{volume} {method} {count}: {done.stderr[-2000:]}")
            row = {"volume": volume, "method": "MONAI UNet" if method == "unet" else "medtextseg",
                   "autocast": autocast, "mirror": mirror, "prompts": count if method == "ours" else None,
                   **json.loads(done.stdout.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
            rows.append(row)
        for row in rows:
            if row["volume"] == volume and row["method"] == "medtextseg":
                alike = [r for r in rows if r["volume"] == volume and r["autocast"] == row["autocast"]
                         and r["mirror"] == row["mirror"]]
                unet = next(r for r in alike if r["method"] == "MONAI UNet")
                one = next(r for r in alike if r["method"] == "medtextseg" and r["prompts"] == min(args.prompts))
                row |= {"over_unet": row["wall_s"] / unet["wall_s"], "over_1_prompt": row["wall_s"] / one["wall_s"],
                        "rss_over_1_prompt": row["peak_rss_mb"] / one["peak_rss_mb"]}
    for row in rows:
        for key in ("peak_rss_mb", "grown_mb"):
            row[key] = round(row[key])
    write_results(rows, COLUMNS, args.out, f"Prediction, files in and masks written ({args.threads} thread(s), "
                                          f"median of {args.repeats})")


if __name__ == "__main__":
    main()
