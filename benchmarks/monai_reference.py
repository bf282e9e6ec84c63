"""The text-blind reference for finished runs, from the command line (``medtextseg.evaluation.reference``): a MONAI
``UNet`` trained for the wall time of the slowest of them, at the first one's plan and on its dataset (``--data``
for another), scored on the test split. Prints Dice, HD95 and NSD per lesion group (``OUT/results.md``, per prompt
in ``OUT/records.json``, weights in ``OUT/unet.pt``)::

    .venv/bin/python benchmarks/monai_reference.py --runs RUN [RUN ...] [--data DIR] [--out OUT] [--seed 0]
        [--seconds S]

In code (``bench_textbcs.py``, ``bench_align_refine.py``, ``bench_variety.py``, ``bench_folds.py``,
``bench_rada.py``) the same functions come from the package::

    records, steps, seconds = reference(runs, data, out / "unet.pt")   # or train_unet + score_unet
    rows = group_summary(records)              # {"all": {"n", "dice", "hd95", "hd95_inf", "nsd"}, ...}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medtextseg.evaluation.reference import group_summary, reference

sys.path.insert(0, str(Path(__file__).parent))
from results_table import write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="finished run folders")
    parser.add_argument("--data", type=Path, help="dataset (default: the first run's data.root)")
    parser.add_argument("--out", type=Path, default=Path("work/monai_reference"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, help="training time (default: that of the slowest run)")
    args = parser.parse_args()
    records, steps, seconds = reference(args.runs, args.data, args.out / "unet.pt", args.seed, args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "records.json").write_text(json.dumps(records, indent=1))
    rows = [{"group": group, **row} for group, row in group_summary(records).items()]
    given = f"--seconds {seconds:g}" if args.seconds is not None else f"the slowest of {len(args.runs)} runs"
    write_results(rows, ["group", "n", "dice", "hd95", "hd95_inf", "nsd"], args.out,
                  f"MONAI UNet, text-blind: {steps} steps in {seconds / 60:.1f} min ({given}); lesion prompts of "
                  "the test split (absent: Dice 1 = answered empty)")


if __name__ == "__main__":
    main()
