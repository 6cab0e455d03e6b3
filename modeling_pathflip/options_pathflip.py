"""Multiple-choice questions about a slide: lettered options in the prompt, and the letter read back from an answer.

Shared by the `slide-text-generation` pipeline, the training data and the VQA metrics (stdlib only, so it also runs
as remote code).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_TOKEN = re.compile(r"\w+|[^\w\s]")
MULTIPLE_CHOICE_SUFFIX = "Answer with the option's letter."


def tokenize(text: str) -> list[str]:
    """Lowercased words and single punctuation marks of ``text``."""
    return _TOKEN.findall(text.lower())


def option_letters(n: int) -> list[str]:
    """The letters of ``n`` options: "A", "B", ..."""
    if not 0 <= n <= 26:
        raise ValueError(f"between 0 and 26 options can be lettered, got {n}")
    return list(string.ascii_uppercase[:n])


def format_options(options: Sequence[str]) -> str:
    """Options as lettered lines, ``"A. first\\nB. second"``."""
    return "\n".join(f"{letter}. {text}" for letter, text in zip(option_letters(len(options)), options, strict=True))


# A letter that stands alone ("B", "(b)", "B."), leads the answer before punctuation ("C. necrosis", "b) ..."),
# follows "answer"/"option"/"choice" ("Answer: B", "the answer is (C)"), or is bracketed anywhere ("... (C) ...").
_ALONE = re.compile(r"^\W*([A-Za-z])\W*$")
_LEADING = re.compile(r"^\s*[(\[]?([A-Za-z])\s*[).:\]](?![A-Za-z]\.)")  # not "e.g."/"i.e."
_KEYWORD = re.compile(
    r"\b(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*(?:option\s+|choice\s+)?"
    r"(?:[(\[]([A-Za-z])[)\]]|([A-Za-z])(?![\w'\-])(\s+\w)?)",
    re.IGNORECASE,
)
_BRACKETED = re.compile(r"[(\[]([A-Za-z])[)\]]")


def _explicit_letter(text: str, letters: set[str]) -> str | None:
    """The option letter written out in ``text``, if any (None when absent or ambiguous)."""
    for pattern in (_ALONE, _LEADING):
        match = pattern.search(text)
        if match and match.group(1).upper() in letters:
            return match.group(1).upper()
    # "Option A is wrong; the answer is C": a letter after "answer" outranks one after "option"/"choice".
    for match in sorted(_KEYWORD.finditer(text), key=lambda m: not m.group(0).lower().startswith("answer")):
        bracketed, bare, word_after = match.groups()
        # "the answer is a tumour": a lowercase bare letter followed by a word is the article, not an option.
        if bare is not None and bare.islower() and word_after is not None:
            continue
        letter = (bracketed or bare).upper()
        if letter in letters:
            return letter
    bracketed = {match.group(1).upper() for match in _BRACKETED.finditer(text)} & letters
    return bracketed.pop() if len(bracketed) == 1 else None


def _option_from_text(text: str, options: Sequence[str]) -> int | None:
    """Index of the one option whose text occurs in ``text`` outside a longer matched option's occurrence."""
    tokens = tokenize(text)
    spans: dict[int, list[tuple[int, int]]] = {}
    for index, option in enumerate(options):
        words, size = tokenize(option), len(tokenize(option))
        if found := [(s, s + size) for s in range(len(tokens) - size + 1) if size and tokens[s : s + size] == words]:
            spans[index] = found
    all_spans = [span for found in spans.values() for span in found]

    def covered(span: tuple[int, int]) -> bool:
        return any(s <= span[0] and span[1] <= e and (e - s) > (span[1] - span[0]) for s, e in all_spans)

    standing = [index for index, found in spans.items() if not all(covered(span) for span in found)]
    return standing[0] if len(standing) == 1 else None


def parse_option_letter(text: str, options: Sequence[str]) -> str | None:
    """The option letter a generated answer picks ("A", "B", ...), or None when it cannot be told."""
    letters = option_letters(len(options))
    letter = _explicit_letter(text, set(letters))
    if letter is None and (index := _option_from_text(text, options)) is not None:
        letter = letters[index]
    return letter


def multiple_choice_prompt(question: str, options: Sequence[str]) -> str:
    """The question, its lettered options and the answer instruction, one per line."""
    if not question or not question.strip():
        raise ValueError("Empty question: a multiple-choice prompt needs the question text.")
    return f"{question.strip()}\n{format_options(options)}\n{MULTIPLE_CHOICE_SUFFIX}"
