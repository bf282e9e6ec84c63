"""Validated configuration: YAML presets, ``--set a.b=c`` overrides, and a resolved copy saved with every run.

Every section is a pydantic model that forbids unknown keys, so a typo (``train.step``) fails at load time
with the field's full dotted name and the closest valid key, instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import types
import typing
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from medtextseg.config.blocks import BLOCK_KINDS, BlockOptions, TextReadingBlock, parse_blocks
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.json_files import json_type
from medtextseg.utils.planes import plane_axes


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ChannelNormalization(_Section):
    """How one image channel is normalised. ``zscore``: by this image's own mean and std (MR, whose intensities
    have no fixed scale). ``ct``: clipped to ``clip`` (the dataset's foreground 0.5 and 99.5 percentiles), then
    by the dataset's foreground ``mean`` and ``std``, so that Hounsfield units mean the same in every scan
    (nnU-Net's CT normalisation). The plan sets it from the channel names (``medtextseg plan``)."""

    scheme: Literal["zscore", "ct"] = "zscore"
    clip: list[float] | None = Field(None, min_length=2, max_length=2, description="[low, high] (ct)")
    mean: float | None = Field(None, description="subtracted after clipping (ct)")
    std: float | None = Field(None, gt=0, description="divided by after subtracting the mean (ct)")

    @model_validator(mode="after")
    def _ct_needs_statistics(self) -> ChannelNormalization:
        if self.scheme == "ct":
            if self.clip is None or self.mean is None or self.std is None:
                raise ValueError("scheme 'ct' needs clip, mean and std (the dataset's foreground statistics)")
            if not self.clip[0] < self.clip[1]:
                raise ValueError(f"clip must be [low, high] with low < high, got {self.clip}")
        return self


class DataConfig(_Section):
    """Where the dataset is and how images are prepared (in RAS, at ``spacing``, z-scored per channel)."""

    root: str | None = Field(None, description="dataset folder (nnU-Net raw layout + prompts.jsonl)")
    plan: bool = Field(True, description="measure the dataset before training and let its plan set spacing, "
                       "patch, strides, channels and kind weights (medtextseg plan; --set wins); false: the "
                       "config's own values (train --no-plan; the co-training presets, whose annotated slices "
                       "must keep the dataset's grid)")
    spacing: list[float] | None = Field(None, description="resample to this voxel spacing (mm); None keeps it")
    patch_size: list[int] = Field([48, 48, 16], description="training patch / sliding-window size (voxels)")
    prompts_per_image: int = Field(4, ge=1, description="prompts trained per image per step (encoder shared)")
    kind_weights: dict[str, float] = Field(
        default_factory=lambda: {"single": 0.45, "all": 0.1, "absent": 0.3, "anatomy": 0.15},
        description="sampling weight of each prompt kind (kinds not listed get weight 1)")
    flip_left_right: float = Field(0.5, ge=0, le=1, description="probability of a left-right flip; "
                                   "'left' and 'right' are swapped in the prompt with it")
    intensity_augmentation: bool = True
    structured_prompts: float = Field(0.0, ge=0, le=1, description="probability that a prompt naming a lesion by "
                                      "its attributes (meta side/zone/size/shape) is given in the structured "
                                      "form 'location left peripheral zone; shape irregular; size large; "
                                      "number one' (TextBCS) at a training step")
    paraphrases: int = Field(0, ge=0, le=32, description="rewordings drawn per training prompt before training "
                             "(synonyms, abbreviations, sentence forms; data/paraphrase.py), encoded once")
    paraphrase_probability: float = Field(0.5, ge=0, le=1, description="probability that a training prompt is "
                                          "given as one of its rewordings at a step (with data.paraphrases > 0)")
    prompt_sampling: bool = Field(False, description="reword each prompt line that has a 'class' at every step: "
                                  "a random template x synonym of the dataset's prompt_vocabulary.json")
    normalization: list[ChannelNormalization] | None = Field(
        None, description="per image channel, 'zscore' (each image by itself) or 'ct' (clip + the dataset's mean "
        "and std); null z-scores every channel; the plan sets it from the channel names")
    slice_context: int = Field(0, ge=0, le=8, description="a 2D model (model.spatial_dims=2) on volumes: this many "
                               "neighbouring axial slices on either side are input channels (2.5D, as "
                               "BiomedParse): model.in_channels = image channels x (2k+1), which the plan sets; "
                               "0 = the slice alone")
    cache_dir: str | None = Field(None, description="where prepared cases are cached (preprocessed/{key}/; default: "
                                  "{data.root}/.medtextseg_cache, or $MEDTEXTSEG_CACHE / ~/.cache/medtextseg when "
                                  "the dataset folder is read-only)")
    fold: int | None = Field(None, ge=0, description="cross-validation (data/folds.py): train on the other folds "
                             "of the train + val cases and validate on this one (0-based), as listed in the "
                             "dataset's splits_final.json (made when absent); the test split stays untouched; "
                             "null: the dataset's train and val splits")
    folds: int = Field(5, ge=2, description="number of cross-validation folds of the train + val cases (nnU-Net's "
                       "5)")
    fold_seed: int = Field(12345, description="shuffles the cases into folds when splits_final.json is made "
                           "(nnU-Net's 12345); an existing file is replayed whatever the seed")


class TextConfig(_Section):
    """The frozen text encoder: ``minilm`` (embedded default) or a local model folder (Hugging Face BERT-style,
    Hugging Face CLIP, open_clip with a Hugging Face text tower, or sentence-transformers)."""

    encoder: str = Field("minilm", description="'minilm' or the path of a local model folder: Hugging Face "
                         "(BERT-style or CLIP), open_clip (BiomedCLIP's format) or sentence-transformers")
    encoder_kind: Literal["auto", "bert", "clip", "open_clip", "sentence_transformers"] = Field(
        "auto", description="how the folder is read; auto: from its files (modules.json: sentence_transformers, "
        "open_clip_config.json: open_clip, a CLIP config.json: clip, else bert)")
    max_tokens: int = Field(32, ge=1, le=512)
    cache_dir: str | None = Field(None, description="disk cache of embeddings (default: ~/.cache/medtextseg)")
    memory_prompts: int = Field(1024, ge=1, description="the most prompt embeddings held in memory (least "
                                "recently used evicted, read back from the disk cache), so memory does not grow "
                                "with the number of distinct texts")


class ModelConfig(_Section):
    """An N-D U-Net, and the text blocks that say where the prompt enters it (``blocks``).

    ``blocks`` maps each block kind to its typed options (``config/blocks.py``; ``medtextseg presets --blocks``
    lists every preset's): ``film`` at the bottleneck and every decoder stage (the default), ``fusion`` = the
    FiLM -> SE -> CBN -> residual -> L2 chain at the bottleneck (FiLM/CBN), ``concat`` = the tiled text vector
    concatenated at the bottleneck, ``svli`` = vision-language attention after encoder stages (TextBCS),
    ``similarity`` = pixel-text similarity maps for the alignment losses, ``refiner`` = the confidence-gated refiner
    on the logits (Align-then-Refine stage 2), ``dynamic_head`` = a bias before the output convolution (SGTC/RADA),
    ``prompt_head`` = per-prompt 1x1 convolutions after a decoder the prompts share. None: the text enters
    nowhere (the image-only baseline). The flat keys of earlier versions (``model.conditioning``,
    ``model.spatial_film``, ...) are still read and written into ``blocks`` (:data:`LEGACY_MODEL_KEYS`).
    """

    spatial_dims: Literal[2, 3] = 3
    in_channels: int = Field(3, ge=1)
    channels: list[int] = Field([16, 32, 64, 128], description="feature channels per resolution stage")
    strides: list[list[int]] = Field([[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]],
                                     description="downsampling stride of each stage (first is the stem)")
    blocks: dict[str, SerializeAsAny[BlockOptions]] = Field(
        default_factory=dict, description="where the text enters: block kind -> its options (film, fusion, concat, "
        "svli, refiner, dynamic_head, similarity, prompt_head; config/blocks.py); a kind set to null is left out")
    networks: int = Field(1, ge=1, description="independently initialised copies trained together "
                          "(cotraining); prediction averages their probabilities (inference.network picks one)")
    head: Literal["sigmoid", "evidential"] = Field(
        "sigmoid", description="sigmoid: one logit per voxel; evidential: Dirichlet evidence for {background, "
        "target}, which also gives a per-voxel uncertainty map")
    encoders: int = Field(1, ge=1, description="separate encoders over equal groups of the input channels, "
                          "fused by concatenation + convolution at every stage (Align-then-Refine: one per "
                          "sequence, = in_channels); 1 = the ordinary U-Net")
    deep_supervision: bool = Field(False, description="1x1 heads after the decoder stages below full resolution; "
                                   "loss.deep_supervision_weights weighs them")
    downsample: Literal["conv", "maxpool"] = Field("conv", description="strided convolution or max-pooling")
    block_attention: list[Literal["se", "cbam"]] = Field(
        default_factory=list, description="refinement after every encoder and decoder stage, in order")
    dropout: float = Field(0.0, ge=0, lt=1, description="channel dropout after every encoder stage")
    negative_slope: float = Field(0.01, ge=0, description="of the LeakyReLU activations")
    coordinates: bool = Field(True, description="append whole-image voxel coordinates as input channels")
    presence: bool = Field(True, description="train and use a presence logit (mean of the top-k mask logits) "
                           "saying whether the prompted target is in the image at all")
    presence_topk: int = Field(8, ge=1, description="k voxels read by the presence logit")
    norm: Literal["instance", "batch", "group"] = "instance"

    @model_validator(mode="before")
    @classmethod
    def _read_flat_keys(cls, data: Any) -> Any:
        return read_legacy_model_keys(data) if isinstance(data, dict) else data

    @field_validator("blocks", mode="before")
    @classmethod
    def _parse_blocks(cls, value: Any) -> dict[str, BlockOptions]:
        return parse_blocks({} if value is None else value)

    @model_validator(mode="after")
    def _check_stages(self) -> ModelConfig:
        if len(self.channels) != len(self.strides):
            raise ValueError(f"model.channels has {len(self.channels)} stages but model.strides has "
                             f"{len(self.strides)}; give one stride per stage")
        for stride in self.strides:
            if len(stride) != self.spatial_dims:
                raise ValueError(f"model.strides entry {stride} must have {self.spatial_dims} values "
                                 f"(model.spatial_dims={self.spatial_dims})")
        if self.in_channels % self.encoders:
            raise ValueError(f"model.encoders={self.encoders} must divide model.in_channels={self.in_channels} "
                             "(each encoder reads an equal group of channels)")
        if self.head == "evidential" and self.deep_supervision:
            raise ValueError("model.deep_supervision needs model.head=sigmoid")
        for options in self.blocks.values():
            options.check(self)
        return self

    def text_blocks(self) -> list[BlockOptions]:
        """The blocks with every value left to the U-Net set (:meth:`BlockOptions.resolved`), in the order the
        model builds them."""
        return [options.resolved(self) for options in self.blocks.values()]

    @property
    def whitens_text(self) -> bool:
        """Whether a block whitens the text over the training prompts (fitted before training starts)."""
        return any(options.whitens_text for options in self.blocks.values())


# The flat keys of configs before ``model.blocks`` (saved runs load, and older commands run, as they did). The
# switches say which blocks there are; each option key goes to its block when the config has that block.
LEGACY_MODEL_SWITCHES = ("conditioning", "refiner", "vision_language_levels", "similarity_levels")
LEGACY_MODEL_OPTIONS: dict[str, tuple[str | None, str]] = {
    "spatial_film": ("film", "spatial"), "prompt_head_channels": ("prompt_head", "hidden"),
    "region_dim": ("dynamic_head", "region_dim"), "region_rho": ("dynamic_head", "region_rho"),
    "similarity_dim": ("similarity", "dim"), "similarity_temperature": ("similarity", "temperature"),
    "similarity_learnable_temperature": ("similarity", "learnable_temperature"),
    "refiner_tokens": ("refiner", "tokens"), "refiner_gate": ("refiner", "gate"),
    "refiner_blend": ("refiner", "blend"), "fusion_se": ("fusion", "se"), "fusion_cbn": ("fusion", "cbn"),
    "cbn_position": ("fusion", "cbn_position"),
    "text_tokens": (None, "tokens"), "text_whitening": (None, "whitening"),  # every block that reads the text
}
LEGACY_MODEL_KEYS = frozenset(LEGACY_MODEL_SWITCHES) | frozenset(LEGACY_MODEL_OPTIONS)
# model.conditioning chose one of these (or none)
_CONDITIONING_KINDS = ("film", "fusion", "concat", "dynamic_head", "prompt_head")


def read_legacy_model_keys(data: dict[str, Any]) -> dict[str, Any]:
    """A model section with flat keys (``conditioning: fusion``, ``fusion_se: false``, ...) -> the same section
    with ``blocks``: the switches add or remove blocks, then each option goes to its block. An option whose block
    is absent is ignored, as it always was, except the two that used to be refused (``spatial_film: true``
    without FiLM, ``region_dim`` > 0 without the dynamic head)."""
    flat = {key: data[key] for key in data if key in LEGACY_MODEL_KEYS}
    if not flat:
        return data
    data = {key: value for key, value in data.items() if key not in LEGACY_MODEL_KEYS}
    blocks = {kind: _as_dict(value) for kind, value in dict(data.get("blocks") or {}).items()}
    readers = [kind for kind, options in BLOCK_KINDS.items() if issubclass(options, TextReadingBlock)]
    if "conditioning" in flat:
        chosen = flat["conditioning"]
        if chosen not in (*_CONDITIONING_KINDS, "none"):
            raise ValueError(f"model.conditioning must be one of {', '.join(_CONDITIONING_KINDS)}, none; got "
                             f"{chosen!r}")
        # the text reading was one model-wide setting: the chosen block reads the text as the one it replaces
        reading = next((blocks[kind]["text"] for kind in readers if (blocks.get(kind) or {}).get("text")), None)
        blocks |= {kind: None for kind in _CONDITIONING_KINDS if kind != chosen}
        if chosen != "none" and blocks.get(chosen) is None:
            blocks[chosen] = {"text": reading} if reading is not None and chosen in readers else {}
    if "refiner" in flat:
        blocks["refiner"] = (blocks.get("refiner") or {}) if flat["refiner"] else None
    for key, kind in (("vision_language_levels", "svli"), ("similarity_levels", "similarity")):
        if key in flat:
            blocks[kind] = {**(blocks.get(kind) or {}), "levels": flat[key]} if flat[key] else None
    for key, (kind, option) in LEGACY_MODEL_OPTIONS.items():
        if key not in flat:
            continue
        for target in [kind] if kind else readers:
            if blocks.get(target) is not None:
                path = ["text", option] if kind is None else [option]
                blocks[target] = _with_option(blocks[target], path, flat[key])
            elif key == "spatial_film" and flat[key]:
                raise ValueError("model.spatial_film needs the film block (model.blocks.film)")
            elif key == "region_dim" and flat[key]:
                raise ValueError("model.region_dim needs the dynamic head (model.blocks.dynamic_head): the fused "
                                 "embedding feeds it")
    return {**data, "blocks": blocks}


def _as_dict(options: Any) -> dict[str, Any] | None:
    return options.model_dump() if isinstance(options, BaseModel) else None if options is None else dict(options)


def _with_option(options: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    if len(path) == 1:
        return {**options, path[0]: value}
    return {**options, path[0]: _with_option(_as_dict(options.get(path[0])) or {}, path[1:], value)}


class TermSchedule(_Section):
    """When a loss term counts: off for ``warmup_steps``, then ramped in over ``ramp_steps``; with ``gate`` the
    ramp waits for stable training (``training/schedule.py``)."""

    warmup_steps: int = Field(0, ge=0, description="steps with the term off")
    ramp_steps: int = Field(0, ge=0, description="then linear from 0 to the full weight over these steps")
    gate: bool = Field(False, description="the ramp waits until the loss plateaus or validation Dice is reached")
    stable_window: int = Field(50, ge=1, description="gate: steps per window of the loss-plateau test")
    stable_change: float = Field(0.05, gt=0, description="gate: relative change between two windows' mean loss")
    stable_val_dice: float | None = Field(0.3, ge=0, le=1, description="gate: or this validation Dice")
    latest_start: int | None = Field(None, ge=0, description="gate: open at this step regardless")
    retest: bool = Field(False, description="gate: test stability at every step until latest_start, the term "
                         "off while it fails (Align-then-Refine's code re-tests each epoch); false: once open, "
                         "stays open")


class LossConfig(_Section):
    """Weighted loss terms (names: ``medtextseg.losses.registry``, table in docs/architecture.md "Losses").

    A weight of 0 switches a term off, e.g. one a base preset lists: presets merge ``terms`` key by key. Like
    every dict field, ``--set loss.terms.tversky=1`` edits the dict the preset's YAML gives, which is empty
    when the YAML has no ``loss.terms``; ``--set "loss.terms={dice: 1, tversky: 1}"`` says it all.
    """

    terms: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"dice": 1.0, "bce": 1.0},
        description="loss term name -> weight; region terms (dice, ...) average over prompts with a target, "
                    "pixel-wise terms (bce, ...) over all prompts")
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="loss term name -> its keyword arguments, e.g. tversky: {alpha: 0.7}")
    schedules: dict[str, TermSchedule] = Field(
        default_factory=dict, description="loss term name -> when it counts: warm-up, linear ramp, stability gate "
        "(e.g. evidential_kl: {ramp_steps: 300}, the annealed KL of TextBCS)")
    presence_weight: float = Field(0.5, ge=0, description="BCE of the presence logit against 'target not empty'")
    deep_supervision_weights: list[Annotated[float, Field(ge=0)]] | Literal["halving"] | None = Field(
        "halving", description="weights of the model's outputs, full resolution first, normalised to sum 1; "
        "'halving' = 1, 1/2, 1/4, ...; null = train the full-resolution output only")

    @model_validator(mode="before")
    @classmethod
    def _rename_legacy_weights(cls, data: Any) -> Any:
        # configs saved with runs before the term library (loss.dice_weight / loss.bce_weight) still load
        if isinstance(data, dict) and ({"dice_weight", "bce_weight"} & data.keys()):
            if "terms" in data:
                raise ValueError("loss.dice_weight / loss.bce_weight are replaced by loss.terms; give only terms")
            data = dict(data)
            data["terms"] = {"dice": data.pop("dice_weight", 1.0), "bce": data.pop("bce_weight", 1.0)}
            warnings.warn("config fields loss.dice_weight / loss.bce_weight are renamed: write loss.terms: "
                          f"{data['terms']}", FutureWarning, stacklevel=2)
        return data

    @field_validator("terms", "params", "schedules")
    @classmethod
    def _check_term_names(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # imported here: the losses need torch, and the config must stay importable without it (fast CLI)
        from medtextseg.losses.registry import check_loss_term_name, create_loss_term

        for name in value:
            check_loss_term_name(name)
        if info.field_name == "params":
            for name, params in value.items():
                create_loss_term(name, **params)  # unknown or out-of-range parameters fail at load time
        return value

    @model_validator(mode="after")
    def _check_scheduled_terms(self) -> LossConfig:
        unknown = sorted(set(self.schedules) - set(self.terms))
        if unknown:
            raise ValueError(f"loss.schedules names {unknown}, which loss.terms does not list")
        return self

    @field_validator("deep_supervision_weights")
    @classmethod
    def _check_positive_sum(cls, value: Any) -> Any:
        if isinstance(value, list) and not sum(value) > 0:
            raise ValueError(f"the weights must have a positive sum, got {value}")
        return value


class TrainConfig(_Section):
    step_policy: Literal["standard", "cotraining"] = Field(
        "standard", description="how a step trains (training/steps/): standard (one network, dense labels, "
        "prompts by kind) or cotraining (RADA: several networks, sparse slice labels; the cotraining section)")
    steps: int = Field(1500, ge=1, description="optimizer steps")
    batch_images: int = Field(2, ge=1, description="images per step (x prompts_per_image samples)")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="training/optimization.py; sgd uses "
                                                      "train.momentum and train.nesterov")
    momentum: float = Field(0.99, ge=0, lt=1, description="SGD momentum (nnU-Net's 0.99)")
    nesterov: bool = Field(True, description="SGD with Nesterov momentum")
    schedule: Literal["cosine", "poly", "step", "plateau"] = Field(
        "cosine", description="learning rate after the warm-up: cosine to 1%, poly (1 - t)^poly_power, step "
        "(x step_gamma every step_every steps) or plateau (x plateau_factor after plateau_patience validations "
        "without a better validation Dice)")
    poly_power: float = Field(0.9, gt=0)
    step_every: int = Field(2500, ge=1)
    step_gamma: float = Field(0.1, gt=0, le=1)
    plateau_patience: int = Field(3, ge=1, description="validations without improvement before a plateau cut")
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    early_stopping: int | None = Field(None, ge=1, description="stop after this many validations without a "
                                       "better validation Dice (None: run every step)")
    warmup_steps: int = Field(50, ge=0)
    val_every: int = Field(250, ge=1)
    val_budget: float | None = Field(
        0.1, gt=0, lt=1, description="validation may take at most this share of the training time: a validation "
        "pass longer than val_budget x the training since the previous one spaces the next ones out (val_every "
        "times 2, 3, ..., logged as a val_every event); null: every val_every steps regardless")
    val_cases: int = Field(12, ge=1, description="validation cases scored at each validation")
    seed: int = 0
    amp: bool = Field(True, description="mixed precision of the standard step (co-training runs float32): "
                      "float16 on a GPU, bfloat16 on a CPU with bfloat16 instructions (AVX512-BF16, AMX; "
                      "utils/precision.py), float32 elsewhere; the log's first line says which (precision)")
    grad_clip: float = Field(12.0, gt=0)
    num_threads: int | None = Field(None, description="torch CPU threads (None: PyTorch's default)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes that load and augment the training "
                             "samples (0: the training process itself); the samples are the same for any number")
    init_from: str | None = Field(None, description="start from the weights of this run folder or checkpoint "
                                  "(by name and shape; a second training stage)")
    init_exclude: list[str] = Field(default_factory=list, description="parameter-name prefixes not taken from "
                                    "train.init_from (left as initialised)")


