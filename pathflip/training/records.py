"""Training records of the LLM stage: caption records and multiple-choice VQA records about a slide.

A record is a feature-bag dataset row plus, for VQA, ``question`` (string), ``options`` (list of
strings) and ``answer`` (the option letter). Rows without a question are caption records: the prompt is an
instruction ("Describe the slide.") and the target the caption.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modeling_pathflip.generation_pipeline_pathflip import DEFAULT_INSTRUCTION
from modeling_pathflip.options_pathflip import multiple_choice_prompt, option_letters

VQA_COLUMNS = ("question", "options", "answer")


def is_question(row: Mapping[str, Any]) -> bool:
    """Whether a row is a VQA record (it has a non-empty question)."""
    question = row.get("question")
    return question is not None and bool(str(question).strip())


def record_texts(row: Mapping[str, Any], caption_prompt: str = DEFAULT_INSTRUCTION) -> tuple[str, str]:
    """``(prompt, target)`` of a record; the target of a VQA record is "option text (B)": the content first, so
    the model decides what it sees before it copies that option's letter."""
    name = row.get("slide_id", "a row")
    if not is_question(row):
        caption = row.get("caption")
        if caption is None or not str(caption).strip():
            raise ValueError(f"{name}: neither a question nor a caption; fill one or drop the row (dataset.filter).")
        return caption_prompt, str(caption)
    options = [str(option) for option in (row.get("options") if row.get("options") is not None else [])]
    answer = str(row.get("answer") or "").strip().upper()
    letters = option_letters(len(options))
    if not options or answer not in letters:
        raise ValueError(
            f"{name}: VQA record with options {options} and answer {answer!r}; the answer must be one of the "
            f"option letters {letters}."
        )
    return multiple_choice_prompt(str(row["question"]), options), f"{options[letters.index(answer)]} ({answer})"


def with_questions(dataset, questions_of, *, keep_captions: bool = True):
    """One caption record and the VQA records ``questions_of(row)`` for every row of a bag dataset (the bag
    columns are repeated per record)."""
    import datasets

    def expand(batch: dict) -> dict:
        out = {name: [] for name in [*batch, *VQA_COLUMNS]}
        for index in range(len(batch["slide_id"])):
            row = {name: values[index] for name, values in batch.items()}
            records = [{"question": None, "options": [], "answer": None}] if keep_captions else []
            for record in records + questions_of(row):
                for name, value in {**row, **record}.items():
                    out[name].append(value)
        return out

    features = dataset.features.copy()
    features.update({"question": datasets.Value("string"), "options": datasets.Sequence(datasets.Value("string")),
                     "answer": datasets.Value("string")})  # fmt: skip
    return dataset.map(expand, batched=True, batch_size=8, features=features, writer_batch_size=16, desc="records")
