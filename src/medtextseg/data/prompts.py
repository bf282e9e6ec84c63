"""Prompt text rules: what a valid prompt is, and how a left-right flip rewrites it."""

from __future__ import annotations

import re
import unicodedata

from medtextseg.utils.errors import MedTextSegError

MAX_PROMPT_CHARACTERS = 300
# tab, newline and carriage return are whitespace, normalised to single spaces; every other control character
# (C0, DEL, C1: terminal escape sequences start with ESC or CSI) and the bidirectional embeddings, overrides
# and isolates (which make text display in another order than it is read) are refused
_WHITESPACE_CONTROLS = frozenset("\t\n\r")
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

_SIDE_WORDS = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT",
               "RIGHT": "LEFT", "l": "r", "r": "l", "L": "R", "R": "L"}
# "left"/"right" as words or word prefixes ("left-sided", "leftmost"); single letters only as standalone
# words before a zone abbreviation ("L PZ"), so "R" in other contexts is untouched. Not where the side is
# part of a structure's name rather than its position: the left atrium of a mirrored heart is still the
# left atrium (its chamber, its blood), while a mirrored left kidney lies where the right one would.
_NAMED_BY_SIDE = r"(?!\s+(?i:atri|ventric|heart))"
_SIDE_PATTERN = re.compile(rf"\b(left|right|Left|Right|LEFT|RIGHT){_NAMED_BY_SIDE}|\b([lLrR])(?=\s+(?:PZ|TZ|pz|tz)\b)")


def validate_prompt(prompt: object, where: str = "prompt") -> str:
    """Return the stripped prompt, or raise a one-line error saying why it cannot be used.

    A prompt must be a string of 1 to 300 characters containing at least two letters, no control
    characters other than tabs and line breaks (which become spaces, as runs of spaces do) and no lone
    surrogates (which no encoder can take). The message names
    a control character by its escape (``'\\x1b'``) and its position (1 = the first character), never
    echoing it: an escape sequence would drive the user's terminal.
    """
    if not isinstance(prompt, str):
        raise MedTextSegError(f"{where}: a prompt must be text, got {type(prompt).__name__}")
    for position, char in enumerate(prompt, start=1):
        category = unicodedata.category(char)
        if char not in _WHITESPACE_CONTROLS and (category == "Cc" or char in _BIDI_CONTROLS):
            raise MedTextSegError(f"{where}: the prompt has the control character {char!r} at character "
                                  f"{position}; a prompt is plain text: remove it")
        if category == "Cs":  # half of a UTF-16 pair: what bytes that are not UTF-8 become in argv or JSON
            raise MedTextSegError(f"{where}: the prompt has {char!r} at character {position}, which is not a "
                                  "character (a lone surrogate: text that was not valid UTF-8?); give the prompt as "
                                  "UTF-8 text")
    text = " ".join(prompt.split())
    if not text:
        raise MedTextSegError(f"{where}: the prompt is empty; say what to segment, e.g. 'the prostate gland'")
    if len(text) > MAX_PROMPT_CHARACTERS:
        raise MedTextSegError(f"{where}: the prompt has {len(text)} characters, more than "
                              f"{MAX_PROMPT_CHARACTERS}; describe one target in a sentence")
    if sum(ch.isalpha() for ch in text) < 2:
        raise MedTextSegError(f"{where}: the prompt {text!r} has no words; say what to segment")
    return text


def swap_left_right(prompt: str) -> str:
    """The prompt as it reads after a left-right mirror of the image: 'left' <-> 'right'.

    >>> swap_left_right("the lesion in the left PZ, not the right-sided one")
    'the lesion in the right PZ, not the left-sided one'
    """
    return _SIDE_PATTERN.sub(lambda m: _SIDE_WORDS[m.group(0)], prompt)


def is_lateralised(prompt: str) -> bool:
    return _SIDE_PATTERN.search(prompt) is not None
