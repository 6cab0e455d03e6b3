"""Tiling: a regular grid of patches at a target resolution, kept where there is enough tissue."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .reader import SlideError, SlideReader
from .tissue import TISSUE_METHODS, TissueDetection, detect_tissue

MASK_THUMBNAIL_SIZE = 2048
# The tissue mask needs no pixel finer than this (32 mask pixels per 256-px patch at 20x): small slides
# then get small masks, instead of masks at full resolution.
MASK_FINEST_MPP = 4.0
# Quality control: warn when patches hold less than this share of what differs from glass, or fewer patches than
# this. The od detector's own patches hold 0.9-1.0 on slides whose tissue it finds (the rest: edges of pieces).
MIN_NON_GLASS_KEPT = 0.85
MIN_PATCHES = 16


@dataclass(frozen=True)
class TilingOptions:
    """How a slide is cut into patches.

    Args:
        target_mpp: microns per pixel of the patches (0.5 ~ 20x).
        patch_size: patch side in pixels at ``target_mpp``.
        min_tissue_fraction: keep patches whose tissue-mask coverage is at least this.
        min_area_um2: tissue pieces smaller than this are ignored.
        tissue_method: the tissue detector, ``"od"`` (optical density above the slide's glass) or
            ``"saturation"`` (the earlier Otsu threshold on saturation); see `pathflip.processing.tissue`.
        tissue_threshold: overrides the detector's threshold (optical density above the glass for ``od``,
            saturation for ``saturation``); None: the detector's own.
    """

    target_mpp: float = 0.5
    patch_size: int = 256
    min_tissue_fraction: float = 0.25
    min_area_um2: float = 20_000.0
    tissue_method: str = "od"
    tissue_threshold: float | None = None

    def __post_init__(self):
        if self.tissue_method not in TISSUE_METHODS:
            raise ValueError(f"--tissue-method {self.tissue_method!r} is not a tissue detector; use one of "
                             f"{', '.join(TISSUE_METHODS)}.")  # fmt: skip
        if self.tissue_threshold is not None and not 0 < self.tissue_threshold < 1:
            what = "a saturation" if self.tissue_method == "saturation" else "an optical density above the glass"
            raise ValueError(f"--tissue-threshold {self.tissue_threshold} is not {what} between 0 and 1 (for "
                             f"--tissue-method {self.tissue_method}); give one, or leave it out for the detector's "
                             "own.")  # fmt: skip
        if not 0 <= self.min_tissue_fraction <= 1:
            raise ValueError(f"--min-tissue {self.min_tissue_fraction} is not a fraction between 0 and 1.")


@dataclass
class Tiling:
    """The patches of one slide: level-0 top-left ``coords`` ``[N, 2]`` (row-major order) and geometry.

    ``mask``: tissue at thumbnail scale; ``non_glass``: the detector's estimate of everything that is not glass;
    ``kept``: the thumbnail pixels under kept patches; ``quality``: see `tissue_quality`.
    """

    slide_id: str
    coords: np.ndarray
    patch_size_level0: int
    patch_size: int
    mpp: float
    thumbnail: np.ndarray
    mask: np.ndarray
    non_glass: np.ndarray | None = None
    kept: np.ndarray | None = None
    quality: dict = field(default_factory=dict)


def tile_slide(reader: SlideReader, options: TilingOptions = TilingOptions()) -> Tiling:
    """Cut a slide into non-overlapping patches on a grid from the level-0 origin.

    Patches cover ``patch_size * target_mpp / mpp`` level-0 pixels; a patch is kept when the tissue mask
    (computed on a thumbnail) covers at least ``min_tissue_fraction`` of it.
    """
    mpp = reader.mpp
    patch_size_level0 = int(round(options.patch_size * options.target_mpp / mpp))
    width, height = reader.dimensions
    if patch_size_level0 < 1 or patch_size_level0 > min(width, height):
        raise SlideError(
            f"slide {reader.slide_id!r}: a {options.patch_size}-px patch at {options.target_mpp} mpp covers "
            f"{patch_size_level0} level-0 pixels, which does not fit the {width}x{height} slide of {mpp} mpp; check "
            "--patch-size, --target-mpp and the slide's mpp (--mpp)."
        )
    thumbnail = reader.thumbnail(min(MASK_THUMBNAIL_SIZE, math.ceil(max(width, height) * mpp / MASK_FINEST_MPP)))
    scale = thumbnail.shape[1] / width, thumbnail.shape[0] / height
    detection = detect_tissue(thumbnail, thumbnail_mpp=mpp / scale[0], method=options.tissue_method,
                              threshold=options.tissue_threshold, min_area_um2=options.min_area_um2)  # fmt: skip
    columns, rows = width // patch_size_level0, height // patch_size_level0
    x_edges, y_edges = _cell_edges(thumbnail.shape, scale, patch_size_level0, columns, rows)
    fraction = _cell_coverage(detection.mask, x_edges, y_edges)
    keep = fraction >= options.min_tissue_fraction
    ys, xs = np.nonzero(keep)
    coords = np.stack([xs, ys], axis=1).astype(np.int64) * patch_size_level0
    kept = _cells_to_pixels(keep, x_edges, y_edges, detection.mask.shape)
    grid = _cells_to_pixels(np.ones_like(keep), x_edges, y_edges, detection.mask.shape)
    quality = tissue_quality(detection, kept, grid, len(coords), columns * rows)
    return Tiling(reader.slide_id, coords, patch_size_level0, options.patch_size, mpp, thumbnail, detection.mask,
                  detection.non_glass, kept, quality)  # fmt: skip


def tissue_quality(detection: TissueDetection, kept: np.ndarray, grid: np.ndarray, patches: int,
                   grid_patches: int) -> dict:  # fmt: skip
    """Quality-control figures of one slide's tiling, with ``warnings`` (plain sentences; empty when all is well).

    ``kept`` and ``grid``: the thumbnail pixels under kept patches and under the whole patch grid (a slide's last
    partial row and column of patches are never read). ``tissue_fraction`` and ``non_glass_fraction``: shares of
    the slide that are tissue for the detector and that differ from glass; ``kept_fraction``: share of the slide
    under kept patches; ``non_glass_kept``: share of the non-glass area on the grid that kept patches hold (1
    when nothing differs from glass).
    """
    non_glass = detection.non_glass & grid
    area = non_glass.sum()
    quality = {
        "tissue_method": detection.method,
        "tissue_threshold": round(detection.threshold, 4),
        "glass_rgb": [round(value, 1) for value in detection.glass.colour],
        "tissue_fraction": round(float(detection.mask.mean()), 4),
        "non_glass_fraction": round(float(detection.non_glass.mean()), 4),
        "patches": patches,
        "grid_patches": grid_patches,
        "kept_fraction": round(float(kept.mean()), 4),
        "non_glass_kept": round(float((non_glass & kept).sum() / area), 4) if area else 1.0,
    }
    warnings = []
    # Judged only when the non-glass area is worth a few patches: a speck of dust is not left-out tissue.
    worth = area >= 4 * grid.sum() / max(grid_patches, 1)
    if worth and quality["non_glass_kept"] < MIN_NON_GLASS_KEPT:
        warnings.append(
            f"patches hold {quality['non_glass_kept']:.0%} of the area that differs from glass "
            f"({quality['non_glass_fraction']:.1%} of the slide): tissue may have been left out"
        )
    if worth and patches < MIN_PATCHES:
        warnings.append(f"only {patches} patches kept of {grid_patches}")
    quality["warnings"] = warnings
    return quality


def _cell_edges(shape: tuple[int, ...], scale: tuple[float, float], cell: int, columns: int, rows: int):
    """Thumbnail pixel edges of the level-0 grid cells along x and y."""
    x_edges = np.clip(np.round(np.arange(columns + 1) * cell * scale[0]).astype(int), 0, shape[1])
    y_edges = np.clip(np.round(np.arange(rows + 1) * cell * scale[1]).astype(int), 0, shape[0])
    return x_edges, y_edges


def _cells_to_pixels(cells: np.ndarray, x_edges: np.ndarray, y_edges: np.ndarray, shape: tuple) -> np.ndarray:
    """A per-cell boolean grid painted back onto the thumbnail (pixels past the last whole cell: False)."""
    padded = np.pad(cells, ((0, 1), (0, 1)))
    column = np.searchsorted(x_edges, np.arange(shape[1]), side="right") - 1
    row = np.searchsorted(y_edges, np.arange(shape[0]), side="right") - 1
    column[(column < 0) | (column >= cells.shape[1])] = cells.shape[1]
    row[(row < 0) | (row >= cells.shape[0])] = cells.shape[0]
    return padded[row[:, None], column[None, :]]


def _cell_coverage(mask: np.ndarray, x_edges: np.ndarray, y_edges: np.ndarray) -> np.ndarray:
    """Mean of ``mask`` over each grid cell, from an integral image at thumbnail scale."""
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    x0, x1 = x_edges[:-1][None, :], x_edges[1:][None, :]
    y0, y1 = y_edges[:-1][:, None], y_edges[1:][:, None]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return total / area