class InferenceConfig(_Section):
    """How a trained model is asked: a frozen value (``Predictor.set_inference`` or ``--set inference.*`` give a new
    one), passed to the sliding window, never set on the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(0.5, gt=0, lt=1)
    refiner: bool = Field(True, description="use the model's refiner (model.blocks.refiner) when predicting")
    mirror_axes: list[Annotated[int, Field(ge=0, le=2)]] | None = Field(
        None, description="mirror test-time augmentation along these spatial axes (0 = the patient's left-right: "
        "that pass reads the prompt with left and right swapped); null: the flip training makes, [0] where "
        "data.flip_left_right > 0, else []")
    presence_threshold: float = Field(0.5, ge=0, lt=1, description="a window whose presence probability is below "
                                      "it answers empty (models with a presence logit); 0 leaves the gate open")
    overlap: float = Field(0.25, ge=0, lt=1)
    sw_batch_size: int = Field(1, ge=1, description="sliding windows per network call, each with every prompt "
                               "of a pass; more fill a GPU (memory grows with windows x prompt_chunk)")
    prompt_chunk: int = Field(16, ge=1, description="prompts decoded together in one sliding-window pass (the "
                              "encoder runs once per window and pass); fewer need less memory, more passes")
    autocast: Literal["auto", "none", "bf16", "fp16"] = Field(
        "auto", description="the network's precision when predicting: auto (fp16 on a GPU, bf16 on a CPU with "
        "bfloat16 units, else float32), none (float32), bf16 (CPU or GPU) or fp16 (GPU)")
    spacing: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, min_length=2, max_length=3, description="predict on this grid (mm) instead of data.spacing, e.g. a "
        "coarser one for a volume too large for memory; masks still come back on the input's grid")
    memory_limit_gb: float | None = Field(None, gt=0, description="refuse a prediction whose memory estimate "
                                          "exceeds this (default: the memory available when it starts)")
    min_component_voxels: int = Field(0, ge=0, description="drop predicted components smaller than this")
    network: int | None = Field(None, ge=0, description="co-trained models (model.networks > 1): predict with "
                                "this member alone (0-based); null averages their probabilities")


class CoTrainingConfig(_Section):
    """Barely-supervised co-training from sparse slice labels (RADA, METHODS.md section 2), the step policy
    ``train.step_policy=cotraining`` (``training/steps/cotraining.py``).

    Network k is supervised by the annotated planes ``views[k]`` of the labelled volumes (propagated through
    the volume and weighted ``alpha ** distance``) and by the other networks' confident predictions on the
    unlabelled volumes (cross pseudo supervision, weight ``beta``). With one view of all three planes, no
    unlabelled volumes and no propagation it is plain weighted supervised training: the sparse-only and, on
    dense labels, the fully supervised baselines.
    """

    prompt: str | None = Field(None, description="the sentence naming the target, given to every network (RADA: "
                               "one prompt per dataset, e.g. 'segment the left atrium')")
    target_labels: list[str] | None = Field(None, description="dataset.json label names whose union is the target "
                                            "(default: every label but background and ignore)")
    views: list[str] = Field(["SC", "AS", "AC"], description="per network, the annotated planes that supervise it "
                             "(S sagittal, C coronal, A axial); one entry per model.networks")
    prompt_views: list[str] | None = Field(
        None, description="per network, the annotated planes whose slices make its region prototype (the visual "
        "prompt, model.region_dim > 0); null: its views entry, RADA's pairing. Set apart for RADA's Fig. 5 pairs "
        "(e.g. views [A, S] with prompt_views [S, A])")
    propagation: bool = Field(True, description="densify each annotated slice by slice-to-slice registration")
    propagation_iterations: int = Field(40, ge=1, description="demons iterations per slice pair")
    alpha: float = Field(0.97, gt=0, le=1, description="propagated voxels weigh alpha ** distance to their slice")
    alpha_every: int = Field(1000, ge=1, description="alpha follows a cosine to 0, updated every this many steps")
    beta: float = Field(0.1, ge=0, lt=0.5, description="maximum weight of each other network's pseudo labels")
    beta_ramp_steps: int = Field(6000, ge=1, description="sigmoid ramp-up of beta (SGTC: 40 epochs x 150 steps)")
    beta_ramp_every: int = Field(150, ge=1, description="beta is raised in steps of this many iterations")
    uncertainty_passes: int = Field(8, ge=1, description="noisy forward passes that estimate a pseudo label's "
                                    "entropy")
    noise_std: float = Field(0.1, ge=0, description="std of the input noise of those passes")
    noise_clip: float = Field(0.2, ge=0, description="the noise is clipped to +- this")
    labelled_per_batch: int = Field(2, ge=1, description="labelled patches per network per step")
    unlabelled_per_batch: int = Field(2, ge=0, description="unlabelled patches per network per step (0: no "
                                      "cross pseudo supervision)")
    pseudo_loss: LossConfig = Field(
        default_factory=lambda: LossConfig(terms={"bce": 1.0}, presence_weight=0.0, deep_supervision_weights=None),
        description="the loss of each other network's certain pseudo labels on the unlabelled patches, a loss "
        "section like loss (which is the supervised loss on the labelled patches)")
    region_encoder: str = Field("efficientnet_lite0", description="frozen encoder of the annotated slices + masks "
                                "(model.region_dim > 0): 'efficientnet_lite0', or 'package.module:factory' "
                                "returning a callable (slice [3, H, W], mask [H, W]) -> [region_dim]")
    cache_dir: str | None = Field(None, description="where propagated labels are cached (default: "
                                  "{data.root}/.medtextseg_cache)")

    @field_validator("views", "prompt_views")
    @classmethod
    def _check_views(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        for view in value or []:  # MedTextSegError is a ValueError: pydantic reports it with the field's name
            plane_axes(view, f"cotraining.{info.field_name}")
        return None if value is None else [view.upper() for view in value]


def _rename_cotraining_switch(data: dict[str, Any]) -> dict[str, Any]:
    """``cotraining.enabled`` (before the step policies) -> ``train.step_policy``."""
    cotraining = data["cotraining"]
    if "enabled" not in cotraining:
        return data
    data, cotraining = dict(data), dict(cotraining)
    if cotraining.pop("enabled"):
        data["train"] = {"step_policy": "cotraining", **(data.get("train") or {})}
    data["cotraining"] = cotraining
    warnings.warn("config field cotraining.enabled is renamed: write train.step_policy: "
                  f"{data.get('train', {}).get('step_policy', 'standard')}", FutureWarning, stacklevel=4)
    return data


def _move_cotraining_optimiser(data: dict[str, Any]) -> dict[str, Any]:
    """``cotraining.momentum``, ``lr_step``, ``lr_gamma`` (the co-trainer's own SGD with a step decay, whatever
    ``train.optimizer`` said) -> ``train.optimizer: sgd`` with that momentum, ``train.schedule: step``. Every
    config saved before holds them (they were defaults); they change the training only of a co-training one."""
    old = {"momentum", "lr_step", "lr_gamma"} & set(data["cotraining"])
    if not old:
        return data
    data, cotraining = dict(data), dict(data["cotraining"])
    moved = {key: cotraining.pop(key) for key in sorted(old)}
    data["cotraining"] = cotraining
    train = dict(data.get("train") or {})
    if train.get("step_policy") == "cotraining":
        data["train"] = train | {"optimizer": "sgd", "nesterov": False, "schedule": "step", "warmup_steps": 0,
                                 "momentum": moved.get("momentum", 0.9), "step_every": moved.get("lr_step", 2500),
                                 "step_gamma": moved.get("lr_gamma", 0.1)}
        warnings.warn(f"config fields cotraining.{', cotraining.'.join(moved)} are replaced by train.optimizer: sgd, "
                      "train.momentum, train.schedule: step, train.step_every and train.step_gamma",
                      FutureWarning, stacklevel=4)
    return data


class Config(_Section):
    """The whole run configuration. ``Config.load("default", ["train.steps=10"])`` resolves a preset."""

    preset: str = "default"
    data: DataConfig = DataConfig()
    text: TextConfig = TextConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    inference: InferenceConfig = InferenceConfig()
    cotraining: CoTrainingConfig = CoTrainingConfig()

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        # configs saved with runs before the step policies still load, and train as they did
        if isinstance(data, dict) and isinstance(data.get("cotraining"), dict):
            data = _move_cotraining_optimiser(_rename_cotraining_switch(data))
        return data

    @model_validator(mode="before")
    @classmethod
    def _mirror_as_trained(cls, data: Any) -> Any:
        """``inference.mirror_axes`` unset: mirror at prediction along the axis training flips (nnU-Net's rule),
        the left-right one where ``data.flip_left_right`` > 0: the model has learnt both views, and the two
        answers, the mirrored one read with "left" and "right" swapped in the prompt, are averaged."""
        if not isinstance(data, dict):
            return data
        inference = data.get("inference") or {}
        inference = inference.model_dump() if isinstance(inference, BaseModel) else dict(inference)
        if inference.get("mirror_axes") is None:
            section = data.get("data") or {}
            flip = (section.flip_left_right if isinstance(section, BaseModel)
                    else section.get("flip_left_right", DataConfig.model_fields["flip_left_right"].default))
            data = {**data, "inference": {**inference, "mirror_axes": [0] if flip > 0 else []}}
        return data

    @model_validator(mode="after")
    def _check_networks(self) -> Config:
        if self.train.step_policy == "cotraining" and len(self.cotraining.views) != self.model.networks:
            raise ValueError(f"cotraining.views has {len(self.cotraining.views)} entries for model.networks="
                             f"{self.model.networks}; give one view per network")
        prompt_views = self.cotraining.prompt_views
        if prompt_views is not None and len(prompt_views) != len(self.cotraining.views):
            raise ValueError(f"cotraining.prompt_views has {len(prompt_views)} entries for "
                             f"{len(self.cotraining.views)} views; give one per network, or null")
        if self.inference.network is not None and self.inference.network >= self.model.networks:
            raise ValueError(f"inference.network={self.inference.network} but the model has "
                             f"{self.model.networks} network(s)")
        return self

    @model_validator(mode="after")
    def _check_cotraining(self) -> Config:
        """Co-training learns from annotated slices on the dataset's own grid, patches without coordinates."""
        if self.train.step_policy != "cotraining":
            return self
        if self.data.plan or self.data.spacing is not None:
            raise ValueError("co-training (train.step_policy=cotraining) keeps the dataset's grid, where the "
                             "annotated slices are: data.plan must be false and data.spacing null")
        if self.model.coordinates:
            raise ValueError("co-training (train.step_policy=cotraining) needs model.coordinates=false (its "
                             "patches carry no coordinate channels)")
        return self

    @model_validator(mode="after")
    def _check_fold(self) -> Config:
        fold, folds = self.data.fold, self.data.folds
        if fold is not None and fold >= folds:
            raise ValueError(f"data.fold={fold} is out of range: data.folds={folds} makes folds 0..{folds - 1}")
        return self

    @model_validator(mode="after")
    def _check_patch(self) -> Config:
        """The patch must have one size per spatial axis, each a multiple of the product of the strides along it:
        otherwise the decoder's upsampled maps miss their skip connections by a voxel (a shape error deep inside
        the model, after the data is prepared). E.g. strides [[1, 1], [2, 2], [2, 2]] multiply to [4, 4]: 48 fits,
        50 does not."""
        patch, dims = self.data.patch_size, self.model.spatial_dims
        if len(patch) != dims:
            raise ValueError(f"data.patch_size {patch} must have {dims} values (model.spatial_dims={dims})")
        total = [math.prod(stride[axis] for stride in self.model.strides) for axis in range(dims)]
        if any(size % step for size, step in zip(patch, total, strict=True)):
            fitting = ",".join(str(max(round(size / step), 1) * step) for size, step in zip(patch, total, strict=True))
            raise ValueError(f"data.patch_size {patch} is not a multiple of the strides' product {total} along each "
                             f"axis (model.strides {self.model.strides}); the decoder could not join its skip "
                             f"connections: use e.g. --set data.patch_size=[{fitting}]")
        return self

    @model_validator(mode="after")
    def _check_slice_context(self) -> Config:
        """2.5D input is for 2D models, and its channels come in whole stacks: model.in_channels is the image's
        channels x (2k+1), channel-major (each channel's slices z-k..z+k, then the next channel's)."""
        context = self.data.slice_context
        if context and self.model.spatial_dims != 2:
            raise ValueError(f"data.slice_context={context} stacks neighbouring slices as the channels of a 2D "
                             f"model, but model.spatial_dims={self.model.spatial_dims}; use 0 for a 3D model")
        if self.model.in_channels % (2 * context + 1):
            raise ValueError(f"model.in_channels={self.model.in_channels} is not a multiple of {2 * context + 1}: "
                             f"data.slice_context={context} gives each image channel {2 * context + 1} slices "
                             "(model.in_channels = image channels x (2k+1))")
        return self

    @property
    def image_channels(self) -> int:
        """Image channels a case has (one file each): ``model.in_channels``, or with ``data.slice_context`` k
        that divided by the 2k+1 slices each one gives the network."""
        return self.model.in_channels // (2 * self.data.slice_context + 1)

    @model_validator(mode="after")
    def _check_inference_spacing(self) -> Config:
        spacing, dims = self.inference.spacing, self.model.spatial_dims
        if spacing is not None and len(spacing) != dims:
            raise ValueError(f"inference.spacing {spacing} must have {dims} values (model.spatial_dims={dims})")
        return self

    @model_validator(mode="after")
    def _check_mirror_axes(self) -> Config:
        if any(axis >= self.model.spatial_dims for axis in self.inference.mirror_axes):
            raise ValueError(f"inference.mirror_axes {self.inference.mirror_axes} must be spatial axes "
                             f"0..{self.model.spatial_dims - 1} (model.spatial_dims={self.model.spatial_dims})")
        return self

    @classmethod
    def load(cls, preset: str | Path = "default", overrides: list[str] | None = None,
             planned: dict[str, Any] | None = None) -> Config:
        """Read a preset (a name in ``medtextseg/presets`` or a YAML path), set the ``planned`` values (dotted
        name -> value, from a dataset's plan), then apply ``a.b=c`` overrides, which win over both.

        Raises:
            MedTextSegError: unknown preset, malformed override, unknown key (with the closest valid one),
                or a value that fails validation (with the field's dotted name).
        """
        raw = read_preset(preset)
        for key, value in (planned or {}).items():
            _set_path(raw, key.split("."), value)
        for override in overrides or []:
            apply_override(raw, override)
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise MedTextSegError(_explain(error)) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def preset_names() -> list[str]:
    folder = resources.files("medtextseg") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def list_presets(filter: str | Sequence[str] = "*", exclude: str | Sequence[str] = ()) -> list[str]:
    """The built-in presets whose name matches a wildcard pattern (or any of several) and none of ``exclude``,
    sorted, as timm's ``list_models``: ``list_presets("rada*")`` -> ``["rada", "rada_single", "rada_text"]``."""
    include = [filter] if isinstance(filter, str) else list(filter)
    leave = [exclude] if isinstance(exclude, str) else list(exclude)
    return [name for name in preset_names() if any(fnmatch.fnmatchcase(name, p) for p in include)
            and not any(fnmatch.fnmatchcase(name, p) for p in leave)]


def preset_base(preset: str) -> str | None:
    """The ``base:`` a built-in preset names (None for the neutral base)."""
    text = (resources.files("medtextseg") / "presets" / f"{preset}.yaml").read_text(encoding="utf-8")
    return (yaml.safe_load(text) or {}).get("base")


def read_preset(preset: str | Path) -> dict[str, Any]:
    """Return the raw dict of a preset name or YAML file (a preset may name a ``base`` preset)."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise MedTextSegError(f"config file not found: {path}")
        text = path.read_text(encoding="utf-8")
        name = path.stem
    else:
        names = preset_names()
        if str(preset) not in names:
            hint = difflib.get_close_matches(str(preset), names, n=1)
            raise MedTextSegError(f"unknown preset {str(preset)!r}; available: {', '.join(names)}"
                                  + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        text = (resources.files("medtextseg") / "presets" / f"{preset}.yaml").read_text(encoding="utf-8")
        name = str(preset)
    where = path if path.suffix else preset
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise MedTextSegError(f"{where}: not valid YAML ({error})") from None
    if not isinstance(raw, dict):
        raise MedTextSegError(f"{where}: a preset must be a mapping of config sections (model:, data:, train:, ...), "
                              f"got {json_type(raw)}")
    if _contains_itself(raw):  # an anchor used inside its own value: validation would recurse forever
        raise MedTextSegError(f"{where}: a YAML anchor is used inside its own value (a structure that contains "
                              "itself); write the values out")
    base = raw.pop("base", None)
    stated = "preset" in raw  # a saved run's config.yaml names its preset; a preset file is named by its file
    if base:
        raw = _deep_merge(read_preset(base), raw)
    if not stated:
        raw["preset"] = name  # not the base's name, which the merge brought in
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (``[1,2]``, ``true``, ``3e-4``)."""
    if "=" not in override:
        raise MedTextSegError(f"--set {override!r}: expected KEY=VALUE, e.g. train.steps=200")
    key, value_text = override.split("=", 1)
    parts = key.strip().split(".")
    _check_key_path(parts)
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError:
        value = value_text
    _set_path(raw, parts, value)


def _contains_itself(value: Any, inside: frozenset[int] = frozenset(), checked: set[int] | None = None) -> bool:
    """Whether a parsed YAML value holds itself (``a: &x {b: *x}``); shared, non-recursive anchors are fine
    (``checked`` visits each shared one once)."""
    checked = set() if checked is None else checked
    if not isinstance(value, dict | list) or id(value) in checked:
        return False
    if id(value) in inside:
        return True
    children = value.values() if isinstance(value, dict) else value
    if any(_contains_itself(child, inside | {id(value)}, checked) for child in children):
        return True
    checked.add(id(value))
    return False


def _set_path(raw: dict[str, Any], parts: list[str], value: Any) -> None:
    node = raw
    for depth, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # absent, or null in a preset (e.g. a block it leaves out): a new section
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):  # e.g. a preset's `train: 5`, then --set train.steps=1
            raise MedTextSegError(f"config key {'.'.join(parts)!r}: {'.'.join(parts[:depth + 1])} is {node!r}, "
                                  "not a section with fields; fix the preset")
    node[parts[-1]] = value


