"""Is the prompted target in the image at all? Read from the mask logits, as multiple-instance learning.

The image-level answer is the mean of the k highest voxel logits: present when a few voxels are
confidently in the target. Supervising it with "target present" (BCE) pushes every stray voxel down on
prompts whose target is absent and lifts the best voxels on the others, and the answer cannot disagree
with the mask, as a separate presence head can.
"""

from __future__ import annotations

from torch import Tensor


def topk_presence(logits: Tensor, k: int) -> Tensor:
    """logits: [B, 1, *spatial] mask logits. Returns [B] presence logits (mean of the top-k voxels)."""
    flat = logits.flatten(1)
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(1)
