"""Multiple-choice questions about a generated cohort slide, for the LLM stage's VQA records."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from modeling_pathflip.options_pathflip import option_letters

from .cohort import FAMILIES


def yes_no_question(question: str, truth: bool, rng: random.Random) -> dict:
    """A two-option question, options in random order."""
    options = ["yes", "no"]
    rng.shuffle(options)
    return {
        "question": question,
        "options": options,
        "answer": option_letters(2)[options.index("yes" if truth else "no")],
    }


def choice_question(question: str, choices: Sequence[str], truth: str, rng: random.Random) -> dict:
    """A question over ``choices`` in random order, ``truth`` among them."""
    options = list(choices)
    rng.shuffle(options)
    return {"question": question, "options": options, "answer": option_letters(len(options))[options.index(truth)]}


def cohort_questions(row: Mapping[str, Any], seed: int = 0) -> list[dict]:
    """VQA records about one generated cohort slide (a `cohort.jsonl` row): its diagnosis and which findings
    are present; options are shuffled per slide (seeded), so no letter is a safe guess."""
    rng = random.Random(f"{seed}:{row['slide_id']}")
    tissues = {finding["tissue"] for finding in row["findings"]}
    diagnoses = FAMILIES[row.get("family", "lesions")].diagnoses
    return [
        choice_question("What is the diagnosis?", diagnoses, row["diagnosis"], rng),
        yes_no_question("Is there necrosis in this slide?", "necrosis" in tissues, rng),
        yes_no_question("Are lymphocytic infiltrates present?", "lymphocytes" in tissues, rng),
        yes_no_question("Is adipose tissue present?", "fat" in tissues, rng),
    ]
