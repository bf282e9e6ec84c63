"""``TextGuidedUNet``: the default segmenter, an N-D U-Net whose decoder is conditioned on the prompt."""

from __future__ import annotations

from torch import Tensor, nn

from medtextseg.config import ModelConfig
from medtextseg.models.backbone import UNetDecoder, UNetEncoder
from medtextseg.models.conditioning.film import FiLM
from medtextseg.models.conditioning.text_summary import TextSummary
from medtextseg.models.output import ModelOutput
from medtextseg.models.presence import topk_presence
from medtextseg.text.batch import TextBatch


class TextGuidedUNet(nn.Module):
    """U-Net + FiLM at the bottleneck and after every decoder stage, + a presence logit read from the mask.

    FiLM reads a ``TextSummary`` of the prompt: the sentence embedding and attention reads of its tokens.

    With ``conditioning='none'`` the same network ignores the text: the image-only baseline.

    Args:
        config: the model section (spatial_dims, in_channels, channels, strides, conditioning, ...).
        text_dim: D of the pooled text embedding.
    """

    def __init__(self, config: ModelConfig, text_dim: int) -> None:
        super().__init__()
        self.config = config
        in_channels = config.in_channels + (config.spatial_dims if config.coordinates else 0)
        self.encoder = UNetEncoder(config.spatial_dims, in_channels, config.channels, config.strides, config.norm)
        self.decoder = UNetDecoder(config.spatial_dims, config.channels, config.strides, 1, config.norm)
        conditioned = config.conditioning == "film"
        self.text_summary = TextSummary(text_dim, use_tokens=config.text_tokens) if conditioned else None
        self.film = (nn.ModuleList(FiLM(self.text_summary.out_dim, c) for c in config.channels)
                     if conditioned else None)

    def forward(self, image: Tensor, text: TextBatch, image_index: Tensor | None = None) -> ModelOutput:
        """Segment what each prompt names.

        Args:
            image: [N, C_in (+ spatial_dims coordinate channels when ``config.coordinates``), *spatial]
                z-scored images (RAS voxel order).
            text: B encoded prompts.
            image_index: [B] long, the image row of each prompt (default: prompt b <-> image b). The
                encoder runs once per image, however many prompts it has.

        Returns:
            ModelOutput with logits [B, 1, *spatial] and presence [B] (or None).
        """
        skips = self.encoder(image)
        if image_index is not None:
            skips = [s[image_index] for s in skips]
        if skips[0].shape[0] != len(text):
            raise ValueError(f"{len(text)} prompts for {skips[0].shape[0]} images: pass image_index "
                             "to say which image each prompt is for")
        summary = self.text_summary(text.to(skips[0].device)).to(skips[0].dtype) if self.text_summary else None

        def modulate(level: int, features: Tensor) -> Tensor:
            return self.film[level](features, summary) if self.film is not None else features

        logits = self.decoder(skips, modulate)
        presence = topk_presence(logits, self.config.presence_topk) if self.config.presence else None
        return ModelOutput(logits=logits, presence=presence)
