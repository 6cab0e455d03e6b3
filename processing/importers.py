"""Import feature bags made by other tools (TRIDENT, CLAM) into a feature-bag dataset.

TRIDENT and CLAM write one HDF5 file per slide with a ``features`` [N, D] and a ``coords`` [N, 2]
dataset (level-0 top-left x, y); the patch geometry lives in ``coords.attrs``. CLAM's ``.pt`` bags
hold only features: their coordinates come from the matching patches ``.h5`` file.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import h5py
import numpy as np
from datasets.fingerprint import get_temporary_cache_files_directory

from .bags import save_dataset, write_bags
from .cohort_table import CohortTable

logger = logging.getLogger(__name__)

DTYPES = ("float32", "float16")
PATCH_SIZE_HINT = "give the patch side in level-0 pixels with --patch-size-level0 (Python: patch_size_level0=)"


@dataclass(frozen=True)
class _Options:
    """What the caller said about the bags; the files' own attributes are checked first (see `_bag`)."""

    patch_size_level0: int | None
    mpp: float | None
    encoder: str | None
    dtype: str
    require_patch_size: bool = True


def import_h5_folder(
    folder: str | Path,
    *,
    output: str | Path | None = None,
    patch_size_level0: int | None = None,
    mpp: float | None = None,
    encoder: str | None = None,
    captions: Mapping[str, str] | str | Path | None = None,
    dtype: str = "float32",
    cohort: CohortTable | None = None,
) -> datasets.Dataset | datasets.DatasetDict:
    """Import every TRIDENT/CLAM ``<slide_id>.h5`` bag of ``folder`` (sorted by name) as one dataset.

    ``patch_size_level0`` overrides the files' geometry (CLAM feature files carry none); ``mpp`` and
    ``encoder`` fill in only where the files do not say. ``captions`` maps slide_id -> caption, or is
    a CSV/JSON file with ``slide_id`` and ``caption`` columns. With a ``cohort`` table only its slides are
    imported (by slide_id), with its mpp, captions, labels and extra columns, as a `DatasetDict` by its split
    column. With ``output`` the dataset is saved there (``save_to_disk``) and the saved copy is returned.
    """
    options = _options(patch_size_level0, mpp, encoder, dtype)
    hint = "for a CLAM feat_dir, point at its h5_files/ subfolder; .pt bags need --coords-dir, the .h5 of their coords"
    paths = _list_files(folder, ".h5", hint=hint)
    return _import(paths, lambda path: _read_h5_bag(path, options), output=output, captions=captions, dtype=dtype,
                   cohort=cohort)  # fmt: skip


def import_pt_folder(
    folder: str | Path,
    *,
    coords_dir: str | Path,
    output: str | Path | None = None,
    patch_size_level0: int | None = None,
    mpp: float | None = None,
    encoder: str | None = None,
    captions: Mapping[str, str] | str | Path | None = None,
    dtype: str = "float32",
    cohort: CohortTable | None = None,
) -> datasets.Dataset | datasets.DatasetDict:
    """Import every ``<slide_id>.pt`` feature tensor [N, D] of ``folder`` (CLAM ``pt_files/``).

    Coordinates and geometry come from ``coords_dir/<slide_id>.h5`` (CLAM patches) or
    ``coords_dir/<slide_id>_patches.h5`` (TRIDENT patches). Other options as in `import_h5_folder`.
    """
    options = _options(patch_size_level0, mpp, encoder, dtype)
    paths = _list_files(folder, ".pt", hint="for a CLAM feat_dir, point at its pt_files/ subfolder")
    coords_dir = Path(coords_dir)
    if not coords_dir.is_dir():
        raise ValueError(f"coords_dir {coords_dir} is not a folder (it should hold the patches .h5 files).")
    return _import(paths, lambda path: _read_clam_pt_bag(path, coords_dir, options), output=output,
                   captions=captions, dtype=dtype, cohort=cohort)  # fmt: skip


def _options(patch_size_level0: int | None, mpp: float | None, encoder: str | None, dtype: str) -> _Options:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    if patch_size_level0 is not None and int(patch_size_level0) <= 0:
        raise ValueError(f"patch_size_level0 must be a positive number of level-0 pixels, got {patch_size_level0}.")
    return _Options(patch_size_level0, _valid_mpp(mpp, "the mpp= option"), encoder, dtype)


