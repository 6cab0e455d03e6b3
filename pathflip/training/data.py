"""Training data: the dataset's splits, checked before any step, and the input contract they give the model."""

from __future__ import annotations

import datasets
import numpy as np

from modeling_pathflip import PathFLIPConfig

from ..processing.bags import check_bag_dataset, load_bag_dataset
from .arguments import DataArguments
from .records import VQA_COLUMNS, record_texts

COLUMN_OPTIONS = {"features_column": "features", "coords_column": "coords", "caption_column": "caption",
                  "question_column": "question", "options_column": "options", "answer_column": "answer"}  # fmt: skip


def load_splits(args: DataArguments) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """The dataset, as splits with the standard column names: a `save_to_disk` folder, parquet files (a folder of
    ``<split>-*.parquet`` shards as `pathflip extract --parquet` writes, or one file) or a Hub dataset id; streamed
    with ``--streaming``. Errors name a wrong split or a ``--*_column`` the dataset does not have."""
    loaded = load_bag_dataset(args.dataset_name_or_path, streaming=args.streaming, default_split=args.train_split)
    for option, split in (("--train_split", args.train_split), ("--eval_split", args.eval_split)):
        if split is not None and split not in loaded:
            raise ValueError(f"{option} {split!r} is not a split of {args.dataset_name_or_path}; it has "
                             f"{list(loaded)}.")  # fmt: skip
    columns = set(next(iter(loaded.values())).column_names or [])
    for option, standard in COLUMN_OPTIONS.items():
        name = getattr(args, option)
        if name != standard and name not in columns:
            raise ValueError(f"--{option} {name!r} is not a column of {args.dataset_name_or_path} "
                             f"(columns: {sorted(columns)}).")  # fmt: skip
    renames = {getattr(args, option): standard for option, standard in COLUMN_OPTIONS.items()}
    renames = {old: new for old, new in renames.items() if old != new and old in columns}
    needed = {*COLUMN_OPTIONS.values(), "slide_id", "patch_size_level0", "mpp", "label"} - set(renames.values())
    for old, new in renames.items():
        if old in needed:
            option = next(option for option, standard in COLUMN_OPTIONS.items() if standard == new)
            raise ValueError(f"--{option} {old!r} is the dataset's own {old!r} column; give the column that holds "
                             f"the {new}s.")  # fmt: skip
    replaced = [new for new in renames.values() if new in columns]  # the option names the column to use instead
    loaded = loaded.remove_columns(replaced) if replaced else loaded
    return loaded.rename_columns(renames) if renames else loaded


def first_row(dataset) -> dict:
    """The first row of a dataset, streamed or not."""
    return next(iter(dataset))


def column_values(dataset, column: str) -> list:
    """A column's distinct values (streamed datasets are read through once)."""
    if isinstance(dataset, datasets.Dataset):
        return dataset.unique(column)
    return list(dict.fromkeys(row[column] for row in dataset.select_columns([column])))


def check_batch_size(train_set, training_args) -> None:
    """Refuse a train split smaller than one global batch: with equal batches on every process (drop_last) it would
    train 0 steps and save an untrained model."""
    if not hasattr(train_set, "__len__"):
        return  # streamed: its length is unknown
    per_device, processes = training_args.per_device_train_batch_size, training_args.world_size
    if len(train_set) < per_device * processes:
        fitting = max(1, len(train_set) // processes)
        raise ValueError(
            f"the train split has {len(train_set)} rows, fewer than one global batch (--per_device_train_batch_size "
            f"{per_device} x {processes} process(es) = {per_device * processes}), so no step would train: lower "
            f"--per_device_train_batch_size to {fitting} or fewer, or add slides."
        )


def check_dataset(dataset: datasets.Dataset, name: str, patch_dim: int, stage: str = "align") -> None:
    """Stop before training on a dataset the model cannot use: every row is checked (bag columns, feature
    dimension, finite values, coordinates, patch size, captions; LLM stages: caption or VQA records), and the
    failing rows are listed."""
    text_columns = [column for column in ("slide_id", "caption", *VQA_COLUMNS) if column in dataset.column_names]
    if "caption" not in text_columns and (stage == "align" or "question" not in text_columns):
        raise ValueError(
            f"{name} split has no caption column (columns: {dataset.column_names}); pass --caption_column."
        )
    check_bag_dataset(dataset, f"the {name} split", patch_dim=patch_dim, require_caption=stage == "align")
    if stage != "align":
        for index, row in enumerate(dataset.select_columns(text_columns)):
            row.setdefault("slide_id", f"row {index}")
            record_texts(row)  # raises on a row that is neither a caption nor a valid VQA record


def record_input_contract(config: PathFLIPConfig, dataset: datasets.Dataset, name: str = "train") -> None:
    """Write the bags' patch encoder and patch side (µm, and pixels when extraction recorded it) into ``config``:
    the model card's input contract, and how the pipelines tile and encode slide files. Refuses mixed encoders
    and features of another encoder."""
    columns = dataset.column_names or []
    encoders = [] if "encoder" not in columns else sorted({str(v) for v in column_values(dataset, "encoder") if v})
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
        sides = [row["patch_size_level0"] * row["mpp"] for row in table if row["mpp"]]
        if sides:
            config.patch_size_um = round(float(np.median(sides)), 3)
    if "patch_size_px" in columns:
        pixels = [value for value in column_values(dataset, "patch_size_px") if value]
        if pixels:
            config.patch_size_px = int(np.median(pixels))
