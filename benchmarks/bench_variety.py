"""Data nobody tuned for: the default, planned from each dataset, against a text-blind MONAI UNet given the same time.

    .venv/bin/python benchmarks/bench_variety.py [--variants fine iso1mm aal] [--cases 120] [--steps N] [--threads 1]
        [--held-out 200]

For each variant, ``medtextseg synth`` writes a dataset made differently from the one the default was tuned on
(spacing, field of view, stored voxel order, and a third of the test prompts in wordings training never uses),
or ``medtextseg convert aal`` turns the Colin27 brain and its AAL atlas into 40 deformed heads with 16 named
structures (``aal``: real anatomy; needs ``scripts/setup_atlas.sh``), then, as a user would from the README:

1. ``medtextseg train`` with the default preset and nothing set (the plan adapts it; ``--steps`` sets the steps),
   ``medtextseg calibrate-presence`` and ``medtextseg evaluate`` on the test split;
2. a text-blind MONAI ``UNet`` (residual units, DiceCE, positive/negative crops 2:1, MONAI transforms at the
   same planned spacing and patch) trained for the same wall time as step 1's training, in the same precision
   (``train.amp``: bfloat16 autocast on a CPU with bfloat16 units, as ours), then scored on the same
   prompts with the same metrics. On lesion data it learns "all lesions" and answers every lesion prompt with
   them (it cannot answer anatomy prompts); on data without lesion prompts (``aal``) it learns every label of
   ``dataset.json`` at once (softmax) and answers each prompt with the union of the labels the prompt names,
   which the text-blind model is told.

The table: Dice per prompt group on the prompts in wordings training used (``single`` = one lesion in a
one-lesion case, ``single_2plus`` = one named lesion among 2-3), absent targets answered empty, and Dice over
all seen vs all unseen wordings (each group's Dice on unseen wordings is in ``results.json``). Everything is
written to ``OUT/results.{json,md}``; each variant's folder keeps the dataset, the runs and the evaluations.
Runs resume: a finished step is not redone.

A test split of 24 cases holds few prompts of some groups (about 12 ``single`` prompts in seen wording), so one
answer moves their mean by several points. ``--held-out N`` also scores both trained models on N more cases of
the same synthetic variant drawn with another seed (``synth --seed 1 --splits 0,0,1``: all of them test cases,
a third of their prompts in unseen wordings), adds a row per model for them, and compares the two models prompt
by prompt on the lesion groups (``OUT/paired.md``: mean difference ours - UNet with its 95% interval, paired
t-test and Wilcoxon signed-rank test, over the test split and the held-out cases together).

``--tta`` also scores both models with left-right mirror test-time augmentation, the one flip both trained
with, in rows and pairings of their own: every window is also read mirrored left-right and the two answers are
averaged (ours reads the mirrored window with "left" and "right" swapped in the prompt:
``evaluate --set inference.mirror_axes=[0]``). On ``aal`` the UNet is read once: it learns left and right
structures as labels of their own, never flipped, so a mirrored pass would swap them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from medtextseg.config import Config
from medtextseg.evaluation.reference import has_lesion_prompts, score_unet, train_unet, training_seconds
from medtextseg.study.statistics import paired_tests

sys.path.insert(0, str(Path(__file__).parent))
from results_table import write_results  # noqa: E402

ATLAS = "/usr/share/mricron/templates"  # scripts/setup_atlas.sh installs it (Debian mricron-data)
VARIANTS = {
    # a bp-MRI protocol of finer in-plane resolution and wider view, stored LPS and oblique (the case)
    "fine": ["--spacing", "0.5,0.5,3.0", "--fov", "48,48,72", "--voxel-order", "LPS"],
    # isotropic 1 mm, a larger field of view, stored in another axis order
    "iso1mm": ["--spacing", "1.0,1.0,1.0", "--fov", "72,72,48", "--voxel-order", "PIL"],
    # the benchmark the default was tuned on, with the same unseen wordings (a reference row)
    "native": [],
    # real anatomy: Colin27 + AAL, 16 structures and their "both sides" prompts (medtextseg convert aal defaults)
    "aal": None,
}


def medtextseg(*args: str, threads: int | None = None) -> None:
    """Run a medtextseg command as a user would (on ``threads`` CPU threads); stop the benchmark if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    subprocess.run([sys.executable, "-m", "medtextseg.cli", *args], check=True, env=env)


