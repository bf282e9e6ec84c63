"""Speed of the default model, as ratios measured in one run (the machine is shared: absolute times drift).

    .venv/bin/python benchmarks/bench_foundation.py [--repeats 5] [--prompts 8]

Rows:
* training step: text-guided (FiLM + token reads + presence) vs the image-only baseline, same batch; and the
  default's images x prompts per step vs the same number of prompts from one image.
* prediction of P prompts for one image: one sliding-window pass with all prompts as channels and the
  encoder shared (ours) vs P separate MONAI sliding-window passes, one per prompt (the naive loop).
* text: a cache hit vs running the MiniLM encoder for the same prompts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from monai.inferers import sliding_window_inference
from rich.console import Console
from rich.table import Table

from medtextseg.config import Config
from medtextseg.data.transforms import coordinate_channels
from medtextseg.inference.sliding import prompt_probabilities
from medtextseg.models.factory import count_parameters, create_model
from medtextseg.text.batch import TextBatch
from medtextseg.text.cache import cached_text_encoder


def timed(*functions, repeats: int) -> list[float]:
    """Median seconds of each function; with several, their calls alternate, so that a drift of the shared
    machine's speed reaches all of them alike."""
    for function in functions:
        function()  # warm-up
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for function, samples in zip(functions, times, strict=True):
            start = time.perf_counter()
            function()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []

    config = Config.load("default")
    channels = config.model.in_channels + 3  # + the coordinate channels the data pipeline appends

    def training_step(preset: str, batch_images: int, k: int):
        """One optimiser step of ``preset`` on ``batch_images`` images x ``k`` prompts; returns (step, model)."""
        image = torch.randn(batch_images, channels, *config.data.patch_size)
        index = torch.arange(batch_images).repeat_interleave(k)
        text = TextBatch(torch.randn(len(index), 384), torch.randn(len(index), 8, 384),
                         torch.ones(len(index), 8, dtype=torch.bool))
        model = create_model(Config.load(preset).model, 384)
        optimizer = torch.optim.AdamW(model.parameters())

        def step():
            optimizer.zero_grad()
            out = model(image, text, index)
            loss = out.logits.mean() + (out.presence.mean() if out.presence is not None else 0)
            loss.backward()
            optimizer.step()
        return step, model

    batch_images, k = config.train.batch_images, config.data.prompts_per_image
    (text_step, text_model), (image_step, image_model) = (training_step(p, batch_images, k)
                                                          for p in ("default", "image_only"))
    # the same prompts per step from one image: 1-sample 3D convolutions take no oneDNN path on the CPU
    one_image_step, _ = training_step("default", 1, batch_images * k)
    text_time, image_time, one_image_time = timed(text_step, image_step, one_image_step, repeats=args.repeats)
    for name, model, seconds in (("text-guided", text_model, text_time), ("image-only", image_model, image_time)):
        rows.append((f"train step, {name} ({count_parameters(model) / 1e6:.2f} M params, "
                     f"{batch_images} images x {k} prompts)", seconds))
    rows.append(("ratio text-guided / image-only", text_time / image_time))
    rows.append((f"train step, text-guided, 1 image x {batch_images * k} prompts", one_image_time))
    rows.append((f"ratio {batch_images} images x {k} / 1 image x {batch_images * k}", text_time / one_image_time))

    model = create_model(config.model, 384).eval()
    volume = torch.randn(3, 96, 96, 32)  # larger than the patch: several windows
    prompts = TextBatch(torch.randn(args.prompts, 384), torch.randn(args.prompts, 8, 384),
                        torch.ones(args.prompts, 8, dtype=torch.bool))
    ours, = timed(lambda: prompt_probabilities(model, volume, prompts, config.data.patch_size), repeats=args.repeats)

    with_coordinates = torch.cat([volume, coordinate_channels(volume.shape[1:])])

    @torch.no_grad()
    def per_prompt():
        for row in range(args.prompts):
            one = prompts.index([row])
            sliding_window_inference(with_coordinates[None], config.data.patch_size, 1,
                                     lambda w, one=one: torch.sigmoid(model(w, one).logits), overlap=0.25,
                                     mode="gaussian")

    naive, = timed(per_prompt, repeats=args.repeats)
    rows.append((f"predict {args.prompts} prompts, 96x96x32 volume: one pass, shared encoder (ours)", ours))
    rows.append((f"predict {args.prompts} prompts: {args.prompts} MONAI sliding-window passes", naive))
    rows.append(("ratio one pass / per-prompt passes", ours / naive))

    with tempfile.TemporaryDirectory() as folder:
        cache = cached_text_encoder("minilm", 32, folder)
        sentences = [f"segment the lesion number {i} in the left peripheral zone" for i in range(32)]
        cache(["warm the encoder"])
        start = time.perf_counter()
        cache(sentences)
        first = time.perf_counter() - start
        hit, = timed(lambda: cache(sentences), repeats=args.repeats)
    rows.append(("encode 32 new prompts with MiniLM", first))
    rows.append(("the same 32 prompts from the cache", hit))
    rows.append(("ratio cache hit / encoder", hit / first))

    table = Table(title=f"medtextseg foundation benchmark (torch threads: {torch.get_num_threads()})")
    table.add_column("measurement")
    table.add_column("median seconds or ratio", justify="right")
    for name, value in rows:
        table.add_row(name, f"{value:.4f}")
    Console().print(table)


if __name__ == "__main__":
    main()
