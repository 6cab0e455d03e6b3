"""The slide's own glass, estimated from a thumbnail: its colour, its unevenness, and how far each pixel is from it.

Tissue only absorbs light, so glass is the brightest well-populated colour of a slide. Scanners differ in
glass brightness and tint, light falls off towards a corner, and some fill unscanned areas with pure white;
everything here is measured on the slide itself rather than assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Pure white from a scanner's fill of unscanned areas: not a measurement of the glass.
BLANK = 254
# Glass pixels used to fit the light: enough for a quadratic, few enough to stay fast on a 2048-px thumbnail.
MAX_FIT_PIXELS = 20_000
# The border is trusted for the glass colour when at least this share of its pixels is near-neutral.
BORDER_NEUTRAL = 0.2


@dataclass(frozen=True)
class Glass:
    """The slide's glass: its RGB colour (0-255) and ``noise``, the spread of `glass_distance` over the glass
    itself (sensor noise, mottling, and uneven light until `fit_light` has taken that out)."""

    colour: tuple[float, float, float]
    noise: float


def estimate_glass(thumbnail: np.ndarray) -> Glass:
    """The glass of an RGB uint8 thumbnail: the brightest well-populated luminance mode of near-neutral pixels.

    Pixels near the thumbnail's border are used when enough of them are near-neutral (glass usually surrounds the
    tissue; inside it, fat or a bubble may be brighter than the glass), else all pixels. Pure-white pixels are
    left out when other pixels remain. "Well-populated" (a peak at least a tenth as high as the tallest) keeps a
    few bright specks from being taken for the glass.
    """
    pixels = _border(thumbnail)
    if _neutral(pixels).mean() < BORDER_NEUTRAL:
        pixels = thumbnail.reshape(-1, 3).astype(np.float32)
    luminance = pixels.mean(axis=1)
    scanned = pixels.min(axis=1) < BLANK
    pool = scanned if scanned.mean() > 0.01 else np.ones_like(scanned)
    neutral = pool & _neutral(pixels)
    if neutral.sum() < 0.001 * len(pixels):  # no neutral pixels at all: the slide is tissue to the edges
        neutral = pool
    counts = np.bincount(np.rint(luminance[neutral]).astype(int), minlength=256).astype(np.float64)
    histogram = ndimage.gaussian_filter1d(counts, 1.0)
    peaks = (histogram >= np.roll(histogram, 1)) & (histogram >= np.roll(histogram, -1))
    peaks &= histogram >= 0.1 * histogram.max()
    mode = int(np.flatnonzero(peaks).max())
    colour = np.median(pixels[neutral & (np.abs(luminance - mode) <= 3)], axis=0)
    # A change of brightness shifts the three channels' optical densities alike: their norm is sqrt(3) times one.
    noise = np.sqrt(3) * _spread(histogram, mode, float(colour.max())) / (max(mode, 1) * np.log(10))
    return Glass(tuple(float(value) for value in colour), float(noise))


def _border(thumbnail: np.ndarray) -> np.ndarray:
    """The RGB pixels ``[n, 3]`` (float) of the outer tenth of the thumbnail on each side."""
    height, width = thumbnail.shape[:2]
    band = np.ones((height, width), bool)
    rows, cols = max(1, height // 10), max(1, width // 10)
    band[rows : height - rows, cols : width - cols] = False
    return thumbnail[band].astype(np.float32)


def _neutral(pixels: np.ndarray) -> np.ndarray:
    """Pixels (``[n, 3]``) whose colour is nearly grey, as glass is."""
    return pixels.max(axis=1) - pixels.min(axis=1) < 0.15 * np.maximum(pixels.max(axis=1), 1)


def _spread(histogram: np.ndarray, mode: int, brightest: float) -> float:
    """Standard deviation of the glass luminance from the half-width of its peak on the bright side, where no
    tissue lies; from the dark side when the sensor's 255 cuts the bright side off."""
    half = histogram[mode] / 2
    above = np.flatnonzero(histogram[mode:] < half)
    below = np.flatnonzero(histogram[: mode + 1][::-1] < half)
    width = float(above[0]) if len(above) else 1.0
    if brightest + 2 * width >= BLANK and len(below):
        width = float(below[0])
    return max(width, 0.5) / 1.1774


def glass_distance(thumbnail: np.ndarray, glass: np.ndarray | tuple) -> np.ndarray:
    """Per pixel, how much more than the glass it absorbs: the norm of its positive optical densities (R, G, B)
    relative to ``glass`` (one RGB colour, or one per pixel ``[h, w, 3]``). Pixels brighter than glass score 0."""
    reference = np.maximum(np.asarray(glass, np.float32), 1)
    density = np.log10(reference / np.maximum(thumbnail.astype(np.float32), 1))
    np.maximum(density, 0, out=density)
    return np.sqrt((density**2).sum(axis=-1))


def fit_light(thumbnail: np.ndarray, sample: np.ndarray, glass: Glass) -> tuple[np.ndarray, Glass]:
    """The glass colour at every pixel ``[h, w, 3]``, and the glass with the noise left once uneven light is out.

    A plane per channel in log intensity (light falling off across the slide) is fitted to the ``sample``
    pixels (glass for sure), once, then again without the pixels that sit far below the first fit (pale tissue
    that slipped into the sample). Too few sample pixels: the slide-wide colour everywhere.
    """
    height, width = sample.shape
    rows, cols = np.nonzero(sample & (thumbnail.min(axis=-1) < BLANK))
    if len(rows) < max(500, 0.01 * sample.size):
        return np.broadcast_to(np.asarray(glass.colour, np.float32), thumbnail.shape), glass
    step = max(1, len(rows) // MAX_FIT_PIXELS)  # a regular subsample: deterministic
    rows, cols = rows[::step], cols[::step]
    design = np.stack([np.ones(len(rows)), rows / height, cols / width], axis=1)
    values = np.log10(np.maximum(thumbnail[rows, cols].astype(np.float64), 1))
    coefficients, *_ = np.linalg.lstsq(design, values, rcond=None)
    residual = values - design @ coefficients
    spread = 1.4826 * np.median(np.abs(residual), axis=0)
    inliers = (residual > -3 * np.maximum(spread, 1e-4)).all(axis=1)
    coefficients, *_ = np.linalg.lstsq(design[inliers], values[inliers], rcond=None)
    residual = (values - design @ coefficients)[inliers]
    a = coefficients.astype(np.float32)
    surface = a[0] + a[1] * (np.arange(height, dtype=np.float32) / height)[:, None, None]
    surface = surface + a[2] * (np.arange(width, dtype=np.float32) / width)[None, :, None]
    # Never brighter or darker than glass was seen to be: no extrapolation into corners the sample did not reach.
    low, high = np.percentile(values[inliers], [0.5, 99.5], axis=0).astype(np.float32)
    light = np.power(np.float32(10), np.clip(surface, low, high))
    # Glass pixels' distance comes from their darker-than-fit residuals, summed over the channels as in the norm.
    noise = float(np.sqrt((np.minimum(residual, 0) ** 2).mean(axis=0).sum()))
    return light, Glass(glass.colour, max(noise, 1e-4))
