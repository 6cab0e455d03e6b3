"""The options of the PathFLIP pipelines, each checked before any work: a wrong one is named with its value and
the fix (stdlib only, so it also runs as remote code)."""

from __future__ import annotations

import os
from typing import Any

MAX_HEATMAP_SIZE = 16384  # a larger raster (and its PNG) would take gigabytes for no visible gain


def _texts(name: str, value: Any, example: str) -> list[str]:
    """A list of distinct non-empty texts (one string is one text)."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(text, str) for text in texts):
        raise ValueError(f"{name} must be a text or a non-empty list of texts, got {value!r}; e.g. {example}.")
    empty = [number for number, text in enumerate(texts) if not text.strip()]
    if empty:
        raise ValueError(f"{name} has empty text at position(s) {empty}: {list(texts)!r}; remove them.")
    folded = [" ".join(text.split()).casefold() for text in texts]  # "Tumour" and "tumour " name one thing
    repeated = sorted({text for text, key in zip(texts, folded, strict=True) if folded.count(key) > 1})
    if repeated:
        raise ValueError(f"{name} repeats {repeated} (case and spaces aside); give each one once.")
    return list(texts)


def _labels(name: str, value: Any) -> list[str]:
    labels = _texts(name, value, "['tumour', 'normal tissue']")
    if len(labels) < 2:  # the softmax over one class is 1.0 whatever the slide
        raise ValueError(f"{name} needs two or more classes to choose between, got {labels!r}.")
    return labels


def _one_text(name: str, value: Any, example: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty text, got {value!r}; e.g. {example}.")
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}.")
    return value


def _mpp(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a positive number of µm per level-0 pixel (0.25 at 40x), got {value!r}.")
    return float(value)


def check_templates(name: str, value: Any) -> list[str]:
    templates = _texts(name, value, "'an H&E image of {}.'")
    for template in templates:
        try:
            filled = template.format("\0")
        except (IndexError, KeyError, ValueError):
            filled = ""
        if template.count("{}") != 1 or filled.count("\0") != 1:
            raise ValueError(f"every {name} needs one '{{}}' where the label goes and no other braces, got "
                             f"{template!r}.")  # fmt: skip
    return templates


def _heatmap_size(name: str, value: Any) -> int:
    value = _positive_int(name, value)
    if value > MAX_HEATMAP_SIZE:
        raise ValueError(f"{name} is the heatmap's longest side in pixels, at most {MAX_HEATMAP_SIZE}; got {value}.")
    return value


def _options(name: str, value: Any) -> list[str]:
    options = _texts(name, value, "['Yes.', 'No.']")
    if len(options) < 2:
        raise ValueError(f"{name} needs at least two answers to choose from, got {options!r}.")
    return options


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False (or left out), got {value!r}.")
    return value


def _text_or_none(name: str, value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ValueError(f"{name} must be a non-empty name or path, got {value!r}.")
    return value


def _folder(name: str, value: Any) -> str:
    value = _text_or_none(name, value)
    if os.path.isfile(value):
        raise ValueError(f"{name} {str(value)!r} is a file; give a folder to write the heatmaps into.")
    return value


OPTION_CHECKS = {
    "candidate_labels": lambda name, value: _labels(name, value),
    "candidate_texts": lambda name, value: _texts(name, value, "['Sheets of tumour cells.', 'Fat.']"),
    "sentences": lambda name, value: _texts(name, value, "'A focus of necrosis.'"),
    "hypothesis_template": check_templates,
    "top_k": _positive_int,
    "heatmap_size": _heatmap_size,
    "options": _options,
    "question": lambda name, value: _one_text(name, value, "'Is there necrosis?'"),
    "prompt": lambda name, value: _one_text(name, value, "'Describe the slide.'"),
    "mpp": _mpp,
    "patch_encoder": _text_or_none,
    "output_dir": _folder,
    "slide": _text_or_none,
    "use_grounding_head": _flag,
}


def check_option(name: str, value: Any) -> Any:
    """A pipeline option checked before any work (None means "not given" for every option): the value to use, or
    a `ValueError` naming the option, the value and the fix."""
    if value is None or name not in OPTION_CHECKS:
        return value
    return OPTION_CHECKS[name](name, value)
