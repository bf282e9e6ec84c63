"""Confidence-gated cross-attention refiner (Align-then-Refine, METHODS.md 1.6).

On the last decoder features X, every voxel reads the prompt (multi-head cross-attention, queries from the voxels,
keys and values from the text), the update is added back with a learnable ``tanh(gamma)`` scale, and the *same*
segmentation head gives refined logits. They replace the base logits only where the base model is already
confident, and only partly:

    z = z_base + alpha (z_refined - z_base) * 1[sigmoid(z_base) > tau]        (the gate has no gradient)

With one pooled text token (the faithful default) the attention weights are all 1, so the update is a text-derived
channel bias inside the confident region; ``tokens=True`` attends over the prompt's token states instead, which
makes it spatial.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import Tensor, nn

from medtextseg.text.batch import TextBatch


class ConfidenceGatedRefiner(nn.Module):
    """Refines the base logits of a sigmoid head with text cross-attention inside the confident region.

    Args:
        spatial_dims: 2 or 3.
        channels: C_0 of the last decoder features.
        text_dim: D of the text encoder.
        heads: attention heads (4 in the paper; must divide ``min(512, C_0)``).
        gamma: initial value of the update scale's pre-tanh parameter (0.10).
        gate: tau, the base probability above which a voxel is refined (0.44).
        blend: alpha, how far the refined logit moves the base one there (0.12).
        tokens: attend over the token states instead of the one pooled sentence embedding.
    """

    def __init__(self, spatial_dims: int, channels: int, text_dim: int, heads: int = 4, gamma: float = 0.10,
                 gate: float = 0.44, blend: float = 0.12, tokens: bool = False) -> None:
        super().__init__()
        width = min(512, channels)
        self.project_in = Conv[Conv.CONV, spatial_dims](channels, width, kernel_size=1)
        self.text_projection = nn.Linear(text_dim, width)
        self.attention = nn.MultiheadAttention(width, heads, dropout=0.1, batch_first=True)
        self.project_out = Conv[Conv.CONV, spatial_dims](width, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.tensor(float(gamma)))
        self.gate, self.blend, self.tokens = gate, blend, tokens

    def forward(self, features: Tensor, base_logits: Tensor, head: nn.Module, text: TextBatch) -> Tensor:
        """
        Args:
            features: [B, C_0, *spatial] the last decoder stage's output.
            base_logits: [B, 1, *spatial] ``head(features)``.
            head: the segmentation head, shared by the base and the refined logits.
            text: B encoded prompts.

        Returns:
            [B, 1, *spatial] the blended logits.
        """
        batch, _, *spatial = features.shape
        queries = self.project_in(features).flatten(2).transpose(1, 2)  # [B, N, d]
        if self.tokens:
            keys, padding = self.text_projection(text.tokens.to(queries.dtype)), ~text.mask
        else:
            keys, padding = self.text_projection(text.pooled.to(queries.dtype)).unsqueeze(1), None
        update, _ = self.attention(queries, keys, keys, key_padding_mask=padding, need_weights=False)
        update = self.project_out(update.transpose(1, 2).reshape(batch, -1, *spatial))
        refined_logits = head(features + torch.tanh(self.gamma) * update)
        with torch.no_grad():
            confident = (torch.sigmoid(base_logits.float()) > self.gate).to(base_logits.dtype)
        return base_logits + self.blend * (refined_logits - base_logits) * confident
