"""Training memory and speed against the number of cases, with the preprocessed cache (issue 14, item 5).

    .venv/bin/python benchmarks/bench_cache_scale.py [--cases 150 1500] [--steps 30] [--workers 0] [--threads N]
                                                     [--out work/bench_cache_scale]

For each case count N: a synthetic 3D dataset of N cases (``make_synthetic_dataset``, default size; reused when
already made), its preprocessed cache removed, then two short trainings of the default preset, each in its own
process (``python -m medtextseg.cli train -d DATA -o RUN --set train.steps=S --set train.val_every=1000
--set train.val_cases=1``):

* first: the cache is empty, every case is prepared into it;
* second: a new run on the same data, which reads every case from the cache and prepares none.

Measured per run: peak RSS of the training process (``os.wait4``'s ``ru_maxrss``, which covers the planning, the
preparation and the loop), steps/s over the logged steps after the first 10 (the first window holds the warm-up;
all steps when fewer were run), the seconds from the process start to the training loop (imports, plan, checks,
preparation or reading, text, model), and how many cases were prepared / read (the run's start record). The last
rows give the ratios of the largest N to the smallest: issue 14 asks for RAM within 1.2x and steps/s within 10%
from 150 to 1,500 cases. The table is printed and written to ``{out}/results.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from results_table import write_results

from medtextseg.data.synthetic import make_synthetic_dataset

COLUMNS = ["cases", "run", "cases_prepared", "cases_read", "seconds_to_loop", "setup_seconds", "steps_per_s",
           "peak_rss_mb", "cache_mb"]


def dataset(out: Path, cases: int) -> Path:
    """A synthetic 3D dataset of ``cases`` cases under ``out`` (made once, then reused)."""
    root = out / f"data_{cases}"
    made = len(list((root / "imagesTr").glob("*_0000.nii.gz"))) if (root / "dataset.json").is_file() else 0
    if made != cases:
        make_synthetic_dataset(root, num_cases=cases, spatial_dims=3, seed=0, progress=True)
    return root


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20 if folder.exists() else 0.0


def steps_per_second(log: list[dict]) -> float | None:
    """Steps/s between the first and the last logged step record (from 0 when only one was logged)."""
    steps = [(r["step"], r["seconds"]) for r in log if "loss" in r and "seconds" in r]
    if not steps:
        return None
    (first_step, first_s), (last_step, last_s) = steps[0], steps[-1]
    if len(steps) == 1:
        first_step, first_s = 0, 0.0
    return (last_step - first_step) / max(last_s - first_s, 1e-9)


def train_once(data: Path, run: Path, steps: int, workers: int, threads: int | None) -> dict:
    """Train in a child process; its peak RSS, timings and what its start record says about the cache."""
    shutil.rmtree(run, ignore_errors=True)
    command = [sys.executable, "-m", "medtextseg.cli", "train", "-d", str(data), "-o", str(run),
               "--set", f"train.steps={steps}", "--set", "train.val_every=1000", "--set", "train.val_cases=1",
               "--set", f"train.num_workers={workers}"]
    if threads:
        command += ["--set", f"train.num_threads={threads}"]
    console = run.with_name(run.name + ".console.txt")
    with open(console, "w") as handle:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN keeps the max of all)
        wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"training failed ({child.returncode}); see {console}:\n{console.read_text()[-3000:]}")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    start = next(r for r in log if r.get("event") == "start")
    end = next(r for r in log if r.get("event") == "end")
    return {"cases_prepared": start["cases_prepared"], "cases_read": start["cases_read"],
            "setup_seconds": start["setup_seconds"], "seconds_to_loop": round(wall - end["seconds"], 2),
            "steps_per_s": steps_per_second(log), "peak_rss_mb": usage.ru_maxrss / 1024, "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[150, 1500])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=0, help="train.num_workers")
    parser.add_argument("--threads", type=int, default=None, help="train.num_threads (default: PyTorch's)")
    parser.add_argument("--out", type=Path, default=Path("work/bench_cache_scale"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for cases in sorted(args.cases):
        data = dataset(args.out, cases)
        shutil.rmtree(data / ".medtextseg_cache" / "preprocessed", ignore_errors=True)  # the first run prepares
        for name in ("first", "second"):
            row = {"cases": cases, "run": name,
                   **train_once(data, args.out / f"run_{cases}_{name}", args.steps, args.workers, args.threads)}
            row["cache_mb"] = folder_mb(data / ".medtextseg_cache" / "preprocessed")
            rows.append(row)
            print(json.dumps(row), flush=True)
    small, large = min(args.cases), max(args.cases)
    for name in ("first", "second"):
        low = next(r for r in rows if r["cases"] == small and r["run"] == name)
        high = next(r for r in rows if r["cases"] == large and r["run"] == name)
        rows.append({"cases": f"{large} / {small}", "run": f"{name}, ratio",
                     "peak_rss_mb": high["peak_rss_mb"] / low["peak_rss_mb"],
                     "steps_per_s": (high["steps_per_s"] / low["steps_per_s"]
                                     if high["steps_per_s"] and low["steps_per_s"] else None)})
    write_results(rows, COLUMNS, args.out, f"Preprocessed cache: {args.steps} training steps, "
                  f"{args.workers} worker(s), peak RSS and speed against the number of cases")


if __name__ == "__main__":
    main()
