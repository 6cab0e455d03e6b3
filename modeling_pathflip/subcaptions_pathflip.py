"""Rule-based caption decomposition into subcaptions.

A caption is split into sentences by a splitter that keeps decimals ("1.5 cm"), common
abbreviations ("e.g.", "approx.") and list markers intact; each subcaption joins 1-3 sentences,
contiguous or drawn at random, as in the authors' v1 sampler.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

ABBREVIATIONS = frozenset(
    "e.g i.e approx vs cf fig figs no nos dr mr mrs ms st etc al ca resp incl max min dept univ".split()
)
_SEPARATORS = re.compile(r"\n|</s>")
_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\(?\d{1,2}[.)]|\(?[a-z][)])\s+")
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+")


def split_sentences(text: str) -> list[str]:
    """Split a caption into sentences, one per list item or line, never inside decimals or abbreviations."""
    sentences = []
    for line in _SEPARATORS.split(text):
        line = _LIST_MARKER.sub("", line).strip()
        start = 0
        for match in _SENTENCE_END.finditer(line):
            words = line[start : match.start()].split()
            last_word = words[-1].lower().strip("([{\"'").rstrip(".") if words else ""
            if last_word in ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
                continue
            sentences.append(line[start : match.end()].strip())
            start = match.end()
        sentences.append(line[start:].strip())
    return [sentence for sentence in sentences if any(ch.isalnum() for ch in sentence)]


def sample_subcaptions(
    caption: str,
    num_subcaptions: int,
    rng: random.Random,
    *,
    max_sentences: int = 3,
    precomputed: Sequence[str] | None = None,
) -> list[str]:
    """Draw ``num_subcaptions`` subcaptions of a slide.

    With ``precomputed`` subcaptions (e.g. an offline LLM decomposition) they are drawn without
    replacement, repeating at random when there are fewer than asked. Otherwise each subcaption
    joins 1-``max_sentences`` sentences of ``caption``: a contiguous run or a random selection.
    """
    pool = [text.strip() for text in precomputed or () if text and text.strip()]
    if pool:
        if len(pool) >= num_subcaptions:
            return rng.sample(pool, num_subcaptions)
        return pool + [rng.choice(pool) for _ in range(num_subcaptions - len(pool))]
    sentences = split_sentences(caption)
    if not sentences:
        raise ValueError("cannot decompose an empty caption into subcaptions")
    subcaptions = []
    for _ in range(num_subcaptions):
        count = rng.randint(1, min(max_sentences, len(sentences)))
        if count > 1 and rng.random() < 0.5:
            first = rng.randrange(len(sentences) - count + 1)
            chosen = sentences[first : first + count]
        else:
            chosen = [sentences[i] for i in sorted(rng.sample(range(len(sentences)), count))]
        subcaptions.append(" ".join(chosen))
    return subcaptions
