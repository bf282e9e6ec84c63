"""TextBCS vs FiLM/CBN vs image-only on the synthetic 2D and 3D splits, one training budget for all.

    .venv/bin/python benchmarks/bench_textbcs.py [--dims 2 3] [--steps 800 600] [--cases 300 150]
        [--out work/bench_textbcs]

For each dimensionality, each model is trained for the same number of steps on the same samples per step
(``train.batch_images=1``, ``data.prompts_per_image=8``, seed 0; each preset keeps its own learning rate and
losses), evaluated on the test split, and reported with:

* Dice per prompt group (``single_2plus`` = referring prompts in cases with 2+ lesions) and the share of absent
  targets answered with an empty mask;
* ECE and the uncertainty-error AUROC (Dirichlet uncertainty for ``textbcs``, the entropy of the probability for
  the sigmoid models), and the entropy's AUROC for every model;
* trainable parameters; the median time of one training step (same batch, back to back in this process, so the
  ratios hold on a shared machine); the peak memory of one 3D training step at the default patch size (in a
  fresh process, the first step, optimiser state included: the peak resident set size minus the size before the
  step on a CPU (Linux), ``max_memory_allocated`` minus the memory allocated before it on a GPU).

Each dimensionality also carries the reference (``monai_reference.py``): a text-blind MONAI UNet trained on the
same data for the wall time of the slowest of the three trainings, at their planned spacing and patch, which
answers every lesion prompt with all lesions (it has no anatomy or overall figure; its "steps" column gives its
steps and minutes).

Runs and evaluations already finished in ``--out`` are reused (rerun the command to resume). The table is printed
and written to ``{out}/results.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from results_table import write_results

from medtextseg.config import Config
from medtextseg.data.synthetic import make_synthetic_dataset
from medtextseg.evaluation.reference import build_unet, group_summary, reference
from medtextseg.evaluation.runner import evaluate_run
from medtextseg.losses.segmentation import build_loss
from medtextseg.models.factory import count_parameters, create_model
from medtextseg.text.batch import TextBatch
from medtextseg.training.engine import train

MODELS = {2: {"textbcs": "textbcs", "filmcbn": "filmcbn", "image-only": "image_only_2d"},
          3: {"textbcs": "textbcs_3d", "filmcbn": "filmcbn_3d", "image-only": "image_only"}}
SAME_BUDGET = ["train.batch_images=1", "data.prompts_per_image=8"]
GROUPS = ("single", "single_2plus", "all", "anatomy")
TEXT_DIM, TOKENS = 384, 12  # MiniLM width; a typical prompt length


def synthetic_batch(config: Config) -> tuple[torch.Tensor, TextBatch, torch.Tensor, torch.Tensor]:
    """One training batch of the config's shape: image [1, C + dims, *patch], 8 prompts, targets, image index."""
    prompts = config.data.prompts_per_image
    dims = config.model.spatial_dims
    image = torch.randn(1, config.model.in_channels + dims, *config.data.patch_size)
    text = TextBatch(torch.nn.functional.normalize(torch.randn(prompts, TEXT_DIM), dim=1),
                     torch.randn(prompts, TOKENS, TEXT_DIM), torch.ones(prompts, TOKENS, dtype=torch.bool))
    targets = (torch.rand(prompts, 1, *config.data.patch_size) > 0.9).float()
    return image, text, targets, torch.zeros(prompts, dtype=torch.long)


