"""``TextGuidedUNet``: the default segmenter, an N-D U-Net whose decoder is conditioned on the prompt."""

from __future__ import annotations

from torch import Tensor, nn

from medtextseg.config import ModelConfig
from medtextseg.models.backbone import UNetDecoder, UNetEncoder
from medtextseg.models.conditioning.film import FiLM, PresenceHead
from medtextseg.models.output import ModelOutput
from medtextseg.text.batch import TextBatch


class TextGuidedUNet(nn.Module):
    """U-Net + FiLM at the bottleneck and after every decoder stage, + an optional presence head.

    With ``conditioning='none'`` the same network ignores the text: the image-only baseline.

    Args:
        config: the model section (spatial_dims, in_channels, channels, strides, conditioning, ...).
        text_dim: D of the pooled text embedding.
    """

    def __init__(self, config: ModelConfig, text_dim: int) -> None:
        super().__init__()
        self.config = config
        self.encoder = UNetEncoder(config.spatial_dims, config.in_channels, config.channels, config.strides,
                                   config.norm)
        self.decoder = UNetDecoder(config.spatial_dims, config.channels, config.strides, 1, config.norm)
        self.film = (nn.ModuleList(FiLM(text_dim, c) for c in config.channels)
                     if config.conditioning == "film" else None)
        self.presence = (PresenceHead(config.channels[-1])
                         if config.presence_head and config.conditioning != "none" else None)

    def forward(self, image: Tensor, text: TextBatch, image_index: Tensor | None = None) -> ModelOutput:
        """Segment what each prompt names.

        Args:
            image: [N, C_in, *spatial] z-scored images (RAS voxel order).
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
        pooled = text.pooled.to(skips[0].dtype)
        bottleneck: list[Tensor] = []

        def modulate(level: int, features: Tensor) -> Tensor:
            if self.film is not None:
                features = self.film[level](features, pooled)
            if level == len(skips) - 1:
                bottleneck.append(features)
            return features

        logits = self.decoder(skips, modulate)
        presence = self.presence(bottleneck[0]) if self.presence is not None else None
        return ModelOutput(logits=logits, presence=presence)
