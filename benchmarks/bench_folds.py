"""Five-fold cross-validation and the fold ensemble on the synthetic bp-MRI benchmark (nnU-Net's protocol).

    .venv/bin/python benchmarks/bench_folds.py [--cases 100] [--steps 300] [--folds 5] [--threads 1] \
        [--calibrate] [--out work/bench_folds]

1. ``medtextseg synth --cases N`` (seed 0) into ``{out}/data``: train 70%, val 10%, test 20%.
2. One plan for the dataset (``{out}/plans.json``, as ``medtextseg train`` plans it), replayed by every fold.
3. ``--folds`` runs of the default preset, ``--steps`` steps each (the same budget), fold k trained on the other
   folds of the train + val cases and validated once, at its last step, on fold k (``{out}/folds/fold_k``; the
   folds are ``{out}/data/splits_final.json``); with ``--calibrate`` each run's presence threshold is then chosen
   on its own held-out fold (``calibrate-presence``).
4. Each fold alone, then their ensemble (``evaluate -m {out}/folds``: the mean of their probabilities, the gate
   on their mean presence against the mean of their thresholds), on the test split no fold has seen.

5. The reference every benchmark carries (``medtextseg.evaluation.reference``): a text-blind MONAI UNet at the
   folds' plan, trained on the train split for the mean time of one fold (against each fold) and for the time of
   all folds together (against their ensemble), scored on the same test prompts (lesion prompts; it cannot
   answer anatomy), mirrored as the folds predict.

Printed (and written to ``{out}/results.md``, ``results.json``): Dice per prompt kind for every fold, the folds'
mean ± std (ddof=1), the ensemble, its gain over the folds' mean and over the best fold, the two references, and
the overall gain per prompt (ensemble minus the folds' mean on the same prompt) with a 95% bootstrap interval
over the test cases.
Finished runs and evaluations are reused: rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from results_table import write_results

from medtextseg.config import Config
from medtextseg.data.planning import PLAN_FILE, planned_config
from medtextseg.data.synthetic import make_synthetic_dataset
from medtextseg.evaluation.presence_calibration import calibrate_presence
from medtextseg.evaluation.reference import score_unet, train_unet, training_seconds
from medtextseg.evaluation.runner import evaluate_run
from medtextseg.training.engine import train

GROUPS = ["single_2plus", "single", "all", "anatomy", "absent", "overall"]  # absent: Dice 1 = answered empty
BOOTSTRAP = 2000


def finished(run: Path) -> bool:
    log = run / "log.jsonl"
    return log.is_file() and '"event": "end"' in log.read_text()


def train_fold(data: Path, out: Path, fold: int, folds: int, steps: int, threads: int, calibrate: bool) -> float:
    """Train (or resume) fold ``fold`` into ``out/folds/fold_{fold}``; return the seconds spent training now."""
    run = out / "folds" / f"fold_{fold}"
    if finished(run):
        if calibrate and not (run / "calibration_presence.json").is_file():
            calibrate_presence(run, data, "val")
        return 0.0
    plan_file = out / PLAN_FILE
    overrides = [f"data.root={data}", f"data.fold={fold}", f"data.folds={folds}", f"train.steps={steps}",
                 f"train.val_every={steps}", f"train.num_threads={threads}"]
    config, plan = planned_config("default", overrides, plan_file if plan_file.is_file() else None)
    if not plan_file.is_file():
        plan.save(plan_file)
    started = time.perf_counter()
    train(config, run, resume=(run / "last.pt").is_file(), plan=plan)
    if calibrate:
        calibrate_presence(run, data, "val")
    return time.perf_counter() - started


def evaluate(model: Path, data: Path, out: Path) -> tuple[dict[str, dict], list[dict]]:
    """Summary rows by group and per-prompt records of ``model`` on the test split (reused when present)."""
    if not (out / "summary.json").is_file():
        evaluate_run(model, data, out, save_masks=False, overlays_per_group=0, progress=False)
    rows = {row["group"]: row for row in json.loads((out / "summary.json").read_text())}
    return rows, json.loads((out / "metrics_per_prompt.json").read_text())


def reference_dice(out: Path, data: Path, folds: int) -> dict[str, tuple[dict[str, float], int, float]]:
    """The text-blind MONAI UNet for one fold's mean training time and for all folds' time: per budget, its mean
    Dice per group of the test split, its steps and its seconds (weights in ``out/reference``, reused)."""
    runs = [out / "folds" / f"fold_{k}" for k in range(folds)]
    config = Config.load(runs[0] / "config.yaml")
    total = sum(training_seconds(run) for run in runs)
    references = {}
    for name, file, seconds in (("one fold's", "one_fold", total / folds), (f"{folds} folds'", "all_folds", total)):
        unet, steps = train_unet(data, config, seconds, out / "reference" / f"{file}.pt")
        records = score_unet(unet, data, config, tuple(config.inference.mirror_axes))
        groups = {group: float(np.mean([r["dice"] for r in records if r["group"] == group]))
                  for group in {r["group"] for r in records}}
        references[name] = (groups, steps, seconds)
    return references


def overall_gain(ensemble: list[dict], folds: list[list[dict]]) -> tuple[float, float, float]:
    """Mean over prompts of (ensemble Dice - the folds' mean Dice on that prompt), and its 95% bootstrap interval
    (cases resampled)."""
    keys = [(r["case"], r["prompt"]) for r in ensemble]
    for records in folds:
        assert [(r["case"], r["prompt"]) for r in records] == keys, "the evaluations scored other prompts"
    gain = np.array([r["dice"] for r in ensemble]) - np.mean([[r["dice"] for r in f] for f in folds], axis=0)
    cases = np.array([case for case, _ in keys])
    names = np.unique(cases)
    rows = [np.flatnonzero(cases == name) for name in names]
    rng = np.random.default_rng(0)
    means = [gain[np.concatenate([rows[i] for i in rng.integers(len(names), size=len(names))])].mean()
             for _ in range(BOOTSTRAP)]
    return float(gain.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300, help="training steps of every fold")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (train.num_threads)")
    parser.add_argument("--calibrate", action="store_true", help="choose each fold's presence threshold on its "
                        "held-out fold before testing")
    parser.add_argument("--out", type=Path, default=Path("work/bench_folds"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)  # evaluation too
    data = args.out / "data"
    if not (data / "dataset.json").is_file():
        make_synthetic_dataset(data, num_cases=args.cases, spatial_dims=3, seed=0)
    seconds = [train_fold(data, args.out, k, args.folds, args.steps, args.threads, args.calibrate)
               for k in range(args.folds)]
    started = time.perf_counter()
    evaluations = [evaluate(args.out / "folds" / f"fold_{k}", data, args.out / "eval" / f"fold_{k}")
                   for k in range(args.folds)]
    ensemble_rows, ensemble_records = evaluate(args.out / "folds", data, args.out / "eval" / "ensemble")
    evaluation_seconds = time.perf_counter() - started
    references = reference_dice(args.out, data, args.folds)

    results = []
    for group in GROUPS:
        if group not in ensemble_rows:
            continue
        dice = [rows[group]["dice_mean"] for rows, _ in evaluations]
        mean = float(np.mean(dice))
        ensemble = ensemble_rows[group]["dice_mean"]
        results.append({"kind": group, "n": ensemble_rows[group]["n"],
                        **{f"fold {k}": value for k, value in enumerate(dice)},
                        "folds mean ± std": f"{mean:.3f} ± {np.std(dice, ddof=1):.3f}", "folds_mean": mean,
                        "folds_std": float(np.std(dice, ddof=1)), "ensemble": ensemble,
                        "gain over mean": f"{ensemble - mean:+.3f}",
                        "gain over best fold": f"{ensemble - max(dice):+.3f}",
                        "folds beaten": f"{sum(ensemble > d for d in dice)}/{len(dice)}",
                        **{f"UNet, {name} time": groups.get(group) for name, (groups, _, _) in references.items()}})
    gain, low, high = overall_gain(ensemble_records, [records for _, records in evaluations])
    thresholds = json.loads((args.out / "eval" / "ensemble" / "ensemble.json").read_text())
    columns = ["kind", "n", *[f"fold {k}" for k in range(args.folds)], "folds mean ± std", "ensemble",
               "gain over mean", "gain over best fold", "folds beaten",
               *[f"UNet, {name} time" for name in references]]
    unets = "; ".join(f"{name} time: {steps} steps in {seconds / 60:.1f} min" for name, (_, steps, seconds)
                      in references.items())
    title = (f"{args.folds}-fold cross-validation, default preset, {args.steps} steps per fold: test-split Dice of "
             f"each fold and of their ensemble ({args.cases} synthetic cases), beside a text-blind MONAI UNet "
             f"trained on the train split ({unets}; lesion prompts only)")
    write_results(results, columns, args.out, title)
    summary = (f"overall gain per prompt (ensemble - folds' mean): {gain:+.3f} (95% bootstrap interval {low:+.3f} "
               f"to {high:+.3f}, {len({r['case'] for r in ensemble_records})} test cases, "
               f"{len(ensemble_records)} prompts); presence thresholds of the folds "
               f"{thresholds['member_presence_thresholds']} -> ensemble {thresholds['presence_threshold']}; "
               f"training {sum(seconds) / 60:.1f} min this call, evaluation {evaluation_seconds / 60:.1f} min")
    print(summary)
    with open(args.out / "results.md", "a", encoding="utf-8") as handle:
        handle.write(f"\n{summary}\n")
    payload = json.loads((args.out / "results.json").read_text())
    (args.out / "results.json").write_text(json.dumps({"rows": payload, "overall_gain": gain, "gain_ci95": [low, high],
                                                       "thresholds": thresholds, "train_seconds": seconds,
                                                       "evaluation_seconds": evaluation_seconds}, indent=1))


if __name__ == "__main__":
    main()
