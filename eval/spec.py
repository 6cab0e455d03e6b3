"""The evaluation spec: zero-shot prompts, and every metric's name, label and Hub card entry.

`pathflip eval`, the evaluation inside `pathflip train` and the model cards all read this module, so their
figures are computed the same way and carry the same names.
"""

from __future__ import annotations

from dataclasses import dataclass

# Class prompts of the zero-shot evaluation: '{}' is the class name; the class embedding averages the prompts.
ZERO_SHOT_TEMPLATES = ("{}.", "Diagnosis: {}.", "The findings are consistent with {}.")


@dataclass(frozen=True)
class CardEntry:
    """Where a metric goes in a model card's ``model-index`` (Hub task type and name, metric type and name)."""

    task_type: str
    task_name: str
    metric_type: str
    metric_name: str


@dataclass(frozen=True)
class Metric:
    """A metric of the evaluation JSON: its table label and, when it belongs in a model card, its card entry."""

    label: str
    card: CardEntry | None = None


_ZERO_SHOT = ("zero-shot-image-classification", "Zero-shot slide classification")
_RETRIEVAL = ("text-retrieval", "Slide-text retrieval")
_GROUNDING = ("zero-shot-object-detection", "Sentence grounding")
_CAPTIONS = ("image-to-text", "Slide captioning")
_VQA = ("visual-question-answering", "Multiple-choice question answering")

METRICS = {
    "zero_shot_balanced_accuracy": Metric("Zero-shot balanced accuracy",
                                          CardEntry(*_ZERO_SHOT, "balanced_accuracy", "Balanced accuracy")),
    "zero_shot_weighted_f1": Metric("Zero-shot weighted F1", CardEntry(*_ZERO_SHOT, "f1", "Weighted F1")),
    "zero_shot_auroc": Metric("Zero-shot macro AUROC", CardEntry(*_ZERO_SHOT, "roc_auc", "Macro AUROC")),
    "retrieval_text_to_slide_r1": Metric("Text->slide R@1",
                                         CardEntry(*_RETRIEVAL, "recall", "Text-to-slide Recall@1")),
    "retrieval_text_to_slide_r5": Metric("Text->slide R@5"),
    "retrieval_slide_to_text_r1": Metric("Slide->text R@1",
                                         CardEntry(*_RETRIEVAL, "recall", "Slide-to-text Recall@1")),
    "retrieval_slide_to_text_r5": Metric("Slide->text R@5"),
    "grounding_auroc": Metric("Grounding AUROC", CardEntry(*_GROUNDING, "roc_auc", "Patch AUROC")),
    "pointing_game": Metric("Pointing game", CardEntry(*_GROUNDING, "accuracy", "Pointing game")),
    "caption_bleu_1": Metric("Caption BLEU-1"),
    "caption_bleu_4": Metric("Caption BLEU-4", CardEntry(*_CAPTIONS, "bleu", "BLEU-4")),
    "caption_rouge_l": Metric("Caption ROUGE-L", CardEntry(*_CAPTIONS, "rouge", "ROUGE-L")),
    "caption_meteor": Metric("Caption METEOR (no synonyms)",
                             CardEntry(*_CAPTIONS, "meteor", "METEOR (no WordNet stage)")),
    "caption_diagnosis_rate": Metric("Captions naming the true diagnosis",
                                     CardEntry(*_CAPTIONS, "accuracy", "Captions naming the diagnosis")),
    "vqa_accuracy": Metric("VQA accuracy (multiple choice)", CardEntry(*_VQA, "accuracy", "Accuracy")),
    "vqa_majority_baseline": Metric("VQA majority-letter baseline",
                                    CardEntry(*_VQA, "accuracy", "Most-frequent-letter baseline")),
}  # fmt: skip
