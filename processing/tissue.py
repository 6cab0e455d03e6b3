"""Tissue detection on a slide thumbnail: saturation Otsu, morphology, minimum area, hole filling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..files import atomic_path

# Below this saturation nothing is tissue, whatever Otsu says (a blank slide has only noise).
MIN_SATURATION = 0.06


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


def tissue_mask(thumbnail: np.ndarray, *, thumbnail_mpp: float, min_area_um2: float = 20_000.0) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail.

    Args:
        thumbnail: RGB uint8 ``[h, w, 3]``.
        thumbnail_mpp: microns per thumbnail pixel (turns ``min_area_um2`` into pixels).
        min_area_um2: tissue pieces smaller than this (and holes smaller than this) are dropped (filled).
    """
    # Smoothing first keeps pale fibres and nuclear gaps inside tissue on the tissue side.
    sat = ndimage.uniform_filter(saturation(thumbnail), size=5)
    threshold = max(otsu_threshold(sat), MIN_SATURATION)
    mask = sat > threshold
    structure = ndimage.generate_binary_structure(2, 1)
    mask = ndimage.binary_closing(mask, structure, iterations=2)
    mask = ndimage.binary_opening(mask, structure, iterations=2)
    min_pixels = max(1, int(min_area_um2 / thumbnail_mpp**2))
    mask = _drop_small(mask, min_pixels)
    holes = ndimage.binary_fill_holes(mask) & ~mask
    small_holes = holes & ~_drop_small(holes, min_pixels)
    return mask | small_holes


def _drop_small(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Remove connected components smaller than ``min_pixels``."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def save_overlay(thumbnail: np.ndarray, mask: np.ndarray, path: str | Path) -> Path:
    """Write a quality-control PNG: the thumbnail with tissue tinted green and background dimmed."""
    image = thumbnail.astype(np.float32)
    tint = np.array([0.0, 200.0, 0.0])
    image[mask] = 0.7 * image[mask] + 0.3 * tint
    image[~mask] *= 0.6
    path = Path(path)
    with atomic_path(path) as partial:
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(partial, format="PNG")
    return path
