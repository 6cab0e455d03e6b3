"""The generated model card parses, its metadata is what the Hub expects, and its model-index matches the eval JSON."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from modeling_pathflip import GENERATION_TASKS, TASKS, save_pretrained_with_pipelines
from pathflip.model_cards import write_model_card


def _reported(card: ModelCard) -> dict:
    return {(result.task_name, result.metric_name): result.metric_value for result in card.data.eval_results}


def test_alignment_card_metadata_and_model_index_match_the_metrics(tmp_path, model, processor):
    model.config.patch_encoder, model.config.patch_size_um = "stain-texture", 128.0
    save_pretrained_with_pipelines(model, processor, tmp_path / "model")
    metrics = {"zero_shot_balanced_accuracy": 0.9, "retrieval_text_to_slide_r1": 0.25, "grounding_auroc": 0.81,
               "pointing_game": float("nan"), "slides": 45}  # fmt: skip
    path = write_model_card(tmp_path / "model", metrics=metrics, dataset_name="cohort", repo_id="lab/pathflip",
                            base_models=["sentence-transformers/all-MiniLM-L6-v2"], datasets=["lab/bags"])  # fmt: skip
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "zero-shot-image-classification"
    assert {"pathology", "whole-slide-image"} <= set(data.tags)
    assert data.base_model == ["sentence-transformers/all-MiniLM-L6-v2"] and data.datasets == ["lab/bags"]
    assert _reported(card) == {
        ("Zero-shot slide classification", "Balanced accuracy"): 0.9,
        ("Slide-text retrieval", "Text-to-slide Recall@1"): 0.25,
        ("Sentence grounding", "Patch AUROC"): 0.81,
    }, "NaN metrics are left out"
    name, results = model_index_to_eval_results(eval_results_to_model_index("lab/pathflip", data.eval_results))
    assert name == "lab/pathflip" and len(results) == 3, "the model-index round-trips through huggingface_hub"
    assert "`stain-texture` (16-d features)" in card.text and "128 µm" in card.text
    for task in TASKS:  # a usage snippet for every task, loading the repo pinned
        assert f'pipeline("{task}", model="lab/pathflip", trust_remote_code=True, revision=' in card.text


def test_generation_card_reports_caption_and_vqa_results(tmp_path, generation_model):
    model, processor = generation_model
    save_pretrained_with_pipelines(model, processor, tmp_path / "llm")
    metrics = {"caption_bleu_4": 0.31, "caption_diagnosis_rate": 0.71, "vqa_accuracy": 0.89, "vqa_questions": 180}
    card = ModelCard.load(write_model_card(tmp_path / "llm", metrics=metrics))
    assert card.data.pipeline_tag == "image-text-to-text"
    assert _reported(card) == {
        ("Slide captioning", "BLEU-4"): 0.31,
        ("Slide captioning", "Captions naming the diagnosis"): 0.71,
        ("Multiple-choice question answering", "Accuracy"): 0.89,
    }
    assert [task for task in GENERATION_TASKS if f'pipeline("{task}"' in card.text] == list(GENERATION_TASKS)
    assert 'pipeline("slide-grounding"' not in card.text and "`not recorded` (16-d features)" in card.text


def test_a_folder_of_another_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="holds a 'bert' model, not a PathFLIP model"):
        write_model_card(tmp_path)
