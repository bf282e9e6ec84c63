"""Align-then-Refine ablation on the synthetic bp-MRI 3D set, one training budget for every variant.

    .venv/bin/python benchmarks/bench_align_refine.py [--steps 600] [--stage2-steps 200] [--out work/bench_atr]

As published, Align-then-Refine segments every lesion for one fixed prompt, so every variant trains on the
"all lesions" prompts (``data.kind_weights``: all 1, the other kinds 0) and is scored on them:

* stage 1, ``--steps`` each: one early-fusion encoder (``model.encoders=1``) vs one encoder per sequence; the latter
  without and with the bottleneck alignment + heatmap losses (warm-up, ramp and stability gate of ``atr``);
* stage 2, ``--stage2-steps`` each, both from the aligned multi-encoder's best checkpoint with the heads
  re-initialised: with the confidence-gated refiner (``atr_refine``) and without it (the control: the same
  transfer and steps).

Columns: Dice (as predicted, and post-processed to the largest component plus those of >= 20 voxels), HD95 (mm,
over finite values, with the count of infinite ones), NSD at 1 mm on the test split's "all lesions" prompts, and
the case-level AUROC, lesion-level AP and PI-CAI score of ``picai_eval``. Finished runs are reused (rerun to resume);
the table is printed and written to ``{out}/results.md`` and ``results.json``. The reference row
(``monai_reference.py``) is a text-blind MONAI UNet trained on the same data for the wall time of the slowest
stage-1 variant and scored on the same prompts (no post-processed or ``picai_eval`` columns).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from results_table import write_results

from medtextseg.config import Config
from medtextseg.data.synthetic import make_synthetic_dataset
from medtextseg.evaluation.reference import group_summary, reference
from medtextseg.evaluation.runner import evaluate_run
from medtextseg.training.engine import train

ALL_LESIONS = ["data.kind_weights={all: 1.0, single: 0.0, absent: 0.0, anatomy: 0.0}"]
NO_AUX = ["loss.terms.pixel_text_heat=0", "loss.terms.pixel_text_align=0", "model.blocks.similarity=null"]
STAGE1 = {"early fusion": ["model.encoders=1", *NO_AUX],
          "multi-encoder": NO_AUX,
          "multi-encoder + align/heat": []}
STAGE2 = {"+ refiner (stage 2)": [], "no refiner (stage 2 control)": ["model.blocks.refiner=null"]}
ALIGNED = "multi-encoder + align/heat"


def folder_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def run_variant(preset: str, overrides: list[str], data: Path, steps: int, folder: Path) -> dict:
    run, evaluation = folder / "run", folder / "eval"
    if not (evaluation / "summary.json").is_file():
        log = run / "log.jsonl"
        if not (log.is_file() and '"event": "end"' in log.read_text()):
            config = Config.load(preset, [f"data.root={data}", f"train.steps={steps}", f"train.val_every={steps}",
                                          *ALL_LESIONS, *overrides])
            train(config, run, resume=(run / "last.pt").is_file())
        evaluate_run(run, data, evaluation, save_masks=False, overlays_per_group=1, component_sweep=[20])
    rows = {row["group"]: row for row in json.loads((evaluation / "summary.json").read_text())}
    swept = {row["group"]: row for row in json.loads((evaluation / "component_sweep.json").read_text())}
    detection = json.loads((evaluation / "lesion_detection.json").read_text())
    lesions = rows["all"]
    return {"dice": lesions["dice_mean"], "dice_lcc_min20": swept["all"]["dice_mean"], "hd95": lesions["hd95_mean"],
            "hd95_inf": lesions["hd95_inf"], "nsd": lesions["nsd_mean"], "auroc": detection["auroc"],
            "ap": detection["ap"], "picai_score": detection["picai_score"], "n": lesions["n"]}


def reference_row(data: Path, runs: list[Path], weights: Path) -> dict:
    """The text-blind MONAI UNet (``monai_reference.py``) given the wall time of the slowest of ``runs`` (stage 1)
    at their plan, scored on the same "all lesions" prompts."""
    records, steps, seconds = reference(runs, data, weights)
    lesions = group_summary(records)["all"]
    return {"variant": "MONAI UNet, text-blind", "steps": f"{steps} ({seconds / 60:.1f} min)",
            **{name: lesions[name] for name in ("n", "dice", "hd95", "hd95_inf", "nsd")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--stage2-steps", type=int, default=200)
    parser.add_argument("--cases", type=int, default=150)
    parser.add_argument("--data", type=Path, help="a synthetic 3D dataset (default: made in --out)")
    parser.add_argument("--out", type=Path, default=Path("work/bench_atr"))
    args = parser.parse_args()
    data = args.data or args.out / "data_3d"
    if not (data / "dataset.json").is_file():
        make_synthetic_dataset(data, num_cases=args.cases, spatial_dims=3, seed=0)
    results = []
    for name, overrides in STAGE1.items():
        results.append({"variant": name, "steps": args.steps,
                        **run_variant("atr", overrides, data, args.steps, args.out / folder_name(name))})
    results.append(reference_row(data, [args.out / folder_name(name) / "run" for name in STAGE1],
                                 args.out / "monai_unet.pt"))
    stage1 = args.out / folder_name(ALIGNED) / "run"
    for name, overrides in STAGE2.items():
        results.append({"variant": name, "steps": f"{args.steps} + {args.stage2_steps}",
                        **run_variant("atr_refine", [f"train.init_from={stage1}", *overrides], data,
                                      args.stage2_steps, args.out / folder_name(name))})
    columns = ["variant", "steps", "n", "dice", "dice_lcc_min20", "hd95", "hd95_inf", "nsd", "auroc", "ap",
               "picai_score"]
    write_results(results, columns, args.out,
                  "Align-then-Refine ablation (synthetic 3D test split, 'all lesions' prompts)")

if __name__ == "__main__":
    main()
