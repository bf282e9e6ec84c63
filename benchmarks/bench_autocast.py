"""Inference autocast on the CPU: bf16 against float32 on a run's test split, speed and answers (issue 18).

    .venv/bin/python benchmarks/bench_autocast.py -m RUN -d DATA [--cases 8] [--prompts 8] [--threads 1]
                                                  [--out work/bench_autocast]

For each of the first ``--cases`` test cases of DATA (its ``splits.json``) and its first ``--prompts`` prompts
(``prompts.jsonl``), the run predicts in float32 and with ``inference.autocast=bf16``, alternating, in one
process; the table gives the CPU seconds of each (summed over cases; ``time.process_time``), the mean Dice of
each against the labels (the prompt's ``target`` labels; an absent target scores 1 for an empty answer, else 0),
the mean Dice between the two precisions' masks and the largest probability difference.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from results_table import write_results


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", type=Path, required=True)
    parser.add_argument("-d", "--data", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("work/bench_autocast"))
    args = parser.parse_args()

    import torch

    from medtextseg import load_model
    from medtextseg.data.io import read_array

    torch.set_num_threads(args.threads)
    test = json.loads((args.data / "splits.json").read_text())
    test = test[0]["test"] if isinstance(test, list) else test["test"]
    records: dict[str, list[dict]] = {}
    for line in (args.data / "prompts.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["case"] in test[: args.cases]:
            records.setdefault(record["case"], []).append(record)
    predictor = load_model(args.model, "cpu")
    predictor.progress = False
    seconds = {"none": 0.0, "bf16": 0.0}
    scores: dict[str, list[float]] = {"none": [], "bf16": []}
    agreement, largest = [], 0.0
    for case, prompts in records.items():
        prompts = prompts[: args.prompts]
        images = sorted((args.data / "imagesTr").glob(f"{case}_0*.nii.gz"))
        labels = read_array(args.data / "labelsTr" / f"{case}.nii.gz")
        answers = {}
        for repeat in range(2):  # alternating; the first round warms up, the second is timed
            for kind in ("none", "bf16"):
                predictor.set_inference([f"inference.autocast={kind}"])
                started = time.process_time()
                answers[kind] = predictor.predict(images, [p["prompt"] for p in prompts], uncertainty=False)
                seconds[kind] += (time.process_time() - started) * repeat
        for record, full, half in zip(prompts, answers["none"], answers["bf16"], strict=True):
            target = record.get("target") or []
            truth = np.isin(labels, target) if target else np.zeros(labels.shape, bool)
            scores["none"].append(dice(full.mask.astype(bool), truth))
            scores["bf16"].append(dice(half.mask.astype(bool), truth))
            agreement.append(dice(full.mask.astype(bool), half.mask.astype(bool)))
            largest = max(largest, float(np.abs(full.probability - half.probability).max()))
    rows = [{"autocast": kind, "cases": len(records), "answers": len(scores[kind]), "cpu_s": seconds[kind],
             "dice": float(np.mean(scores[kind])),
             "dice_vs_float32": float(np.mean(agreement)) if kind == "bf16" else 1.0,
             "largest_probability_difference": largest if kind == "bf16" else 0.0}
            for kind in ("none", "bf16")]
    rows[1]["speedup"] = rows[0]["cpu_s"] / rows[1]["cpu_s"]
    write_results(rows, ["autocast", "cases", "answers", "cpu_s", "speedup", "dice", "dice_vs_float32",
                         "largest_probability_difference"], args.out,
                  f"Inference autocast on the CPU ({args.model}, {args.threads} thread(s))")


if __name__ == "__main__":
    main()
