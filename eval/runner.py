"""`pathflip eval`: a PathFLIP model on a feature-bag dataset -> metrics JSON and a markdown table.

Zero-shot classification needs a label column (class names from its `ClassLabel`, its text labels, or
``class_names``),
retrieval a ``caption`` column, grounding the columns ``grounding_sentences`` (per slide, the sentences to
ground) and ``grounding_targets`` (per sentence, one bool per patch: inside the lesion it describes); an optional
``grounding_types`` column (per sentence, its finding type) adds the grounding figures of each type.
Every task runs through the same pipelines users call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

import modeling_pathflip  # noqa: F401  (registers the PathFLIP tasks with transformers.pipeline)
from modeling_pathflip.pipeline_pathflip import reads_patches_for_zero_shot, zero_shot_logits

from ..files import write_text
from ..processing.bags import check_columns
from .metrics import classification_metrics, grounding_metrics, retrieval_metrics
from .spec import METRICS, ZERO_SHOT_TEMPLATES


def evaluate_model(
    model_path_or_pipeline,
    dataset,
    *,
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
    trust_remote_code: bool = False,
    label_column: str = "label",
) -> dict[str, float]:
    """Zero-shot, retrieval and grounding metrics of a model on ``dataset`` (the tasks its columns allow)."""
    from transformers import pipeline

    extractor = model_path_or_pipeline
    if isinstance(model_path_or_pipeline, (str, Path)):
        extractor = pipeline("slide-feature-extraction", model=str(model_path_or_pipeline),
                             trust_remote_code=trust_remote_code)  # fmt: skip
    model, processor = extractor.model, extractor.processor
    grounder = pipeline("slide-grounding", model=model, processor=processor)
    check_columns(dataset)
    rows = dataset.with_format("numpy")
    columns = set(dataset.column_names)
    labels = zero_shot_labels(dataset, label_column, class_names)
    prompts = None if labels is None else prompt_embeddings(model, processor, labels[1], list(templates))
    from_patches = labels is not None and reads_patches_for_zero_shot(model)
    slide_embeds, class_logits, scores, targets = [], [], [], []
    types: list[str] | None = [] if "grounding_types" in columns else None
    for row in tqdm(rows, desc="evaluating", unit="slide"):
        slide_embeds.append(extractor(row)["slide_embedding"].numpy())
        if from_patches:
            class_logits.append(_zero_shot_logits_from_patches(model, processor, row, prompts, len(templates)))
        if {"grounding_sentences", "grounding_targets"} <= columns and len(row["grounding_sentences"]):
            results = grounder(row, sentences=[str(sentence) for sentence in row["grounding_sentences"]])
            scores += [result["patch_scores"].numpy() for result in results]
            targets += [np.asarray(target, dtype=bool) for target in row["grounding_targets"]]
            if types is not None:
                types += _grounding_types(row, len(results))
    slide_embeds = np.stack(slide_embeds)
    metrics: dict[str, float] = {"slides": len(slide_embeds)}
    if "caption" in columns:
        metrics.update(retrieval_metrics(slide_embeds, _text_embeddings(model, processor, list(dataset["caption"]))))
    if from_patches:
        metrics.update(zero_shot_scores(np.concatenate(class_logits), labels[0]))
    elif labels is not None:
        metrics.update(zero_shot_metrics(model, processor, slide_embeds, labels[0], labels[1], templates))
    if scores:
        metrics.update(grounding_metrics(scores, targets, types))
    return metrics


def _grounding_types(row, sentences: int) -> list[str]:
    """The finding type of each grounding sentence of a row (one per sentence, named in errors otherwise)."""
    kinds = [str(kind) for kind in row["grounding_types"]]
    if len(kinds) != sentences:
        raise ValueError(f"slide {row.get('slide_id')!r} has {sentences} grounding sentences but {len(kinds)} "
                         "grounding_types; give one type per sentence.")  # fmt: skip
    return kinds


def zero_shot_labels(
    dataset, column: str = "label", class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]] | None:
    """The label column as class indices and the class names in label order (None: no labels to score).

    A `ClassLabel` column gives its names (``class_names`` must then agree, or it is refused naming both); text
    labels are looked up in ``class_names`` (default: the labels sorted); integer labels need ``class_names``.
    """
    if column not in (dataset.column_names or []):
        if column != "label":
            raise ValueError(f"label column {column!r} is not in the dataset (columns: {dataset.column_names}).")
        if class_names:
            raise ValueError(f"class names {list(class_names)} were given, but the dataset has no 'label' column to "
                             "score them on; name the column of the diagnoses with --label-column.")  # fmt: skip
        return None
    feature = dataset.features.get(column) if dataset.features else None
    values = [row[column] for row in dataset.select_columns([column])]
    given = list(class_names) if class_names else None
    if isinstance(feature, datasets.ClassLabel):
        if given is not None and given != feature.names:
            raise ValueError(f"class names {given} disagree with the label order of the dataset's {column!r} column "
                             f"{feature.names}; give them in that order, or leave them out.")  # fmt: skip
        return np.asarray(values), list(feature.names)
    if values and isinstance(values[0], str):
        names = given or sorted(set(values))
        if given is None and len(values) >= 10 and len(names) == len(values):  # a caption or id column
            raise ValueError(f"column {column!r} has a different value in each of its {len(values)} rows: it holds "
                             "no diagnoses to classify; name the column of the diagnoses with --label-column, or give "
                             "--class-names.")  # fmt: skip
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"labels {unknown[:5]} of column {column!r} are not among the class names {names}.")
        return np.asarray([names.index(value) for value in values]), names
    if given is None:
        return None  # integer labels without names: nothing to prompt with
    if values and not 0 <= min(values) <= max(values) < len(given):
        raise ValueError(f"labels of column {column!r} run from {min(values)} to {max(values)}, but there are "
                         f"{len(given)} class names {given}.")  # fmt: skip
    return np.asarray(values), given


@torch.no_grad()
def _text_embeddings(model, processor, texts: list[str]) -> np.ndarray:
    chunks = [model.get_text_features(**processor(text=texts[i : i + 32]).to(model.device)) for i in
              range(0, len(texts), 32)]  # fmt: skip
    return torch.cat(chunks).float().cpu().numpy()


def zero_shot_metrics(
    model, processor, slide_embeds: np.ndarray, labels, class_names: Sequence[str],
    templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
) -> dict[str, float]:  # fmt: skip
    """``zero_shot_*`` metrics of slide embeddings against class-prompt embeddings, at the model's logit scale (a
    grounding head, if the model has one, is not read: the slide embeddings are what is scored)."""
    prompts = prompt_embeddings(model, processor, list(class_names), list(templates))
    with torch.no_grad():
        slides = torch.as_tensor(slide_embeds, device=prompts.device, dtype=prompts.dtype)
        logits = zero_shot_logits(model, prompts, len(templates), slide_embeds=slides, use_grounding_head=False)
    return zero_shot_scores(logits.float().cpu().numpy(), labels)


def zero_shot_scores(logits: np.ndarray, labels) -> dict[str, float]:
    """``zero_shot_*`` metrics of class logits ``[slides, classes]`` (softmax probabilities) against the labels."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores = classification_metrics(shifted / shifted.sum(axis=1, keepdims=True), np.asarray(labels))
    return {f"zero_shot_{key}": value for key, value in scores.items()}