def training_step(config: Config, device: torch.device):
    """A closure running one optimiser step of the config's model and loss on a fixed batch."""
    model = create_model(config.model, TEXT_DIM).to(device).train()
    loss_fn = build_loss(config.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    image, text, targets, index = (x.to(device) for x in synthetic_batch(config))

    def step() -> None:
        loss, _ = loss_fn(model(image, text, index), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return model, step


def step_seconds(config: Config, repeats: int = 10) -> float:
    _, step = training_step(config, torch.device("cpu"))
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_step_memory_mb(preset: str) -> float:
    """Run :func:`_memory_probe` in a fresh process (the peak RSS is a per-process high-water mark)."""
    output = subprocess.run([sys.executable, __file__, "--memory-probe", preset], check=True, capture_output=True,
                            text=True).stdout
    return float(output.strip().splitlines()[-1])


def _memory_probe(preset: str) -> None:
    config = Config.load(preset, SAME_BUDGET)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _, step = training_step(config, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        print((torch.cuda.max_memory_allocated() - before) / 2**20)
        return
    # the first step, optimiser state included: after it, freed blocks stay in the process and a second step's
    # peak would hide in them. Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS,
    # so the peak after the step minus the RSS before it is what the step needed
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    step()
    print((_status_kib("VmHWM") - before) / 1024)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def train_and_evaluate(preset: str, data: Path, steps: int, folder: Path) -> list[dict]:
    run, evaluation = folder / "run", folder / "eval"
    if not (evaluation / "summary.json").is_file():
        log = run / "log.jsonl"
        finished = log.is_file() and '"event": "end"' in log.read_text()
        if not finished:
            config = Config.load(preset, [f"data.root={data}", f"train.steps={steps}", *SAME_BUDGET,
                                          f"train.val_every={steps}"])
            train(config, run, resume=(run / "last.pt").is_file())
        evaluate_run(run, data, evaluation, save_masks=False, overlays_per_group=1)
    return json.loads((evaluation / "summary.json").read_text())


def reference_row(data: Path, runs: list[Path], weights: Path) -> dict:
    """The text-blind MONAI UNet (``monai_reference.py``) given the wall time of the slowest of ``runs`` at their
    plan, scored on the lesion prompts: its table row."""
    records, steps, seconds = reference(runs, data, weights)
    groups = group_summary(records)
    config = Config.load(runs[0] / "config.yaml")
    return {"dims": config.model.spatial_dims, "model": "MONAI UNet, text-blind", "preset": None,
            "steps": f"{steps} ({seconds / 60:.1f} min)",
            **{f"dice_{group}": row["dice"] for group, row in groups.items() if group != "absent"},
            "absent_empty": groups["absent"]["dice"] if "absent" in groups else None,
            "parameters": count_parameters(build_unet(config, 1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    parser.add_argument("--steps", type=int, nargs="+", default=[800, 600], help="training steps per dims")
    parser.add_argument("--cases", type=int, nargs="+", default=[300, 150], help="synthetic cases per dims")
    parser.add_argument("--out", type=Path, default=Path("work/bench_textbcs"))
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        _memory_probe(args.memory_probe)
        return
    torch.manual_seed(0)
    results = []
    for dims, steps, cases in zip(args.dims, args.steps, args.cases, strict=False):
        data = args.out / f"data_{dims}d"
        if not (data / "dataset.json").is_file():
            make_synthetic_dataset(data, num_cases=cases, spatial_dims=dims, seed=0)
        runs = []
        for name, preset in MODELS[dims].items():
            runs.append(args.out / f"{dims}d_{name}" / "run")
            config = Config.load(preset, SAME_BUDGET)
            rows = {row["group"]: row for row in train_and_evaluate(preset, data, steps,
                                                                    args.out / f"{dims}d_{name}")}
            overall = rows["overall"]
            results.append({
                "dims": dims, "model": name, "preset": preset, "steps": steps,
                **{f"dice_{group}": rows[group]["dice_mean"] for group in GROUPS if group in rows},
                "dice_overall": overall["dice_mean"],
                "absent_empty": rows["absent"]["empty_correct"] if "absent" in rows else None,
                "ece": overall.get("ece"), "uncertainty_auroc": overall.get("uncertainty_error_auroc"),
                "uncertainty": overall.get("uncertainty_kind"),
                # a sigmoid model's own uncertainty is the entropy
                "entropy_auroc": overall.get("entropy_error_auroc", overall.get("uncertainty_error_auroc")),
                "parameters": count_parameters(create_model(config.model, TEXT_DIM))})
        results.append(reference_row(data, runs, args.out / f"{dims}d_monai_unet.pt"))
    for result in results:  # timed last, back to back, so that the ratios are measured under one machine load
        if result["preset"] is None:  # the MONAI reference trains for a time, not a number of steps
            continue
        result["step_seconds"] = step_seconds(Config.load(result["preset"], SAME_BUDGET))
        result["peak_step_memory_mb"] = peak_step_memory_mb(result["preset"]) if result["dims"] == 3 else None
    columns = ["dims", "model", "steps", *(f"dice_{g}" for g in GROUPS), "dice_overall", "absent_empty", "ece",
               "uncertainty_auroc", "uncertainty", "entropy_auroc", "parameters", "step_seconds", "peak_step_memory_mb"]
    write_results(results, columns, args.out,
                  "TextBCS vs FiLM/CBN vs image-only (synthetic test split, one training budget)")

if __name__ == "__main__":
    main()
