"""Publishing: incomplete folders are refused before any upload; complete ones and feature-bag datasets go to a
loopback Hub (`../shared/tools/minihub.py`) and load back by repo id where the package is absent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from transformers import pipeline

from modeling_pathflip import save_pretrained_with_pipelines
from pathflip.model_cards.check_remote_code import TASK_OPTIONS
from pathflip.model_cards.hub import NotPublishableError, check_model_folder, missing_parts, push_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def folder(tmp_path, model, processor):
    save_pretrained_with_pipelines(model, processor, tmp_path / "model")
    return tmp_path / "model"


def _without(folder: Path, name: str) -> Path:
    copy = folder.with_name(f"without-{name}")
    shutil.copytree(folder, copy)
    (copy / name).unlink()
    return copy


@pytest.mark.parametrize(
    "removed, named",
    [
        ("model.safetensors", "model.safetensors: the weights"),
        ("processor_config.json", "processor_config.json: the processor"),
        ("tokenizer.json", "tokenizer vocabulary"),
        ("pipeline_pathflip.py", "pipeline_pathflip.py: code that the '"),
        ("configuration_pathflip.py", "configuration_pathflip.py: code that AutoConfig in config.json needs"),
        ("loss_pathflip.py", "loss_pathflip.py: code that modeling_pathflip.py needs"),
    ],
)
def test_each_missing_part_is_named(folder, removed, named):
    assert missing_parts(folder) == []
    assert any(named in line for line in missing_parts(_without(folder, removed))), missing_parts(folder)


def test_a_missing_task_entry_and_pytorch_bin_weights_are_named(folder):
    config = json.loads((folder / "config.json").read_text())
    del config["custom_pipelines"]["slide-text-retrieval"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    missing = missing_parts(folder)
    assert any("custom_pipelines entry for 'slide-text-retrieval'" in line for line in missing)
    assert any("has pytorch_model.bin only" in line for line in missing)


def test_push_refuses_an_incomplete_folder_before_touching_the_hub(folder, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was contacted")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_hub)
    with pytest.raises(NotPublishableError, match=r"(?s)missing:.*model\.safetensors.*Nothing was uploaded"):
        push_model(_without(folder, "model.safetensors"), "lab/model")


def test_metrics_never_replace_a_card_of_the_users_own(folder, monkeypatch, tmp_path, capsys):
    import huggingface_hub

    from pathflip.cli import main
    from pathflip.model_cards.generator import write_model_card

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was contacted")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_hub)
    (folder / "README.md").write_text("# Our BRCA model\n\nTrained on our cohort; see the lab wiki.\n")
    with pytest.raises(ValueError, match=r"README.md is a card of your own .* push without them"):
        push_model(folder, "lab/model", metrics={"slides": 3})
    assert (folder / "README.md").read_text().startswith("# Our BRCA model")
    write_model_card(folder)  # a card pathflip wrote may be written again with the metrics (the Hub is next)
    monkeypatch.setattr("pathflip.model_cards.hub.check_model_folder", lambda folder: {})
    with pytest.raises(AssertionError, match="the Hub was contacted"):
        push_model(folder, "lab/model", metrics={"slides": 3})
    (tmp_path / "list.json").write_text("[1, 2]")
    assert main(["push", str(folder), "lab/model", "--metrics", str(tmp_path / "list.json")]) == 2
    assert "holds a list, not the object pathflip eval writes" in capsys.readouterr().err
    assert main(["push", str(folder), "lab/model", "--base-model", "not a repo id"]) == 2
    assert "repo id 'not a repo id' is not a valid Hub id" in capsys.readouterr().err


def test_push_creates_the_repo_and_branch_then_uploads_without_training_leftovers(folder, monkeypatch):
    import huggingface_hub

    calls = []

    class RecordingApi:  # minihub has no branches, so the revision plumbing is checked here
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **options):
            calls.append(("create_repo", repo_id, options))
            return huggingface_hub.RepoUrl(f"https://hub.example/{repo_id}", endpoint="https://hub.example")

        def create_branch(self, repo_id, **options):
            calls.append(("create_branch", repo_id, options))

        def upload_folder(self, **options):
            calls.append(("upload_folder", options))

    monkeypatch.setattr("pathflip.model_cards.hub.check_model_folder", lambda folder: {})
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    push_model(folder, "lab/model", revision="dev", private=True, token="t0ken")
    assert calls[:3] == [
        ("token", "t0ken"),
        ("create_repo", "lab/model", {"private": True, "exist_ok": True}),
        ("create_branch", "lab/model", {"branch": "dev", "exist_ok": True}),
    ]
    upload = calls[3][1]
    assert (
        upload["revision"] == "dev" and upload["folder_path"] == folder and "checkpoint-*" in upload["ignore_patterns"]
    )
    assert (folder / "README.md").is_file(), "a folder without a card gets one"


def test_a_folder_whose_code_fails_is_refused(folder):
    with (folder / "pipeline_pathflip.py").open("a") as code:
        code.write("\nraise ImportError('broken on purpose')\n")
    with pytest.raises(NotPublishableError, match="(?s)failed to run as remote code.*broken on purpose"):
        check_model_folder(folder)


# ---- against the loopback Hub -------------------------------------------------------------------


def _pathflip(env: dict, *arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pathflip.cli", *arguments]
    env = {**env, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_cli_refuses_an_incomplete_folder_and_the_hub_stays_empty(minihub, folder):
    env, storage = minihub
    result = _pathflip(env, "push", str(_without(folder, "processor_config.json")), "lab/incomplete")
    assert result.returncode == 2
    assert "processor_config.json: the processor" in result.stderr and "Nothing was uploaded" in result.stderr
    assert not (storage / "model" / "lab" / "incomplete").exists()


def test_pushed_generation_model_generates_the_same_text_by_repo_id(minihub, hub_user, tmp_path, generation_model,
                                                                    bag_factory):  # fmt: skip
    model, processor = generation_model
    save_pretrained_with_pipelines(model, processor, tmp_path / "llm")
    metrics = {"caption_bleu_4": 0.25, "vqa_accuracy": 0.75}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    result = _pathflip(minihub[0], "push", str(tmp_path / "llm"), "lab/pathflip-llm", "--metrics",
                       str(tmp_path / "metrics.json"), "--dataset-name", "test cohort")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    loaded = hub_user("lab/pathflip-llm", bag_factory(0, 20))
    assert f"revision={loaded['revision']!r}" in result.stdout, "the CLI prints the revision to pin"
    assert all(module.startswith("transformers_modules") for module in loaded["classes"]), loaded["classes"]
    local = pipeline("slide-text-generation", model=str(tmp_path / "llm"))(
        bag_factory(0, 20), **TASK_OPTIONS["slide-text-generation"]
    )
    assert loaded["outputs"]["slide-text-generation"]["generated_text"] == local["generated_text"]
    storage = minihub[1] / "model" / "lab" / "pathflip-llm" / "snapshots" / loaded["revision"]
    card = ModelCard.load(storage / "README.md")
    assert {result.metric_value for result in card.data.eval_results} == {0.25, 0.75}, "model-index = the JSON"
    assert card.data.pipeline_tag == "image-text-to-text"


def test_feature_bag_dataset_round_trips_through_the_hub(minihub, tmp_path, bag_factory):
    import datasets

    from pathflip.processing.bags import write_bags

    splits = {}
    for split, indices in (("train", range(3)), ("test", range(3, 5))):
        bags = [{**bag_factory(i, 10 + i), "encoder": "stain-texture", "mpp": 0.5} for i in indices]
        splits[split] = write_bags(bags, tmp_path / f"{split}.arrow", 16)
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "bags"))
    env = minihub[0]
    result = _pathflip(env, "push", str(tmp_path / "bags"), "lab/bags")
    assert result.returncode == 0, result.stderr[-3000:]

    script = (
        "import sys, datasets\n"
        "loaded = datasets.load_dataset('lab/bags')\n"
        "datasets.DatasetDict(loaded).save_to_disk(sys.argv[1])\n"
    )
    reload = subprocess.run([sys.executable, "-c", script, str(tmp_path / "reloaded")], env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert reload.returncode == 0, reload.stderr[-3000:]
    reloaded = datasets.load_from_disk(str(tmp_path / "reloaded"))
    assert set(reloaded) == {"train", "test"}
    assert reloaded["train"].features == splits["train"].features, "Array2D features survive the parquet round trip"
    for split, original in splits.items():
        for mine, theirs in zip(original.with_format("numpy"), reloaded[split].with_format("numpy"), strict=True):
            assert mine["slide_id"] == theirs["slide_id"] and mine["encoder"] == theirs["encoder"]
            np.testing.assert_array_equal(mine["features"], theirs["features"])
            np.testing.assert_array_equal(mine["coords"], theirs["coords"])


def test_a_dataset_with_wrong_columns_is_refused(tmp_path, bag_factory):
    import datasets

    datasets.Dataset.from_dict({"slide_id": ["a"], "caption": ["text"]}).save_to_disk(str(tmp_path / "bad"))
    from pathflip.model_cards.hub import push_dataset

    with pytest.raises(ValueError, match=r"split 'train'.* lacks the feature-bag column\(s\) \['features'"):
        push_dataset(tmp_path / "bad", "lab/bad")
