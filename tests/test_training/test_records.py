"""LLM-stage records (`pathflip.training.records`): prompts and targets, dataset expansion."""

from __future__ import annotations

import random

import pytest

from pathflip.synthetic.questions import yes_no_question
from pathflip.training.records import record_texts, with_questions


def test_record_texts_of_caption_and_vqa_records():
    assert record_texts({"caption": "Fat.", "question": None}) == ("Describe the slide.", "Fat.")
    prompt, target = record_texts({"question": "Which?", "options": ["fat", "tumour"], "answer": "b"})
    assert prompt == "Which?\nA. fat\nB. tumour\nAnswer with the option's letter."
    assert target == "tumour (B)"
    with pytest.raises(ValueError, match="slide-3: VQA record with options .* answer 'C'"):
        record_texts({"slide_id": "slide-3", "question": "Which?", "options": ["fat", "tumour"], "answer": "C"})
    with pytest.raises(ValueError, match="slide-4: neither a question nor a caption"):
        record_texts({"slide_id": "slide-4", "caption": " ", "question": ""})


def test_with_questions_adds_one_caption_record_and_the_questions_per_slide(bag_factory, tmp_path):
    from pathflip.processing.bags import write_bags

    bags = write_bags([bag_factory(i, 10) for i in range(3)], tmp_path / "bags.arrow", 16)
    records = with_questions(bags, lambda row: [yes_no_question("Fat?", "fat" in row["caption"].lower(),
                                                                random.Random(0))])  # fmt: skip
    assert len(records) == 6 and records["slide_id"] == ["slide-0", "slide-0", "slide-1", "slide-1", "slide-2",
                                                          "slide-2"]  # fmt: skip
    assert records["question"][::2] == [None] * 3 and records["question"][1::2] == ["Fat?"] * 3
    assert records[1]["features"] == records[0]["features"], "each record carries its slide's bag"
