"""Memory of training's text side against the number of cases (issue 14, item 5): no images, no training.

    .venv/bin/python benchmarks/bench_text_memory.py --data DATA_150 DATA_1500 [--preset default]
                                                    [--out work/bench_text_memory]

DATA_*: datasets made by ``medtextseg synth --cases N -o DATA_N``. For each dataset, two child processes run
what training does with text before step 1 (``prepare_training_text``: every training and validation text
encoded through the text cache; the model built; ``fit_text_whitening``), then look up 500 batches of 8
random training texts, as 500 steps of the default (2 images x 4 prompts) would:

* cold: the text cache's disk folder (``{out}/text_cache_{N}``) is emptied first, so the encoder runs;
* warm: a second process on the same folder, which encodes nothing.

Measured per process: peak RSS (``os.wait4``'s ``ru_maxrss``), the RSS after the imports and the dataset's
metadata (before any text), the number of texts, how many embeddings the cache holds in memory at the end, the
seconds of the preparation and the milliseconds per looked-up batch. The last rows give the ratios of the largest
dataset to the smallest. Printed, and written to ``{out}/results.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

COLUMNS = ["cases", "run", "texts", "whitening_texts", "in_memory", "prepare_seconds", "lookup_ms",
           "base_rss_mb", "peak_rss_mb"]


def rss_mb() -> float:
    """This process's resident set size now, in MiB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(data: Path, cache_dir: Path, preset: str) -> None:
    """Run the text side of training on ``data``; print one JSON line."""
    from medtextseg.config import Config
    from medtextseg.data.layout import load_dataset
    from medtextseg.models.factory import create_model
    from medtextseg.training.distributed import init_distributed
    from medtextseg.training.inputs import fit_text_whitening, prepare_training_text, training_prompt_texts

    config = Config.load(preset, [f"data.root={data}", f"text.cache_dir={cache_dir}"])
    layout = load_dataset(data)
    vocabulary = layout.vocabulary if config.data.prompt_sampling else None
    train_ids = layout.splits["train"]
    val_ids = layout.splits.get("val", [])[: config.train.val_cases]
    ctx = init_distributed()
    base = rss_mb()
    started = time.perf_counter()
    text = prepare_training_text(config, layout, train_ids, val_ids, vocabulary, ctx)
    model = create_model(config.model, text.cache.dim)
    if config.model.whitens_text:
        fit_text_whitening(model, text.cache, text.whitening_texts, ctx.device)
    prepare = time.perf_counter() - started
    draw = random.Random(0)
    batches = [draw.sample(text.whitening_texts, 8) for _ in range(500)]
    started = time.perf_counter()
    for batch in batches:
        text.cache(batch)
    lookup = (time.perf_counter() - started) / len(batches) * 1000
    texts = training_prompt_texts(layout, train_ids + val_ids, vocabulary, text.structured, text.paraphrases)
    print(json.dumps({"texts": len(texts), "whitening_texts": len(text.whitening_texts),
                      "in_memory": text.cache.in_memory, "encoded": text.cache.encoded_count,
                      "prepare_seconds": prepare, "lookup_ms": lookup, "base_rss_mb": base}))


def measure(data: Path, cache_dir: Path, preset: str) -> dict:
    command = [sys.executable, __file__, "--child", str(data), "--cache", str(cache_dir), "--preset", preset]
    child_process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child_process.pid, 0)
    output = child_process.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the text preparation on {data} failed:\n{output[-3000:]}")
    return {**json.loads(output.strip().splitlines()[-1]), "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", help="synthetic dataset folders (medtextseg synth)")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--out", type=Path, default=Path("work/bench_text_memory"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.cache, args.preset)
        return
    from medtextseg.data.layout import load_dataset

    sys.path.insert(0, str(Path(__file__).parent))
    from results_table import write_results

    rows = []
    datasets = sorted(args.data, key=lambda d: len(load_dataset(d).cases))
    for data in datasets:
        cases = len(load_dataset(data).cases)
        cache_dir = args.out / f"text_cache_{cases}"
        shutil.rmtree(cache_dir, ignore_errors=True)
        for name in ("cold", "warm"):
            row = {"cases": cases, "run": name, **measure(data, cache_dir, args.preset)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    small, large = rows[0]["cases"], rows[-1]["cases"]
    for name in ("cold", "warm"):
        low = next(r for r in rows if r["cases"] == small and r["run"] == name)
        high = next(r for r in rows if r["cases"] == large and r["run"] == name)
        rows.append({"cases": f"{large} / {small}", "run": f"{name}, ratio",
                     "peak_rss_mb": high["peak_rss_mb"] / low["peak_rss_mb"],
                     "lookup_ms": high["lookup_ms"] / low["lookup_ms"]})
    write_results(rows, COLUMNS, args.out, "Training's text side: peak RSS against the number of cases "
                  f"(preset {args.preset})")


if __name__ == "__main__":
    main()
