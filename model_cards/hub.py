"""Publishing PathFLIP model folders and feature-bag datasets on the Hugging Face Hub, after checking them.

A model folder is pushed only when it is complete (weights as safetensors, config with ``auto_map``, the code
files it names, processor and tokenizer files, an entry and code for every task of the model) and every task
runs once as remote code, in a process without this package, on a generated bag.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from ..processing.bags import check_columns
from .generator import is_generated_card, write_model_card

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")
# Training leftovers that a model repo does not need.
UPLOAD_IGNORE = ["checkpoint-*", "*.partial", "*.partial/*", "runs/*", "training_args.bin", "trainer_state.json"]
CHECK_SCRIPT = Path(__file__).with_name("check_remote_code.py")
RELATIVE_IMPORT = re.compile(r"^\s*from \.(\w+) import", re.MULTILINE)


class NotPublishableError(ValueError):
    """A model folder that would make an incomplete or broken Hub repository."""


def missing_parts(folder: str | Path) -> list[str]:
    """What a Hub repository of ``folder`` would lack, each with how to fix it (empty when complete)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return ["config.json: not a saved model folder (train.py or save_pretrained_with_pipelines writes one)"]
    config = json.loads((folder / "config.json").read_text())
    return [*_missing_weights(folder), *_missing_processor(folder), *_missing_code(folder, config)]


def _missing_weights(folder: Path) -> list[str]:
    if (folder / "model.safetensors").is_file():
        return []
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [f"{shard}: a weight shard listed in {index.name}" for shard in shards if not (folder / shard).is_file()]
    if (folder / "pytorch_model.bin").is_file():
        return ["model.safetensors: the folder has pytorch_model.bin only; load it and save_pretrained it again"]
    return ["model.safetensors: the weights (save the model with save_pretrained)"]


def _missing_processor(folder: Path) -> list[str]:
    missing = []
    if not (folder / "processor_config.json").is_file():
        missing.append("processor_config.json: the processor (processor.save_pretrained(folder))")
    if not (folder / "tokenizer_config.json").is_file():
        missing.append("tokenizer_config.json: the tokenizer (processor.save_pretrained(folder))")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"tokenizer vocabulary: one of {list(TOKENIZER_FILES)} (processor.save_pretrained(folder))")
    return missing


def _missing_code(folder: Path, config: dict) -> list[str]:
    from modeling_pathflip import GENERATION_TASKS, TASKS

    missing = []
    if not config.get("auto_map"):
        missing.append("auto_map in config.json: without it the model cannot load where the package is absent")
    tasks = GENERATION_TASKS if config.get("model_type") == "pathflip_generation" else TASKS
    entries = config.get("custom_pipelines") or {}
    missing += [
        f"custom_pipelines entry for {task!r} in config.json (save with save_pretrained_with_pipelines)"
        for task in tasks
        if task not in entries
    ]
    references = _code_references(folder, config, entries)
    checked: set[str] = set()
    while references:
        module, needed_by = references.popitem()
        if module in checked:
            continue
        checked.add(module)
        path = folder / f"{module}.py"
        if not path.is_file():
            missing.append(f"{module}.py: code that {needed_by} needs (save with save_pretrained_with_pipelines)")
            continue
        for imported in RELATIVE_IMPORT.findall(path.read_text()):
            references.setdefault(imported, f"{module}.py")
    return missing


def _code_references(folder: Path, config: dict, entries: dict) -> dict[str, str]:
    """Module name -> what refers to it, from the auto_maps and the custom pipelines."""
    references = {}
    maps = [("config.json", config.get("auto_map") or {})]
    processor_config = folder / "processor_config.json"
    if processor_config.is_file():
        maps.append(("processor_config.json", json.loads(processor_config.read_text()).get("auto_map") or {}))
    for source, auto_map in maps:
        for auto_class, target in auto_map.items():
            for reference in target if isinstance(target, list) else [target]:
                if reference:
                    module = reference.split("--")[-1].rsplit(".", 1)[0]
                    references.setdefault(module, f"{auto_class} in {source}")
    for task, entry in entries.items():
        references.setdefault(entry["impl"].rsplit(".", 1)[0], f"the {task!r} pipeline")
    return references


def check_model_folder(folder: str | Path, *, timeout: float = 900) -> dict[str, str]:
    """Refuse an incomplete folder (`NotPublishableError` naming every missing part), then run each task once
    as remote code in a process without this package (`NotPublishableError` when one fails); returns
    task -> the type of what it returned."""
    folder = Path(folder)
    missing = missing_parts(folder)
    if missing:
        raise NotPublishableError(
            f"{folder} is not ready for the Hub; missing:\n  - " + "\n  - ".join(missing) + "\nNothing was uploaded."
        )
    with tempfile.TemporaryDirectory() as modules_cache:
        env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": modules_cache}
        result = subprocess.run(
            [sys.executable, str(CHECK_SCRIPT), str(folder)], capture_output=True, text=True, env=env, timeout=timeout
        )
    if result.returncode != 0:
        raise NotPublishableError(
            f"{folder} failed to run as remote code (trust_remote_code=True, without the pathflip package), so a "
            f"Hub user could not use it; nothing was uploaded. The check said:\n{result.stderr[-3000:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def push_model(
    folder: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload PathFLIP model",
    metrics: dict | None = None,
    card_options: dict | None = None,
):
    """Check ``folder`` (`check_model_folder`), write its model card when it has none or ``metrics`` are given,
    then upload it to ``repo_id`` (created if needed; ``revision``: a branch, created if needed).
    Returns the `huggingface_hub.CommitInfo` (its ``oid`` is the revision to pin)."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    check_repo_id(repo_id)
    card = folder / "README.md"
    if metrics is not None and card.is_file() and not is_generated_card(card.read_text(errors="replace")):
        raise ValueError(f"{card} is a card of your own (pathflip did not write it), which metrics would replace: "
                         "push without them to upload your card, or move it away to have one written.")  # fmt: skip
    check_model_folder(folder)
    if metrics is not None or not card.is_file():
        write_model_card(folder, metrics=metrics, repo_id=repo_id, **(card_options or {}))
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(folder_path=folder, repo_id=repo_id, revision=revision, commit_message=commit_message,
                             ignore_patterns=UPLOAD_IGNORE)  # fmt: skip


def push_dataset(
    path: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload PathFLIP feature bags",
):
    """Push a feature-bag dataset saved with ``save_to_disk`` (every split checked for the bag columns) as parquet
    with `DatasetDict.push_to_hub`; ``load_dataset(repo_id)`` reads it back. Returns the `CommitInfo`."""
    import datasets

    path = Path(path)
    check_repo_id(repo_id)
    if not is_dataset_folder(path):
        raise ValueError(f"{path} is not a dataset saved with save_to_disk (no dataset_dict.json or state.json).")
    loaded = datasets.load_from_disk(str(path))
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    for name, split in splits.items():
        check_columns(split, f"{path} split {name!r}")
    return splits.push_to_hub(repo_id, revision=revision, private=private, token=token, commit_message=commit_message)


def check_repo_id(repo_id: str) -> None:
    """Refuse an invalid Hub repository id before anything is written or sent."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"repo id {repo_id!r} is not a valid Hub id (e.g. my-lab/pathflip-brca): {error}") from None


def is_dataset_folder(path: str | Path) -> bool:
    """Whether ``path`` is a `save_to_disk` folder (a dataset) rather than a model folder."""
    path = Path(path)
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
