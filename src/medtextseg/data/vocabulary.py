"""Prompt vocabularies: a class is said in many ways, drawn at random per sample and per step.

A dataset folder may hold ``prompt_vocabulary.json``::

    {"templates": ["segment the {name}", "where is the {name}?"],
     "synonyms": {"liver": ["liver", "hepatic parenchyma"], "kidney_left": ["left kidney"]}}

A prompts.jsonl line with ``"class": "kidney_left"`` names a key of ``synonyms``. With ``data.prompt_sampling`` on,
training replaces that line's text by a random template filled with a random synonym (FiLM + CBN, METHODS.md
section 3.6). ``templates`` may be left out: the built-in radiologist templates are used.

>>> vocabulary = PromptVocabulary(["segment the {name}", "where is the {name}?"],
...                               {"liver": ["liver", "hepatic parenchyma"]})
>>> vocabulary.phrasings("liver")
['segment the liver', 'segment the hepatic parenchyma', 'where is the liver?', 'where is the hepatic parenchyma?']
>>> synonyms_for("kidney_L")
('left kidney', 'left renal parenchyma')
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtextseg.data.prompts import validate_prompt
from medtextseg.data.vocabulary_tables import ALIASES, DEFAULT_TEMPLATES, LEFT_WORDS, RIGHT_WORDS, SPELLING, SYNONYMS
from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.json_files import read_json

VOCABULARY_FILE = "prompt_vocabulary.json"
PLACEHOLDER = "{name}"


def _fill(template: str, synonym: str) -> str:
    """The template with its placeholder replaced (no ``str.format``: other braces stay text), spaces collapsed."""
    return " ".join(template.replace(PLACEHOLDER, synonym).split())


class PromptVocabulary:
    """Templates x per-class synonyms.

    Args:
        templates: sentences with a ``{name}`` placeholder, e.g. ``"outline the {name}"``.
        synonyms: class name -> its wordings, the first being canonical (used for stored prompts).
        where: what the messages name (the file it was read from).

    Raises:
        MedTextSegError: a template without ``{name}``, a class without synonyms, or a phrasing that is not a
            valid prompt; the message names ``where`` and the key.
    """

    def __init__(self, templates: Sequence[str], synonyms: Mapping[str, Sequence[str]],
                 where: str = "prompt vocabulary") -> None:
        self.where = where
        if isinstance(templates, str) or not isinstance(templates, Sequence) or not templates:
            raise MedTextSegError(f"{where}: 'templates' must be a non-empty list of sentences with {PLACEHOLDER}")
        for index, template in enumerate(templates):
            if not isinstance(template, str) or PLACEHOLDER not in template:
                raise MedTextSegError(f"{where}: templates[{index}] {template!r} has no {PLACEHOLDER} placeholder")
        if not isinstance(synonyms, Mapping) or not synonyms:
            raise MedTextSegError(f"{where}: 'synonyms' must be a non-empty object of class -> list of wordings")
        self.templates: tuple[str, ...] = tuple(templates)
        self.synonyms: dict[str, tuple[str, ...]] = {}
        for class_name, words in synonyms.items():
            key = f"{where}: synonyms[{class_name!r}]"
            if isinstance(words, str) or not isinstance(words, Sequence):
                raise MedTextSegError(f"{key} must be a list of wordings, got {type(words).__name__}")
            if not words:
                raise MedTextSegError(f"{key}: class {class_name!r} has no synonyms; give at least one wording")
            cleaned = []
            for word in words:
                if not isinstance(word, str) or not word.strip():
                    raise MedTextSegError(f"{key}: every wording must be non-empty text, got {word!r}")
                cleaned.append(" ".join(word.split()))
            self.synonyms[class_name] = tuple(dict.fromkeys(cleaned))
            for phrasing in self.phrasings(class_name):
                validate_prompt(phrasing, key)

    # ---------------------------------------------------------------- reading and writing
    @classmethod
    def from_dict(cls, data: Any, where: str = "prompt vocabulary") -> PromptVocabulary:
        """Build from the JSON object of a vocabulary file (``templates`` optional, ``synonyms`` required)."""
        if not isinstance(data, dict):
            raise MedTextSegError(f"{where}: expected an object with 'templates' and 'synonyms'")
        unknown = sorted(set(data) - {"templates", "synonyms"})
        if unknown:
            raise MedTextSegError(f"{where}: unknown key {unknown[0]!r} (expected 'templates' and 'synonyms')")
        if "synonyms" not in data:
            raise MedTextSegError(f"{where}: missing key 'synonyms' (class -> list of wordings)")
        return cls(data.get("templates", DEFAULT_TEMPLATES), data["synonyms"], where)

    @classmethod
    def load(cls, path: str | Path) -> PromptVocabulary:
        """Read and validate a ``prompt_vocabulary.json``.

        Raises:
            MedTextSegError: missing file, invalid JSON, or an invalid entry (naming the file and key).
        """
        return cls.from_dict(read_json(path), str(path))

    def to_dict(self) -> dict[str, Any]:
        return {"templates": list(self.templates), "synonyms": {k: list(v) for k, v in self.synonyms.items()}}

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON (atomically)."""
        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    # ---------------------------------------------------------------- phrasings
    @property
    def classes(self) -> list[str]:
        return list(self.synonyms)

    def __contains__(self, class_name: object) -> bool:
        return class_name in self.synonyms

    def _words(self, class_name: str) -> tuple[str, ...]:
        if class_name not in self.synonyms:
            raise MedTextSegError(f"{self.where}: no synonyms for class {class_name!r}; classes are "
                                  f"{', '.join(self.synonyms)}")
        return self.synonyms[class_name]

    def render(self, class_name: str, rng: np.random.Generator) -> str:
        """A random template filled with a random synonym of ``class_name`` (two draws from ``rng``)."""
        words = self._words(class_name)
        template = self.templates[int(rng.integers(len(self.templates)))]
        return _fill(template, words[int(rng.integers(len(words)))])

    def phrasings(self, class_name: str) -> list[str]:
        """Every phrasing ``render`` can return for ``class_name`` (templates x synonyms, no duplicates)."""
        words = self._words(class_name)
        return list(dict.fromkeys(_fill(t, w) for t in self.templates for w in words))

    def canonical(self, class_name: str) -> str:
        """The first template with the first synonym: the text stored in prompts.jsonl."""
        return _fill(self.templates[0], self._words(class_name)[0])

    def __repr__(self) -> str:
        return f"PromptVocabulary({len(self.templates)} templates, {len(self.synonyms)} classes)"


