"""Folder prediction (one process, one model load) against a shell loop of single-case predict calls (issue 16).

    .venv/bin/python benchmarks/bench_folder_predict.py [--cases 30] [--prompts 5] [--model RUN]
                                                        [--out work/bench_folder_predict]

N synthetic 3D cases (``make_synthetic_dataset``, default size; their three channel files copied into
``{out}/cases`` in the nnU-Net layout) are segmented with the same prompts twice, each time from a cold process
as a user would run it:

* folder: ``python -m medtextseg.cli predict -m MODEL -i {out}/cases -o {out}/folder -p ... (x prompts)``;
* loop: ``{out}/loop.sh``, a bash loop of one ``predict -i c_0000 -i c_0001 -i c_0002 -o {out}/loop/{case}``
  per case (each call pays the imports and the model load).

The model is ``--model`` or, by default, the default preset untrained (3 channels; the weights do not change
the time). One untimed single-case call first fills the prompt-embedding cache that both then read. The table
gives wall seconds, seconds per case, cases per second and the loop / folder ratio, and checks that both wrote
the same masks; it is printed and written to ``{out}/results.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from results_table import write_results

from medtextseg.config import Config
from medtextseg.data.io import read_array
from medtextseg.data.synthetic import make_synthetic_dataset
from medtextseg.models.checkpoint import save_checkpoint
from medtextseg.models.factory import create_model

PROMPTS = ["the prostate gland", "the peripheral zone", "the transition zone", "the lesion in the left PZ",
           "all lesions"]
COLUMNS = ["mode", "cases", "prompts", "processes", "wall_s", "s_per_case", "cases_per_s", "loop_over_folder",
           "same_masks"]


def cases_folder(out: Path, cases: int) -> list[str]:
    """Copy the channel files of ``cases`` synthetic cases into ``out/cases``; return the case names."""
    data = out / "data"
    if not (data / "dataset.json").is_file() or len(list((data / "imagesTr").glob("*_0000.nii.gz"))) < cases:
        shutil.rmtree(data, ignore_errors=True)
        make_synthetic_dataset(data, num_cases=max(cases, 3), spatial_dims=3, seed=0)
    folder = out / "cases"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    names = sorted(p.name[: -len("_0000.nii.gz")] for p in (data / "imagesTr").glob("*_0000.nii.gz"))[:cases]
    for name in names:
        for channel in sorted((data / "imagesTr").glob(f"{name}_0*.nii.gz")):
            shutil.copy(channel, folder / channel.name)
    return names


def default_model(out: Path) -> Path:
    """The default preset, untrained, as a run folder (``best.pt``)."""
    config = Config.load("default")
    torch.manual_seed(0)
    model = create_model(config.model, 384)
    save_checkpoint(out / "model" / "best.pt", {"model": model.state_dict(), "config": config.model_dump(),
                                                "text_dim": 384, "channel_names": ["T2W", "ADC", "HBV"]})
    return out / "model"


def predict_command(model: Path, inputs: list[Path], out: Path, prompts: list[str]) -> list[str]:
    return [sys.executable, "-m", "medtextseg.cli", "predict", "-m", str(model),
            *[a for p in inputs for a in ("-i", str(p))], "-o", str(out), *[a for p in prompts for a in ("-p", p)]]


def timed(command: list[str], log: Path) -> float:
    """Wall seconds of ``command`` (its output to ``log``); raises if it fails."""
    with open(log, "w") as handle:
        started = time.perf_counter()
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{shlex.join(command[:6])} ... failed (exit {code}); see {log}")
    return wall


def same_masks(out: Path, names: list[str], prompts: list[str]) -> bool:
    """Whether the folder run's masks equal the loop's (``mask_NN`` in prompt order), voxel for voxel."""
    records = json.loads((out / "folder" / "predictions.json").read_text())["masks"]
    for record in records:
        number = prompts.index(record["prompt"])
        single = read_array(out / "loop" / record["case"] / f"mask_{number:02d}.nii.gz")
        if not np.array_equal(read_array(out / "folder" / record["file"]), single):
            return False
    return len(records) == len(names) * len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=30, help="number of cases (N)")
    parser.add_argument("--prompts", type=int, default=5, choices=range(1, len(PROMPTS) + 1),
                        help="prompts per case")
    parser.add_argument("--model", type=Path, default=None, help="run folder or checkpoint (default: the default "
                                                                 "preset, untrained)")
    parser.add_argument("--out", type=Path, default=Path("work/bench_folder_predict"))
    args = parser.parse_args()
    if args.cases < 1:
        parser.error("--cases must be at least 1")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = cases_folder(out, args.cases)
    model = args.model.resolve() if args.model else default_model(out)
    prompts = PROMPTS[: args.prompts]
    for result in ("folder", "loop", "warmup"):
        shutil.rmtree(out / result, ignore_errors=True)
    first = sorted((out / "cases").glob(f"{names[0]}_0*.nii.gz"))
    timed(predict_command(model, first, out / "warmup", prompts), out / "warmup.log")

    folder_s = timed(predict_command(model, [out / "cases"], out / "folder", prompts), out / "folder.log")
    base = shlex.join([sys.executable, "-m", "medtextseg.cli", "predict", "-m", str(model)])
    cases = shlex.quote(str(out / "cases"))
    channels = " ".join(f'-i {cases}/"$case"_{c:04d}.nii.gz' for c in range(len(first)))
    lines = ["#!/usr/bin/env bash", "set -euo pipefail", f"for case in {' '.join(map(shlex.quote, names))}; do",
             f'  {base} {channels} -o {shlex.quote(str(out / "loop"))}/"$case" '
             + " ".join(f"-p {shlex.quote(p)}" for p in prompts)]
    lines.append("done")
    script = out / "loop.sh"
    script.write_text("\n".join(lines) + "\n")
    loop_s = timed(["bash", str(script)], out / "loop.log")

    same = same_masks(out, names, prompts)
    rows = [{"mode": mode, "cases": len(names), "prompts": len(prompts), "processes": processes, "wall_s": wall,
             "s_per_case": wall / len(names), "cases_per_s": len(names) / wall,
             "loop_over_folder": loop_s / folder_s, "same_masks": same}
            for mode, processes, wall in (("folder (one call)", 1, folder_s), ("shell loop", len(names), loop_s))]
    write_results(rows, COLUMNS, out, f"predict over {len(names)} cases x {len(prompts)} prompts: one call vs a "
                                      "shell loop")


if __name__ == "__main__":
    main()
