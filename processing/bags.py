"""The feature-bag dataset schema and helpers to write and check bag datasets.

One row per slide; ``features`` is an ``Array2D((None, D))`` column so that a 100k-patch bag reads
back as one zero-copy numpy array.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ..files import atomic_path

REQUIRED_COLUMNS = ("slide_id", "features", "coords", "patch_size_level0")
# Bags are large: flush every few rows so one Arrow chunk never overflows int32 offsets.
WRITER_BATCH_SIZE = 4


def bag_features(feature_dim: int, dtype: str = "float32", extra: Mapping[str, Any] | None = None) -> datasets.Features:
    """The `datasets` schema of a feature-bag dataset with ``feature_dim``-dimensional features."""
    columns = {
        "slide_id": datasets.Value("string"),
        "features": datasets.Array2D(shape=(None, feature_dim), dtype=dtype),
        "coords": datasets.Array2D(shape=(None, 2), dtype="int32"),
        "patch_size_level0": datasets.Value("int32"),
        "mpp": datasets.Value("float32"),
        "encoder": datasets.Value("string"),
        "caption": datasets.Value("string"),
        "subcaptions": datasets.Sequence(datasets.Value("string")),
    }
    columns.update(extra or {})
    return datasets.Features(columns)


def normalise_bag(bag: Mapping[str, Any], dtype: str = "float32") -> dict[str, Any]:
    """Fill optional columns with None and cast arrays to the schema's dtypes."""
    row = dict(bag)
    row["features"] = np.asarray(row["features"], dtype=dtype)
    row["coords"] = np.asarray(row["coords"], dtype=np.int32)
    row["patch_size_level0"] = int(row["patch_size_level0"])
    for column in ("mpp", "encoder", "caption", "subcaptions"):
        row.setdefault(column, None)
    return row


def write_bags(
    bags: Iterable[Mapping[str, Any]], path: str | Path, feature_dim: int, *, dtype: str = "float32"
) -> datasets.Dataset:
    """Stream bags into one Arrow file at ``path`` and return it as a memory-mapped dataset.

    Bags are consumed one at a time, so an iterator over per-slide files never holds the cohort in RAM.
    """
    from datasets.arrow_writer import ArrowWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    features = bag_features(feature_dim, dtype)
    with ArrowWriter(features=features, path=str(path), writer_batch_size=WRITER_BATCH_SIZE) as writer:
        for bag in bags:
            writer.write(features.encode_example(normalise_bag(bag, dtype)))
        writer.finalize()
    return datasets.Dataset.from_file(str(path))


def check_columns(dataset: datasets.Dataset, name: str = "dataset") -> None:
    """Raise a `ValueError` naming the missing columns of a feature-bag dataset and how to fix it."""
    missing = [column for column in REQUIRED_COLUMNS if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{name} lacks the feature-bag column(s) {missing} (has {dataset.column_names}). Build it with "
            "`pathflip extract` or `pathflip import`, or rename your columns to slide_id, features (patch features "
            "[N, D]), coords (level-0 top-left x, y [N, 2]) and patch_size_level0 (patch side in level-0 pixels)."
        )


def save_dataset(dataset: datasets.Dataset, path: str | Path, *, parquet: bool = False) -> Path:
    """Write with `save_to_disk` (or as parquet shards) under a temporary name, then swap it in place."""
    path = Path(path)
    with atomic_path(path) as partial:
        if parquet:
            partial.mkdir(parents=True)
            num_shards = max(1, len(dataset) // 64)
            for index in range(num_shards):
                shard = dataset.shard(num_shards, index, contiguous=True)
                shard.to_parquet(partial / f"train-{index:05d}-of-{num_shards:05d}.parquet",
                                 batch_size=WRITER_BATCH_SIZE)  # fmt: skip
        else:
            dataset.save_to_disk(str(partial))
    return path
