"""Prompt rewordings for training: same meaning, other words, never the held-out benchmark wording."""

from __future__ import annotations

import doctest
import re

import numpy as np
import pytest

import medtextseg.data.paraphrase as paraphrase_module
from medtextseg.data.dataset import PromptSampleDataset, prepare_case
from medtextseg.data.layout import load_dataset
from medtextseg.data.paraphrase import PHRASE_CLASSES, paraphrase, paraphrase_pool
from medtextseg.data.prompts import swap_left_right, validate_prompt
from medtextseg.data.synthetic import _UNSEEN_MARKERS, make_case


@pytest.fixture(scope="module")
def tiny_prepared_cases(dataset_3d):
    layout = load_dataset(dataset_3d)
    return [prepare_case(layout.cases[case], None, 3) for case in sorted(layout.cases)[:3]]


def _words(text: str) -> set[str]:
    return set(re.findall("[a-z0-9]+", text.lower()))


def _training_prompts(count: int = 40) -> list[str]:
    return sorted({p["prompt"] for i in range(count) for p in make_case(np.random.default_rng(i)).prompts})


def test_docstring_examples_hold():
    assert doctest.testmod(paraphrase_module).failed == 0


def test_rewordings_keep_sides_and_never_use_the_benchmarks_held_out_words():
    # The variety benchmark measures wordings training never saw: a rewording must not leak one of them into
    # training, and must keep which side a prompt names (the flip augmentation swaps those words afterwards).
    prompts = _training_prompts()
    pool = paraphrase_pool(prompts, 6, seed=0)
    assert len(pool) > 0.9 * len(prompts)
    for text, rewordings in pool.items():
        for reworded in rewordings:
            assert not _words(reworded) & _UNSEEN_MARKERS, reworded
            for side in ("left", "right"):
                assert len(re.findall(rf"\b{side}", reworded, re.I)) == len(re.findall(rf"\b{side}", text, re.I))
            assert swap_left_right(swap_left_right(reworded)) == reworded
            assert validate_prompt(reworded) == reworded


def test_every_phrase_of_a_class_is_replaced_only_by_its_own_class():
    rng = np.random.default_rng(0)
    for members in PHRASE_CLASSES:
        for phrase in members:
            for _ in range(10):
                reworded = paraphrase(f"segment the {phrase}", rng)
                assert any(re.search(rf"(?<![\w-]){re.escape(m)}(?![\w-])", reworded, re.I) for m in members), (
                    phrase, reworded)


def test_a_prompt_with_several_clauses_keeps_its_form():
    rng = np.random.default_rng(3)
    for _ in range(20):
        reworded = paraphrase("is there a lesion? segment it", rng)
        assert re.fullmatch(r"(?i)is there an? [\w -]+\? segment it", reworded), reworded


def test_the_pool_is_seeded_per_text_distinct_and_never_the_original():
    prompts = _training_prompts(10)
    first = paraphrase_pool(prompts, 4, seed=7)
    assert first == paraphrase_pool(prompts, 4, seed=7)
    assert first != paraphrase_pool(prompts, 4, seed=8)
    # adding prompts does not reword the others
    assert paraphrase_pool(prompts[:5], 4, seed=7) == {t: first[t] for t in prompts[:5] if t in first}
    for text, rewordings in first.items():
        assert 1 <= len(rewordings) <= 4 and len(set(rewordings)) == len(rewordings) and text not in rewordings


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_the_dataset_draws_rewordings_with_the_given_probability(tiny_prepared_cases, probability):
    texts = {p.prompt for case in tiny_prepared_cases for p in case.prompts}
    pool = paraphrase_pool(texts, 3, seed=0)
    common = dict(patch_size=[16, 16, 8], prompts_per_image=3, kind_weights={}, seed=0)
    plain = PromptSampleDataset(tiny_prepared_cases, **common)
    reworded = PromptSampleDataset(tiny_prepared_cases, **common, paraphrases=pool,
                                   paraphrase_probability=probability)
    changed = 0
    for index in range(len(plain)):
        a, b = plain[index], reworded[index]
        changed += sum(x != y for x, y in zip(a["prompts"], b["prompts"], strict=True))
        assert a["kinds"] == b["kinds"]
        if probability == 0:  # off: the very same items, the random stream untouched
            assert a["prompts"] == b["prompts"] and (a["image"] == b["image"]).all()
            continue
        for original, drawn in zip(a["prompts"], b["prompts"], strict=True):
            unflipped = {original, swap_left_right(original)}
            assert any(drawn in pool.get(t, (t,)) or drawn == swap_left_right(r)
                       for t in unflipped for r in pool.get(t, (t,))), (original, drawn)
    assert (changed > 0) == (probability > 0)
