"""The cohort table: the one place a lab describes its slides (path, id, mpp, report, diagnosis, split).

A CSV, TSV or parquet file with a ``slide`` column (a path, relative to the table) and optional ``slide_id``
(default: the file name without its suffix), ``mpp`` (µm per level-0 pixel, for slides whose metadata lack it or
are wrong), ``caption`` (the report text), ``label`` (a class name), ``split`` (default ``train``); any other
column is kept in the dataset. Labels become a `datasets.ClassLabel` whose names are sorted, or ordered by
``class_order``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

KNOWN_COLUMNS = ("slide", "slide_id", "mpp", "caption", "label", "split")
# Columns every bag already has: a table column of that name would replace the slide's own.
BAG_COLUMNS = ("features", "coords", "patch_size_level0", "encoder")
DEFAULT_SPLIT = "train"
# `datasets`' rule for split names; a split is also a folder name, so this keeps it inside the dataset folder.
SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")
# Every value as text; a spreadsheet's byte-order mark is not part of the first column's name; a row with more
# fields than the header is an error, not a shift of every column (pandas' default takes the first as an index).
TEXT_TABLE = {"dtype": str, "keep_default_na": False, "encoding": "utf-8-sig", "index_col": False}


@dataclass(frozen=True)
class CohortRow:
    """One slide of the cohort table."""

    slide: Path
    slide_id: str
    mpp: float | None = None
    caption: str | None = None
    label: str | None = None
    split: str = DEFAULT_SPLIT
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CohortTable:
    """The rows of a cohort table, its class names (label order) and the types of its extra columns."""

    path: Path
    rows: list[CohortRow]
    class_names: list[str]
    extra_features: dict[str, datasets.Value]

    def by_id(self) -> dict[str, CohortRow]:
        return {row.slide_id: row for row in self.rows}

    def metadata(self, row: CohortRow) -> dict[str, Any]:
        """The dataset columns the table adds to a slide's bag."""
        label = self.class_names.index(row.label) if row.label is not None else None
        return {"caption": row.caption, "label": label, "split": row.split, **row.extra}

    def features(self) -> dict[str, Any]:
        """`datasets` features of the columns the table adds."""
        return {"caption": datasets.Value("string"), "label": datasets.ClassLabel(names=self.class_names),
                "split": datasets.Value("string"), **self.extra_features}  # fmt: skip


