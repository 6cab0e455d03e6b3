"""Resumable, fault-tolerant feature extraction: slides -> per-slide bags -> one feature-bag dataset.

Layout of an output folder::

    manifest.json              encoder, tiling options, package versions (a rerun must match it)
    bags/<slide_id>.safetensors  one finished slide (written atomically: its presence marks completion)
    tissue/<slide_id>.png      tissue-mask overlay for quality control
    report.json                the last run: done, already done, failed (with reasons)
    dataset/                   the feature-bag dataset, rebuilt from bags/ at the end

Slides are split across processes when launched with ``torchrun`` or ``accelerate launch`` (on GPUs;
accelerate's multi-process CPU mode needs MPI, torchrun does not).
"""

from __future__ import annotations

import contextlib
import json
import logging
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..files import atomic_path, write_text
from .bags import save_dataset, write_bags
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


@dataclass
class ExtractionReport:
    """What a run did; ``failed`` maps slide ids to the reason."""

    done: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    dataset: str | None = None
    processes: int = 1
    is_main_process: bool = True

    def summary(self) -> str:
        lines = [f"{len(self.done)} extracted, {len(self.already_done)} already done, {len(self.failed)} failed"]
        lines += [f"  FAILED {slide}: {reason}" for slide, reason in self.failed.items()]
        return "\n".join(lines)


def find_slides(inputs: Sequence[str | Path]) -> list[Path]:
    """Slide files from paths and folders (folders are searched for known slide suffixes).

    Paths that do not exist are kept, so that the run reports them by name.
    """
    slides: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            slides.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in SLIDE_SUFFIXES))
        else:
            slides.append(item)
    stems: dict[str, Path] = {}
    for slide in slides:
        if slide.stem in stems and stems[slide.stem] != slide:
            raise ValueError(f"two slides share the id {slide.stem!r}: {stems[slide.stem]} and {slide}; rename one.")
        stems[slide.stem] = slide
    return slides


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


def encode_slide(path: Path, encoder: PatchEncoder, options: ExtractionOptions, device: torch.device) -> tuple:
    """Tile and encode one slide; return ``(tiling, features [N, D] float32)``."""
    with SlideReader(path, mpp=options.mpp) as reader:
        tiling = tile_slide(reader, options.tiling)
    if len(tiling.coords) == 0:
        raise SlideError(
            f"slide {tiling.slide_id!r}: no tissue found (no patch reaches min_tissue_fraction="
            f"{options.tiling.min_tissue_fraction}); check tissue/{tiling.slide_id}.png or lower the threshold."
        )
    dataset = PatchReadDataset(path, tiling, encoder, options.mpp)
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
    features = torch.cat(chunks)
    if not torch.isfinite(features).all():
        raise SlideError(f"slide {tiling.slide_id!r}: the encoder produced NaN/Inf features; check the slide.")
    return tiling, features


def write_bag_file(path: Path, tiling: Tiling, features: torch.Tensor, encoder: PatchEncoder) -> None:
    """Write one slide's bag atomically (temporary file, then rename), so a killed run leaves no half file."""
    metadata = {
        "slide_id": tiling.slide_id,
        "patch_size_level0": str(tiling.patch_size_level0),
        "mpp": str(tiling.mpp),
        "encoder": encoder.name,
    }
    tensors = {"features": features.contiguous(), "coords": torch.from_numpy(tiling.coords.astype(np.int32))}
    with atomic_path(path) as partial:
        save_file(tensors, str(partial), metadata=metadata)


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
        "mpp": float(metadata["mpp"]),
        "encoder": metadata["encoder"],
    }


def _manifest(encoder: PatchEncoder, options: ExtractionOptions) -> dict:
    import importlib.metadata as md

    versions = {}
    for package in ("pathflip", "torch", "transformers", "datasets", "openslide-python", "openslide-bin"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return {"encoder": encoder.describe(), "options": asdict(options), "versions": versions}


def check_manifest(output: Path, manifest: dict) -> None:
    """Write the manifest of a new output folder, or check that a resumed run uses the same settings."""
    path = output / "manifest.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous["encoder"] != manifest["encoder"] or previous["options"] != manifest["options"]:
            raise ValueError(
                f"{output} holds bags made with other settings ({path}); resume with the same encoder and "
                "options, or write to a new --output folder."
            )
        return
    write_text(path, json.dumps(manifest, indent=2) + "\n")


def run_extraction(
    slides: Sequence[str | Path], output: str | Path, encoder: PatchEncoder, options: ExtractionOptions
) -> ExtractionReport:
    """Extract every slide not yet done into ``output``, then (re)build the dataset from all finished bags.

    A slide that fails (missing, corrupt, not a slide, no mpp, no tissue, ...) is reported and skipped;
    the others go on. Under ``accelerate launch`` each process takes every n-th slide and the main
    process builds the dataset once all are done.
    """
    from accelerate import PartialState

    # cpu=True lets a GPU-less torchrun launch join one gloo group instead of running alone n times.
    state = PartialState(cpu=not torch.cuda.is_available())
    output = Path(output)
    if state.is_main_process:
        check_manifest(output, _manifest(encoder, options))
    state.wait_for_everyone()
    (output / "bags").mkdir(parents=True, exist_ok=True)
    device = state.device
    encoder.to(device)
    report = ExtractionReport()
    mine = list(slides)[state.process_index :: state.num_processes]
    for path in tqdm(mine, desc="slides", unit="slide", disable=not state.is_local_main_process):
        path = Path(path)
        bag_path = output / "bags" / f"{path.stem}.safetensors"
        if bag_path.exists():
            report.already_done.append(path.stem)
            continue
        try:
            tiling, features = encode_slide(path, encoder, options, device)
            save_overlay(tiling.thumbnail, tiling.mask, output / "tissue" / f"{path.stem}.png")
            write_bag_file(bag_path, tiling, features, encoder)
            report.done.append(path.stem)
        except SlideError as error:
            report.failed[path.stem] = str(error)
        except Exception as error:  # one bad slide must not stop the cohort
            logger.debug(traceback.format_exc())
            report.failed[path.stem] = f"slide {path.stem!r}: {type(error).__name__}: {error}"
    report = _merge_reports(state, report)
    report.processes, report.is_main_process = state.num_processes, state.is_main_process
    if state.is_main_process:
        dataset = build_dataset(output, options.parquet)
        report.dataset = str(dataset) if dataset else None
        write_text(output / "report.json", json.dumps(asdict(report), indent=2) + "\n")
    state.wait_for_everyone()
    return report


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
        merged.failed.update(part["failed"])
    return merged


def build_dataset(output: Path, parquet: bool = False) -> Path | None:
    """Rebuild ``output/dataset`` from every finished bag file, sorted by slide id (None: no bag yet)."""
    bag_files = sorted((output / "bags").glob("*.safetensors"))
    if not bag_files:
        return None
    with safe_open(str(bag_files[0]), framework="np") as handle:
        dimension = handle.get_slice("features").get_shape()[1]
    arrow = output / "bags.arrow.partial"
    dataset = write_bags((read_bag_file(path) for path in bag_files), arrow, dimension)
    target = save_dataset(dataset, output / "dataset")
    if parquet:
        save_dataset(dataset, output / "dataset_parquet", parquet=True)
    del dataset
    arrow.unlink(missing_ok=True)
    return target
