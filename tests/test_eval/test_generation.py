"""Evaluation of the LLM stage (`pathflip.eval.generation`): captions and multiple-choice VQA through the pipeline."""

from __future__ import annotations

import pytest

from pathflip.eval.generation import diagnosis_rate, evaluate_generation
from pathflip.eval.text_metrics import caption_metrics, majority_baseline_accuracy, vqa_accuracy

NAMES = ["invasive carcinoma", "carcinoma with necrosis", "reactive lymphoid hyperplasia"]


def test_diagnosis_rate_counts_the_true_name_alone():
    captions = [
        "Final diagnosis: invasive carcinoma.",  # label 0: right
        "Tumour with necrosis. Consistent with carcinoma with necrosis.",  # label 1: right
        "Invasive carcinoma or carcinoma with necrosis.",  # label 1: names another class too
        "Reactive lymphoid hyperplasia",  # label 0: wrong class
        "carcinoma",  # label 0: only part of the name
    ]
    assert diagnosis_rate(captions, [0, 1, 1, 0, 0], NAMES) == pytest.approx(2 / 5)


def test_evaluate_generation_equals_the_pipeline_outputs(tmp_path, generation_model, bag_factory):
    import datasets
    from transformers import pipeline

    from modeling_pathflip import save_pretrained_with_pipelines
    from pathflip.processing.bags import write_bags
    from pathflip.synthetic.questions import choice_question
    from pathflip.training.records import with_questions

    model, processor = generation_model
    save_pretrained_with_pipelines(model, processor, tmp_path / "model")
    bags = write_bags([bag_factory(i, 12 + i) for i in range(3)], tmp_path / "bags.arrow", 16)
    bags = bags.add_column("label", [0, 2, 1]).cast_column("label", datasets.ClassLabel(names=NAMES))
    import random

    records = with_questions(bags, lambda row: [choice_question("Which?", NAMES, NAMES[row["label"]],
                                                                random.Random(row["slide_id"]))])  # fmt: skip
    metrics = evaluate_generation(str(tmp_path / "model"), records, max_new_tokens=6)
    generator = pipeline("slide-text-generation", model=str(tmp_path / "model"))
    rows = list(records.with_format("numpy"))
    captions = [generator(r, prompt="Describe the slide.", max_new_tokens=6)["generated_text"] for r in rows[::2]]
    answers = [generator(r, question="Which?", options=list(r["options"]), max_new_tokens=16)["generated_text"]
               for r in rows[1::2]]  # fmt: skip
    truths = [str(r["answer"]) for r in rows[1::2]]
    expected = {f"caption_{k}": v for k, v in caption_metrics(captions, [r["caption"] for r in rows[::2]]).items()}
    expected.update(vqa_accuracy(answers, truths, [list(r["options"]) for r in rows[1::2]]))
    expected.update({"caption_slides": 3, "vqa_questions": 3,
                     "vqa_majority_baseline": majority_baseline_accuracy(truths),
                     "caption_diagnosis_rate": diagnosis_rate(captions, [0, 2, 1], NAMES)})  # fmt: skip
    assert metrics == pytest.approx(expected)
    with pytest.raises(ValueError, match="neither captions nor VQA records"):
        evaluate_generation(str(tmp_path / "model"), bags.remove_columns("caption"))
