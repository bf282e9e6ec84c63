"""Stage-wise bidirectional vision-language attention (TextBCS's SVLI block, METHODS.md 4.3).

After an encoder stage, the pixels read the prompt's words (vision-query cross-attention), then the words read
the text-aware pixels (language-query cross-attention); the updated words go on to the next stage. The text thus
sharpens as the image is understood, and the image path is conditioned from the first downsampling on.

Memory: attention only ever runs between pixels and tokens, never pixels to pixels, so its cost is
O(N * T) for N voxels and T <= ``text.max_tokens`` tokens, linear in the volume. A 3D feature map therefore needs
no pooling or windowing; the feed-forward on every voxel (4 C wide) costs more than the attention itself.
"""

from __future__ import annotations

from torch import Tensor, nn


def attention_heads(channels: int, max_heads: int = 8, min_head_dim: int = 8) -> int:
    """As many heads as ``max_heads`` allows with at least ``min_head_dim`` channels each (and dividing C).

    The paper's 8 heads assume 128-512 channels; at CPU widths (8-64) 8 heads would be 1-8 channels each.
    """
    heads = max(1, min(max_heads, channels // min_head_dim))
    while channels % heads:
        heads -= 1
    return heads


class _CrossAttentionLayer(nn.Module):
    """``x + MHCA(LN(x), LN(context))``, then ``+ FFN(LN(.))``: one pre-norm transformer cross-attention layer."""

    def __init__(self, channels: int, heads: int, expansion: int = 4) -> None:
        super().__init__()
        self.norm_query = nn.LayerNorm(channels)
        self.norm_context = nn.LayerNorm(channels)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm_ffn = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(nn.Linear(channels, expansion * channels), nn.GELU(),
                                 nn.Linear(expansion * channels, channels))

    def forward(self, x: Tensor, context: Tensor, context_padding: Tensor | None = None) -> Tensor:
        """x: [B, Q, C] queries; context: [B, K, C] keys/values; context_padding: [B, K] bool, True = ignore."""
        context = self.norm_context(context)
        read, _ = self.attention(self.norm_query(x), context, context, key_padding_mask=context_padding,
                                 need_weights=False)
        x = x + read
        return x + self.ffn(self.norm_ffn(x))


class VisionLanguageStage(nn.Module):
    """One SVLI block: features and word states in, text-aware features and updated word states out.

    Args:
        channels: C_s of the stage's feature map.
        text_in: width of the incoming word states (the text encoder's D at the first block, C_{s-1} after);
            they are projected to C_s first (the paper's ``Lin_{C_{s-1} -> C_s}``).
        heads: attention heads (default: :func:`attention_heads`).
    """

    def __init__(self, channels: int, text_in: int, heads: int | None = None) -> None:
        super().__init__()
        heads = heads or attention_heads(channels)
        self.text_projection = nn.Linear(text_in, channels)
        self.vision_query = _CrossAttentionLayer(channels, heads)
        self.language_query = _CrossAttentionLayer(channels, heads)

    def forward(self, features: Tensor, words: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            features: [B, C, *spatial] the stage's output.
            words: [B, T, text_in] word states (zero rows where ``mask`` is False).
            mask: [B, T] bool, True on real tokens.

        Returns:
            features [B, C, *spatial] after the pixels read the words (the stage's skip and next input), and
            word states [B, T, C] after the words read those pixels.
        """
        batch, channels, *spatial = features.shape
        pixels = features.flatten(2).transpose(1, 2)  # [B, N, C]
        words = self.text_projection(words.to(pixels.dtype))
        pixels = self.vision_query(pixels, words, context_padding=~mask)
        words = self.language_query(words, pixels)
        return pixels.transpose(1, 2).reshape(batch, channels, *spatial), words
