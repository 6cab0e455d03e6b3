"""Model cards for PathFLIP folders with `huggingface_hub.ModelCard`: metadata, input contract, usage and results."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..eval.spec import METRICS

TEMPLATE = Path(__file__).with_name("template.md")
TAGS = ["pathology", "histopathology", "whole-slide-image", "pathflip", "vision-language", "multiple-instance-learning"]
# A Hub task id per model type (the custom pipeline names are not Hub tasks).
PIPELINE_TAGS = {"pathflip": "zero-shot-image-classification", "pathflip2": "zero-shot-image-classification",
                 "pathflip_generation": "image-text-to-text"}  # fmt: skip
USAGE = {
    "zero-shot-slide-classification": 'classify = pipeline("zero-shot-slide-classification", {load})\n'
    'classify(bag, candidate_labels=["invasive carcinoma", "reactive lymphoid hyperplasia"])',
    "slide-text-retrieval": 'retrieve = pipeline("slide-text-retrieval", {load})\n'
    'retrieve(bag, candidate_texts=["Sheets of tumour cells.", "Mature adipose tissue."])',
    "slide-grounding": 'ground = pipeline("slide-grounding", {load})\n'
    'ground(bag, sentences="A focus of coagulative necrosis.", output_dir="maps/")  # scores, heatmap, GeoJSON',
    "slide-feature-extraction": 'embed = pipeline("slide-feature-extraction", {load})\n'
    "embed(bag)  # slide_embedding, region_embeddings",
    "slide-text-generation": 'generate = pipeline("slide-text-generation", {load})\n'
    'generate(bag, prompt="Describe the slide.")\n'
    'generate(bag, question="Is there necrosis?", options=["yes", "no"])  # generated_text, answer',
}
DESCRIPTIONS = {
    "pathflip2": "the architecture of the authors' released weights (PathFLIP2): a latent slide encoder over frozen "
    "patch features giving a slide embedding and per-patch features, a BERT-like text tower, and soft top-k "
    "pooling of the patches most similar to a sentence, whose weights ground the sentence in the slide.",
    "pathflip": "a slide/region encoder over frozen patch-feature bags, a text tower, and the Text-Region Attention "
    "that grounds sentences in slide regions.",
    "pathflip_generation": "the slide and region tokens of a PathFLIP encoder, projected into a causal language "
    "model that writes captions and answers questions about the slide.",
}


def eval_results(metrics: dict, dataset_name: str, dataset_type: str, split: str = "test") -> list[EvalResult]:
    """`model-index` entries for the metrics of a `pathflip eval` JSON that belong in a card."""
    return [
        EvalResult(task_type=card.task_type, task_name=card.task_name, dataset_type=dataset_type,
                   dataset_name=dataset_name, dataset_split=split, metric_type=card.metric_type,
                   metric_name=card.metric_name, metric_value=round(float(metrics[key]), 4))
        for key, card in _card_metrics(metrics)
    ]  # fmt: skip


def _card_metrics(metrics: dict) -> list:
    """``(key, card entry)`` of each metric that has a card entry and a value (NaN: no usable query, left out)."""
    return [(key, metric.card) for key, metric in METRICS.items()
            if metric.card and key in metrics and metrics[key] == metrics[key]]  # fmt: skip


# Every card this module writes says so in its first paragraph; a README.md without it is someone's own card.
GENERATED_CARD_SENTENCE = "A PathFLIP model (fine-grained language-image pretraining for whole slide images"


def is_generated_card(text: str) -> bool:
    """Whether a README.md was written by `write_model_card` (and may be written again)."""
    return GENERATED_CARD_SENTENCE in text


def write_model_card(
    model_dir: str | Path,
    *,
    metrics: dict | None = None,
    repo_id: str | None = None,
    dataset_name: str = "feature-bag dataset",
    dataset_type: str = "custom",
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    base_models: list[str] | None = None,
    target_mpp: float | None = None,
    patch_size: int | None = None,
    intended_use: str = "Research on slide-level vision-language models. Not for diagnosis.",
    provenance: str | None = None,
) -> Path:
    """Write ``README.md`` (the model card) into a saved PathFLIP folder (alignment or LLM stage); returns its path.

    ``metrics`` is the JSON `pathflip eval` writes; its known metrics become the card's `model-index`.
    ``repo_id`` is the Hub id the usage snippets load (default: the folder name).
    """
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type not in PIPELINE_TAGS:
        raise ValueError(f"{model_dir} holds a {model_type!r} model, not a PathFLIP model ({sorted(PIPELINE_TAGS)}).")
    alignment = config.get("pathflip_config", config)
    name = repo_id or model_dir.name
    metrics = metrics or {}
    data = ModelCardData(
        library_name="transformers", pipeline_tag=PIPELINE_TAGS[model_type], license=license, tags=TAGS,
        base_model=base_models or None, datasets=datasets or None, model_name=name,
        eval_results=eval_results(metrics, dataset_name, dataset_type) or None,
    )  # fmt: skip
    card = ModelCard.from_template(
        data, template_path=str(TEMPLATE), model_name=name, description=DESCRIPTIONS[model_type],
        input_contract=_input_contract(alignment, target_mpp, patch_size), usage=_usage(config, name),
        results=_results_table(metrics), dataset_name=dataset_name, intended_use=intended_use, provenance=provenance,
    )  # fmt: skip
    path = model_dir / "README.md"
    card.save(path)
    return path


def _input_contract(alignment: dict, target_mpp: float | None, patch_size: int | None) -> str:
    encoder, dim = alignment.get("patch_encoder"), alignment["patch_dim"]
    geometry = "`patch_size_level0`" if "region_grid_size" in alignment else "`patch_size_level0` for heatmaps"
    lines = [
        f"- Patch encoder: `{encoder or 'not recorded'}` ({dim}-d features); features of any other encoder are "
        "refused or silently meaningless.",
        f"- A bag: `features [N, {dim}]`, `coords [N, 2]` (level-0 pixels), {geometry}.",
    ]
    if patch_size and target_mpp:
        lines.append(f"- Patches: {patch_size} px at {target_mpp} µm/px.")
    if alignment.get("patch_size_um"):
        lines.append(f"- Patch side in the training bags: {alignment['patch_size_um']:g} µm.")
    if "region_grid_size" in alignment:
        grid = alignment["region_grid_size"]
        lines.append(f"- Regions: {grid} x {grid} patches.")
    return "\n".join(lines)


def _usage(config: dict, name: str) -> str:
    tasks = [task for task in USAGE if task in config.get("custom_pipelines", {})]
    load = f'model="{name}", trust_remote_code=True, revision="<commit sha>"'
    return "\n".join(["from transformers import pipeline", "", *(USAGE[task].format(load=load) for task in tasks)])


def _results_table(metrics: dict) -> str:
    rows = [f"| {card.task_name} | {card.metric_name} | {metrics[key]:.3f} |" for key, card in _card_metrics(metrics)]
    return "\n".join(["| task | metric | value |", "|---|---|---|", *rows]) if rows else "Not evaluated yet."
