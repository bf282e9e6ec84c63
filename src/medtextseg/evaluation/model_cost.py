"""What a model costs: parameters and floating-point operations per sliding window (torch's own counter).

TextBCS reports parameters and FLOPs per model; here they come with every evaluation (``model_cost.json``).
A window's cost is split into what every window pays once (the image encoder, for one prompt) and what each
further prompt adds (the text-conditioned decoder), since prediction runs all of an image's prompts together.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from medtextseg.config import Config
from medtextseg.models.factory import count_parameters
from medtextseg.text.batch import TextBatch


def _window_flops(model: nn.Module, config: Config, text_dim: int, prompts: int) -> int:
    """FLOPs of one forward pass over one window [1, C, *patch] with ``prompts`` prompts (8 tokens each)."""
    coordinates = config.model.spatial_dims if config.model.coordinates else 0
    device = next(model.parameters()).device
    window = torch.zeros(1, config.model.in_channels + coordinates, *config.data.patch_size, device=device)
    text = TextBatch(torch.zeros(prompts, text_dim, device=device), torch.zeros(prompts, 8, text_dim, device=device),
                     torch.ones(prompts, 8, dtype=torch.bool, device=device))
    counter = FlopCounterMode(display=False)
    with counter:  # not under no_grad: the counter tracks modules with autograd hooks
        model(window, text, torch.zeros(prompts, dtype=torch.long, device=device))
    return int(counter.get_total_flops())


def model_cost(model: nn.Module, config: Config, text_dim: int) -> dict[str, Any]:
    """``parameters``, ``gflops_window_one_prompt`` (one window of ``config.data.patch_size``, one prompt),
    ``gflops_per_extra_prompt`` (what each further prompt adds to that window) and ``patch_size``.

    Counted by ``torch.utils.flop_counter`` (matrix products and convolutions; a multiply-add counts 2);
    normalisations and activations are not counted, as in fvcore and most papers' tables.
    """
    was_training = model.training
    model.eval()
    one, two = (_window_flops(model, config, text_dim, prompts) for prompts in (1, 2))
    model.train(was_training)
    return {"parameters": count_parameters(model), "gflops_window_one_prompt": round(one / 1e9, 3),
            "gflops_per_extra_prompt": round((two - one) / 1e9, 3), "patch_size": list(config.data.patch_size)}
