"""The feature-bag dataset schema and helpers to write and check bag datasets.

One row per slide; ``features`` is an ``Array2D((None, D))`` column so that a 100k-patch bag reads
back as one zero-copy numpy array.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets.utils.py_utils import asdict

from ..files import atomic_path, safe_name, write_text

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
        "patch_size_px": datasets.Value("int32"),  # the patch side in pixels it was encoded at (None: unknown)
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
    for column in ("patch_size_px", "mpp", "encoder", "caption", "subcaptions"):
        row.setdefault(column, None)
    return row


def write_bags(
    bags: Iterable[Mapping[str, Any]], path: str | Path, feature_dim: int, *, dtype: str = "float32",
    extra: Mapping[str, Any] | None = None,
) -> datasets.Dataset:
    """Stream bags into one Arrow file at ``path`` and return it as a memory-mapped dataset.

    Bags are consumed one at a time, so an iterator over per-slide files never holds the cohort in RAM.
    """
    from datasets.arrow_writer import ArrowWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    features = bag_features(feature_dim, dtype, extra)
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


def bag_problem(row: Mapping[str, Any], patch_dim: int | None, require_caption: bool) -> str | None:
    """What makes one dataset row unusable as a bag (None: nothing)."""
    features, coords = np.asarray(row["features"]), np.asarray(row["coords"])
    size = row.get("patch_size_level0")
    if features.ndim != 2 or features.shape[0] == 0:
        return f"empty bag, or features of shape {features.shape} (expected [N > 0, D])"
    if patch_dim is not None and features.shape[1] != patch_dim:
        return f"{features.shape[1]}-dim features, the model reads {patch_dim}"
    if not np.isfinite(features).all():
        return f"NaN or Inf in features (first at patch {int(np.argwhere(~np.isfinite(features))[0][0])})"
    if coords.shape != (features.shape[0], 2):
        return f"coords of shape {coords.shape} for {features.shape[0]} patches (expected one (x, y) per patch)"
    if (coords < 0).any():
        return "negative coords (level-0 pixels start at 0)"
    if len(np.unique(coords, axis=0)) != len(coords):
        return "duplicate coords (two patches at one position)"
    if size is None or not np.isfinite(size) or int(size) <= 0:
        return f"patch_size_level0 is {size!r} (the patch side in level-0 pixels, never guessed)"
    if require_caption and (row.get("caption") is None or not str(row["caption"]).strip()):
        return "empty caption (training needs one per slide)"
    return None


def check_bag_dataset(
    dataset, name: str = "dataset", *, patch_dim: int | None = None, require_caption: bool = False, shown: int = 10
) -> int:
    """Check every row (columns, feature dimension, finite features, coordinates, patch size, captions); raise a
    `ValueError` listing the first ``shown`` bad rows and their count. Returns the number of rows checked."""
    check_columns(dataset, name)
    columns = [column for column in ("slide_id", "features", "coords", "patch_size_level0", "caption")
               if column in dataset.column_names]  # fmt: skip
    problems, count, rows = [], 0, 0
    for index, row in enumerate(dataset.select_columns(columns).with_format("numpy")):
        rows += 1
        problem = bag_problem(row, patch_dim, require_caption)
        if problem is not None:
            count += 1
            if len(problems) < shown:
                slide = row.get("slide_id")
                problems.append(f"{slide!s} (row {index}): {problem}" if slide else f"row {index}: {problem}")
    if count:
        listed = "\n  - ".join(problems)
        more = f"\n  ... and {count - len(problems)} more" if count > len(problems) else ""
        raise ValueError(f"{name} has {count} unusable row(s) of {rows}:\n  - {listed}{more}\nFix them at the "
                         "source or drop them (dataset.filter) before training.")  # fmt: skip
    return rows


def load_bag_dataset(source: str | Path, *, streaming: bool = False, default_split: str = "train"):
    """A feature-bag dataset as splits: a `save_to_disk` folder (a plain dataset becomes ``default_split``),
    parquet files (a folder of ``<split>-*.parquet`` shards, as `pathflip extract --parquet` writes, or one file) or
    a Hub dataset id; streamed with ``streaming``."""
    path = Path(source)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        try:
            loaded = datasets.load_from_disk(str(path))
        except IndexError:  # `datasets` saves an empty dataset with no shard, then cannot load it
            raise ValueError(f"dataset {path} (or one of its splits) has no rows; give a dataset with slides in "
                             "it.") from None  # fmt: skip
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({default_split: loaded})
        if streaming:
            loaded = datasets.IterableDatasetDict({name: split.to_iterable_dataset() for name, split in loaded.items()})
        return loaded
    if path.exists():
        return datasets.load_dataset("parquet", data_files=_parquet_files(path), streaming=streaming)
    try:
        return datasets.load_dataset(str(source), streaming=streaming)
    except ConnectionError as error:  # offline and not cached: `datasets` says only that the Hub cannot be reached
        raise ValueError(f"dataset {str(source)!r} is not a folder or file here, nor a Hub dataset that can be "
                         f"reached ({error}); check the path.") from None  # fmt: skip


def _parquet_files(path: Path) -> dict[str, list[str]]:
    """Parquet files by split: ``<split>-*.parquet`` (or ``<split>/*.parquet``) shards; others are ``train``."""
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    if not files or any(file.suffix != ".parquet" for file in files):
        raise ValueError(f"{path} is neither a dataset folder (save_to_disk) nor parquet files; give one of the two, "
                         "or a Hub dataset id.")  # fmt: skip
    by_split: dict[str, list[str]] = {}
    for file in files:
        split = file.parent.name if file.parent != path and path.is_dir() else file.name.split("-")[0]
        split = split if split and split != file.stem else "train"
        by_split.setdefault(split, []).append(str(file))
    return by_split


def save_dataset(dataset: datasets.Dataset | datasets.DatasetDict, path: str | Path) -> Path:
    """`save_to_disk` under a temporary name, then swap it in place (a reader sees the old or the new one)."""
    path = Path(path)
    with atomic_path(path) as partial:
        dataset.save_to_disk(str(partial))
    return path


def write_parquet(dataset: datasets.Dataset | datasets.DatasetDict, folder: str | Path) -> Path:
    """Parquet shards ``<split>-00000-of-0000N.parquet`` (``train`` for a plain dataset), about 64 slides each:
    what `load_dataset("parquet", ...)`, `pathflip train` and the Hub read."""
    splits = dataset if isinstance(dataset, datasets.DatasetDict) else {"train": dataset}
    with atomic_path(folder) as partial:
        partial.mkdir(parents=True)
        for name, split in splits.items():
            num_shards = max(1, len(split) // 64)
            for index in range(num_shards):
                shard = split.shard(num_shards, index, contiguous=True)
                shard.to_parquet(partial / f"{name}-{index:05d}-of-{num_shards:05d}.parquet",
                                 batch_size=WRITER_BATCH_SIZE)  # fmt: skip
    return Path(folder)


@dataclass(frozen=True)
class BagRecord:
    """One slide of a sharded bag dataset: its bag file (the source of truth), its split and extra columns."""

    slide_id: str
    bag_file: Path
    split: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


def update_bag_dataset(
    folder: str | Path,
    records: Iterable[BagRecord],
    features: datasets.Features,
    read_bag: Callable[[Path], Mapping[str, Any]],
) -> Path | None:
    """Keep ``folder`` a `datasets.load_from_disk` folder of the ``records`` (a `DatasetDict` by split when they
    have splits) without rewriting it: one Arrow shard per slide, written when the slide is new or its bag file or
    columns changed, kept otherwise, removed when the slide is gone. None when there is no record.

    `datasets` can only save a dataset whole; this writes its on-disk state (``state.json`` listing the shards,
    ``dataset_info.json``, ``dataset_dict.json``) the way `save_to_disk` does, so `load_from_disk` reads it.
    """
    folder, records = Path(folder), sorted(records, key=lambda record: (str(record.split), record.slide_id))
    if not records:
        return None
    splits = sorted({record.split for record in records}, key=str)
    as_dict = splits != [None]
    if (folder / ("state.json" if as_dict else "dataset_dict.json")).exists():
        shutil.rmtree(folder)  # the layout changed (splits added or dropped): start again
    schema = repr(features)
    for split in splits:
        _update_split(folder / split if as_dict else folder, split, [r for r in records if r.split == split],
                      features, schema, read_bag)  # fmt: skip
    if as_dict:
        for stale in (child for child in folder.iterdir() if child.is_dir() and child.name not in splits):
            shutil.rmtree(stale)
        write_text(folder / "dataset_dict.json", json.dumps({"splits": splits}))
    return folder


def _update_split(folder: Path, split: str | None, records: list[BagRecord], features: datasets.Features,
                  schema: str, read_bag: Callable[[Path], Mapping[str, Any]]) -> None:  # fmt: skip
    from datasets.arrow_writer import ArrowWriter

    index_file = folder / "shards.json"
    index = json.loads(index_file.read_text()) if index_file.exists() else {}
    shards = {}
    for record in records:
        shard = f"{safe_name(record.slide_id)}.arrow"
        stat = record.bag_file.stat()
        stamp = hashlib.sha1(json.dumps([stat.st_size, stat.st_mtime_ns, schema, dict(record.metadata)],
                                        sort_keys=True, default=str).encode()).hexdigest()  # fmt: skip
        if index.get(shard) != stamp or not (folder / shard).exists():
            row = normalise_bag({**read_bag(record.bag_file), **record.metadata}, features["features"].dtype)
            with atomic_path(folder / shard) as partial, ArrowWriter(features=features, path=str(partial)) as writer:
                writer.write(features.encode_example(row))
                writer.finalize()
        shards[shard] = stamp
    for stale in folder.glob("*.arrow"):
        if stale.name not in shards:
            stale.unlink()
    state = {"_data_files": [{"filename": shard} for shard in shards], "_format_columns": None, "_format_kwargs": {},
             "_format_type": None, "_output_all_columns": False, "_split": split,
             "_fingerprint": hashlib.sha1("".join(shards.values()).encode()).hexdigest()[:16]}  # fmt: skip
    info = asdict(datasets.DatasetInfo(features=features))  # `datasets`' own asdict, as save_to_disk uses
    write_text(folder / "dataset_info.json", json.dumps({key: info[key] for key in sorted(info)}, indent=2))
    write_text(folder / "state.json", json.dumps(state, indent=2, sort_keys=True))
    write_text(index_file, json.dumps(shards, indent=2))