def _check_key_path(parts: list[str]) -> None:
    model: type[BaseModel] = Config
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if model is ModelConfig and part in LEGACY_MODEL_KEYS and depth == len(parts) - 1:
            return  # an earlier version's flat key, written into model.blocks (read_legacy_model_keys)
        if part not in fields:
            where = ".".join(parts[:depth]) or "the config"
            hint = difflib.get_close_matches(part, list(fields), n=1)
            raise MedTextSegError(f"unknown config key {'.'.join(parts)!r}: {where} has no field {part!r}"
                                  + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                  + f"; valid: {', '.join(fields)}")
        annotation = fields[part].annotation
        if depth < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                # a dict-valued field (e.g. data.kind_weights.single) takes any key below it; others none
                if _takes_keys(annotation):
                    return
                field = ".".join(parts[:depth + 1])
                raise MedTextSegError(f"unknown config key {'.'.join(parts)!r}: {field} is a value, not a section "
                                      f"with fields; set it as {field}=VALUE")
            model = annotation


def _takes_keys(annotation: Any) -> bool:
    """A field whose value is a mapping (``dict[str, float]``, possibly ``| None``) or anything (``Any``)."""
    if annotation is Any or typing.get_origin(annotation) is dict:
        return True
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and any(
        _takes_keys(arg) for arg in typing.get_args(annotation))


def _explain(error: ValidationError) -> str:
    messages = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            messages.append(f"unknown config key {field!r}")
        elif item["type"] == "value_error" and (not field or field in str(item["ctx"]["error"])):
            messages.append(str(item["ctx"]["error"]))  # a check that names its fields itself
        else:
            messages.append(f"config field {field!r}: {item['msg']} (got {item.get('input')!r})")
    return "; ".join(messages)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
