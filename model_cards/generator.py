"""Model cards for PathFLIP folders with `huggingface_hub.ModelCard`: metadata, input contract, usage and results."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = Path(__file__).with_name("template.md")
# metric key in `pathflip eval`'s JSON -> (task type, task name, metric type, metric name)
RESULT_KINDS = {
    "zero_shot_balanced_accuracy": ("zero-shot-classification", "Zero-shot slide classification", "balanced_accuracy",
                                    "Balanced accuracy"),
    "zero_shot_weighted_f1": ("zero-shot-classification", "Zero-shot slide classification", "f1", "Weighted F1"),
    "zero_shot_auroc": ("zero-shot-classification", "Zero-shot slide classification", "roc_auc", "Macro AUROC"),
    "retrieval_text_to_slide_r1": ("text-retrieval", "Slide-text retrieval", "recall", "Text-to-slide Recall@1"),
    "retrieval_slide_to_text_r1": ("text-retrieval", "Slide-text retrieval", "recall", "Slide-to-text Recall@1"),
    "grounding_auroc": ("zero-shot-object-detection", "Sentence grounding", "roc_auc", "Patch AUROC"),
    "pointing_game": ("zero-shot-object-detection", "Sentence grounding", "accuracy", "Pointing game"),
}  # fmt: skip


def eval_results(metrics: dict, dataset_name: str, dataset_type: str, split: str = "test") -> list[EvalResult]:
    """`model-index` entries for the metrics of a `pathflip eval` JSON that have a known kind."""
    results = []
    for key, (task_type, task_name, metric_type, metric_name) in RESULT_KINDS.items():
        if key in metrics and metrics[key] == metrics[key]:  # NaN (no usable query) is not a result
            results.append(EvalResult(task_type=task_type, task_name=task_name, dataset_type=dataset_type,
                                      dataset_name=dataset_name, dataset_split=split, metric_type=metric_type,
                                      metric_name=metric_name, metric_value=round(float(metrics[key]), 4)))  # fmt: skip
    return results


def write_model_card(
    model_dir: str | Path,
    *,
    metrics: dict | None = None,
    dataset_name: str = "feature-bag dataset",
    dataset_type: str = "custom",
    license: str = "apache-2.0",
    base_models: list[str] | None = None,
    patch_encoder: str = "stain-texture",
    target_mpp: float = 0.5,
    patch_size: int = 256,
    intended_use: str = "Research on slide-level vision-language models. Not for diagnosis.",
) -> Path:
    """Write ``README.md`` (the model card) into a saved PathFLIP folder; returns its path."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    data = ModelCardData(
        library_name="transformers", pipeline_tag="zero-shot-classification", license=license,
        tags=["pathology", "whole-slide-image", "histopathology", "pathflip", "vision-language", "multiple-instance"],
        base_model=base_models or None, model_name=model_dir.name,
        eval_results=eval_results(metrics or {}, dataset_name, dataset_type) or None,
    )  # fmt: skip
    card = ModelCard.from_template(
        data, template_path=str(TEMPLATE), model_name=model_dir.name, patch_encoder=patch_encoder,
        patch_dim=config["patch_dim"], target_mpp=target_mpp, patch_size=patch_size,
        tasks=", ".join(f"`{task}`" for task in config.get("custom_pipelines", {})), intended_use=intended_use,
        results=_results_table(metrics or {}), dataset_name=dataset_name,
    )  # fmt: skip
    path = model_dir / "README.md"
    card.save(path)
    return path


def _results_table(metrics: dict) -> str:
    rows = [f"| {kind[1]} | {kind[3]} | {metrics[key]:.3f} |" for key, kind in RESULT_KINDS.items() if key in metrics]
    return "\n".join(["| task | metric | value |", "|---|---|---|", *rows]) if rows else "Not evaluated yet."