def read_cohort_table(path: str | Path, *, class_order: Sequence[str] | None = None) -> CohortTable:
    """Read and check a cohort table; errors name the row, the column, the value and the fix."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cohort table {path} is a folder; give the table file (.csv, .tsv or .parquet).")
    if not path.is_file():
        raise FileNotFoundError(f"cohort table {path} does not exist.")
    readers = {".csv": lambda: pd.read_csv(path, **TEXT_TABLE),
               ".tsv": lambda: pd.read_csv(path, sep="\t", **TEXT_TABLE),
               ".parquet": lambda: pd.read_parquet(path)}  # fmt: skip
    if path.suffix.lower() not in readers:
        raise ValueError(f"cohort table {path}: expected a .csv, .tsv or .parquet file, got {path.suffix!r}.")
    frame = _read_frame(path, readers[path.suffix.lower()])
    if "slide" not in frame.columns:
        raise ValueError(f"cohort table {path} has no 'slide' column (it has {list(frame.columns)}); add one with "
                         "each slide's path, relative to the table.")  # fmt: skip
    clashing = [column for column in frame.columns if column in BAG_COLUMNS]
    if clashing:
        raise ValueError(f"cohort table {path}: column(s) {clashing} would replace what every bag holds; rename "
                         "them (the extractor writes those columns).")  # fmt: skip
    extras = [column for column in frame.columns if column not in KNOWN_COLUMNS]
    rows = [_row(path, number + 2, record, extras) for number, record in enumerate(frame.to_dict("records"))]
    if not rows:
        raise ValueError(f"cohort table {path} has no rows.")
    _check_unique(path, rows)
    extra_features = datasets.Features.from_arrow_schema(
        datasets.Dataset.from_pandas(frame[extras], preserve_index=False).data.schema) if extras else {}  # fmt: skip
    return CohortTable(path, rows, class_names(rows, class_order, path), dict(extra_features))


def _read_frame(path: Path, read):
    """The table as a frame; a file pandas cannot parse is named with the fix."""
    import pandas as pd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return read()
    except UnicodeDecodeError as error:
        raise ValueError(f"cohort table {path} is not UTF-8 text ({error.reason} at byte {error.start}); save it "
                         "as UTF-8 (CSV UTF-8 in a spreadsheet).") from error  # fmt: skip
    except pd.errors.EmptyDataError as error:
        raise ValueError(f"cohort table {path} is empty; give a header line and one row per slide.") from error
    except (pd.errors.ParserError, pd.errors.ParserWarning) as error:
        raise ValueError(f"cohort table {path} cannot be parsed ({str(error).strip()}); quote any value that "
                         "holds the separator, e.g. \"Tumour, grade 2.\"") from error  # fmt: skip


def _check_unique(path: Path, rows: list[CohortRow]) -> None:
    """One row per slide id and per slide file, and split names that differ in more than their case."""
    for what, values, fix in (
        ("slide_id", [row.slide_id for row in rows], "give each slide its own slide_id"),
        ("slide", [str(row.slide) for row in rows], "list each slide file once"),
    ):
        duplicates = sorted(name for name, count in Counter(values).items() if count > 1)
        if duplicates:
            raise ValueError(f"cohort table {path}: {what} {duplicates[:5]} appear more than once; {fix}.")
    splits = sorted({row.split for row in rows})
    folded = sorted(name for name, count in Counter(split.lower() for split in splits).items() if count > 1)
    if folded:
        raise ValueError(f"cohort table {path}: split names {[s for s in splits if s.lower() in folded]} differ "
                         "only in case; spell each split one way.")  # fmt: skip


def _row(path: Path, line: int, record: dict, extras: list[str]) -> CohortRow:
    where = f"cohort table {path} line {line}"
    slide = _text(record.get("slide"))
    if not slide:
        raise ValueError(f"{where}: empty 'slide'; give the slide file's path (relative to the table).")
    slide_path = (path.parent / slide).resolve() if not Path(slide).is_absolute() else Path(slide)
    slide_id = _text(record.get("slide_id")) or Path(slide).stem
    mpp = _mpp(record.get("mpp"), f"{where} (slide {slide_id!r})")
    split = _text(record.get("split")) or DEFAULT_SPLIT
    if not SPLIT_NAME.match(split):
        raise ValueError(f"{where} (slide {slide_id!r}): split {split!r} is not a split name; use letters, digits "
                         "and _ only (e.g. train, test, hold_out).")  # fmt: skip
    return CohortRow(slide=slide_path, slide_id=slide_id, mpp=mpp, caption=_text(record.get("caption")),
                     label=_text(record.get("label")), split=split,
                     extra={column: record[column] for column in extras})  # fmt: skip


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value).strip() or None


def _mpp(value: Any, where: str) -> float | None:
    text = _text(value)
    if text is None:
        return None
    try:
        mpp = float(text)
    except ValueError:
        mpp = float("nan")
    if not math.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"{where}: mpp {value!r} is not a positive number of µm per level-0 pixel; fix it or "
                         "leave it empty to use the slide's metadata.")  # fmt: skip
    return mpp


def class_names(rows: Sequence[CohortRow], class_order: Sequence[str] | None, path: Path) -> list[str]:
    """The label order: ``class_order`` when given (it must name every label once), else the labels sorted."""
    labels = sorted({row.label for row in rows if row.label is not None})
    if class_order is None:
        return labels
    order = list(class_order)
    repeated = sorted(name for name, count in Counter(order).items() if count > 1)
    unknown, missing = sorted(set(order) - set(labels)), sorted(set(labels) - set(order))
    if repeated or missing:
        raise ValueError(f"--class-order {order} must name each label of {path} once: "
                         f"{'repeated ' + str(repeated) + '; ' if repeated else ''}"
                         f"{'missing ' + str(missing) if missing else ''}".rstrip("; ") + ".")  # fmt: skip
    if unknown:
        raise ValueError(f"--class-order names {unknown}, which no row of {path} has; labels there: {labels}.")
    return order
