"""Build a segmenter from a config (the one place that maps config to model classes)."""

from __future__ import annotations

from torch import nn

from medtextseg.config import ModelConfig
from medtextseg.models.co_trained import CoTrainedSegmenters
from medtextseg.models.segmenter import TextGuidedUNet


def create_model(config: ModelConfig, text_dim: int) -> nn.Module:
    """Return the segmenter a model config describes; ``text_dim`` is the text encoder's D."""
    if config.networks > 1:
        return CoTrainedSegmenters(config, text_dim)
    return TextGuidedUNet(config, text_dim)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
