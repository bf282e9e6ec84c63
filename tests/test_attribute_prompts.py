"""Attribute prompts: the TextBCS structured form, and prompt styles that keep naming the same lesion."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest

from medtextseg import MedTextSegError
from medtextseg.data import synthetic
from medtextseg.data.attribute_prompts import (
    PROMPT_STYLES,
    UNSEEN_SYNONYMS,
    attribute_prompt_texts,
    can_restyle,
    prompt_attributes,
    restyle,
    structured_prompt,
)
from medtextseg.data.layout import PromptRecord
from medtextseg.data.synthetic import make_case


def _words(phrases) -> set[str]:
    return {word for phrase in phrases for word in re.findall(r"[a-z]+", phrase.lower())}


# What the synthetic generator says for each attribute (its word tables; sides are spelled out as is).
GENERATOR_WORDS = {
    "side": _words(side for side, _ in synthetic.QUADRANTS),
    "zone": _words(w for words in synthetic._ZONE_WORDS.values() for w in words),
    "size": _words(w for words in synthetic._SIZE_WORDS.values() for w in words),
    "shape": _words(w for words in synthetic._SHAPE_WORDS.values() for w in words),
    "noun": _words(synthetic._NOUNS),
    "verb": _words(synthetic._PREFIXES) - {"the"},
}
ATTRIBUTE_TABLE_WORDS = set().union(*(GENERATOR_WORDS[key] for key in ("side", "zone", "size", "shape", "noun")))


@functools.cache
def _attribute_prompts(count: int = 40) -> tuple[tuple[int, dict], ...]:
    """(case index, prompt dict) of every single/absent prompt with attributes, over ``count`` synthetic 2D cases."""
    cases = [make_case(np.random.default_rng([7, index]), spatial_dims=2) for index in range(count)]
    return tuple((index, prompt) for index, case in enumerate(cases) for prompt in case.prompts
                 if can_restyle(prompt["meta"], prompt["kind"]))


def test_structured_prompt_has_fixed_field_order_and_number_words():
    attributes = {"number": 1, "size": "large", "shape": "irregular", "zone": "peripheral", "side": "left"}
    assert structured_prompt(attributes) == "location left peripheral zone; shape irregular; size large; number one"
    assert structured_prompt({"side": "right", "number": 2}) == "location right; number two"
    assert structured_prompt({"zone": "transition", "size": "small"}) == "location transition zone; size small"
    assert structured_prompt({"zone": "apex", "shape": "round", "n_lesions": 3}) == "location apex; shape round"
    assert [structured_prompt({"number": n}) for n in (0, 3, 10, 11)] == [
        "number zero", "number three", "number ten", "number 11"]


@pytest.mark.parametrize(("attributes", "message"), [
    ({}, r"^structured_prompt: no known field among side, zone, shape, size, number; got keys \[\]$"),
    ({"side": None, "label": 3}, r"^structured_prompt: no known field .*got keys \['label', 'side'\]$"),
    ({"number": -1}, r"^structured_prompt: number must be a non-negative integer, got -1$"),
    ({"number": True}, r"^structured_prompt: number must be a non-negative integer, got True$"),
    ({"side": ""}, r"^structured_prompt: side must be non-empty text, got ''$"),
])
def test_structured_prompt_refuses_what_it_cannot_write(attributes, message):
    with pytest.raises(MedTextSegError, match=message):
        structured_prompt(attributes)


def test_unseen_synonyms_are_never_used_by_the_generator_for_that_attribute():
    for attribute, values in UNSEEN_SYNONYMS.items():
        table = GENERATOR_WORDS[attribute]
        for value, options in values.items():
            for word in _words(options) - {"the"}:
                assert word not in table and not any(word == f"{seen}s" or seen == f"{word}s" for seen in table), \
                    f"{attribute} {value}: {word!r} is a generator word"
                if attribute != "verb":  # nor any other attribute's word (a zone synonym that means a size, ...)
                    assert word not in ATTRIBUTE_TABLE_WORDS, f"{attribute} {value}: {word!r}"


def test_unseen_synonyms_style_uses_no_generator_attribute_word():
    for _, prompt in _attribute_prompts():
        text = restyle(prompt["meta"], prompt["kind"], "unseen_synonyms", np.random.default_rng(0))
        assert not _words([text]) & ATTRIBUTE_TABLE_WORDS, text
        assert not _words([text]) & GENERATOR_WORDS["verb"], text


def test_every_style_renders_exactly_the_mentioned_attributes():
    rng = np.random.default_rng(0)
    for _, prompt in _attribute_prompts():
        meta = prompt["meta"]
        attributes = prompt_attributes(meta)
        expected = meta["mentioned"] if prompt["kind"] == "single" else [
            key for key in ("side", "zone", "size", "shape") if key in meta]
        assert list(attributes) == [key for key in ("side", "zone", "size", "shape") if key in expected]
        structured = restyle(meta, prompt["kind"], "structured", rng)
        assert structured == structured_prompt({**attributes, "number": 1})
        short = restyle(meta, prompt["kind"], "short", rng)
        assert ("L" in short.split() or "R" in short.split()) == ("side" in attributes), short
        assert ("PZ" in short or "TZ" in short) == ("zone" in attributes), short
        long = restyle(meta, prompt["kind"], "long", rng)
        assert long.count(". ") == 1 and long.endswith("."), long  # two sentences
        for key, value in attributes.items():
            shown = {"peripheral": "peripheral zone", "transition": "transition zone"}.get(value, value)
            assert shown in long and f"{'location' if key in ('side', 'zone') else key} " in structured
        for key in ("side", "zone", "size", "shape"):  # an attribute the prompt does not name stays out
            if key not in attributes and meta.get(key) is not None:
                assert meta[key] not in _words([structured, long]), (key, structured, long)


def test_each_style_still_names_one_target_per_text_within_a_case():
    for style in PROMPT_STYLES:
        targets_by_text: dict[tuple[int, str], set[tuple[int, ...]]] = {}
        for index, prompt in _attribute_prompts():
            text = restyle(prompt["meta"], prompt["kind"], style, np.random.default_rng(0))
            assert text != prompt["prompt"]
            targets_by_text.setdefault((index, text), set()).add(tuple(prompt["target"]))
        assert all(len(targets) == 1 for targets in targets_by_text.values()), style


def test_restyle_skips_prompts_without_attributes_and_names_unknown_styles():
    case = make_case(np.random.default_rng(1), spatial_dims=2, num_lesions=0)
    rng = np.random.default_rng(0)
    rewritten = {p["prompt"]: restyle(p["meta"], p["kind"], "short", rng) for p in case.prompts}
    for prompt in case.prompts:  # anatomy, all and "is there a lesion?" have no attributes; absent quadrants do
        assert (rewritten[prompt["prompt"]] is None) == (set(prompt["meta"]) <= {"n_lesions", "structure"})
    assert any(text is None for text in rewritten.values()) and any(text for text in rewritten.values())
    assert restyle({"side": "left", "n_lesions": 2}, "anatomy", "short", rng) is None
    with pytest.raises(MedTextSegError, match=r"^unknown prompt style 'shouty'; known styles: structured, short, "
                                              r"long, unseen_synonyms$"):
        restyle({"side": "left"}, "single", "shouty", rng)
    with pytest.raises(MedTextSegError, match=r"^prompt meta: 'mentioned' names unknown attribute 'colour'; "):
        restyle({"side": "left", "mentioned": ["colour"]}, "single", "short", rng)
    with pytest.raises(MedTextSegError, match=r"^prompt meta: 'mentioned' names 'size' but meta has no 'size'"):
        restyle({"side": "left", "mentioned": ["size"]}, "single", "short", rng)
    with pytest.raises(MedTextSegError, match=r"^unseen_synonyms prompt: no synonym for size 'medium'; known "):
        restyle({"size": "medium"}, "absent", "unseen_synonyms", rng)


def test_styles_are_deterministic_for_a_seed():
    prompts = [prompt for _, prompt in _attribute_prompts(count=10)]
    for style in PROMPT_STYLES:
        first = [restyle(p["meta"], p["kind"], style, np.random.default_rng(3)) for p in prompts]
        again = [restyle(p["meta"], p["kind"], style, np.random.default_rng(3)) for p in prompts]
        assert first == again


def test_attribute_prompt_texts_maps_original_texts_to_structured_prompts():
    case = make_case(np.random.default_rng(2), spatial_dims=2, num_lesions=2)
    records = [PromptRecord("c0", p["prompt"], tuple(p["target"]), p["kind"], p["meta"]) for p in case.prompts]
    texts = attribute_prompt_texts(records)
    assert set(texts) == {r.prompt for r in records if r.kind in ("single", "absent")}
    assert all(text.endswith("; number one") for text in texts.values())
    single = next(r for r in records if r.kind == "single")
    assert texts[single.prompt] == structured_prompt({**prompt_attributes(single.meta), "number": 1})
    clash = PromptRecord("c1", single.prompt, single.target, "single",
                         {**single.meta, "side": "right" if single.meta["side"] == "left" else "left",
                          "mentioned": ["side"]})
    with pytest.raises(MedTextSegError, match=r"^prompt '.*': its meta gives .* in case 'c0' but .* in case 'c1'$"):
        attribute_prompt_texts([*records, clash])
