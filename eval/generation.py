"""Evaluation of the LLM stage: captions (BLEU, ROUGE-L, METEOR, diagnosis named) and multiple-choice VQA."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

import modeling_pathflip  # noqa: F401  (registers slide-text-generation with transformers.pipeline)
from modeling_pathflip.generation_pipeline_pathflip import DEFAULT_INSTRUCTION

from .text_metrics import caption_metrics, majority_baseline_accuracy, tokenize, vqa_accuracy


def diagnosis_rate(captions: Sequence[str], labels: Sequence[int], class_names: Sequence[str]) -> float:
    """Fraction of captions that name their slide's class and no other class (whole words, any case)."""

    def named(caption: str, name: str) -> bool:
        words, target = tokenize(caption), tokenize(name)
        return any(words[i : i + len(target)] == target for i in range(len(words) - len(target) + 1))

    hits = [
        named(caption, class_names[label]) and not any(named(caption, other) for other in class_names if other
                                                       != class_names[label])
        for caption, label in zip(captions, labels, strict=True)
    ]  # fmt: skip
    return sum(hits) / len(hits)


def evaluate_generation(
    model_path_or_pipeline,
    dataset,
    *,
    class_names: Sequence[str] | None = None,
    caption_prompt: str = DEFAULT_INSTRUCTION,
    max_new_tokens: int = 96,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """Caption metrics on rows without a question and VQA accuracy on rows with one (question/options/answer)."""
    from transformers import pipeline

    generator = model_path_or_pipeline
    if isinstance(model_path_or_pipeline, (str, Path)):
        generator = pipeline("slide-text-generation", model=str(model_path_or_pipeline),
                             trust_remote_code=trust_remote_code)  # fmt: skip
    rows = dataset.with_format("numpy")
    has_questions = "question" in dataset.column_names
    captions, references, labels, answers, truths, options = [], [], [], [], [], []
    for row in tqdm(rows, desc="generating", unit="record"):
        if has_questions and row["question"]:
            choices = [str(option) for option in row["options"]]
            result = generator(row, question=str(row["question"]), options=choices, max_new_tokens=16)
            answers.append(result["generated_text"])
            truths.append(str(row["answer"]))
            options.append(choices)
        elif row.get("caption"):
            captions.append(generator(row, prompt=caption_prompt, max_new_tokens=max_new_tokens)["generated_text"])
            references.append(str(row["caption"]))
            labels.append(int(row["label"]) if "label" in dataset.column_names else None)
    metrics: dict[str, float] = {}
    if captions:
        metrics["caption_slides"] = len(captions)
        metrics.update({f"caption_{key}": value for key, value in caption_metrics(captions, references).items()})
        names = list(class_names or getattr(dataset.features.get("label"), "names", None) or [])
        if names and None not in labels:
            metrics["caption_diagnosis_rate"] = diagnosis_rate(captions, labels, names)
    if answers:
        metrics["vqa_questions"] = len(answers)
        metrics.update(vqa_accuracy(answers, truths, options))
        metrics["vqa_majority_baseline"] = majority_baseline_accuracy(truths)
    if not metrics:
        raise ValueError("the dataset has neither captions nor VQA records (question, options, answer) to evaluate.")
    return metrics
