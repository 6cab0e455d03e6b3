"""train.py's LLM stages on generated bags: caption (projector only), then instruct (+ LoRA), then the pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, config_factory, bag_factory, llm_tokenizer):
    """An alignment model, a tiny causal LM folder, caption records and caption + VQA records."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from modeling_pathflip import PathFLIPModel, PathFLIPProcessor
    from pathflip.processing.bags import write_bags
    from pathflip.synthetic.questions import choice_question
    from pathflip.training.records import with_questions
    from tests.conftest import build_tokenizer, tiny_llm_config

    folder = tmp_path_factory.mktemp("llm_stages")
    torch.manual_seed(0)
    aligned = PathFLIPModel(config_factory())
    aligned.save_pretrained(folder / "aligned")
    PathFLIPProcessor.from_model_config(build_tokenizer(), aligned.config).save_pretrained(folder / "aligned")
    llm_config = {key: value for key, value in tiny_llm_config(llm_tokenizer).items() if key != "model_type"}
    AutoModelForCausalLM.from_config(LlamaConfig(**llm_config)).save_pretrained(folder / "llm")
    llm_tokenizer.save_pretrained(folder / "llm")
    bags = write_bags([bag_factory(i, 20 + i) for i in range(6)], folder / "bags.arrow", 16)
    datasets.DatasetDict({"train": bags}).save_to_disk(str(folder / "captions"))
    import random

    def questions(row):
        truth = "tumour" if "tumour" in row["caption"].lower() else "fat"
        return [choice_question("Which tissue?", ["tumour", "fat"], truth, random.Random(row["slide_id"]))]

    datasets.DatasetDict({"train": with_questions(bags, questions)}).save_to_disk(str(folder / "instructions"))
    return folder


def _train(workspace: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, str(ROOT / "train.py"), "--output_dir", str(output), "--do_train", "--max_steps", "3",
        "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--report_to", "none", "--use_cpu",
        "--dataloader_num_workers", "0", "--save_strategy", "no", *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def test_caption_then_instruct_stage_then_the_pipeline(workspace, tmp_path):
    from transformers import pipeline

    caption = _train(workspace, tmp_path / "caption", "--stage", "caption", "--model_name_or_path",
                     str(workspace / "aligned"), "--llm_name_or_path", str(workspace / "llm"),
                     "--dataset_name_or_path", str(workspace / "captions"), "--max_visual_tokens", "4")  # fmt: skip
    assert caption.returncode == 0, caption.stderr[-4000:]
    stage1 = load_file(tmp_path / "caption" / "model.safetensors")
    llm = load_file(workspace / "llm" / "model.safetensors")
    aligned = load_file(workspace / "aligned" / "model.safetensors")
    # Stage 1 trains the projector only: the LLM and PathFLIP weights are the ones loaded.
    for name, value in llm.items():
        torch.testing.assert_close(stage1[f"language_model.{name}"], value)
    for name, value in aligned.items():
        torch.testing.assert_close(stage1[f"pathflip.{name}"], value)

    instruct = _train(workspace, tmp_path / "instruct", "--stage", "instruct", "--model_name_or_path",
                      str(tmp_path / "caption"), "--dataset_name_or_path", str(workspace / "instructions"),
                      "--lora_r", "4")  # fmt: skip
    assert instruct.returncode == 0, instruct.stderr[-4000:]
    stage2 = load_file(tmp_path / "instruct" / "model.safetensors")
    assert stage2.keys() == stage1.keys()  # LoRA merged back: a plain model folder
    changed = [name for name in llm if not torch.equal(stage2[f"language_model.{name}"], llm[name])]
    assert changed and all("proj" in name for name in changed)
    assert not any(torch.equal(stage2[name], stage1[name]) for name in stage1 if name.startswith("visual_projector."))

    generator = pipeline("slide-text-generation", model=str(tmp_path / "instruct"))
    row = datasets.load_from_disk(str(workspace / "captions"))["train"].with_format("numpy")[0]
    result = generator(row, question="Which tissue?", options=["tumour", "fat"], max_new_tokens=4)
    assert isinstance(result["generated_text"], str) and "answer" in result


def test_bad_llm_stage_inputs_name_the_fix(workspace, tmp_path):
    missing_llm = _train(workspace, tmp_path / "a", "--stage", "caption", "--model_name_or_path",
                         str(workspace / "aligned"), "--dataset_name_or_path", str(workspace / "captions"))  # fmt: skip
    assert missing_llm.returncode != 0 and "is an alignment model: pass --llm_name_or_path" in missing_llm.stderr
    broken = datasets.load_from_disk(str(workspace / "instructions"))
    broken["train"] = broken["train"].map(lambda row: {"answer": "Z" if row["question"] else None})
    broken.save_to_disk(str(tmp_path / "broken"))
    bad_answer = _train(workspace, tmp_path / "b", "--stage", "caption", "--model_name_or_path",
                        str(workspace / "aligned"), "--llm_name_or_path", str(workspace / "llm"),
                        "--dataset_name_or_path", str(tmp_path / "broken"))  # fmt: skip
    assert bad_answer.returncode != 0
    assert "slide-0: VQA record with options" in bad_answer.stderr and "answer 'Z'" in bad_answer.stderr
