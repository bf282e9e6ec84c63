"""``TextGuidedUNet``: the segmenter of every single-network preset, a U-Net conditioned on the prompt."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from medtextseg.config import ModelConfig
from medtextseg.config.blocks import Site
from medtextseg.models.backbone import MultiSequenceEncoder, UNetDecoder, UNetEncoder
from medtextseg.models.conditioning.registry import ForwardState, TextBlock, build_blocks, model_parts
from medtextseg.models.heads import OUTPUT_HEADS
from medtextseg.models.input_spec import InputSpec
from medtextseg.models.output import ModelOutput
from medtextseg.models.presence import topk_presence
from medtextseg.text.batch import TextBatch


class TextGuidedUNet(nn.Module):
    """U-Net + the text blocks the config names at their sites + a presence logit read from the mask.

    The blocks (``models/conditioning/registry.py``, built-ins in ``catalogue.py``) are those ``config.blocks``
    lists: FiLM, the fusion chain or concatenation on the decoder, SVLI after encoder stages (from the first such
    stage on the encoder runs once per prompt rather than once per image), the dynamic head before the output
    convolution, the refiner and the prompt head on the logits, and similarity maps read from encoder stages.
    With none, the same network ignores the text: the image-only baseline. ``config.head='evidential'`` makes the
    head output Dirichlet evidence (``ModelOutput.evidence``) besides the usual logit.

    The blocks' modules are attributes of the model (``text_summary``, ``conditioners``, ``vision_language``,
    ``refiner``, ``dynamic_bias``, ``region_fusion``, ``similarity``; None or empty when absent), so state-dict
    names are the same whichever blocks a config has.

    Args:
        config: the model section (spatial_dims, in_channels, channels, strides, blocks, ...).
        text_dim: D of the pooled text embedding.
    """

    def __init__(self, config: ModelConfig, text_dim: int) -> None:
        super().__init__()
        self.config = config
        self.input_spec = InputSpec.of(config)
        coordinate_channels = self.input_spec.channels - config.in_channels  # the spec says what it reads
        stages = {"downsample": config.downsample, "attention": config.block_attention, "dropout": config.dropout,
                  "negative_slope": config.negative_slope}
        if config.encoders == 1:
            self.encoder = UNetEncoder(config.spatial_dims, self.input_spec.channels, config.channels,
                                       config.strides, config.norm, **stages)
        else:
            self.encoder = MultiSequenceEncoder(config.spatial_dims, [config.in_channels // config.encoders]
                                                * config.encoders, coordinate_channels, config.channels,
                                                config.strides, config.norm, **stages)
        self.output_head = OUTPUT_HEADS[config.head]
        self.decoder = UNetDecoder(config.spatial_dims, config.channels, config.strides, self.output_head.channels,
                                   config.norm, attention=config.block_attention,
                                   negative_slope=config.negative_slope, deep_supervision=config.deep_supervision)
        for name, empty in model_parts().items():  # every part keeps its place, present or not
            self.register_module(name, empty() if empty is not None else None)
        self.blocks: list[TextBlock] = build_blocks(config, text_dim)
        for block in self.blocks:
            for name, module in block.parts().items():
                setattr(self, name, module)
        self.sites: dict[Site, list[TextBlock]] = {}  # site -> the blocks acting there, in registration order
        for block in self.blocks:
            for site in block.sites:
                self.sites.setdefault(site, []).append(block)
        self.encoder_levels = sorted(site.level for site in self.sites if site.where == "encoder")
        # no text before the head (prompt_head, dynamic_head, none): the decoder runs once per image too
        self.decodes_per_image = not any(site.where in ("encoder", "decoder") for site in self.sites)

    def _at(self, where: str, level: int | None = None) -> list[TextBlock]:
        return self.sites.get(Site(where, level), [])

    def fit_text_statistics(self, text: TextBatch | Iterable[TextBatch]) -> None:
        """Fit what the text path normalises by (a block's ``text.whitening``) on the encoded training prompts:
        one batch, or chunks of them (streamed: memory does not grow with their number; one block reads them)."""
        for block in self.blocks:
            block.fit_text(text)

    def forward(self, image: Tensor, text: TextBatch, image_index: Tensor | None = None, *, refine: bool = True,
                network: int | None = None) -> ModelOutput:
        """Segment what each prompt names.

        Args:
            image: [N, C_in (+ spatial_dims coordinate channels when ``config.coordinates``), *spatial]
                z-scored images (RAS voxel order).
            text: B encoded prompts.
            image_index: [B] long, the image row of each prompt (default: prompt b <-> image b). The
                encoder runs once per image, however many prompts it has, and so does the decoder where no text
                block sits before the head (``decodes_per_image``).
            refine: run the refiner, when the model has one (``inference.refiner`` switches it off).
            network: which member of a co-trained model answers; one network is its only member (None or 0).

        Returns:
            ModelOutput with logits [B, 1, *spatial], presence [B] (or None), similarity maps
            ``"encoder_{level}"`` [B, 1, *spatial_level] and evidence [B, 2, *spatial] (evidential head).
        """
        if network not in (None, 0):
            raise ValueError(f"network {network}: this model is one network (inference.network is for co-trained "
                             "models)")
        rows = image.shape[0] if image_index is None else len(image_index)
        if rows != len(text):
            raise ValueError(f"{len(text)} prompts for {rows} images: pass image_index "
                             "to say which image each prompt is for")
        text = text.to(image.device)
        # the encoder is shared by an image's prompts up to the first stage that reads the text
        state = ForwardState(image, text, image_index, min(self.encoder_levels, default=len(self.config.channels)),
                             refine=refine, words=text.tokens, head=self.decoder.head)

        def after_encoder_stage(level: int, features: Tensor) -> Tensor:
            if level == state.per_prompt_from and image_index is not None:
                features = features.index_select(0, image_index)
            for block in self._at("encoder", level):
                features = block.encoder(level, features, state)
            return features

        state.skips = self.encoder(image, after_encoder_stage if self.encoder_levels else None)
        for block in self.blocks:
            block.prepare(state)

        per_image = self.decodes_per_image and image_index is not None
        # one row per prompt from the head on where a block acts there, else from the logits on
        rows_at_head = per_image and bool(self._at("head"))

        def after_decoder_stage(level: int, features: Tensor) -> Tensor:
            for block in self._at("decoder", level):
                features = block.decoder(level, features, state)
            if level == 0:  # the last decoder features, before the output convolution
                if rows_at_head:
                    features = features.index_select(0, image_index)
                for block in self._at("head"):
                    features = block.head(features, state)
            return features

        gather = state.per_prompt if image_index is not None and not per_image else None
        raw, deep_supervision, features = self.decoder(state.skips, after_decoder_stage, gather)
        if per_image:
            deep_supervision = [logits.index_select(0, image_index) for logits in deep_supervision]
        if per_image and not rows_at_head:
            raw = raw.index_select(0, image_index)
            features = features.index_select(0, image_index) if self._at("logits") else features
        for block in self._at("logits"):
            raw = block.logits(raw, features, state)
        logits, evidence = self.output_head(raw)
        readers = [block for block in self.blocks if any(site.where == "readout" for site in block.sites)]
        similarity = {name: value for block in readers for name, value in block.readout(state).items()}
        presence = topk_presence(logits, self.config.presence_topk) if self.config.presence else None
        return ModelOutput(logits=logits, presence=presence, deep_supervision=deep_supervision,
                           similarity=similarity, evidence=evidence)
