import pytest

from medtextseg.data.prompts import is_lateralised, swap_left_right, validate_prompt
from medtextseg.utils.errors import MedTextSegError


def test_swap_left_right_keeps_everything_else():
    assert swap_left_right("segment the Left-sided lesion, not the right one") == \
        "segment the Right-sided lesion, not the left one"
    assert swap_left_right("lesion in the R PZ") == "lesion in the L PZ"
    assert swap_left_right("the large round lesion") == "the large round lesion"
    assert swap_left_right(swap_left_right("leftmost lesion on the right")) == "leftmost lesion on the right"
    # a lone R that is not a side stays as it is
    assert swap_left_right("R2 lesion") == "R2 lesion"


def test_lateralised():
    assert is_lateralised("the lesion in the left PZ")
    assert not is_lateralised("the prostate gland")


def test_valid_prompt_is_normalised():
    assert validate_prompt("  segment   the\tprostate ") == "segment the prostate"
    assert validate_prompt("segment the\r\nprostate\n") == "segment the prostate"
    assert validate_prompt("la région de la prostate, 前列腺") == "la région de la prostate, 前列腺"


@pytest.mark.parametrize(("prompt", "escape", "position"), [
    ("the \x1b[31mgland", r"'\x1b'", 5), ("the gland\x00", r"'\x00'", 10), ("\x07the gland", r"'\x07'", 1),
    ("the\x0bgland", r"'\x0b'", 4), ("the gland\x7f", r"'\x7f'", 10), ("the \x9b2Jgland", r"'\x9b'", 5),
    ("the \u202egland", r"'\u202e'", 5), ("the \u2066gland", r"'\u2066'", 5),
])
def test_control_characters_are_refused_by_their_escape(prompt, escape, position):
    with pytest.raises(MedTextSegError) as error:
        validate_prompt(prompt, "prompt 2")
    assert str(error.value) == (f"prompt 2: the prompt has the control character {escape} at character {position}; "
                                "a prompt is plain text: remove it")


@pytest.mark.parametrize(("prompt", "message"), [
    ("", r"prompt 1: the prompt is empty"),
    ("   ", r"prompt 1: the prompt is empty"),
    ("x" * 301, r"prompt 1: the prompt has 301 characters, more than 300"),
    ("?? 42 !!", r"prompt 1: the prompt '\?\? 42 !!' has no words"),
    (None, r"prompt 1: a prompt must be text, got NoneType"),
])
def test_bad_prompts_are_refused(prompt, message):
    with pytest.raises(MedTextSegError, match=message):
        validate_prompt(prompt, "prompt 1")


def test_sides_that_name_a_heart_chamber_are_not_swapped():
    # a mirrored left atrium is still the left atrium; a mirrored left kidney lies where the right one would
    assert swap_left_right("segment the Left Ventricle and the left atrium") == \
        "segment the Left Ventricle and the left atrium"
    assert swap_left_right("the left kidney, not the right atrium") == "the right kidney, not the right atrium"
