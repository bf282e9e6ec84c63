"""What a run reads before step 1, for any step policy: its cases (through the preprocessed cache) and its texts
(encoded once, before training, never per step)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from medtextseg.config import Config
from medtextseg.data.attribute_prompts import attribute_prompt_texts
from medtextseg.data.dataset import PreparedCase
from medtextseg.data.folds import apply_fold
from medtextseg.data.layout import DatasetLayout, load_dataset, verify_dataset
from medtextseg.data.paraphrase import paraphrase_pool
from medtextseg.data.planning import check_config_fits_dataset
from medtextseg.data.preprocessed import CachedCase, PreprocessedCases, preprocess_cases
from medtextseg.data.prompts import swap_left_right
from medtextseg.data.sparse_labels import IGNORE_LABEL
from medtextseg.data.vocabulary import PromptVocabulary
from medtextseg.text.cache import TextEmbeddingCache, cached_text_encoder
from medtextseg.training.distributed import DistributedContext
from medtextseg.utils.errors import MedTextSegError

WHITENING_CHUNK = 256  # texts encoded and stacked at a time to fit the text whitening (a block's text.whitening)


def text_cache_for(config: Config) -> TextEmbeddingCache:
    cache_dir = config.text.cache_dir if config.text.cache_dir is not None else "default"
    return cached_text_encoder(config.text.encoder, config.text.max_tokens, cache_dir, config.text.memory_prompts,
                               config.text.encoder_kind)


def training_splits(layout: DatasetLayout, config: Config, progress: bool) -> tuple[list[str], list[str]]:
    """The train split and the first ``train.val_cases`` of the val split, after every case a split names (the
    test cases too: evaluation must not meet a bad file after hours of training) has been verified.

    Raises:
        MedTextSegError: the train split is empty, or a case's files are missing or unreadable.
    """
    train_ids = layout.splits.get("train", [])
    if not train_ids:
        raise MedTextSegError(f"{layout.root}: the train split is empty")
    val_ids = layout.splits.get("val", [])[: config.train.val_cases]
    verify_dataset(layout, layout.cases_in_splits(), progress=progress)
    return train_ids, val_ids


def sampling_vocabulary(config: Config, layout: DatasetLayout) -> PromptVocabulary | None:
    """The dataset's prompt vocabulary when ``data.prompt_sampling`` is on, else None."""
    if not config.data.prompt_sampling:
        return None
    if layout.vocabulary is None:
        raise MedTextSegError(f"config field 'data.prompt_sampling' is on but {layout.root} has no "
                              "prompt_vocabulary.json; add one (docs/dataset_format.md) or turn it off")
    return layout.vocabulary


def preprocessed(layout, case_ids: list[str], config: Config, progress: bool, label: str = "") -> PreprocessedCases:
    """References to ``case_ids`` in the preprocessed cache at ``config.data.spacing`` (``data.cache_dir``),
    the missing ones prepared into it first; ``label`` names them in the progress bars."""
    return preprocess_cases(layout, case_ids, config.data.spacing, config.data.cache_dir, progress, label,
                            config.data.normalization)


def prepare_cases(layout, case_ids: list[str], config: Config, progress: bool,
                  description: str = "") -> list[PreparedCase]:
    """``case_ids`` prepared (through the preprocessed cache) and loaded into memory: image [C, *spatial]
    float32, label [*spatial] int64, masks [*spatial] bool. For a few cases (validation, tests); training reads
    its cases lazily (:func:`preprocessed`). ``description`` names the cases in the progress bars."""
    return [c.load() for c in preprocessed(layout, case_ids, config, progress, description).cases]


@dataclass
class DenseTrainingCases:
    """A densely labelled dataset read for the standard step.

    Attributes:
        layout: the dataset (``data.fold`` applied: its train and val splits).
        vocabulary: prompt sampling's vocabulary (``data.prompt_sampling``), or None.
        train_ids, val_ids: the training cases and the validation cases scored.
        preprocessed: the cache's account of them (how many were prepared, how many read).
        train_cases: references to the training cases in the preprocessed cache (loaded when drawn: memory does
            not grow with their number).
        val_cases: the validation cases, loaded.
    """

    layout: DatasetLayout
    vocabulary: PromptVocabulary | None
    train_ids: list[str]
    val_ids: list[str]
    preprocessed: PreprocessedCases
    train_cases: list[CachedCase]
    val_cases: list[PreparedCase]


