"""Lesion prompts rewritten from their attributes: the TextBCS structured form and styles for robustness tests.

A referring prompt of the synthetic benchmark carries its lesion's attributes in ``meta`` (``side``, ``zone``,
``size``, ``shape``; ``mentioned`` lists the ones its text names). From them this module writes

* the **structured** prompt of TextBCS (METHODS.md section 4.2), fields in a fixed order, each only when
  known: ``"location left peripheral zone; shape irregular; size large; number one"``;
* other **styles** of the same content (:data:`PROMPT_STYLES`), to measure how much a model's answer depends
  on the wording it was trained with: ``short`` (radiology shorthand, ``"large L PZ lesion"``), ``long`` (two
  clinical sentences) and ``unseen_synonyms`` (only words the synthetic generator never uses for an
  attribute: ``"highlight the sizeable spiculated focus in the Lt outer gland"``).

Every style renders exactly the attributes the original prompt names (``meta["mentioned"]``; for an absent
prompt, which has no ``mentioned``, every attribute its meta holds), so a rewritten prompt still names the
same target uniquely within its case. Prompts without attribute meta (``anatomy``, ``all``, the "any lesion"
absent prompt of a case without lesions) are not rewritten: :func:`restyle` returns None for them.

>>> structured_prompt({"side": "left", "zone": "peripheral", "shape": "irregular", "size": "large", "number": 1})
'location left peripheral zone; shape irregular; size large; number one'
>>> meta = {"n_lesions": 2, "side": "right", "zone": "transition", "size": "large", "shape": "round",
...         "mentioned": ["zone", "size"]}
>>> restyle(meta, "single", "short", np.random.default_rng(0))
'large TZ lesion'
>>> restyle({"n_lesions": 1, "structure": "prostate"}, "anatomy", "short", np.random.default_rng(0)) is None
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from medtextseg.data.layout import PromptRecord
from medtextseg.data.prompts import validate_prompt
from medtextseg.utils.errors import MedTextSegError

__all__ = [
    "ATTRIBUTE_KEYS",
    "PROMPT_STYLES",
    "RESTYLED_KINDS",
    "UNSEEN_SYNONYMS",
    "attribute_prompt_texts",
    "can_restyle",
    "prompt_attributes",
    "restyle",
    "structured_prompt",
]

#: Lesion attributes a prompt's meta may hold, in the order the free-text styles render them.
ATTRIBUTE_KEYS: tuple[str, ...] = ("side", "zone", "size", "shape")
#: Prompt kinds that name one lesion by its attributes (present or absent) and so can be rewritten.
RESTYLED_KINDS: tuple[str, ...] = ("single", "absent")

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_ZONE_NAMES = {"peripheral": "peripheral zone", "transition": "transition zone"}
_SHORT_SIDE = {"left": "L", "right": "R"}
_SHORT_ZONE = {"peripheral": "PZ", "transition": "TZ"}
_SHORT_SHAPE = {"irregular": "irreg"}

#: Real radiology wordings that ``medtextseg.data.synthetic`` never uses for the attribute (checked by
#: tests/test_attribute_prompts.py against its word tables); ``unseen_synonyms`` draws from them.
UNSEEN_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "side": {"left": ("Lt",), "right": ("Rt",)},  # report shorthand; the generator always spells the side out
    "zone": {"peripheral": ("outer gland",), "transition": ("central gland", "inner gland")},
    "size": {"small": ("tiny", "subcentimetre"), "large": ("sizeable", "bulky")},
    "shape": {"round": ("ovoid", "well-circumscribed"), "irregular": ("ill-defined", "spiculated")},
    "noun": {"lesion": ("focus", "abnormality", "nodule")},
    "verb": {"segment": ("highlight the", "annotate the", "trace the")},
}

_LONG_OPENINGS = ("Biparametric MRI of the prostate.", "Prostate MRI with T2-weighted, diffusion and ADC series.",
                  "Axial biparametric prostate MRI.")
_LONG_REQUESTS = ("please delineate it", "please segment it", "please outline it for targeted biopsy")

Style = Callable[[Mapping[str, Any], np.random.Generator], str]


# ------------------------------------------------------------------------------------------ attributes


def _text_value(value: Any, field: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MedTextSegError(f"{where}: {field} must be non-empty text, got {value!r}")
    return " ".join(value.split())


def prompt_attributes(meta: Mapping[str, Any]) -> dict[str, str]:
    """The attributes a prompt names, to be rendered by every style: ``{key: value}`` in :data:`ATTRIBUTE_KEYS` order.

    ``meta["mentioned"]`` (synthetic ``single`` prompts) selects them; without it, every attribute ``meta`` holds
    (synthetic ``absent`` prompts name all of theirs). Empty for prompts without attribute meta.

    Raises:
        MedTextSegError: ``mentioned`` names an unknown attribute or one that meta has no value for, or a value
            is not non-empty text.
    """
    mentioned = meta.get("mentioned")
    if mentioned is None:
        keys = [key for key in ATTRIBUTE_KEYS if meta.get(key) is not None]
    else:
        if isinstance(mentioned, str) or not isinstance(mentioned, Iterable):
            raise MedTextSegError(f"prompt meta: 'mentioned' must be a list of attribute names, got {mentioned!r}")
        mentioned = list(mentioned)
        unknown = [key for key in mentioned if key not in ATTRIBUTE_KEYS]
        if unknown:
            raise MedTextSegError(f"prompt meta: 'mentioned' names unknown attribute {unknown[0]!r}; known: "
                                  f"{', '.join(ATTRIBUTE_KEYS)}")
        missing = [key for key in mentioned if meta.get(key) is None]
        if missing:
            raise MedTextSegError(f"prompt meta: 'mentioned' names {missing[0]!r} but meta has no {missing[0]!r} value")
        keys = [key for key in ATTRIBUTE_KEYS if key in mentioned]
    return {key: _text_value(meta[key], key, "prompt meta") for key in keys}


def _number_word(number: Any) -> str:
    if isinstance(number, bool) or not isinstance(number, int | np.integer) or number < 0:
        raise MedTextSegError(f"structured_prompt: number must be a non-negative integer, got {number!r}")
    return _NUMBER_WORDS[number] if number < len(_NUMBER_WORDS) else str(int(number))


def structured_prompt(attributes: Mapping[str, Any]) -> str:
    """The TextBCS structured prompt (METHODS.md section 4.2) of a lesion's attributes.

    Args:
        attributes: any of ``side`` ("left"), ``zone`` ("peripheral" / "transition" become "peripheral zone" /
            "transition zone", any other text is used as is), ``shape``, ``size`` (text) and ``number`` (an
            integer >= 0, written as a word up to ten). Other keys are ignored; a None value counts as unknown.

    Returns:
        ``"location {side} {zone}; shape {shape}; size {size}; number {number}"``, fields in that fixed order,
        each only when known (location with whichever of side and zone is known).

    Raises:
        MedTextSegError: none of the fields is known, or a value has the wrong type.

    Example:
        >>> structured_prompt({"zone": "transition", "size": "small", "number": 2})
        'location transition zone; size small; number two'
    """
    fields = []
    location = []
    if attributes.get("side") is not None:
        location.append(_text_value(attributes["side"], "side", "structured_prompt"))
    if attributes.get("zone") is not None:
        zone = _text_value(attributes["zone"], "zone", "structured_prompt")
        location.append(_ZONE_NAMES.get(zone, zone))
    if location:
        fields.append(f"location {' '.join(location)}")
    for key in ("shape", "size"):
        if attributes.get(key) is not None:
            fields.append(f"{key} {_text_value(attributes[key], key, 'structured_prompt')}")
    if attributes.get("number") is not None:
        fields.append(f"number {_number_word(attributes['number'])}")
    if not fields:
        raise MedTextSegError(f"structured_prompt: no known field among side, zone, shape, size, number; got keys "
                              f"{sorted(attributes)}")
    return "; ".join(fields)


# ---------------------------------------------------------------------------------------------- styles


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _attributes_or_fail(meta: Mapping[str, Any], style: str) -> dict[str, str]:
    attributes = prompt_attributes(meta)
    if not attributes:
        raise MedTextSegError(f"{style} prompt: meta has none of {', '.join(ATTRIBUTE_KEYS)} to render")
    return attributes


def _structured_style(meta: Mapping[str, Any], rng: np.random.Generator) -> str:
    # "number one" for present and absent prompts alike: each asks for one lesion, and a different number for an
    # absent one would tell the model the answer (the case's n_lesions is not what the prompt asks for).
    return structured_prompt({**_attributes_or_fail(meta, "structured"), "number": 1})


def _short_style(meta: Mapping[str, Any], rng: np.random.Generator) -> str:
    attributes = _attributes_or_fail(meta, "short")
    words = [attributes["size"]] if "size" in attributes else []
    if "shape" in attributes:
        words.append(_SHORT_SHAPE.get(attributes["shape"], attributes["shape"]))
    if "side" in attributes:
        words.append(_SHORT_SIDE.get(attributes["side"], attributes["side"]))
    if "zone" in attributes:
        words.append(_SHORT_ZONE.get(attributes["zone"], attributes["zone"]))
    return " ".join([*words, "lesion"])


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _long_style(meta: Mapping[str, Any], rng: np.random.Generator) -> str:
    attributes = _attributes_or_fail(meta, "long")
    side, zone = attributes.get("side"), attributes.get("zone")
    zone_name = _ZONE_NAMES.get(zone, zone) if zone else None
    if side and zone_name:
        location = f" in the {side} {zone_name}"
    elif side:
        location = f" on the {side} side of the gland"
    elif zone_name:
        location = f" in the {zone_name}"
    else:
        location = ""
    adjectives = [attributes[key] for key in ("size", "shape") if key in attributes]
    phrase = " ".join([*adjectives, "lesion"])
    return (f"{_pick(rng, _LONG_OPENINGS)} There is {_article(phrase)} {phrase}{location}, suspicious for "
            f"clinically significant cancer; {_pick(rng, _LONG_REQUESTS)}.")


def _synonym(attribute: str, value: str, rng: np.random.Generator) -> str:
    options = UNSEEN_SYNONYMS[attribute].get(value)
    if options is None:
        raise MedTextSegError(f"unseen_synonyms prompt: no synonym for {attribute} {value!r}; known values: "
                              f"{', '.join(UNSEEN_SYNONYMS[attribute])}")
    return _pick(rng, options)


def _unseen_synonyms_style(meta: Mapping[str, Any], rng: np.random.Generator) -> str:
    attributes = _attributes_or_fail(meta, "unseen_synonyms")
    words = {key: _synonym(key, value, rng) for key, value in attributes.items()}
    if "side" in words and "zone" in words:
        location = f" in the {words['side']} {words['zone']}"
    elif "side" in words:
        location = f" in the {words['side']} hemigland"  # "side"/"half"/"lobe" are the generator's words
    elif "zone" in words:
        location = f" in the {words['zone']}"
    else:
        location = ""
    noun = " ".join([*(words[key] for key in ("size", "shape") if key in words),
                     _synonym("noun", "lesion", rng)])
    return f"{_synonym('verb', 'segment', rng)} {noun}{location}"


#: Prompt styles by name: ``style(meta, rng) -> prompt text`` for a prompt with attribute meta.
PROMPT_STYLES: dict[str, Style] = {
    "structured": _structured_style,
    "short": _short_style,
    "long": _long_style,
    "unseen_synonyms": _unseen_synonyms_style,
}


def can_restyle(record_meta: Mapping[str, Any], kind: str) -> bool:
    """Whether :func:`restyle` rewrites the prompt: a kind of :data:`RESTYLED_KINDS` with attribute meta."""
    return kind in RESTYLED_KINDS and bool(prompt_attributes(record_meta))


def restyle(record_meta: Mapping[str, Any], kind: str, style: str, rng: np.random.Generator) -> str | None:
    """A prompt rewritten in ``style`` from its meta, or None when it has no attributes to rewrite.

    Args:
        record_meta: the prompt's ``meta`` (``PromptRecord.meta``).
        kind: the prompt kind; only :data:`RESTYLED_KINDS` are rewritten.
        style: a key of :data:`PROMPT_STYLES`.
        rng: draws the wording where a style has several (``long``, ``unseen_synonyms``).

    Raises:
        MedTextSegError: an unknown style (listing the known ones) or malformed attribute meta.
    """
    if style not in PROMPT_STYLES:
        raise MedTextSegError(f"unknown prompt style {style!r}; known styles: {', '.join(PROMPT_STYLES)}")
    if not can_restyle(record_meta, kind):
        return None
    return validate_prompt(PROMPT_STYLES[style](record_meta, rng), f"{style} prompt")


def attribute_prompt_texts(prompts: Iterable[PromptRecord]) -> dict[str, str]:
    """Original prompt text -> its structured form, for every prompt with attribute meta (see :func:`restyle`).

    Raises:
        MedTextSegError: one text has two different structured forms (its meta differs between records), naming
            the text and the cases.
    """
    texts: dict[str, str] = {}
    where: dict[str, str] = {}
    rng = np.random.default_rng(0)  # unused by the structured style, which has one wording
    for prompt in prompts:
        structured = restyle(prompt.meta, prompt.kind, "structured", rng)
        if structured is None:
            continue
        if texts.setdefault(prompt.prompt, structured) != structured:
            raise MedTextSegError(f"prompt {prompt.prompt!r}: its meta gives {texts[prompt.prompt]!r} in case "
                                  f"{where[prompt.prompt]!r} but {structured!r} in case {prompt.case!r}")
        where.setdefault(prompt.prompt, prompt.case)
    return texts
