"""Training recipes: a model config and training arguments in one JSON file, run on any cohort.

A recipe has a ``model`` section (PathFLIP config values; the patch dimension comes from the dataset and the text
tower from ``--text_model_name_or_path``) and a ``training`` section (any `pathflip train` option, without the
dashes). ``pathflip train --recipe FILE ...`` starts from the recipe; options on the command line win. The
recipes shipped with the package (``configs/`` in the repository) are found by name, e.g. ``pathflip-small``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from importlib import resources
from pathlib import Path
from typing import Any

from transformers import Blip2QFormerConfig

from modeling_pathflip import PathFLIPConfig

SECTIONS = {"recipe", "about", "model", "training", "notes"}
# What a recipe may not set: where the data, the text tower and the run live belong to the command line.
PER_RUN = {"dataset_name_or_path", "output_dir", "text_model_name_or_path", "tokenizer_name", "model_name_or_path",
           "config_name", "recipe"}  # fmt: skip


def shipped_recipes() -> dict[str, Path]:
    """The recipes shipped with the package, by name."""
    folder = resources.files("pathflip.configs")
    return {Path(str(item)).stem: Path(str(item)) for item in folder.iterdir()
            if str(item).endswith(".json") and _is_recipe(Path(str(item)))}  # fmt: skip


def _is_recipe(path: Path) -> bool:
    try:
        return "model" in json.loads(path.read_text()) and "training" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """A checked recipe from a file or a shipped recipe's name; errors name the file, the key and the fix."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = shipped_recipes()
        if name_or_path not in shipped:
            raise ValueError(f"--recipe {name_or_path}: no such file or shipped recipe; give a recipe JSON file or "
                             f"one of {sorted(shipped)}.")  # fmt: skip
        path = shipped[name_or_path]
    try:
        recipe = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"--recipe {path}: not valid JSON ({error}).") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("model"), dict) or not isinstance(
            recipe.get("training"), dict):  # fmt: skip
        raise ValueError(f"--recipe {path}: needs a 'model' and a 'training' object (see configs/pathflip-small.json).")
    unknown = set(recipe) - SECTIONS
    if unknown:
        raise ValueError(f"--recipe {path}: unknown section(s) {sorted(unknown)}; a recipe has {sorted(SECTIONS)}.")
    _check_model(path, recipe["model"])
    return {**recipe, "path": str(path)}


# Model keys that come from elsewhere: the dataset's features and the text tower (--text_model_name_or_path).
FROM_ELSEWHERE = {"patch_dim": "the dataset's features", "text_config": "--text_model_name_or_path"}


def _check_model(path: Path, model: dict) -> None:
    """Known keys, the Q-Former's included, with values a config takes (types and ranges), before any data is read."""
    for key in FROM_ELSEWHERE.keys() & model.keys():
        raise ValueError(f"--recipe {path}: model.{key} comes from {FROM_ELSEWHERE[key]}; remove it.")
    allowed = set(inspect.signature(PathFLIPConfig.__init__).parameters) - {"self", "kwargs", *FROM_ELSEWHERE}
    unknown = set(model) - allowed
    if unknown:
        raise ValueError(f"--recipe {path}: model key(s) {sorted(unknown)} are not PathFLIPConfig options; see "
                         "PathFLIPConfig's documentation for the options.")  # fmt: skip
    qformer = model.get("qformer_config", {})
    if not isinstance(qformer, dict):
        raise ValueError(f"--recipe {path}: model.qformer_config must be an object of Q-Former options.")
    known = Blip2QFormerConfig().to_dict()
    if set(qformer) - set(known):
        raise ValueError(f"--recipe {path}: model.qformer_config key(s) {sorted(set(qformer) - set(known))} are not "
                         "Blip2QFormerConfig options (e.g. num_hidden_layers, hidden_size).")  # fmt: skip
    try:
        PathFLIPConfig(**model)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--recipe {path}: model: {error}") from None


def recipe_arguments(recipe: dict[str, Any], dataclass_types: tuple) -> list[str]:
    """The recipe's training section as command-line options (placed before the user's, which then win)."""
    known = {field.name: field for kind in dataclass_types for field in dataclasses.fields(kind)}
    arguments = []
    for key, value in recipe["training"].items():
        if key in PER_RUN:
            raise ValueError(f"--recipe {recipe['path']}: training.{key} belongs on the command line, not in a "
                             "recipe (recipes run on any cohort).")  # fmt: skip
        if key not in known:
            raise ValueError(f"--recipe {recipe['path']}: training.{key} is not a `pathflip train` option; see "
                             "`pathflip train --help`.")  # fmt: skip
        if value is None:
            raise ValueError(f"--recipe {recipe['path']}: training.{key} is null; give it a value or leave it out.")
        values = value if isinstance(value, list) else [value]
        arguments += [f"--{key}", *(_argument(item) for item in values)]
    return arguments


def _argument(value: Any) -> str:
    """A recipe value as the command line spells it (objects as JSON, which the Trainer's dict options parse)."""
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, dict) else str(value)


def recipe_config(recipe: dict[str, Any], *, patch_dim: int, text_config: dict) -> PathFLIPConfig:
    """The recipe's model for bags of ``patch_dim`` features and the given text tower."""
    return PathFLIPConfig(**recipe["model"], patch_dim=patch_dim, text_config=text_config)
