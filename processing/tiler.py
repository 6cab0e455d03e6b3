"""Tiling: a regular grid of patches at a target resolution, kept where there is enough tissue."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .reader import SlideError, SlideReader
from .tissue import tissue_mask

MASK_THUMBNAIL_SIZE = 2048
# The tissue mask needs no pixel finer than this (32 mask pixels per 256-px patch at 20x): small slides
# then get small masks, instead of masks at full resolution.
MASK_FINEST_MPP = 4.0


@dataclass(frozen=True)
class TilingOptions:
    """How a slide is cut into patches.

    Args:
        target_mpp: microns per pixel of the patches (0.5 ~ 20x).
        patch_size: patch side in pixels at ``target_mpp``.
        min_tissue_fraction: keep patches whose tissue-mask coverage is at least this.
        min_area_um2: tissue pieces smaller than this are ignored.
    """

    target_mpp: float = 0.5
    patch_size: int = 256
    min_tissue_fraction: float = 0.25
    min_area_um2: float = 20_000.0


@dataclass
class Tiling:
    """The patches of one slide: level-0 top-left ``coords`` ``[N, 2]`` (row-major order) and geometry."""

    slide_id: str
    coords: np.ndarray
    patch_size_level0: int
    patch_size: int
    mpp: float
    thumbnail: np.ndarray
    mask: np.ndarray


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
            f"{patch_size_level0} level-0 pixels, which does not fit the {width}x{height} slide; check --mpp."
        )
    thumbnail = reader.thumbnail(min(MASK_THUMBNAIL_SIZE, math.ceil(max(width, height) * mpp / MASK_FINEST_MPP)))
    scale = thumbnail.shape[1] / width, thumbnail.shape[0] / height
    mask = tissue_mask(thumbnail, thumbnail_mpp=mpp / scale[0], min_area_um2=options.min_area_um2)
    columns, rows = width // patch_size_level0, height // patch_size_level0
    fraction = _cell_coverage(mask, scale, patch_size_level0, columns, rows)
    ys, xs = np.nonzero(fraction >= options.min_tissue_fraction)
    coords = np.stack([xs, ys], axis=1).astype(np.int64) * patch_size_level0
    return Tiling(reader.slide_id, coords, patch_size_level0, options.patch_size, mpp, thumbnail, mask)


def _cell_coverage(mask: np.ndarray, scale: tuple[float, float], cell: int, columns: int, rows: int) -> np.ndarray:
    """Mean of ``mask`` over each level-0 grid cell, from an integral image at thumbnail scale."""
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    x_edges = np.clip(np.round(np.arange(columns + 1) * cell * scale[0]).astype(int), 0, mask.shape[1])
    y_edges = np.clip(np.round(np.arange(rows + 1) * cell * scale[1]).astype(int), 0, mask.shape[0])
    x0, x1 = x_edges[:-1][None, :], x_edges[1:][None, :]
    y0, y1 = y_edges[:-1][:, None], y_edges[1:][:, None]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return total / area