@torch.no_grad()
def _zero_shot_logits_from_patches(model, processor, row, prompts: torch.Tensor, num_templates: int) -> np.ndarray:
    batch = processor([row], return_loss=False)
    bag = {name: batch[name].to(model.device) for name in processor.bag_input_names}
    return zero_shot_logits(model, prompts, num_templates, bag=bag).float().cpu().numpy()


@torch.no_grad()
def prompt_embeddings(model, processor, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """The text embeddings ``[C * T, E]`` of every class's prompts, class major (what `zero_shot_logits` reads)."""
    prompts = [template.format(name) for name in class_names for template in templates]
    return model.get_text_features(**processor(text=prompts).to(model.device))


def markdown_table(runs: dict[str, dict[str, float]]) -> str:
    """A markdown table with one column per run (e.g. full model and ablations)."""
    names = list(runs)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, metric in METRICS.items():
        keys = [key] + sorted({found for metrics in runs.values() for found in metrics if found.startswith(key + "/")})
        for shown in keys:
            if any(shown in metrics for metrics in runs.values()):
                label = metric.label + (f": {shown.split('/', 1)[1]}" if "/" in shown else "")
                values = [f"{runs[name][shown]:.3f}" if shown in runs[name] else "-" for name in names]
                lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def write_report(metrics: dict[str, float], output_dir: str | Path, *, name: str = "model") -> Path:
    """``metrics.json`` and ``metrics.md`` in ``output_dir``; returns the JSON path."""
    output = Path(output_dir)
    write_text(output / "metrics.md", markdown_table({name: metrics}))
    return write_text(output / "metrics.json", json.dumps(metrics, indent=2) + "\n")