def _list_files(folder: str | Path, suffix: str, *, hint: str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder.")
    paths = sorted(path for path in folder.iterdir() if path.suffix == suffix and path.is_file())
    if not paths:
        raise ValueError(f"{folder} holds no {suffix} files ({hint}).")
    return paths


def _import(
    paths: list[Path],
    read_bag: Callable[[Path], dict[str, Any]],
    *,
    output: str | Path | None,
    captions: Mapping[str, str] | str | Path | None,
    dtype: str,
    cohort: CohortTable | None = None,
) -> datasets.Dataset | datasets.DatasetDict:
    """Stream the bags into an Arrow file, then save it to ``output`` or return it memory-mapped."""
    extra = None
    if cohort is not None:
        rows = cohort.by_id()
        paths = [path for path in paths if path.stem in rows]
        if not paths:
            raise ValueError(f"no file of the folder matches a slide_id of {cohort.path}; name files <slide_id>.h5.")
        read_bag = _with_cohort(read_bag, cohort)
        extra = cohort.features()
    bags = _checked_bags(paths, read_bag, _load_captions(captions))
    first = next(bags, None)
    if first is None:
        raise ValueError(f"every bag in {paths[0].parent} is empty (no patches); nothing to import.")
    feature_dim = first["features"].shape[1]
    stream = itertools.chain([first], bags)
    if output is None:
        # The returned dataset memory-maps this file, so it must outlive the call: `datasets`' own
        # temporary cache folder lives until the process exits, then is removed.
        scratch = Path(tempfile.mkdtemp(prefix="import-", dir=get_temporary_cache_files_directory()))
        try:
            return _by_split(write_bags(stream, scratch / "bags.arrow", feature_dim, dtype=dtype, extra=extra), cohort)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Same filesystem as the output, removed on success and on failure alike.
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}-") as scratch:
        dataset = write_bags(stream, Path(scratch) / "bags.arrow", feature_dim, dtype=dtype, extra=extra)
        save_dataset(_by_split(dataset, cohort), output)
        del dataset  # drop the memory map before its file is removed
    return datasets.load_from_disk(str(output))


def _with_cohort(read_bag: Callable[[Path], dict[str, Any]], cohort: CohortTable) -> Callable[[Path], dict]:
    """A bag reader that adds the table's columns, and its mpp where the table gives one."""
    rows = cohort.by_id()

    def read(path: Path) -> dict[str, Any]:
        bag, row = read_bag(path), rows[path.stem]
        return {**bag, **cohort.metadata(row), "mpp": row.mpp if row.mpp is not None else bag.get("mpp")}

    return read


def _by_split(dataset: datasets.Dataset, cohort: CohortTable | None) -> datasets.Dataset | datasets.DatasetDict:
    if cohort is None:
        return dataset
    names = sorted(set(dataset["split"]))
    return datasets.DatasetDict({name: dataset.filter(lambda split, n=name: split == n, input_columns="split")
                                 for name in names})  # fmt: skip


def _checked_bags(
    paths: list[Path], read_bag: Callable[[Path], dict[str, Any]], captions: dict[str, str] | None
) -> Iterator[dict[str, Any]]:
    """Read bags one at a time, check they share one feature dim, skip empty ones and fill captions."""
    first_path, feature_dim = None, None
    for path in paths:
        bag = read_bag(path)
        if len(bag["features"]) == 0:
            logger.warning("Skipping %s: the bag has no patches.", path)
            continue
        dim = bag["features"].shape[1]
        if feature_dim is None:
            first_path, feature_dim = path, dim
        elif dim != feature_dim:
            raise ValueError(
                f"{path} has {dim}-dimensional features but {first_path} has {feature_dim}: one dataset holds "
                "one encoder's features; import each encoder's bags separately."
            )
        if captions is not None:
            bag["caption"] = captions.get(bag["slide_id"])
        yield bag
    if captions is not None:
        unmatched = sorted(set(captions) - {path.stem for path in paths})
        if unmatched:
            logger.warning("%d caption(s) match no slide, e.g. %s.", len(unmatched), unmatched[:3])


def _read_h5_bag(path: Path, options: _Options) -> dict[str, Any]:
    with _open_h5(path) as handle:
        features = _h5_dataset(handle, "features", path)
        coords = _h5_dataset(handle, "coords", path)
        attr_sets = (coords.attrs, features.attrs, handle.attrs)
        return _bag(path, features[()], coords[()], attr_sets, options)


def _read_clam_pt_bag(path: Path, coords_dir: Path, options: _Options) -> dict[str, Any]:
    import torch

    features = load_feature_tensor(path)
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"{path} holds a {type(features).__name__}, expected a features tensor [N, D].")
    coords_path = _coords_file(coords_dir, path.stem)
    with _open_h5(coords_path) as handle:
        coords = _h5_dataset(handle, "coords", coords_path)
        bag = _bag(path, features.float().numpy(), coords[()], (coords.attrs, handle.attrs), options)
    return bag


