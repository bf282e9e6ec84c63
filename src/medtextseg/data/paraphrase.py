"""Rewordings of training prompts, so that a model learns what a prompt asks for rather than its exact words.

A user's prompts at prediction time are rarely worded as the training prompts were. Training on a few rewordings
of every prompt teaches the text path that "the large lesion in the TZ", "please outline the big tumour in the
transition zone" and "Task: delineate the large mass in the TZ" ask for one target, so the conditioning leans on
meaning rather than on one phrasing.

:func:`paraphrase` rewrites one prompt in two steps, each keeping the meaning exactly:

1. **phrases**: every phrase of an equivalence class of :data:`PHRASE_CLASSES` (synonyms and abbreviations, e.g.
   ``lesion / tumour / tumor / mass``, ``transition zone / TZ / transitional zone``) is replaced by a random
   member of its class; sides are never changed, so the flip augmentation's left/right swap still applies;
2. **sentence form**: a prompt that is an instruction or a noun phrase ("segment the X", "the X", "X") is
   recast in one of :data:`SENTENCE_FORMS` (imperative, polite, request line, question of extent, bare noun
   phrase). Other prompts ("is there a lesion? segment it") keep their form.

:func:`paraphrase_pool` draws a fixed set of rewordings per prompt before training (seeded: a resumed or
repeated run gets the same set), so every text is encoded once and the text whitening is fitted on them too.

>>> paraphrase("segment the large lesion in the left TZ", np.random.default_rng(0))
'Mark the prominent focal lesion in the left transitional zone, please'
>>> paraphrase("is there a lesion? segment it", np.random.default_rng(0))  # a question keeps its form
'Is there a suspicious area? segment it'
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import numpy as np

__all__ = ["PHRASE_CLASSES", "SENTENCE_FORMS", "VERBS", "paraphrase", "paraphrase_pool"]

#: Equivalence classes of phrases a prompt may use for one meaning. A phrase belongs to one class only.
PHRASE_CLASSES: tuple[tuple[str, ...], ...] = (
    ("lesion", "tumour", "tumor", "mass", "suspicious lesion", "focal lesion", "suspicious area", "neoplasm"),
    ("lesions", "tumours", "tumors", "masses", "suspicious lesions", "focal lesions", "suspicious areas"),
    ("small", "small-sized", "smaller", "minor"),
    ("large", "big", "large-sized", "larger", "prominent"),
    ("round", "rounded", "oval", "circular", "elliptical", "well-circumscribed"),
    ("irregular", "lobulated", "irregularly shaped", "spiculated", "ill-defined"),
    ("peripheral zone", "PZ", "peripheral zone (PZ)"),
    ("transition zone", "TZ", "transitional zone", "transition zone (TZ)"),
    ("prostate", "prostate gland"),
    ("whole gland", "whole prostate", "complete gland"),
    ("all", "all the"),
)
#: Verbs of an instruction: a prompt starting with one is recast with another.
VERBS: tuple[str, ...] = ("segment", "outline", "find", "delineate", "mark", "show", "contour", "identify",
                          "detect", "label", "trace", "isolate", "extract")
#: Sentence forms of an instruction, ``{verb}`` and ``{object}`` filled ("the large lesion in the TZ").
SENTENCE_FORMS: tuple[str, ...] = (
    "{verb} {object}",
    "please {verb} {object}",
    "{verb} {object}, please",
    "{object}",
    "show me {object}",
    "Task: {verb} {object}",
    "Request: {verb} {object}.",
    "what is the extent of {object}?",
    "{verb} {object} on this scan",
)

_CLASS_OF: dict[str, tuple[str, ...]] = {phrase.lower(): members for members in PHRASE_CLASSES for phrase in members}
# longest phrases first, so "suspicious lesion" wins over "lesion"; never inside a word or a hyphenated word
_PHRASE_PATTERN = re.compile(
    r"(?<![\w-])(" + "|".join(re.escape(p) for p in sorted(_CLASS_OF, key=len, reverse=True)) + r")(?![\w-])",
    re.IGNORECASE)
_INSTRUCTION = re.compile(rf"^(?:please\s+)?(?:{'|'.join(VERBS)})\s+(?P<object>.+?)[.!]?$", re.IGNORECASE)
_DETERMINER = re.compile(r"^(the|a|an|all|every|each|any)\b", re.IGNORECASE)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _replace_phrases(text: str, rng: np.random.Generator) -> str:
    def replace(match: re.Match) -> str:
        found = match.group(0)
        members = _CLASS_OF[found.lower()]
        chosen = _pick(rng, members)
        # keep an abbreviation's capitals and a capitalised first word; otherwise the member as listed
        return chosen[0].upper() + chosen[1:] if found[:1].isupper() and not found.isupper() else chosen
    return _PHRASE_PATTERN.sub(replace, text)


def _recast(text: str, rng: np.random.Generator) -> str:
    """An instruction or noun phrase in another sentence form; any other prompt unchanged."""
    match = _INSTRUCTION.match(text)
    if match:
        target = match.group("object")
    elif any(mark in text.rstrip(".") for mark in "?.,;:"):
        return text  # a question or several clauses: keep its form
    else:
        target = text.rstrip(".")
    if not _DETERMINER.match(target) and not target[:2].isupper():
        target = f"the {target}"
    target = target[0].lower() + target[1:] if not target[:2].isupper() else target
    return _pick(rng, SENTENCE_FORMS).format(verb=_pick(rng, VERBS), object=target)


def paraphrase(text: str, rng: np.random.Generator) -> str:
    """``text`` reworded with the same meaning: phrases from their classes, then another sentence form.

    Args:
        text: a prompt ("segment the large lesion in the left TZ").
        rng: draws every choice; the same generator state gives the same rewording.

    Returns:
        The reworded prompt; at most 300 characters like any prompt (longer rewordings fall back to ``text``).
    """
    reworded = _recast(_replace_phrases(text, rng), rng)
    if rng.random() < 0.3:
        reworded = reworded[0].upper() + reworded[1:]
    return reworded if len(reworded) <= 300 else text


def paraphrase_pool(texts: Iterable[str], count: int, seed: int) -> dict[str, tuple[str, ...]]:
    """Up to ``count`` distinct rewordings of each text (fewer where the text offers fewer), none equal to it.

    Each text's rewordings depend only on the text, ``count`` and ``seed`` (not on the other texts), so adding
    cases to a dataset does not reword the prompts it had.
    """
    pool: dict[str, tuple[str, ...]] = {}
    for text in dict.fromkeys(texts):
        digest = hashlib.sha256(f"{seed}\n{text}".encode()).digest()
        rng = np.random.default_rng(list(digest[:16]))
        found: dict[str, None] = {}
        for _ in range(4 * count):
            if len(found) == count:
                break
            candidate = paraphrase(text, rng)
            if candidate != text:
                found[candidate] = None
        if found:
            pool[text] = tuple(found)
    return pool
