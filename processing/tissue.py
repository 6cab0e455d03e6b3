"""Tissue detection on a slide thumbnail.

Two methods:

- ``od`` (default): tissue is what differs from the slide's own glass. The glass colour and the light across the
  slide are estimated from the thumbnail (`pathflip.processing.glass`); each pixel's optical density relative to
  that glass measures how much it absorbs, so pale tissue
  (mucin, fat, loose stroma, faint staining) stands out from glass however little colour it has. Hysteresis keeps
  faint tissue attached to clearly absorbing tissue. The thresholds come from the glass alone, so no stained
  focus, however strong or large, moves them.
- ``saturation``: the earlier detector, an Otsu threshold on saturation (never below 0.06). It loses pale tissue
  and follows a dominant red focus; kept to reproduce bags made with it.

Both then close small gaps, fill small holes and drop small pieces. Every detection also returns the ``od``
method's estimate of everything that is not glass, which quality control compares with what was kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..files import atomic_path
from .glass import Glass, distance_from_log, estimate_glass, fit_light, glass_distance

TISSUE_METHODS = ("od", "saturation")
# Below this saturation nothing is tissue, whatever Otsu says (a blank slide has only noise).
MIN_SATURATION = 0.06
# The od threshold T: the optical density above the glass (norm over R, G, B) from which a pixel attached to tissue
# is tissue. At least OD_FLOOR (scanned glass strays under 0.01 from its fitted light), or NOISE_FACTOR times the
# glass's own noise when it is noisier. Seeds of tissue need SEED_FACTOR * T (averaged over 5 x 5 pixels); pale
# tissue (mucin, fat, loose stroma, faint staining: 0.01-0.05 at thumbnail scale) needs T / 2 averaged over about
# PALE_SIGMA pixels, on densities capped at PALE_CAP * T so that dense tissue does not bleed onto the glass.
OD_FLOOR, NOISE_FACTOR, SEED_FACTOR = 0.02, 4.0, 2.5
PALE_SIGMA, PALE_CAP = 2.0, 0.75


@dataclass
class TissueDetection:
    """A detector's result on one thumbnail.

    ``mask``: tissue (patches are kept on it). ``non_glass``: everything that differs from the glass, whichever the
    method (quality control compares the two). ``threshold``: the threshold the method applied (saturation, or the
    optical density above the glass). ``glass``: the estimated glass.
    """

    mask: np.ndarray
    non_glass: np.ndarray
    method: str
    threshold: float
    glass: Glass


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: values above it form the high class."""
    histogram, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(histogram)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(histogram * centres) / np.maximum(weight_low, 1)
    mean_high = (np.sum(histogram * centres) - np.cumsum(histogram * centres)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    # Bins up to the best split are the low class, so the threshold is that bin's upper edge.
    return float(edges[int(np.argmax(between)) + 1])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of an RGB uint8 image."""
    rgb = rgb.astype(np.float32)
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(high > 0, (high - low) / np.maximum(high, 1), 0.0)


def detect_tissue(
    thumbnail: np.ndarray,
    *,
    thumbnail_mpp: float,
    method: str = "od",
    threshold: float | None = None,
    min_area_um2: float = 20_000.0,
) -> TissueDetection:
    """Detect tissue on an RGB uint8 thumbnail.

    Args:
        thumbnail: RGB uint8 ``[h, w, 3]``.
        thumbnail_mpp: microns per thumbnail pixel (turns ``min_area_um2`` into pixels).
        method: ``"od"`` or ``"saturation"`` (see the module doc).
        threshold: overrides the method's threshold: T, the optical density above the glass (``od``; default
            0.02, more on noisy glass), or the saturation (``saturation``; default Otsu's, at least 0.06).
        min_area_um2: tissue pieces smaller than this (and holes smaller than this) are dropped (filled).
    """
    if method not in TISSUE_METHODS:
        raise ValueError(f"unknown tissue method {method!r}; expected one of {TISSUE_METHODS}")
    min_pixels = max(1, int(min_area_um2 / thumbnail_mpp**2))
    distance, glass = _distance_to_glass(thumbnail)
    cut = max(OD_FLOOR, NOISE_FACTOR * glass.noise)
    candidates = _od_candidates(distance, cut)
    non_glass = _clean(candidates, min_pixels, opening=False)
    if method == "od":
        if threshold is not None:
            cut, candidates = threshold, _od_candidates(distance, threshold)
        seeds = ndimage.uniform_filter(distance, size=5) > SEED_FACTOR * cut
        return TissueDetection(_clean(_hysteresis(candidates, seeds), min_pixels), non_glass, method, cut, glass)
    # Smoothing first keeps pale fibres and nuclear gaps inside tissue on the tissue side.
    sat = ndimage.uniform_filter(saturation(thumbnail), size=5)
    cut = max(otsu_threshold(sat), MIN_SATURATION) if threshold is None else threshold
    return TissueDetection(_clean(sat > cut, min_pixels), non_glass, method, cut, glass)


def _distance_to_glass(thumbnail: np.ndarray) -> tuple[np.ndarray, Glass]:
    """`glass_distance` to the slide's glass under its own light, and that glass.

    A first pass against the slide-wide glass colour finds what is surely tissue; the light is then fitted to the
    rest (`fit_light`), which takes uneven illumination out before the thresholds are applied.
    """
    glass = estimate_glass(thumbnail)
    first = glass_distance(thumbnail, glass.colour)
    cut = max(OD_FLOOR, NOISE_FACTOR * glass.noise)
    tissue = _hysteresis(first > cut, ndimage.uniform_filter(first, size=5) > SEED_FACTOR * cut)
    sample = (first <= cut) & ~ndimage.binary_dilation(tissue, iterations=3)
    log_light, glass = fit_light(thumbnail, sample, glass)
    return distance_from_log(thumbnail, log_light), glass


def _od_candidates(distance: np.ndarray, cut: float) -> np.ndarray:
    """Pixels that may be tissue: above ``cut`` themselves, or in a pale neighbourhood above ``cut / 2``."""
    pale = ndimage.gaussian_filter(np.minimum(distance, PALE_CAP * cut), PALE_SIGMA) > cut / 2
    return (distance > cut) | pale


def tissue_mask(thumbnail: np.ndarray, *, thumbnail_mpp: float, min_area_um2: float = 20_000.0,
                **options) -> np.ndarray:  # fmt: skip
    """Boolean tissue mask of an RGB thumbnail (`detect_tissue`'s ``mask``; ``options``: method, threshold)."""
    return detect_tissue(thumbnail, thumbnail_mpp=thumbnail_mpp, min_area_um2=min_area_um2, **options).mask


def _hysteresis(candidates: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The connected pieces of ``candidates`` that hold at least one seed."""
    labels, count = ndimage.label(candidates)
    if count == 0:
        return candidates
    keep = np.zeros(count + 1, bool)
    keep[np.unique(labels[seeds & candidates])] = True
    keep[0] = False
    return keep[labels]


def _clean(mask: np.ndarray, min_pixels: int, *, opening: bool = True) -> np.ndarray:
    """Close small gaps and fill holes under ``min_pixels`` (fat cells, clefts), then open (cutting thin bridges
    and lines) and drop pieces under ``min_pixels``. Holes are filled before the opening, which would otherwise
    cut the thin walls of a fat lobule away before they enclose anything."""
    structure = ndimage.generate_binary_structure(2, 1)
    # Padding by the edge: otherwise the closing's erosion sees empty space past the border and eats tissue there.
    mask = ndimage.binary_closing(np.pad(mask, 2, mode="edge"), structure, iterations=2)[2:-2, 2:-2]
    mask = _fill_small_holes(mask, min_pixels)
    if opening:
        mask = ndimage.binary_opening(mask, structure, iterations=2)
    return _fill_small_holes(_drop_small(mask, min_pixels), min_pixels)


def _fill_small_holes(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Fill the holes of ``mask`` (pieces of background that do not touch the border) under ``min_pixels``; by
    labelling the background once, much faster than ``binary_fill_holes`` on a 2048-px thumbnail."""
    labels, count = ndimage.label(~mask)
    if count == 0:
        return mask
    fill = np.bincount(labels.ravel(), minlength=count + 1) < min_pixels
    fill[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = False
    fill[0] = False
    return mask | fill[labels]


def _drop_small(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Remove connected components smaller than ``min_pixels``."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


# Overlay colours: kept patches green, tissue that no patch holds magenta, the rest (glass) dimmed.
KEPT_TINT, LEFT_OUT_TINT = (0.0, 190.0, 0.0), (235.0, 0.0, 200.0)


def save_overlay(thumbnail: np.ndarray, mask: np.ndarray, path: str | Path, *, kept: np.ndarray | None = None,
                 non_glass: np.ndarray | None = None) -> Path:  # fmt: skip
    """Write a quality-control PNG of the thumbnail: what patches were kept on (``kept``; the ``mask`` without it)
    tinted green, tissue left out of every patch (``mask`` or ``non_glass`` outside ``kept``) magenta, glass dimmed.
    """
    kept = mask if kept is None else kept
    left_out = (mask if non_glass is None else mask | non_glass) & ~kept
    image = thumbnail.astype(np.float32)
    image[kept] = 0.75 * image[kept] + 0.25 * np.array(KEPT_TINT, np.float32)
    image[left_out] = 0.45 * image[left_out] + 0.55 * np.array(LEFT_OUT_TINT, np.float32)
    image[~(kept | left_out)] *= 0.6
    path = Path(path)
    with atomic_path(path) as partial:
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(partial, format="PNG")
    return path
