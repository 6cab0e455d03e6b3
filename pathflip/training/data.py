"""Training data: the dataset's splits, checked before any step, and the input contract they give the model."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np

from modeling_pathflip import PathFLIPConfig

from ..processing.bags import check_columns
from .arguments import DataArguments
from .records import VQA_COLUMNS, record_texts


def load_splits(args: DataArguments) -> datasets.DatasetDict:
    """The dataset folder (save_to_disk) or Hub/local builder name, as a DatasetDict with the standard columns."""
    path = Path(args.dataset_name_or_path)
    if path.exists():
        loaded = datasets.load_from_disk(str(path))
    else:
        loaded = datasets.load_dataset(args.dataset_name_or_path)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({args.train_split: loaded})
    renames = {
        args.features_column: "features", args.coords_column: "coords", args.caption_column: "caption",
        args.question_column: "question", args.options_column: "options", args.answer_column: "answer",
    }  # fmt: skip
    columns = set(next(iter(loaded.values())).column_names)
    renames = {old: new for old, new in renames.items() if old != new and old in columns}
    return loaded.rename_columns(renames) if renames else loaded


def check_dataset(dataset: datasets.Dataset, name: str, patch_dim: int, stage: str = "align") -> None:
    """Stop before training on a dataset the model cannot use, naming the column or row and the fix."""
    check_columns(dataset, f"the {name} split")
    text_columns = [column for column in ("slide_id", "caption", *VQA_COLUMNS) if column in dataset.column_names]
    if "caption" not in text_columns and (stage == "align" or "question" not in text_columns):
        raise ValueError(
            f"{name} split has no caption column (columns: {dataset.column_names}); pass --caption_column."
        )
    dim = np.asarray(dataset[0]["features"]).shape[-1]
    if dim != patch_dim:
        raise ValueError(
            f"{name} split has {dim}-dim features but the model expects patch_dim={patch_dim}; "
            "use features of the model's patch encoder, or a config with the dataset's dimension."
        )
    for index, row in enumerate(dataset.select_columns(text_columns)):
        row.setdefault("slide_id", f"row {index}")
        if stage != "align":
            record_texts(row)  # raises on a row that is neither a caption nor a valid VQA record
        elif row["caption"] is None or not str(row["caption"]).strip():
            raise ValueError(
                f"{name} split, {row['slide_id']} (row {index}): empty caption. Training needs a caption for every "
                "slide; fill it or drop the row (dataset.filter)."
            )


def record_input_contract(config: PathFLIPConfig, dataset: datasets.Dataset, name: str = "train") -> None:
    """Write the bags' patch encoder and patch side (µm) into ``config``: the model card's input contract, and
    what the pipelines use to encode slide files. Refuses mixed encoders and features of another encoder."""
    columns = dataset.column_names
    encoders = sorted({str(value) for value in dataset.unique("encoder") if value}) if "encoder" in columns else []
    if len(encoders) > 1:
        raise ValueError(
            f"{name} split mixes patch encoders {encoders}: a model reads one encoder's features. Keep one with "
            "dataset.filter(lambda row: row['encoder'] == ...)."
        )
    if encoders and config.patch_encoder not in (None, encoders[0]):
        raise ValueError(
            f"the model reads {config.patch_encoder!r} features but the {name} split holds {encoders[0]!r} features; "
            f"extract the slides again with `pathflip extract --encoder {config.patch_encoder}`."
        )
    if encoders:
        config.patch_encoder = encoders[0]
    if "mpp" in columns:
        table = dataset.select_columns(["patch_size_level0", "mpp"])
        sides = [size * mpp for size, mpp in zip(table["patch_size_level0"], table["mpp"], strict=True) if mpp]
        if sides:
            config.patch_size_um = round(float(np.median(sides)), 3)
