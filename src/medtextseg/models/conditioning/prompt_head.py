"""A light head per prompt on a decoder the prompts share: prompts cost a few 1x1 convolutions, not a decoder.

FiLM conditions every decoder stage, so the decoder runs once per prompt (in prediction, each further prompt
costs about 0.4 of the first). Here the text enters only after the decoder: the image's last decoder features
(with the whole-image coordinates, so that "left" has something to act on) go through a small MLP of 1x1
convolutions whose weights the prompt sets, as the dynamic heads of CondInst (Tian et al., ECCV 2020) and
CLIP-Driven Universal Model (Liu et al., ICCV 2023) do. Each layer's weights are a learned base plus a
prompt-generated change that starts at zero, so the untrained head is an ordinary shared head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PromptHead(nn.Module):
    """Per-prompt 1x1 convolutions ``C_in -> H -> H -> 1`` (LeakyReLU between), their weights from the text.

    Args:
        text_dim: D of the text summary that sets the weights.
        in_channels: C_in of the features read (decoder channels + coordinate channels).
        hidden: H, the width of the two hidden layers.
        generator_hidden: width of the MLP that maps the text to the weight changes.
        negative_slope: of the LeakyReLU activations.
    """

    def __init__(self, text_dim: int, in_channels: int, hidden: int = 16, generator_hidden: int = 128,
                 negative_slope: float = 0.01) -> None:
        super().__init__()
        self.shapes = [(hidden, in_channels), (hidden, hidden), (1, hidden)]  # (out, in) of each layer
        self.negative_slope = negative_slope
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for out_channels, fan_in in self.shapes:  # the base head: nn.Conv's default initialisation
            bound = 1 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(out_channels, fan_in).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound)))
        self.sizes = [size for out_channels, fan_in in self.shapes for size in (out_channels * fan_in, out_channels)]
        self.generator = nn.Sequential(nn.Linear(text_dim, generator_hidden), nn.GELU(),
                                       nn.Linear(generator_hidden, sum(self.sizes)))
        nn.init.zeros_(self.generator[-1].weight)  # untrained: every prompt gets the base head
        nn.init.zeros_(self.generator[-1].bias)

    def forward(self, features: Tensor, text: Tensor) -> Tensor:
        """features: [B, C_in, *spatial] (one row per prompt); text: [B, D]. Returns logits [B, 1, *spatial]."""
        batch, spatial = features.shape[0], features.shape[2:]
        changes = self.generator(text).to(features.dtype).split(self.sizes, dim=1)
        x = features.flatten(2)  # [B, C_in, V]
        for layer, (out_channels, fan_in) in enumerate(self.shapes):
            weight = self.weights[layer].to(x.dtype) + changes[2 * layer].reshape(batch, out_channels, fan_in)
            bias = self.biases[layer].to(x.dtype) + changes[2 * layer + 1]
            x = torch.bmm(weight, x).add_(bias.unsqueeze(-1))  # [B, out, V]; in place: full-resolution maps
            if layer < len(self.shapes) - 1:
                x = F.leaky_relu_(x, self.negative_slope)
        return x.reshape(batch, 1, *spatial)


__all__ = ["PromptHead"]