def load_feature_tensor(path: Path):
    """A ``.pt`` file of features, read without running code from it: ``weights_only`` with numpy's array
    reconstruction allowed (TRIDENT saves numpy arrays), nothing else. A numpy array becomes a tensor."""
    import torch

    core = getattr(np, "_core", None) or np.core
    allowed = [np.ndarray, np.dtype, type(np.dtype(np.float32)), type(np.dtype(np.float16)),
               core.multiarray._reconstruct]  # fmt: skip
    try:
        # weights_only: a .pt file is a pickle, and these come from other people's pipelines.
        with torch.serialization.safe_globals(allowed):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        try:
            reason = f"it holds Python objects {torch.serialization.get_unsafe_globals_in_checkpoint(path)[:5]}"
        except Exception:
            reason = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()[0][:160]
        raise ValueError(f"{path} cannot be read safely as a tensor file ({reason}); import the .h5 feature files "
                         "instead (TRIDENT and CLAM write both).") from None  # fmt: skip
    return torch.from_numpy(np.ascontiguousarray(loaded)) if isinstance(loaded, np.ndarray) else loaded


def _coords_file(coords_dir: Path, slide_id: str) -> Path:
    candidates = [coords_dir / f"{slide_id}.h5", coords_dir / f"{slide_id}_patches.h5"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValueError(
        f"slide {slide_id!r}: no patches file in {coords_dir} (looked for {[c.name for c in candidates]}); "
        "a .pt bag has no coordinates of its own."
    )


@contextmanager
def _open_h5(path: Path) -> Iterator[h5py.File]:
    """Open an HDF5 file read-only, turning h5py's OSErrors into ValueErrors that name the file."""
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not a readable HDF5 file ({err}).") from err
    try:
        with handle:
            yield handle
    except OSError as err:
        raise ValueError(f"{path}: could not read it ({err}).") from err


def _h5_dataset(handle: h5py.File, name: str, path: Path) -> h5py.Dataset:
    node = handle.get(name)
    if not isinstance(node, h5py.Dataset):
        raise ValueError(f"{path} has no {name!r} dataset (it has {sorted(handle.keys())}).")
    return node


def _bag(path: Path, features: np.ndarray, coords: np.ndarray, attr_sets: tuple, options: _Options) -> dict:
    """Check one slide's arrays and resolve its geometry; ``attr_sets`` are searched in order."""
    if features.ndim == 3 and features.shape[0] == 1:
        features = features[0]  # some CLAM versions keep a batch axis
    if features.ndim != 2:
        raise ValueError(f"{path}: features have shape {features.shape}, expected [N, D].")
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"{path}: coords have shape {coords.shape}, expected [N, 2].")
    if len(features) != len(coords):
        raise ValueError(f"{path}: {len(features)} feature rows but {len(coords)} coords; they must pair one to one.")
    cast = np.asarray(features, dtype=options.dtype)
    if not np.isfinite(cast).all():
        why = "" if cast.dtype == features.dtype else f" (or values beyond the {options.dtype} range)"
        raise ValueError(f"{path}: features contain NaN or Inf{why}.")
    if np.issubdtype(coords.dtype, np.floating) and not np.array_equal(coords, np.round(coords)):
        raise ValueError(f"{path}: coords are not whole level-0 pixels.")
    _check_coords(path, coords)
    attr_mpp = _find_attr("mpp", attr_sets)
    encoder = _find_attr("encoder", attr_sets)
    patch_size = _patch_size_level0(path, attr_sets[0], options.patch_size_level0, options.require_patch_size)
    if patch_size is not None:
        _check_grid_step(path, coords, patch_size)
    return {
        "slide_id": path.stem,
        "features": cast,
        "coords": coords.astype(np.int32),
        "patch_size_level0": patch_size,
        "mpp": options.mpp if attr_mpp is None else _valid_mpp(attr_mpp, str(path)),
        "encoder": options.encoder if encoder is None else str(encoder),
    }


def _check_coords(path: Path, coords: np.ndarray) -> None:
    """Level-0 top-left corners: non-negative, within int32, each position once."""
    if len(coords) and coords.min() < 0:
        raise ValueError(f"{path}: negative coords (first {coords[np.argwhere(coords < 0)[0][0]].tolist()}); level-0 "
                         "pixels start at 0.")  # fmt: skip
    if len(coords) and coords.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{path}: coords beyond {np.iinfo(np.int32).max} level-0 pixels are not pixel positions.")
    if len(np.unique(coords, axis=0)) != len(coords):
        raise ValueError(f"{path}: duplicate coords (two patches at one position); remove the duplicates.")


def _check_grid_step(path: Path, coords: np.ndarray, patch_size: int) -> None:
    """Refuse a patch size that the coordinates contradict: patches every 2, 3, ... patch sides would leave gaps
    between them (a chequerboard heatmap), which means the patch size is at another magnification. Judged on bags
    of 32 patches or more (a few scattered patches can share a larger step by chance)."""
    if len(coords) < 32:
        return
    offsets = np.abs(coords.astype(np.int64) - coords[:1]).ravel()
    step = int(np.gcd.reduce(offsets[offsets > 0])) if (offsets > 0).any() else 0
    if step > patch_size and step % patch_size == 0:
        raise ValueError(f"{path}: the patches lie {step} level-0 px apart but patch_size_level0 is {patch_size}; "
                         f"it is probably {step} (pass --patch-size-level0 {step}).")  # fmt: skip


