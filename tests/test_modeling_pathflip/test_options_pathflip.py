"""Lettered options and the option letter read back from generated answers (`modeling_pathflip.options_pathflip`)."""

import pytest

from modeling_pathflip.options_pathflip import (
    format_options,
    multiple_choice_prompt,
    option_letters,
    parse_option_letter,
    tokenize,
)

OPTIONS = ["invasive carcinoma", "carcinoma with necrosis", "reactive lymphoid hyperplasia", "carcinoma"]


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("Invasive, ductal carcinoma (G2).") == ["invasive", ",", "ductal", "carcinoma", "(", "g2", ")", "."]
    assert tokenize("   ") == []


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("b)", "B"),
        ("a", "A"),
        ("Answer: B", "B"),
        ("answer: d", "D"),
        ("The answer is (C) necrosis", "C"),
        ("The correct answer is [D]", "D"),
        ("Option A is wrong; the answer is C.", "C"),
        ("I think it is (A).", "A"),
        ("C. reactive lymphoid hyperplasia", "C"),
        ("Reactive lymphoid hyperplasia (C)", "C"),
        ("carcinoma with necrosis", "B"),  # contains option D "carcinoma": the longer option B wins
        ("Invasive carcinoma.", "A"),  # likewise over D
        ("Carcinoma", "D"),
        ("e.g. reactive lymphoid hyperplasia", "C"),  # "e." is not a letter
        ("invasive carcinoma with necrosis", None),  # A and B both named: ambiguous
        ("a tumour", None),  # the article, not option A
        ("The answer is a tumour", None),
        ("A tumour with necrosis", None),
        ("E", None),  # only four options
        ("I am not sure", None),
        ("", None),
    ],
)
def test_parse_option_letter(text, letter):
    assert parse_option_letter(text, OPTIONS) == letter


def test_option_letters_and_format_options():
    assert option_letters(3) == ["A", "B", "C"]
    assert option_letters(0) == []
    assert format_options(["tumour", "normal"]) == "A. tumour\nB. normal"
    with pytest.raises(ValueError, match="got 27"):
        option_letters(27)


def test_multiple_choice_prompt():
    prompt = multiple_choice_prompt(" What is the diagnosis? ", ["tumour", "normal"])
    assert prompt == "What is the diagnosis?\nA. tumour\nB. normal\nAnswer with the option's letter."
    with pytest.raises(ValueError, match="Empty question"):
        multiple_choice_prompt(" ", ["tumour"])