def summary(records: list[dict], wording: dict[tuple[str, str], str]) -> dict[str, float]:
    """Mean Dice per group on prompts in seen wording, absent targets answered empty (seen wording), and Dice
    over all seen / all unseen wordings.

    Groups are scored on seen wordings only, so that a wording the text encoder does not know is not counted as
    a lesion the network failed to find (the text-blind UNet is unaffected by wording either way); the
    ``seen`` / ``unseen`` columns show the wording's effect over every prompt kind, and ``{group}_unseen``
    (in the JSON) each group's Dice on unseen wordings; ``n_{group}`` the number of prompts behind each mean.
    """
    groups: dict[str, list[float]] = defaultdict(list)
    for record in records:
        phrasing = wording.get((record["case"], record["prompt"]), "seen")
        groups[record["group"] if phrasing == "seen" else f"{record['group']}_unseen"].append(record["dice"])
        groups[phrasing].append(record["dice"])
    row = {name: float(np.mean(values)) for name, values in groups.items()}
    row |= {f"n_{name}": len(values) for name, values in groups.items()}  # prompts behind each mean
    row["absent_empty"] = row.pop("absent", None)  # absent: Dice 1 exactly when the answer is empty
    row["absent_empty_unseen"] = row.pop("absent_unseen", None)
    return row


def paired_lesion_groups(ours: list[dict], theirs: list[dict], wording: dict[tuple[str, str], str]
                         ) -> list[dict]:
    """Ours against the UNet prompt by prompt (the same case and prompt), per lesion group, on seen wordings:
    :func:`~medtextseg.study.statistics.paired_tests` of the per-prompt Dice (differences ours - UNet)."""
    theirs_by_prompt = {(r["case"], r["prompt"]): r["dice"] for r in theirs}
    pairs: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for record in ours:
        key = (record["case"], record["prompt"])
        if key in theirs_by_prompt and wording.get(key, "seen") == "seen":
            pairs[record["group"]][0].append(record["dice"])
            pairs[record["group"]][1].append(theirs_by_prompt[key])
    return [{"group": group, **paired_tests(*pairs[group])} for group in ("single", "single_2plus", "all")
            if group in pairs]