def dense_training_cases(config: Config, ctx: DistributedContext, progress: bool) -> DenseTrainingCases:
    """Read ``data.root`` for the standard step, check that the config fits it, and prepare its cases (rank 0
    prepares what the cache misses; the others then read it).

    Raises:
        MedTextSegError: the dataset has sparse labels, the config asks for co-trained networks, or the config
            does not fit the dataset (channels, dimensionality, prompts).
    """
    layout = apply_fold(load_dataset(config.data.root), config.data)
    vocabulary = sampling_vocabulary(config, layout)
    check_config_fits_dataset(config, layout)
    if IGNORE_LABEL in layout.labels:
        raise MedTextSegError(f"{layout.root}: has sparse labels (dataset.json declares {IGNORE_LABEL!r}); "
                              "train it with a co-training preset: rada, rada_text or rada_single")
    if config.model.networks > 1:
        raise MedTextSegError("config field 'model.networks' > 1 needs train.step_policy=cotraining")
    train_ids, val_ids = training_splits(layout, config, progress and ctx.is_main)
    cases = preprocessed(layout, train_ids + val_ids, config, progress) if ctx.is_main else None
    ctx.barrier()
    if cases is None:
        cases = preprocessed(layout, train_ids + val_ids, config, False)
    return DenseTrainingCases(layout, vocabulary, train_ids, val_ids, cases, cases.cases[: len(train_ids)],
                              [c.load() for c in cases.cases[len(train_ids):]])


def training_prompt_texts(layout, case_ids: list[str], vocabulary: PromptVocabulary | None,
                          structured: Mapping[str, str] | None = None,
                          paraphrases: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Every text training can feed the model, to encode once before step 1 (never per step): the prompts of
    the cases, every wording of their classes when ``vocabulary`` (prompt sampling) is given, their structured
    forms when ``structured`` is, the rewordings ``paraphrases`` holds for the cases' prompts, and all of these
    with left and right swapped (the flip augmentation)."""
    records = [p for case in case_ids for p in layout.cases[case].prompts]
    prompts = {p.prompt for p in records}
    if paraphrases:
        prompts |= {text for p in prompts for text in paraphrases.get(p, ())}
    if vocabulary is not None:
        classes = {p.class_name for p in records if p.class_name}
        prompts |= {text for name in classes for text in vocabulary.phrasings(name)}
    if structured:
        prompts |= set(structured.values())
    prompts |= {swap_left_right(p) for p in prompts}
    return sorted(prompts)


@dataclass
class TrainingText:
    """What training knows of its text before step 1.

    Attributes:
        cache: the text cache, every training and validation text already encoded (in it or on its disk).
        structured: prompt -> its structured form (``data.structured_prompts``), or None.
        paraphrases: training prompt -> its rewordings (``data.paraphrases``), or None.
        whitening_texts: the texts the text whitening is fitted on (those of the training split).
    """

    cache: TextEmbeddingCache
    structured: dict[str, str] | None
    paraphrases: dict[str, tuple[str, ...]] | None
    whitening_texts: list[str]


def prepare_training_text(config: Config, layout, train_ids: list[str], val_ids: list[str],
                          vocabulary: PromptVocabulary | None, ctx: DistributedContext) -> TrainingText:
    """Every text training and validation can feed the model, encoded once (rank 0 encodes, the others read
    its disk cache), and the texts the whitening is fitted on."""
    seed = config.train.seed
    structured = (attribute_prompt_texts(p for case in train_ids for p in layout.cases[case].prompts)
                  if config.data.structured_prompts > 0 else None)
    # rewordings of the training prompts only: validation keeps the dataset's own words
    paraphrases = (paraphrase_pool((p.prompt for case in train_ids for p in layout.cases[case].prompts),
                                   config.data.paraphrases, seed) if config.data.paraphrases else None)
    cache = text_cache_for(config)
    prompts = training_prompt_texts(layout, train_ids + val_ids, vocabulary, structured, paraphrases)
    if ctx.is_main:  # rank 0 encodes and fills the disk cache; the others then read it
        cache.warm(prompts)
    ctx.barrier()
    cache.warm(prompts)
    return TrainingText(cache, structured, paraphrases,
                        training_prompt_texts(layout, train_ids, vocabulary, structured, paraphrases))


def fit_text_whitening(model: nn.Module, text: TextEmbeddingCache, texts: list[str], device: torch.device) -> None:
    """Fit the model's text whitening (a block's ``text.whitening``) on every one of ``texts``, streamed through
    running moments in chunks of ``WHITENING_CHUNK`` (one padded [chunk, T, D] batch in memory at a time)."""
    model.fit_text_statistics(text(texts[start:start + WHITENING_CHUNK]).to(device)
                              for start in range(0, len(texts), WHITENING_CHUNK))


__all__ = ["WHITENING_CHUNK", "DenseTrainingCases", "TrainingText", "dense_training_cases", "fit_text_whitening",
           "prepare_cases", "prepare_training_text", "preprocessed", "text_cache_for", "training_prompt_texts"]