# -------------------------------------------------------------------- built-in tables
def normalise_class_name(name: str) -> str:
    """Lower case, words joined by ``_``, British spelling: ``"Non-Enhancing Tumor"`` -> ``non_enhancing_tumour``."""
    words = re.sub(r"[^a-z0-9]+", " ", name.lower()).split()
    return "_".join(SPELLING.get(word, word) for word in words)


def _table_lookup(normalised: str) -> tuple[str, ...] | None:
    key = ALIASES.get(normalised, normalised)
    return SYNONYMS.get(key)


def synonyms_for(label_name: str) -> tuple[str, ...]:
    """Radiologist wordings of a label name, from the built-in tables.

    Looks the normalised name up (with aliases), then, for a lateralised name (``kidney_L``, ``left_kidney``,
    ``Kidney_right``), the name without its side, with "left"/"right" put in front of every wording. A name not
    in the tables falls back to itself with underscores as spaces (``caudate_L`` -> "left caudate").
    """
    found = _table_lookup(normalise_class_name(label_name))
    if found:
        return found
    original = re.findall(r"[A-Za-z0-9]+", label_name)
    words = [normalise_class_name(w) for w in original]
    side = ""
    if len(words) > 1:
        for index in (-1, 0):
            if words[index] in LEFT_WORDS | RIGHT_WORDS:
                side = "left" if words[index] in LEFT_WORDS else "right"
                del words[index], original[index]
                break
    if side:
        found = _table_lookup("_".join(words))
        if found:
            return tuple(f"{side} {word}" for word in found)
    # keep short all-capital abbreviations (PZ, IVC); lower-case the rest
    text = " ".join(w if (w.isupper() and len(w) <= 4) else w.lower() for w in original) or label_name.strip()
    return (f"{side} {text}" if side else text,)


def default_vocabulary_for(label_names: Iterable[str],
                           templates: Sequence[str] = DEFAULT_TEMPLATES) -> PromptVocabulary:
    """A vocabulary keyed by the given label names (``background`` left out), with built-in wordings.

    >>> default_vocabulary_for(["background", "liver", "kidney_right"]).synonyms["kidney_right"]
    ('right kidney', 'right renal parenchyma')
    """
    names = [n for n in label_names if normalise_class_name(n) != "background"]
    return PromptVocabulary(templates, {name: synonyms_for(name) for name in names}, "built-in vocabulary")


__all__ = ["VOCABULARY_FILE", "PromptVocabulary", "default_vocabulary_for", "normalise_class_name", "synonyms_for"]