def write_paired(rows: list[dict], out: Path) -> None:
    """``OUT/paired.md`` and ``paired.json``: ours - UNet per variant and lesion group, prompt by prompt."""
    lines = ["# Ours - the text-blind UNet, prompt by prompt (seen wordings; test split and held-out cases)", "",
             "| variant | group | prompts | ours | UNet | difference (95% CI) | paired t p | Wilcoxon p |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        interval = "–" if row["ci_low"] is None else f"({row['ci_low']:+.3f}, {row['ci_high']:+.3f})"
        p_values = [("–" if row[test] is None else f"{row[test]:.2g}") for test in ("t_p", "wilcoxon_p")]
        lines.append(f"| {row['variant']} | {row['group']} | {row['n']} | {row['mean_a']:.3f} | {row['mean_b']:.3f} | "
                     f"{row['mean_difference']:+.3f} {interval} | {p_values[0]} | {p_values[1]} |")
    text = "\n".join(lines) + "\n"
    (out / "paired.md").write_text(text)
    (out / "paired.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)


def prompt_wordings(data: Path) -> dict[tuple[str, str], str]:
    """(case, prompt) -> "seen" or "unseen" (``meta.wording``; "seen" where the dataset does not say)."""
    return {(line["case"], line["prompt"]): line.get("meta", {}).get("wording", "seen")
            for line in map(json.loads, (data / "prompts.jsonl").read_text().splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["fine", "iso1mm"], choices=sorted(VARIANTS))
    parser.add_argument("--cases", type=int, default=120)
    parser.add_argument("--steps", type=int, default=None, help="training steps of the default (default: the "
                        "preset's own)")
    parser.add_argument("--unseen-wording", type=float, default=0.33)
    parser.add_argument("--seed", type=int, default=0, help="train.seed of ours and the UNet's seed")
    parser.add_argument("--out", type=Path, default=Path("work/bench_variety"))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of every training and prediction "
                        "(both models alike; 1 leaves a core free on a shared 2-core machine)")
    parser.add_argument("--held-out", type=int, default=0, help="also score both models on this many more cases "
                        "of each synthetic variant, drawn with another seed (0: none)")
    parser.add_argument("--tta", action="store_true", help="also score both models with left-right mirror "
                        "test-time augmentation")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run_medtextseg = functools.partial(medtextseg, threads=args.threads)
    rows, paired = [], []
    for variant in args.variants:
        folder = args.out / variant
        data, run, evaluation = folder / "data", folder / "run", folder / "eval"
        if not (data / "dataset.json").is_file() and VARIANTS[variant] is None:
            run_medtextseg("convert", "aal", "--src", ATLAS, "--dst", str(data))
        elif not (data / "dataset.json").is_file():
            run_medtextseg("synth", "--out", str(data), "--cases", str(args.cases),
                           "--unseen-wording", str(args.unseen_wording), *VARIANTS[variant])
        log = (run / "log.jsonl").read_text().splitlines() if (run / "log.jsonl").is_file() else []
        if not any(json.loads(line).get("event") == "end" for line in log):
            resume = ["--resume"] if (run / "last.pt").is_file() else []
            steps = ["--set", f"train.steps={args.steps}"] if args.steps else []
            run_medtextseg("train", "--data", str(data), "--out", str(run), *resume, *steps,
                           "--set", f"train.seed={args.seed}")
            run_medtextseg("calibrate-presence", "-m", str(run), "-d", str(data))
        seconds = training_seconds(run)
        config = Config.load(run / "config.yaml")
        unet, unet_steps = train_unet(data, config, seconds, folder / "unet.pt", args.seed)
        plan = json.loads((run / "plans.json").read_text())
        common = {"variant": variant, "spacing": "x".join(f"{s:g}" for s in plan["spacing"]),
                  "patch": "x".join(map(str, plan["patch_size"])), "minutes": round(seconds / 60, 1)}
        scored = [(variant, data, evaluation)]
        if args.held_out and VARIANTS[variant] is not None:
            held_out = folder / "held_out"
            if not (held_out / "dataset.json").is_file():
                run_medtextseg("synth", "--out", str(held_out), "--cases", str(args.held_out), "--seed", "1",
                               "--splits", "0,0,1", "--unseen-wording", str(args.unseen_wording), *VARIANTS[variant])
            scored.append((f"{variant}, {args.held_out} held-out cases", held_out, folder / "eval_held_out"))
        # (row suffix, our evaluate's extra arguments, the UNet's mirror axes, our evaluation folder suffix)
        mirror = (" + left-right mirror TTA", ["--set", "inference.mirror_axes=[0]"], (0,), "_mirror")
        modes = [("", [], (), "")] + ([mirror] if args.tta else [])
        for suffix, tta, unet_axes, folder_suffix in modes:
            ours_records, theirs_records, wordings = [], [], {}
            for name, cases, scores in scored:
                scores = scores.with_name(scores.name + folder_suffix)
                if not (scores / "metrics_per_prompt.json").is_file():
                    run_medtextseg("evaluate", "-m", str(run), "-d", str(cases), "-o", str(scores), *tta)
                wording = prompt_wordings(cases)
                ours = json.loads((scores / "metrics_per_prompt.json").read_text())
                theirs = score_unet(unet, cases, config, unet_axes if has_lesion_prompts(cases) else ())
                tag = name  # the two datasets reuse case ids: keep their prompts apart in the pairing
                ours_records += [r | {"case": f"{tag}/{r['case']}"} for r in ours]
                theirs_records += [r | {"case": f"{tag}/{r['case']}"} for r in theirs]
                wordings |= {(f"{tag}/{case}", prompt): kind for (case, prompt), kind in wording.items()}
                theirs_row = summary(theirs, wording)
                if has_lesion_prompts(cases):  # it answers lesion prompts only: no overall figure to set beside ours
                    theirs_row |= {"seen": None, "unseen": None}
                rows.append(common | {"variant": name, "model": f"medtextseg default ({config.train.steps} steps)"
                                      f"{suffix}", **summary(ours, wording)})
                rows.append(common | {"variant": name, "model": f"MONAI UNet, text-blind ({unet_steps} steps)"
                                      f"{suffix}", **theirs_row})
            if has_lesion_prompts(data):
                paired += [{"variant": variant + suffix, **row}
                           for row in paired_lesion_groups(ours_records, theirs_records, wordings)]
    write_results(rows, ["variant", "spacing", "patch", "model", "minutes", "single", "single_2plus", "all",
                         "absent_empty", "anatomy", "bilateral", "seen", "unseen"], args.out,
                  "The default on data it was not tuned on, against a text-blind MONAI UNet given the same time "
                  "(prompt groups: seen wordings)")
    if paired:
        write_paired(paired, args.out)


if __name__ == "__main__":
    main()
