"""train.py end to end on a generated feature-bag dataset (tiny config, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModel, AutoProcessor, pipeline

from modeling_pathflip import TASKS

ROOT = Path(__file__).resolve().parents[2]
TISSUES = "tumour stroma necrosis fat lymphocytes nuclei carcinoma cells".split()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer, config_factory, bag_factory):
    """A tiny config + tokenizer folder and a feature-bag dataset with train and test splits."""
    from pathflip.processing.bags import write_bags

    folder = tmp_path_factory.mktemp("train")
    config_factory(context_dropout=0.0).save_pretrained(folder / "config")
    tokenizer.save_pretrained(folder / "config")
    splits = {}
    for split, indices in (("train", range(8)), ("test", range(8, 12))):
        bags = []
        for i in indices:
            bag = bag_factory(i, 20 + 2 * (i % 5))
            bag["caption"] = f"{TISSUES[i % 8].capitalize()} in the left region. There are {i % 4 + 1} large areas."
            bag.update(encoder="test-encoder", mpp=0.25)
            bags.append(bag)
        dataset = write_bags(bags, folder / f"{split}.arrow", 16)
        splits[split] = dataset.add_column("label", [i % 2 for i in indices])
    datasets.DatasetDict(splits).save_to_disk(str(folder / "dataset"))
    return folder


def _arguments(workspace: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--dataset_name_or_path", str(workspace / "dataset"), "--eval_split", "test",
        "--config_name", str(workspace / "config"), "--tokenizer_name", str(workspace / "config"),
        "--output_dir", str(output), "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--learning_rate", "1e-3", "--max_steps", "4", "--logging_steps", "2", "--report_to", "none",
        "--max_regions", "3", "--class_names", "tumour", "stroma", "--seed", "0", "--use_cpu",
        "--dataloader_num_workers", "0", *extra,
    ]  # fmt: skip


def _run(arguments: list[str], launcher: list[str] | None = None, hub_env: dict | None = None):
    """train.py in a subprocess: offline, or against the loopback Hub of ``hub_env``."""
    command = [*(launcher or [sys.executable]), str(ROOT / "train.py"), *arguments]
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env = {**(hub_env or {**os.environ, **offline}), "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def trained_run(workspace, tmp_path_factory) -> Path:
    """train.py, 4 steps with --do_eval on the test split."""
    output = tmp_path_factory.mktemp("trained") / "run"
    result = _run(_arguments(workspace, output, "--do_train", "--do_eval", "--save_steps", "2"))
    assert result.returncode == 0, result.stderr[-4000:]
    return output


def test_training_a_few_steps_then_reloading_the_output(workspace, trained_run):
    output = trained_run
    metrics = json.loads((output / "all_results.json").read_text())
    for key in (
        "train_loss",
        "eval_loss",
        "eval_retrieval_slide_to_text_r1",
        "eval_retrieval_text_to_slide_r5",
        "eval_zero_shot_balanced_accuracy",
    ):
        assert key in metrics, key
    assert list(output.glob("checkpoint-*/model.safetensors"))
    model = AutoModel.from_pretrained(output)
    processor = AutoProcessor.from_pretrained(output)
    assert model.config.patch_dim == 16 and processor.num_subcaptions == model.config.num_subcaptions
    assert model.config.patch_encoder == "test-encoder" and model.config.patch_size_um == 128.0, "input contract"
    dataset = datasets.load_from_disk(str(workspace / "dataset"))["test"].with_format("numpy")
    with torch.no_grad():
        assert torch.isfinite(model(**processor([dataset[0], dataset[1]])).loss)


def test_training_evaluation_and_pathflip_eval_give_the_same_zero_shot_figures(workspace, trained_run):
    from pathflip.eval.runner import evaluate_model

    during_training = json.loads((trained_run / "all_results.json").read_text())
    test_split = datasets.load_from_disk(str(workspace / "dataset"))["test"]
    afterwards = evaluate_model(trained_run, test_split, class_names=["tumour", "stroma"])
    for key in ("zero_shot_balanced_accuracy", "zero_shot_weighted_f1", "zero_shot_auroc"):
        assert during_training[f"eval_{key}"] == pytest.approx(afterwards[key], abs=1e-6), key
    for key in ("retrieval_slide_to_text_r1", "retrieval_text_to_slide_r5"):
        assert during_training[f"eval_{key}"] == pytest.approx(afterwards[key], abs=1e-6), key


def test_pathflip2_trains_with_the_same_script(workspace, tmp_path, pathflip2_config_factory, tokenizer):
    """The released architecture fine-tunes through train.py: both losses, patches sampled per slide."""
    pathflip2_config_factory().save_pretrained(tmp_path / "config2")
    tokenizer.save_pretrained(tmp_path / "config2")
    arguments = _arguments(workspace, tmp_path / "run2", "--do_train", "--do_eval", "--max_patches", "12")
    arguments[arguments.index("--config_name") + 1] = str(tmp_path / "config2")
    arguments[arguments.index("--tokenizer_name") + 1] = str(tmp_path / "config2")
    result = _run(arguments)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((tmp_path / "run2" / "all_results.json").read_text())
    assert {"train_loss", "eval_loss", "eval_zero_shot_balanced_accuracy", "eval_retrieval_slide_to_text_r1"} <= set(
        metrics)  # fmt: skip
    model = AutoModel.from_pretrained(tmp_path / "run2")
    assert type(model).__name__ == "PathFLIP2Model" and model.config.patch_encoder == "test-encoder"
    assert type(AutoProcessor.from_pretrained(tmp_path / "run2")).__name__ == "PathFLIP2Processor"


def test_push_to_hub_uploads_a_checked_model_with_its_card(workspace, tmp_path, minihub, hub_user, bag_factory):
    output = tmp_path / "run"
    arguments = _arguments(workspace, output, "--do_train", "--do_eval", "--save_steps", "2", "--push_to_hub",
                           "--hub_model_id", "lab/pathflip-tiny")  # fmt: skip
    result = _run(arguments, hub_env=minihub[0])
    assert result.returncode == 0, result.stderr[-4000:]

    bag = bag_factory(3, 30)
    loaded = hub_user("lab/pathflip-tiny", bag)
    assert all(module.startswith("transformers_modules") for module in loaded["classes"]), loaded["classes"]
    assert set(loaded["outputs"]) == set(TASKS), "every task by repo id, without the package"
    local = pipeline("slide-feature-extraction", model=str(output))(bag)
    torch.testing.assert_close(loaded["outputs"]["slide-feature-extraction"]["slide_embedding"],
                               local["slide_embedding"])  # fmt: skip
    packaged = hub_user("lab/pathflip-tiny", bag, with_package=True)
    assert all(module.startswith("modeling_pathflip") for module in packaged["classes"]), packaged["classes"]
    torch.testing.assert_close(packaged["outputs"]["slide-feature-extraction"]["slide_embedding"],
                               local["slide_embedding"])  # fmt: skip
    uploaded = minihub[1] / "model" / "lab" / "pathflip-tiny" / "snapshots" / loaded["revision"]
    assert not list(uploaded.glob("checkpoint-*")), "training checkpoints stay local"
    card = ModelCard.load(uploaded / "README.md")
    metrics = json.loads((output / "all_results.json").read_text())
    reported = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert reported["Balanced accuracy"] == round(metrics["eval_zero_shot_balanced_accuracy"], 4)
    assert reported["Text-to-slide Recall@1"] == round(metrics["eval_retrieval_text_to_slide_r1"], 4)
    assert "`test-encoder` (16-d features)" in card.text


def test_torchrun_with_two_processes(workspace, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = _run(_arguments(workspace, tmp_path / "ddp", "--do_train", "--per_device_train_batch_size", "2"), launcher)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "ddp" / "model.safetensors").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.remove_columns("features"), r"lacks the feature-bag column\(s\) \['features'\]"),
        (lambda d: d.rename_column("caption", "text"), r"no caption column \(columns"),
        (
            lambda d: d.map(lambda row, i: {"caption": "" if i == 2 else row["caption"]}, with_indices=True),
            r"slide-2 \(row 2\): empty caption",
        ),
        (
            lambda d: d.map(lambda row, i: {"encoder": "other" if i == 1 else row["encoder"]}, with_indices=True),
            r"mixes patch encoders \['other', 'test-encoder'\]",
        ),
    ],
)
def test_bad_datasets_stop_before_training(workspace, tmp_path, change, message):
    broken = datasets.load_from_disk(str(workspace / "dataset"))
    broken["train"] = change(broken["train"])
    broken.save_to_disk(str(tmp_path / "broken"))
    arguments = _arguments(workspace, tmp_path / "out", "--do_train")
    arguments[1] = str(tmp_path / "broken")
    result = _run(arguments)
    assert result.returncode != 0
    assert pytest.importorskip("re").search(message, result.stderr), result.stderr[-2000:]


def test_wrong_feature_dimension_names_the_fix(workspace, tmp_path, config_factory):
    config_factory(patch_dim=32).save_pretrained(tmp_path / "config32")
    arguments = _arguments(workspace, tmp_path / "out", "--do_train")
    arguments[arguments.index("--config_name") + 1] = str(tmp_path / "config32")
    result = _run(arguments)
    assert result.returncode != 0 and "slide-0 (row 0): 16-dim features, the model reads 32" in result.stderr


def test_killed_after_a_checkpoint_then_resumed_reaches_the_same_weights(workspace, tmp_path):
    from safetensors.torch import load_file

    steps = ["--do_train", "--max_steps", "8", "--save_steps", "2", "--per_device_train_batch_size", "2"]
    straight = _run(_arguments(workspace, tmp_path / "straight", *steps))
    assert straight.returncode == 0, straight.stderr[-3000:]

    output = tmp_path / "killed"
    command = [sys.executable, str(ROOT / "train.py"), *_arguments(workspace, output, *steps)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (output / "checkpoint-4" / "trainer_state.json").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (output / "model.safetensors").exists(), "the kill should land before the end"
    checkpoint = max(output.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    resumed = _run(_arguments(workspace, output, *steps, "--resume_from_checkpoint", str(checkpoint.parent)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = load_file(tmp_path / "straight" / "model.safetensors"), load_file(output / "model.safetensors")
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-5, rtol=0, msg=name)
