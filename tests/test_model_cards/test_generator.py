"""The generated model card parses, validates, and its model-index matches the eval JSON."""

from __future__ import annotations

from huggingface_hub import ModelCard

from model_cards import write_model_card
from modeling_pathflip import save_pretrained_with_pipelines


def test_card_metadata_and_model_index_match_the_metrics(tmp_path, model, processor):
    save_pretrained_with_pipelines(model, processor, tmp_path / "model")
    metrics = {"zero_shot_balanced_accuracy": 0.9, "retrieval_text_to_slide_r1": 0.25, "grounding_auroc": 0.81,
               "pointing_game": float("nan"), "slides": 45}  # fmt: skip
    card = ModelCard.load(write_model_card(tmp_path / "model", metrics=metrics, dataset_name="cohort"))
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "zero-shot-classification"
    assert "pathology" in data.tags and "whole-slide-image" in data.tags
    reported = {(result.task_name, result.metric_name): result.metric_value for result in data.eval_results}
    assert reported == {
        ("Zero-shot slide classification", "Balanced accuracy"): 0.9,
        ("Slide-text retrieval", "Text-to-slide Recall@1"): 0.25,
        ("Sentence grounding", "Patch AUROC"): 0.81,
    }, "NaN metrics are left out"
    assert "`slide-grounding`" in card.text and "16-d features" in card.text
