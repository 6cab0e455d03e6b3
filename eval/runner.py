"""`pathflip eval`: a PathFLIP model on a feature-bag dataset -> metrics JSON and a markdown table.

Zero-shot classification needs a ``label`` column (class names from its `ClassLabel` or ``class_names``),
retrieval a ``caption`` column, grounding the columns ``grounding_sentences`` (per slide, the sentences to
ground) and ``grounding_targets`` (per sentence, one bool per patch: inside the lesion it describes).
Every task runs through the same pipelines users call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import modeling_pathflip  # noqa: F401  (registers the PathFLIP tasks with transformers.pipeline)
from modeling_pathflip.pipeline_pathflip import prompt_ensemble_embeddings

from .metrics import classification_metrics, grounding_metrics, retrieval_metrics, zero_shot_probabilities

DEFAULT_CLASS_TEMPLATES = ("{}.", "Diagnosis: {}.", "The findings are consistent with {}.")


def evaluate_model(
    model_path_or_pipeline,
    dataset,
    *,
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] = DEFAULT_CLASS_TEMPLATES,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """Zero-shot, retrieval and grounding metrics of a model on ``dataset`` (the tasks its columns allow)."""
    from transformers import pipeline

    extractor = model_path_or_pipeline
    if isinstance(model_path_or_pipeline, (str, Path)):
        extractor = pipeline("slide-feature-extraction", model=str(model_path_or_pipeline),
                             trust_remote_code=trust_remote_code)  # fmt: skip
    model, processor = extractor.model, extractor.processor
    grounder = pipeline("slide-grounding", model=model, processor=processor)
    rows = dataset.with_format("numpy")
    columns = set(dataset.column_names)
    if not {"features", "coords", "patch_size_level0"} <= columns:
        raise ValueError(f"the dataset lacks bag columns: it has {sorted(columns)}; see the README's data contract.")
    class_names = list(class_names or _class_names(dataset))
    slide_embeds, scores, targets = [], [], []
    for row in tqdm(rows, desc="evaluating", unit="slide"):
        slide_embeds.append(extractor(row)["slide_embedding"].numpy())
        if {"grounding_sentences", "grounding_targets"} <= columns and len(row["grounding_sentences"]):
            results = grounder(row, sentences=[str(sentence) for sentence in row["grounding_sentences"]])
            scores += [result["patch_scores"].numpy() for result in results]
            targets += [np.asarray(target, dtype=bool) for target in row["grounding_targets"]]
    slide_embeds = np.stack(slide_embeds)
    metrics: dict[str, float] = {"slides": len(slide_embeds)}
    if "caption" in columns:
        metrics.update(retrieval_metrics(slide_embeds, _text_embeddings(model, processor, list(dataset["caption"]))))
    if "label" in columns and class_names:
        classes = class_prompt_embeddings(model, processor, class_names, list(templates))
        scale = float(model.logit_scale.detach().exp().clamp(max=model.config.logit_scale_max))
        probabilities = zero_shot_probabilities(slide_embeds, classes, scale)
        scores_by_name = classification_metrics(probabilities, np.asarray(dataset["label"]))
        metrics.update({f"zero_shot_{key}": value for key, value in scores_by_name.items()})
    if scores:
        metrics.update(grounding_metrics(scores, targets))
    return metrics


def _class_names(dataset) -> list[str]:
    feature = dataset.features.get("label")
    return list(getattr(feature, "names", None) or [])


@torch.no_grad()
def _text_embeddings(model, processor, texts: list[str]) -> np.ndarray:
    chunks = [model.get_text_features(**processor(text=texts[i : i + 32]).to(model.device)) for i in
              range(0, len(texts), 32)]  # fmt: skip
    return torch.cat(chunks).float().cpu().numpy()


@torch.no_grad()
def class_prompt_embeddings(model, processor, class_names: list[str], templates: list[str]) -> np.ndarray:
    """One unit embedding per class from a prompt ensemble (the zero-shot pipeline's computation)."""
    prompts = [template.format(name) for name in class_names for template in templates]
    tokens = processor(text=prompts).to(model.device)
    return prompt_ensemble_embeddings(model, tokens, len(templates)).float().cpu().numpy()


METRIC_LABELS = {
    "zero_shot_balanced_accuracy": "Zero-shot balanced accuracy",
    "zero_shot_weighted_f1": "Zero-shot weighted F1",
    "zero_shot_auroc": "Zero-shot macro AUROC",
    "retrieval_text_to_slide_r1": "Text->slide R@1",
    "retrieval_text_to_slide_r5": "Text->slide R@5",
    "retrieval_slide_to_text_r1": "Slide->text R@1",
    "retrieval_slide_to_text_r5": "Slide->text R@5",
    "grounding_auroc": "Grounding AUROC",
    "pointing_game": "Pointing game",
    "caption_bleu_1": "Caption BLEU-1",
    "caption_bleu_4": "Caption BLEU-4",
    "caption_rouge_l": "Caption ROUGE-L",
    "caption_meteor": "Caption METEOR (no synonyms)",
    "caption_diagnosis_rate": "Captions naming the true diagnosis",
    "vqa_accuracy": "VQA accuracy (multiple choice)",
    "vqa_majority_baseline": "VQA majority-letter baseline",
}


def markdown_table(runs: dict[str, dict[str, float]]) -> str:
    """A markdown table with one column per run (e.g. full model and ablations)."""
    names = list(runs)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label in METRIC_LABELS.items():
        if any(key in metrics for metrics in runs.values()):
            values = [f"{runs[name][key]:.3f}" if key in runs[name] else "-" for name in names]
            lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def write_report(metrics: dict[str, float], output_dir: str | Path, *, name: str = "model") -> Path:
    """``metrics.json`` and ``metrics.md`` in ``output_dir``; returns the JSON path."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (output / "metrics.md").write_text(markdown_table({name: metrics}))
    return output / "metrics.json"
