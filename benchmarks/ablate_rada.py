"""RADA's ablations over seeds: the dynamic beta (the paper's Fig. 4) and the visual-prompt planes (Fig. 5).

    .venv/bin/python benchmarks/ablate_rada.py [--seeds 0 1 2] [--steps 100] [--cases 40] [--out work/ablate_rada]

The data and budget are ``bench_rada.py``'s (40 synthetic volumes, 10% of the training volumes labelled by one
sagittal, coronal and axial slice each, the transition zone as target, channels 8-64, 2 entropy passes, the
schedules scaled from 6000 steps to ``--steps``). Every configuration is ``rada`` with one change:

* RADA: beta ramped in (sigmoid, raised stepwise) and each network's region prototype made from the orthogonal
  pair of planes that supervises it (SC, AS, AC);
* fixed beta: beta at its maximum (0.1) from the first step;
* no cross pseudo supervision: beta = 0 (the unlabelled volumes teach nothing);
* parallel visual prompts: every network's prototype from its volumes' axial slices alone (each labelled volume
  has one annotated slice per plane, so the paper's "AA" pair is the axial slice here).

Each (configuration, seed) is scored on the test split with the three networks' mean probability: Dice per
volume, averaged. The table gives mean +- std over seeds, and every configuration is compared with RADA by a
paired t-test and a Wilcoxon signed-rank test over seeds (Holm-corrected over the comparisons; with 3 pairs the
Wilcoxon test cannot go below p = 0.25). Finished runs are reused; the table is printed and written to
``{out}/results.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_rada import benchmark_data, evaluate, finished, folder_name, run_overrides

from medtextseg.config import Config
from medtextseg.study.statistics import compare_configurations, describe
from medtextseg.training.engine import train

REFERENCE = "RADA (dynamic beta, orthogonal visual prompts)"
CONFIGURATIONS = {
    REFERENCE: [],
    "fixed beta (0.1 from step 1)": ["cotraining.beta_ramp_steps=1", "cotraining.beta_ramp_every=1"],
    "no cross pseudo supervision (beta 0)": ["cotraining.beta=0"],
    "parallel visual prompts (axial slices only)": ["cotraining.prompt_views=[A,A,A]"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--passes", type=int, default=2, help="cotraining.uncertainty_passes (RADA: 8)")
    parser.add_argument("--channels", default="[8,16,32,64]")
    parser.add_argument("--threads", type=int, default=None, help="train.num_threads")
    parser.add_argument("--out", type=Path, default=Path("work/ablate_rada"))
    args = parser.parse_args()
    _, sparse = benchmark_data(args.out, args.cases)
    shared = run_overrides(sparse, args.steps, args.channels, args.passes) + (
        [f"train.num_threads={args.threads}"] if args.threads else [])
    dice: dict[str, dict[int, float]] = {name: {} for name in CONFIGURATIONS}
    for seed in args.seeds:  # seed by seed: a stopped ablation has whole seeds to compare
        for name, overrides in CONFIGURATIONS.items():
            run = args.out / folder_name(name) / f"seed_{seed}"
            if not finished(run):
                config = Config.load("rada", [*shared, *overrides, f"train.seed={seed}"])
                train(config, run, resume=(run / "last.pt").is_file())
            dice[name][seed] = evaluate(run, sparse)["average"]["dice"][0]
            print(f"{name}, seed {seed}: Dice {dice[name][seed]:.4f}", flush=True)

    comparisons = {row["configuration_b"]: row for row in compare_configurations(dice)
                   if row["configuration_a"] == REFERENCE}
    lines = [f"RADA ablation: {args.cases} synthetic volumes, 10% of the training volumes labelled by 3 slices, "
             f"{args.steps} steps a run (schedules scaled from 6000), seeds {args.seeds}; test Dice of the three "
             "networks' mean, mean +- std over seeds; paired over seeds against RADA (Holm over all pairs)", "",
             "| configuration | Dice | per seed | difference to RADA | paired t p (Holm) | Wilcoxon p (Holm) |",
             "|---|---|---|---|---|---|"]
    for name, values in dice.items():
        summary = describe(list(values.values()))
        spread = f" ± {summary['std']:.3f}" if summary["std"] is not None else ""
        per_seed = ", ".join(f"{value:.3f}" for value in values.values())
        row = comparisons.get(name)
        if row is None:
            lines.append(f"| {name} | {summary['mean']:.3f}{spread} | {per_seed} | – | – | – |")
            continue
        cells = [f"{-row['mean_difference']:+.3f}"]
        for test in ("t_p", "wilcoxon_p"):
            cells.append("–" if row[test] is None else f"{row[test]:.3f} ({row[f'{test}_holm']:.3f})")
        lines.append(f"| {name} | {summary['mean']:.3f}{spread} | {per_seed} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)},
                                                       "dice": dice, "comparisons": list(comparisons.values())},
                                                      indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
