"""Command-line option types that check values before any work, and a parser whose errors are one line."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..files import names_a_local_path


class OneLineErrorParser(argparse.ArgumentParser):
    """An `ArgumentParser` that reports a bad option in one line (what, the value, the fix) and exits 2."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    value = _number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1, got {text!r}")
    return value


def cosine(text: str) -> float:
    value = _number(text)
    if not -1 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a cosine in (-1, 1], got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


def seed(text: str) -> int:
    """A random seed: numpy's and torch's generators take 0 to 2**32 - 1 everywhere."""
    value = _whole(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {2**32 - 1}, got {text!r}")
    return value


def torch_device(text: str) -> str:
    """A torch device this machine has (cpu, cuda, cuda:1, mps)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; give cpu, cuda, cuda:0 or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA device (torch sees none); give cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available here; give cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: give cpu, cuda, cuda:0 or mps")
    return text


def nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


PATHFLIP_MODEL_TYPES = ("pathflip", "pathflip2", "pathflip_generation")


def model_reference(text: str) -> str:
    """A saved PathFLIP model folder, or a Hub id (``org/name``); a path that does not exist, or a folder that holds
    no PathFLIP model (no config, another model type, no safetensors weights), is refused here."""
    found = _model_folder_or_id(text, "a folder saved by pathflip train / convert, or a Hub id such as "
                                      "my-lab/pathflip-brca")  # fmt: skip
    folder = Path(found).expanduser()
    if not folder.is_dir():
        return found
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"{text!r} has no config.json: not a saved model folder; give a folder "
                                         "saved by pathflip train / convert") from None  # fmt: skip
    except (OSError, ValueError, AttributeError) as error:
        raise argparse.ArgumentTypeError(f"{text!r}: its config.json cannot be read ({error})") from None
    if model_type not in PATHFLIP_MODEL_TYPES:
        raise argparse.ArgumentTypeError(f"{text!r} holds a {model_type!r} model, not a PathFLIP model "
                                         f"({', '.join(PATHFLIP_MODEL_TYPES)})")  # fmt: skip
    if not any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise argparse.ArgumentTypeError(f"{text!r} has no model.safetensors: its weights are missing (or only in "
                                         "another format); save the model again")  # fmt: skip
    return found


def text_model_reference(text: str) -> str:
    """A text model's folder (BERT-like), or a Hub id; a path that does not exist is refused here."""
    return _model_folder_or_id(text, "a text model's folder (config.json and weights), or a Hub id such as "
                                     "emilyalsentzer/Bio_ClinicalBERT")  # fmt: skip


def language_model_reference(text: str) -> str:
    """A causal language model's folder, or a Hub id; a path that does not exist is refused here."""
    return _model_folder_or_id(text, "a causal language model's folder (config.json and weights), or a Hub id "
                                     "such as Qwen/Qwen2.5-0.5B-Instruct")  # fmt: skip


def _model_folder_or_id(text: str, expected: str) -> str:
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a file; give the model's folder")
        return str(path)
    if names_a_local_path(text):
        raise argparse.ArgumentTypeError(f"model folder {text!r} does not exist; give {expected}")
    return text


def dataset_reference(text: str) -> str:
    """A dataset folder or parquet file(s), or a Hub dataset id (``org/name``); a path that does not exist is refused
    here."""
    if Path(text).expanduser().exists():
        return str(Path(text).expanduser())
    if names_a_local_path(text):
        raise argparse.ArgumentTypeError(f"dataset {text!r} does not exist; give a folder written by pathflip "
                                         "extract / import, parquet files, or a Hub dataset id such as "
                                         "my-lab/cohort")  # fmt: skip
    return text


def output_folder(text: str) -> str:
    """A folder to write into: refused here if the path is an existing file (the command would fail only once its
    work is done)."""
    return _output_path(text, Path.is_file, "is a file; give a folder to write into")


def output_file(text: str) -> str:
    """A file to write: refused here if the path is an existing folder (it would fail once the work is done)."""
    return _output_path(text, Path.is_dir, "is a folder; give a file name such as predictions.jsonl")


def _output_path(text: str, is_wrong_kind, refusal: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if is_wrong_kind(Path(text).expanduser()):
        raise argparse.ArgumentTypeError(f"{text!r} {refusal}")
    return text


def existing_input(text: str) -> str:
    """A bag, dataset folder or slide file that must exist (checked before any slide is read)."""
    if not Path(text).expanduser().exists():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist; give a bag (.h5, .safetensors), a dataset folder "
                                         "or a slide file")  # fmt: skip
    return text


def check_replaceable_output(output: str, *, inputs: list[str], overwrite: bool, option: str = "--output") -> None:
    """Refuse an output folder (given as ``option``) that a command writing a whole new folder in its place would
    lose: one of the command's inputs or a folder holding one (always), or a folder that already holds files (unless
    ``overwrite``)."""
    target = Path(output).expanduser().resolve()
    for source in inputs:
        path = Path(source).expanduser()
        if path.exists() and (path.resolve() == target or target in path.resolve().parents):
            raise ValueError(f"{option} {output!r} would replace the input {source!r}; write to a new folder.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ValueError(f"{option} {output!r} already holds files, which writing there would delete; choose a new "
                         "folder, or pass --overwrite to replace it.")  # fmt: skip
