"""Multiple-choice questions about generated cohort slides (`pathflip.synthetic.questions`)."""

from __future__ import annotations

import random

from pathflip.synthetic.questions import cohort_questions, yes_no_question


def test_cohort_questions_follow_the_findings_and_shuffle_options():
    row = {"slide_id": "slide-0001", "diagnosis": "invasive carcinoma",
           "findings": [{"tissue": "tumour"}, {"tissue": "fat"}, {"tissue": "stroma"}]}  # fmt: skip
    questions = cohort_questions(row, seed=0)
    truths = [q["options"]["ABC".index(q["answer"])] for q in questions]
    assert truths == ["invasive carcinoma", "no", "no", "yes"]
    assert questions == cohort_questions(row, seed=0), "deterministic"
    letters = {yes_no_question("q", True, random.Random(seed))["answer"] for seed in range(20)}
    assert letters == {"A", "B"}, "the right letter varies, so no letter is always right"


def test_the_diagnosis_question_offers_the_rows_family_diagnoses():
    row = {"slide_id": "slide-0002", "diagnosis": "lymphoma", "family": "hierarchical",
           "findings": [{"tissue": "lymphocytes"}, {"tissue": "necrosis"}, {"tissue": "stroma"}]}  # fmt: skip
    diagnosis, necrosis, lymphocytes, fat = cohort_questions(row, seed=0)
    assert sorted(diagnosis["options"]) == sorted(("benign", "lymphoma", "invasive carcinoma",
                                                   "mucinous adenocarcinoma"))  # fmt: skip
    assert diagnosis["options"]["ABCD".index(diagnosis["answer"])] == "lymphoma"
    assert [q["options"]["AB".index(q["answer"])] for q in (necrosis, lymphocytes, fat)] == ["yes", "yes", "no"]
