"""One training step of our backbone against MONAI's networks at the same width and depth (issue 18, item 4).

    .venv/bin/python benchmarks/bench_train_step.py [--rounds 5] [--steps 5] [--threads 2] [--precision bf16]

Every network gets the same batch (8 samples of 3 channels + 3 coordinate channels, 48 x 48 x 16, the default's
patch), the same loss (MONAI DiceCE) and optimiser (AdamW); a step is forward + loss + backward + update. The
networks are timed in turns, ``--steps`` steps per turn and ``--rounds`` turns, after one warm-up step each, and the
table gives the median step and its ratio to MONAI's DynUNet with residual blocks, the network ours is built from
(``models/backbone.py``: MONAI's ``UnetResBlock`` encoder stages and ``UnetUpBlock`` decoder stages):

* ours, image-only: the default preset without text (``image_only``), channels 8-64, strides (1,1,1), (2,2,1),
  (2,2,2), (2,2,2);
* ours, text-guided: the default preset, 2 images x 4 prompts (the encoder runs once per image);
* MONAI DynUNet, residual blocks (``res_block=True``) and plain blocks, same filters, kernels and strides;
* MONAI UNet, same channels and strides after the first stage, one residual unit: it downsamples in its first
  layer, so it does far less work at full resolution (not the same depth: shown for scale only).

``--precision bf16`` runs every forward under bfloat16 autocast (what ``train.amp`` does on a CPU with bfloat16
units, ``utils/precision.py``) and adds each network's float32 step and the ratio, measured in the same turns.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import DynUNet, UNet

from medtextseg.config import Config
from medtextseg.models.factory import count_parameters, create_model
from medtextseg.text.batch import TextBatch

PATCH = (48, 48, 16)
SAMPLES = 8
IMAGES_FOR_TEXT = 2  # the default preset's batch: 2 images x 4 prompts
TEXT_DIM, TOKENS = 384, 8


def ours(preset: str) -> tuple[torch.nn.Module, Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]]:
    """Our network of ``preset`` and a forward taking the [8, 6, *PATCH] batch to logits [8, 1, *PATCH]."""
    config = Config.load(preset)
    model = create_model(config.model, TEXT_DIM)
    generator = torch.Generator().manual_seed(0)
    text = TextBatch(torch.nn.functional.normalize(torch.randn(SAMPLES, TEXT_DIM, generator=generator), dim=1),
                     torch.randn(SAMPLES, TOKENS, TEXT_DIM, generator=generator),
                     torch.ones(SAMPLES, TOKENS, dtype=torch.bool))
    if not config.model.blocks:
        return model, lambda net, x: net(x, text).logits
    index = torch.arange(IMAGES_FOR_TEXT).repeat_interleave(SAMPLES // IMAGES_FOR_TEXT)
    return model, lambda net, x: net(x[:IMAGES_FOR_TEXT], text, image_index=index).logits


def monai_dynunet(res_block: bool) -> torch.nn.Module:
    strides = [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]]
    return DynUNet(3, 6, 1, kernel_size=[3] * 4, strides=strides, upsample_kernel_size=strides[1:],
                   filters=[8, 16, 32, 64], norm_name="instance",
                   act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}), res_block=res_block)


def plain(model: torch.nn.Module) -> tuple[torch.nn.Module, Callable]:
    return model, lambda net, x: net(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: also time every step under bfloat16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    networks = {
        "ours, image-only": ours("image_only"),
        "ours, text-guided (2 images x 4 prompts)": ours("default"),
        "MONAI DynUNet, residual blocks": plain(monai_dynunet(True)),
        "MONAI DynUNet, plain blocks": plain(monai_dynunet(False)),
        "MONAI UNet (downsamples at once; for scale)": plain(UNet(3, 6, 1, channels=(8, 16, 32, 64),
                                                                  strides=((2, 2, 1), (2, 2, 2), (2, 2, 2)),
                                                                  num_res_units=1)),
    }
    image = torch.randn(SAMPLES, 6, *PATCH)
    target = (torch.rand(SAMPLES, 1, *PATCH) > 0.9).float()
    loss_function = DiceCELoss(sigmoid=True)
    optimisers = {name: torch.optim.AdamW(net.parameters(), lr=1e-3) for name, (net, _) in networks.items()}

    def step(name: str, half: bool) -> None:
        net, forward = networks[name]
        optimisers[name].zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
            logits = forward(net, image)
        loss_function(logits.float(), target).backward()
        optimisers[name].step()

    kinds = [False, True] if args.precision == "bf16" else [False]
    times: dict[tuple[str, bool], list[float]] = {(name, half): [] for name in networks for half in kinds}
    for name, half in times:  # warm-up: oneDNN picks its kernels on the first call
        step(name, half)
    for _ in range(args.rounds):
        for name, half in times:
            for _ in range(args.steps):
                start = time.perf_counter()
                step(name, half)
                times[name, half].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in times.items()}
    reference = median["MONAI DynUNet, residual blocks", False]
    print(f"One training step, batch {SAMPLES} x 6 x {' x '.join(map(str, PATCH))}, {args.threads} threads, "
          f"median of {args.rounds * args.steps}:\n")
    bf16 = " bf16 step (ms) | float32 / bf16 |" if len(kinds) == 2 else ""
    print(f"| network | parameters | step (ms) | vs DynUNet, residual |{bf16}")
    print("|---|---|---|---|" + "---|---|" * bool(bf16))
    for name, (net, _) in networks.items():
        row = f"| {name} | {count_parameters(net):,} | {1000 * median[name, False]:.0f} | " \
              f"{median[name, False] / reference:.2f} |"
        if bf16:
            row += f" {1000 * median[name, True]:.0f} | {median[name, False] / median[name, True]:.2f} |"
        print(row)


if __name__ == "__main__":
    main()
