"""Resumable, fault-tolerant feature extraction: slides -> per-slide bags -> one feature-bag dataset.

Layout of an output folder::

    manifest.json              encoder, tiling options, package versions (a rerun must match it)
    bags/<slide_id>.safetensors  one finished slide (written atomically and durably; a bag that cannot be read,
                               or whose mpp disagrees with the cohort table, is extracted again)
    tissue/<slide_id>.png      quality control: kept patches green, tissue that no patch holds magenta
    report.json                the last run: done, already done, extracted again, failed (with reasons), and per
                               slide extracted its tissue figures (`tiler.tissue_quality`) and warnings
    dataset/                   the feature-bag dataset (a DatasetDict by split with a cohort table), one Arrow
                               shard per slide, updated from bags/ at the end (unchanged slides are not rewritten)

Slides are split across processes when launched with ``torchrun`` or ``accelerate launch`` (on GPUs;
accelerate's multi-process CPU mode needs MPI, torchrun does not).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..files import atomic_path, safe_name, write_text
from .bags import BagRecord, bag_features, update_bag_dataset, write_parquet
from .cohort_table import CohortTable
from .encoders import PatchEncoder
from .reader import SlideError, SlideReader, resize_patches
from .tiler import Tiling, TilingOptions, tile_slide
from .tissue import save_overlay

logger = logging.getLogger(__name__)
SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm"}


@dataclass(frozen=True)
class ExtractionOptions:
    """Settings of one extraction run (saved in the manifest).

    Args:
        tiling: how slides are cut into patches.
        mpp: microns per level-0 pixel for every slide (overrides metadata; needed for slides without it).
        batch_size: patches per encoder call.
        num_workers: DataLoader reader processes (each opens its own slide handle).
        parquet: also write the dataset as parquet shards (``dataset_parquet/``).
    """

    tiling: TilingOptions = TilingOptions()
    mpp: float | None = None
    batch_size: int = 64
    num_workers: int = 2
    parquet: bool = False


# Options that change the features, and the command-line flag that sets each (a resumed run must keep them).
FEATURE_OPTIONS = {"target_mpp": "--target-mpp", "patch_size": "--patch-size", "min_tissue_fraction": "--min-tissue",
                   "min_area_um2": "min_area_um2", "tissue_method": "--tissue-method",
                   "tissue_threshold": "--tissue-threshold", "mpp": "--mpp"}  # fmt: skip
# What a manifest written before an option existed meant by it.
FEATURE_DEFAULTS_BEFORE = {"tissue_method": "saturation", "tissue_threshold": None}


@dataclass(frozen=True)
class SlideSpec:
    """A slide to extract: its file, its id (default: the file name without suffix) and its mpp (default: the
    run's ``--mpp``, else the slide's metadata)."""

    path: Path
    slide_id: str | None = None
    mpp: float | None = None

    @property
    def name(self) -> str:
        return self.slide_id or Path(self.path).stem


@dataclass
class ExtractionReport:
    """What a run did; ``failed`` and ``extracted_again`` map slide ids to the reason, ``tissue`` the slides tiled
    in this run to their tissue figures (`tiler.tissue_quality`), ``warnings`` to what those figures warn of."""

    done: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    extracted_again: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    tissue: dict[str, dict] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    dataset: str | None = None
    processes: int = 1
    is_main_process: bool = True

    def summary(self) -> str:
        lines = [f"{len(self.done)} extracted, {len(self.already_done)} already done, {len(self.failed)} failed"]
        lines += [f"  extracted again {slide}: {reason}" for slide, reason in self.extracted_again.items()]
        lines += [f"  FAILED {slide}: {reason}" for slide, reason in self.failed.items()]
        lines += [f"  WARNING {slide}: {warning}; check tissue/{safe_name(slide)}.png (--tissue-method, "
                  "--tissue-threshold, --min-tissue)"
                  for slide, found in self.warnings.items() for warning in found]  # fmt: skip
        return "\n".join(lines)


def find_slides(inputs: Sequence[str | Path]) -> list[Path]:
    """Slide files from paths and folders (folders are searched for known slide suffixes).

    Paths that do not exist are kept, so that the run reports them by name.
    """
    slides: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in SLIDE_SUFFIXES)
            if not found:
                raise ValueError(f"folder {item} holds no slide file ({', '.join(sorted(SLIDE_SUFFIXES))}); give "
                                 "slide files or a folder of them.")  # fmt: skip
            slides.extend(found)
        else:
            slides.append(item)
    stems: dict[str, Path] = {}
    for slide in slides:
        if slide.stem in stems and os.path.realpath(stems[slide.stem]) != os.path.realpath(slide):
            raise ValueError(f"two slides share the id {slide.stem!r}: {stems[slide.stem]} and {slide}; rename one.")
        stems.setdefault(slide.stem, slide)
    return list(stems.values())  # a slide named twice (a file and its folder, a repeated path) is read once


class PatchReadDataset(Dataset):
    """The patches of one slide, read lazily; each DataLoader worker opens its own slide handle."""

    def __init__(self, path: Path, tiling: Tiling, encoder: PatchEncoder, mpp: float | None):
        self.path, self.tiling, self.encoder, self.mpp = path, tiling, encoder, mpp
        self._reader: SlideReader | None = None

    def __len__(self) -> int:
        return len(self.tiling.coords)

    def __getitem__(self, index: int) -> np.ndarray:
        if self._reader is None:
            self._reader = SlideReader(self.path, mpp=self.mpp)
        x, y = self.tiling.coords[index]
        tiling = self.tiling
        return self._reader.read_patch(int(x), int(y), tiling.patch_size_level0, tiling.patch_size, resize=False)

    def collate(self, patches: list[np.ndarray]) -> torch.Tensor:
        pixels = resize_patches(torch.from_numpy(np.stack(patches)), self.tiling.patch_size)
        return self.encoder.preprocess(pixels)


def tile_file(path: Path, options: ExtractionOptions, *, mpp: float | None = None,
              slide_id: str | None = None) -> Tiling:  # fmt: skip
    """Tile one slide file (``mpp`` overrides the run's and the slide's; ``slide_id`` the file's name)."""
    with SlideReader(path, mpp=mpp or options.mpp) as reader:
        tiling = tile_slide(reader, options.tiling)
    if slide_id:
        tiling.slide_id = slide_id
    return tiling


def check_has_patches(tiling: Tiling, options: TilingOptions) -> None:
    """Refuse a slide where no patch holds enough tissue, saying how much of it differs from glass."""
    if len(tiling.coords) == 0:
        seen = tiling.quality.get("non_glass_fraction", 0.0)
        raise SlideError(
            f"slide {tiling.slide_id!r}: no tissue found (no patch reaches min_tissue_fraction="
            f"{options.min_tissue_fraction}; {seen:.1%} of the slide differs from glass); check "
            f"tissue/{safe_name(tiling.slide_id)}.png, or lower --min-tissue or --tissue-threshold."
        )


def encode_slide(path: Path, encoder: PatchEncoder, options: ExtractionOptions, device: torch.device, *,
                 mpp: float | None = None, slide_id: str | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 tiling: Tiling | None = None) -> tuple:  # fmt: skip
    """Tile (unless given its ``tiling``) and encode one slide (``mpp`` overrides the run's and the slide's);
    return ``(tiling, features)``.

    ``progress(done, total)`` is called with the number of patches encoded after each batch.
    """
    mpp = mpp or options.mpp
    tiling = tiling or tile_file(path, options, mpp=mpp, slide_id=slide_id)
    check_has_patches(tiling, options.tiling)
    dataset = PatchReadDataset(path, tiling, encoder, mpp)
    loader = DataLoader(
        dataset,
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        collate_fn=dataset.collate,
        persistent_workers=False,
    )
    chunks = []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for pixels in tqdm(loader, desc=tiling.slide_id, unit="batch", leave=False):
            chunks.append(encoder(pixels.to(device, non_blocking=True)).float().cpu())
            if progress is not None:
                progress(sum(len(chunk) for chunk in chunks), len(dataset))
    features = torch.cat(chunks)
    if not torch.isfinite(features).all():
        raise SlideError(f"slide {tiling.slide_id!r}: the encoder produced NaN/Inf features; check the slide.")
    return tiling, features


def write_bag_file(path: Path, tiling: Tiling, features: torch.Tensor, encoder: PatchEncoder, *,
                   source: Path | None = None) -> None:  # fmt: skip
    """Write one slide's bag atomically (temporary file, then rename), so a killed run leaves no half file;
    ``source`` (the slide file) is recorded by name and size, so that a rerun notices a different file."""
    metadata = {
        "slide_id": tiling.slide_id,
        "patch_size_level0": str(tiling.patch_size_level0),
        "patch_size": str(tiling.patch_size),
        "mpp": str(tiling.mpp),
        "encoder": encoder.name,
        **(_source_stamp(source) if source is not None else {}),
    }
    tensors = {"features": features.contiguous(), "coords": torch.from_numpy(tiling.coords.astype(np.int32))}
    with atomic_path(path) as partial:
        save_file(tensors, str(partial), metadata=metadata)


def _source_stamp(source: Path) -> dict[str, str]:
    """What identifies a slide file across a move to another folder: its name and its size in bytes."""
    return {"source_name": source.name, "source_bytes": str(source.stat().st_size)}


def read_bag_file(path: Path) -> dict:
    """A bag written by `write_bag_file`, as a dataset row."""
    with safe_open(str(path), framework="np") as handle:
        metadata = handle.metadata()
        features, coords = handle.get_tensor("features"), handle.get_tensor("coords")
    return {
        "slide_id": metadata["slide_id"],
        "features": features,
        "coords": coords,
        "patch_size_level0": int(metadata["patch_size_level0"]),
        "patch_size_px": int(metadata["patch_size"]) if "patch_size" in metadata else None,
        "mpp": float(metadata["mpp"]),
        "encoder": metadata["encoder"],
    }


def bag_metadata(path: Path) -> dict[str, str] | None:
    """A finished bag's metadata, or None when the file cannot be read (torn by a crash, truncated, empty)."""
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            if set(handle.keys()) != {"features", "coords"} or "slide_id" not in metadata:
                return None
            return metadata
    except Exception:  # safetensors raises several types for a damaged header
        return None


def _manifest(encoder: PatchEncoder, options: ExtractionOptions, cohort: CohortTable | None = None) -> dict:
    import importlib.metadata as md

    versions = {}
    for package in ("pathflip", "torch", "transformers", "datasets", "openslide-python", "openslide-bin"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    table = str(cohort.path) if cohort is not None else None
    return {"encoder": encoder.describe(), "options": asdict(options), "versions": versions, "cohort_table": table}


def check_manifest(output: Path, manifest: dict) -> None:
    """Write the manifest of a new output folder, or check that a resumed run makes the same features: it must
    keep the encoder and every option in `FEATURE_OPTIONS` (the others, such as workers, may change)."""
    path = output / "manifest.json"
    if not path.exists() and output.is_dir() and any(output.iterdir()):
        raise ValueError(f"--output {output} already holds files but no extraction (no manifest.json); extract "
                         "into a new or empty folder, or into an earlier extraction's to resume it.")  # fmt: skip
    if not path.exists() or not any((output / "bags").glob("*.safetensors")):  # no bag yet: nothing to keep
        write_text(path, json.dumps(manifest, indent=2) + "\n")
        return
    previous = json.loads(path.read_text())
    if previous["encoder"] != manifest["encoder"]:
        raise ValueError(
            f"{output} holds bags of encoder {previous['encoder'].get('name')!r} ({previous['encoder']}), this run "
            f"uses {manifest['encoder'].get('name')!r} ({manifest['encoder']}): resume with --encoder "
            f"{previous['encoder'].get('name')}, or write to a new --output folder."
        )
    if previous.get("cohort_table") and not manifest["cohort_table"]:
        raise ValueError(f"{output}'s dataset was built from the cohort table {previous['cohort_table']} (its splits, "
                         "captions and labels); give --table again, or write to a new --output folder.")  # fmt: skip
    before, now = _feature_options(previous["options"]), _feature_options(manifest["options"])
    for name, flag in FEATURE_OPTIONS.items():
        if before.get(name) != now.get(name):
            raise ValueError(
                f"{output} holds bags made with {flag} {before.get(name)}, this run asks for {flag} {now.get(name)}: "
                f"it changes the features. Resume with {flag} {before.get(name)}, or write to a new --output folder."
            )
    if manifest["cohort_table"] and manifest["cohort_table"] != previous.get("cohort_table"):
        write_text(path, json.dumps({**previous, "cohort_table": manifest["cohort_table"]}, indent=2) + "\n")


def _feature_options(options: dict) -> dict:
    return {**FEATURE_DEFAULTS_BEFORE, **options.get("tiling", {}), "mpp": options.get("mpp")}


def run_extraction(
    slides: Sequence[str | Path | SlideSpec], output: str | Path, encoder: PatchEncoder, options: ExtractionOptions,
    *, cohort: CohortTable | None = None,
) -> ExtractionReport:  # fmt: skip
    """Extract every slide not yet done into ``output``, then update the dataset from all finished bags.

    A slide that fails (missing, corrupt, not a slide, no mpp, no tissue, ...) is reported and skipped;
    the others go on. With a ``cohort`` table the dataset is a `DatasetDict` by its split column, with its
    captions, labels and extra columns. Under ``accelerate launch`` each process takes every n-th slide and the
    main process updates the dataset once all are done.
    """
    from accelerate import PartialState

    # cpu=True lets a GPU-less torchrun launch join one gloo group instead of running alone n times.
    state = PartialState(cpu=not torch.cuda.is_available())
    output = Path(output)
    specs = [slide if isinstance(slide, SlideSpec) else SlideSpec(Path(slide)) for slide in slides]
    if state.is_main_process:
        check_manifest(output, _manifest(encoder, options, cohort))
    state.wait_for_everyone()
    (output / "bags").mkdir(parents=True, exist_ok=True)
    device = state.device
    encoder.to(device)
    report = ExtractionReport()
    mine = specs[state.process_index :: state.num_processes]
    for spec in tqdm(mine, desc="slides", unit="slide", disable=not state.is_local_main_process):
        bag_path = output / "bags" / f"{safe_name(spec.name)}.safetensors"
        if bag_path.exists():
            stale = _stale_reason(bag_path, spec)
            if stale is None:
                report.already_done.append(spec.name)
                continue
            report.extracted_again[spec.name] = stale
        try:
            tiling = tile_file(Path(spec.path), options, mpp=spec.mpp, slide_id=spec.name)
            _record_tissue(report, tiling, output)
            _, features = encode_slide(Path(spec.path), encoder, options, device, mpp=spec.mpp, tiling=tiling)
            write_bag_file(bag_path, tiling, features, encoder, source=Path(spec.path))
            report.done.append(spec.name)
        except SlideError as error:
            report.failed[spec.name] = str(error)
        except Exception as error:  # one bad slide must not stop the cohort
            logger.debug(traceback.format_exc())
            report.failed[spec.name] = f"slide {spec.name!r}: {_one_line(error)}; the file may be damaged"
    report = _merge_reports(state, report)
    report.processes, report.is_main_process = state.num_processes, state.is_main_process
    if state.is_main_process:
        try:
            dataset = build_dataset(output, options.parquet, cohort=cohort)
            report.dataset = str(dataset) if dataset else None
        except OSError as error:  # a full disk or a read-only folder: the finished bags stay, the run says so
            report.failed["(dataset)"] = f"the dataset was not updated: {error}; free space and run again"
        with contextlib.suppress(OSError):
            write_text(output / "report.json", json.dumps(asdict(report), indent=2) + "\n")
    state.wait_for_everyone()
    return report


def _one_line(error: Exception) -> str:
    """An error in one line: a reader worker's error arrives wrapped with its whole traceback, whose last line is
    the error itself."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if "Original Traceback" in str(error) and lines:
        return lines[-1]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _record_tissue(report: ExtractionReport, tiling: Tiling, output: Path) -> None:
    """Write a slide's tissue overlay and put its tissue figures and warnings in the report."""
    save_overlay(tiling.thumbnail, tiling.mask, output / "tissue" / f"{safe_name(tiling.slide_id)}.png",
                 kept=tiling.kept, non_glass=tiling.non_glass)  # fmt: skip
    report.tissue[tiling.slide_id] = {key: value for key, value in tiling.quality.items() if key != "warnings"}
    if tiling.quality.get("warnings"):
        report.warnings[tiling.slide_id] = tiling.quality["warnings"]


def _stale_reason(bag_path: Path, spec: SlideSpec) -> str | None:
    """Why a finished bag cannot be kept (None: keep it)."""
    metadata = bag_metadata(bag_path)
    if metadata is None:
        return f"{bag_path.name} could not be read (a torn or empty file)"
    if spec.mpp is not None and not math.isclose(float(metadata.get("mpp", "nan")), spec.mpp, rel_tol=1e-6):
        return f"its bag was made at mpp {metadata.get('mpp')}, the cohort table now says {spec.mpp}"
    if "source_name" in metadata and Path(spec.path).is_file():  # bags written before the stamp are kept
        now = _source_stamp(Path(spec.path))
        if {key: metadata[key] for key in now} != now:
            return (f"its bag was made from {metadata['source_name']} ({metadata['source_bytes']} bytes), the slide "
                    f"is now {now['source_name']} ({now['source_bytes']} bytes)")  # fmt: skip
    return None


def _merge_reports(state, report: ExtractionReport) -> ExtractionReport:
    """Combine the per-process reports (a no-op in a single process)."""
    if state.num_processes == 1:
        return report
    import torch.distributed as dist

    gathered: list = [None] * state.num_processes
    dist.all_gather_object(gathered, asdict(report))
    merged = ExtractionReport()
    for part in gathered:
        merged.done += part["done"]
        merged.already_done += part["already_done"]
        for name in ("extracted_again", "failed", "tissue", "warnings"):
            getattr(merged, name).update(part[name])
    return merged


def build_dataset(output: Path, parquet: bool = False, *, cohort: CohortTable | None = None) -> Path | None:
    """Update ``output/dataset`` from the finished bags (None: no bag yet): every bag, or with a ``cohort`` table
    the bags of its rows, by split, with the table's columns; ``parquet`` also writes ``dataset_parquet/``."""
    bags = {}
    for path in sorted((output / "bags").glob("*.safetensors")):
        metadata = bag_metadata(path)
        if metadata is not None:
            bags[metadata["slide_id"]] = path
    if not bags:
        return None
    with safe_open(str(next(iter(bags.values()))), framework="np") as handle:
        dimension = handle.get_slice("features").get_shape()[1]
    features = bag_features(dimension)
    if cohort is None:
        records = [BagRecord(slide_id, path) for slide_id, path in bags.items()]
    else:
        features = datasets.Features({**features, **cohort.features()})
        records = [BagRecord(row.slide_id, bags[row.slide_id], row.split, cohort.metadata(row))
                   for row in cohort.rows if row.slide_id in bags]  # fmt: skip
    target = update_bag_dataset(output / "dataset", records, features, read_bag_file)
    if parquet and target is not None:
        write_parquet(datasets.load_from_disk(str(target)), output / "dataset_parquet")
    return target