def _patch_size_level0(path: Path, attrs: Mapping[str, Any], override: int | None, required: bool = True) -> int | None:
    """TRIDENT's ``patch_size_level0``, else CLAM's ``patch_size`` x ``downsample`` of its ``patch_level``."""
    if override is not None:
        return int(override)
    try:
        return _attribute_patch_size(path, attrs, required)
    except (TypeError, ValueError, OverflowError) as error:  # an attribute that is not a number (NaN, text)
        if str(error).startswith(str(path)):
            raise
        raise ValueError(f"{path}: coords.attrs hold a patch size that is not a number ({error}); "
                         f"{PATCH_SIZE_HINT}.") from None  # fmt: skip


def _attribute_patch_size(path: Path, attrs: Mapping[str, Any], required: bool) -> int | None:
    if "patch_size_level0" in attrs:
        size = int(attrs["patch_size_level0"])
    elif "patch_size" in attrs and "downsample" in attrs:
        size = round(float(attrs["patch_size"]) * float(np.ravel(attrs["downsample"])[0]))
    elif "patch_size" in attrs and int(attrs.get("patch_level", -1)) == 0:
        size = int(attrs["patch_size"])
    elif not required:
        return None
    else:
        # A bare `patch_size` may be at any magnification: never guess it is level 0.
        raise ValueError(f"{path}: coords.attrs give no level-0 patch size; {PATCH_SIZE_HINT}.")
    if size <= 0:
        raise ValueError(f"{path}: the patch size from coords.attrs is {size}; {PATCH_SIZE_HINT}.")
    return size


def _find_attr(name: str, attr_sets: tuple) -> Any:
    for attrs in attr_sets:
        if name in attrs:
            value = attrs[name]
            return value.decode() if isinstance(value, bytes) else value
    return None


def _valid_mpp(mpp: Any, source: str) -> float | None:
    if mpp is None:
        return None
    try:
        mpp = float(mpp)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: mpp {mpp!r} is not a number of µm per level-0 pixel; give it with --mpp "
                         "(Python: mpp=).") from None  # fmt: skip
    if np.isnan(mpp):
        return None  # NaN is how some tools write "unknown"
    if mpp <= 0:
        raise ValueError(f"{source}: mpp must be positive (µm per level-0 pixel), got {mpp}.")
    return float(mpp)


def _load_captions(captions: Mapping[str, str] | str | Path | None) -> dict[str, str] | None:
    """A slide_id -> caption dict from a mapping or a CSV / JSON / JSON-lines file; empty captions drop out."""
    if captions is None:
        return None
    if isinstance(captions, Mapping):
        pairs = captions.items()
    else:
        pairs = _caption_records(Path(captions))
    return {str(slide_id): str(caption) for slide_id, caption in pairs if caption}


def _caption_records(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise ValueError(f"captions file {path} does not exist.")
    try:
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a spreadsheet's byte-order mark
                records = list(csv.DictReader(handle))
        elif path.suffix == ".jsonl":
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif path.suffix == ".json":
            records = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(records, dict):
                return list(records.items())
        else:
            raise ValueError(f"captions file {path}: expected .csv, .json or .jsonl.")
    except UnicodeDecodeError as error:
        raise ValueError(f"captions file {path} is not UTF-8 text; save it as UTF-8.") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"captions file {path} is not valid JSON ({error.msg} at line {error.lineno}); fix the "
                         "file.") from error  # fmt: skip
    if not isinstance(records, list) or not all(isinstance(record, dict) and {"slide_id", "caption"} <= record.keys()
                                                for record in records):  # fmt: skip
        found = sorted(records[0]) if isinstance(records, list) and records and isinstance(records[0], dict) else []
        raise ValueError(f"captions file {path}: every record needs 'slide_id' and 'caption' columns (the first "
                         f"has {found}).")  # fmt: skip
    return [(record["slide_id"], record["caption"]) for record in records]


def read_h5_bag(
    path: str | Path, *, patch_size_level0: int | None = None, mpp: float | None = None,
    require_patch_size: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """One TRIDENT/CLAM ``.h5`` bag as a dataset row (the same rules as `import_h5_folder`); with
    ``require_patch_size=False`` a file without the patch geometry gives ``patch_size_level0=None``."""
    options = _options(patch_size_level0, mpp, None, "float32")
    return _read_h5_bag(Path(path), replace(options, require_patch_size=require_patch_size))
