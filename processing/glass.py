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
_LOG10 = np.log10(np.maximum(np.arange(256, dtype=np.float32), 1))


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
    high, low, total = _extremes(pixels)
    if _is_neutral(high, low).mean() < BORDER_NEUTRAL:
        pixels = thumbnail.reshape(-1, 3)
        high, low, total = _extremes(pixels)
    luminance = (total + 1) // 3  # the rounded channel mean, in integers
    scanned = low < BLANK
    pool = scanned if scanned.mean() > 0.01 else np.ones_like(scanned)
    neutral = pool & _is_neutral(high, low)
    if neutral.sum() < 0.001 * len(pixels):  # no neutral pixels at all: the slide is tissue to the edges
        neutral = pool
    counts = np.bincount(luminance[neutral], minlength=256).astype(np.float64)
    histogram = ndimage.gaussian_filter1d(counts, 1.0)
    peaks = (histogram >= np.roll(histogram, 1)) & (histogram >= np.roll(histogram, -1))
    peaks &= histogram >= 0.1 * histogram.max()
    mode = int(np.flatnonzero(peaks).max())
    colour = np.median(pixels[neutral & (np.abs(luminance - mode) <= 3)], axis=0)
    # A change of brightness shifts the three channels' optical densities alike: their norm is sqrt(3) times one.
    noise = np.sqrt(3) * _spread(histogram, mode, float(colour.max())) / (max(mode, 1) * np.log(10))
    return Glass(tuple(float(value) for value in colour), float(noise))


def _border(thumbnail: np.ndarray) -> np.ndarray:
    """The RGB pixels ``[n, 3]`` of the outer tenth of the thumbnail on each side."""
    height, width = thumbnail.shape[:2]
    band = np.ones((height, width), bool)
    rows, cols = max(1, height // 10), max(1, width // 10)
    band[rows : height - rows, cols : width - cols] = False
    return thumbnail[band]


def _extremes(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel of ``[n, 3]`` uint8: the brightest and darkest channel, and the channels' sum (int16), from the
    three channel columns (reductions over a length-3 axis are several times slower)."""
    red, green, blue = (pixels[:, channel].astype(np.int16) for channel in range(3))
    return np.maximum(np.maximum(red, green), blue), np.minimum(np.minimum(red, green), blue), red + green + blue


def _is_neutral(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Pixels whose colour is nearly grey, as glass is: channels within 15 % of the brightest."""
    return (high - low) * 100 < 15 * np.maximum(high, 1)


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
    return distance_from_log(thumbnail, np.log10(np.maximum(np.asarray(glass, np.float32), 1)))


def distance_from_log(thumbnail: np.ndarray, log_glass: np.ndarray) -> np.ndarray:
    """`glass_distance` with the glass given as log10 of its RGB (``[3]`` or ``[h, w, 3]``, as `fit_light` gives);
    ``thumbnail`` RGB, uint8 (fast) or float in 0-255."""
    total = np.zeros(thumbnail.shape[:2], np.float32)
    for channel in range(3):
        values = thumbnail[..., channel]
        # log10 of a uint8 by table lookup: a quarter of the time of np.log10 on floats.
        logs = _LOG10[values] if values.dtype == np.uint8 else np.log10(np.maximum(values.astype(np.float32), 1))
        density = log_glass[..., channel] - logs
        np.maximum(density, 0, out=density)
        total += density * density
    return np.sqrt(total, out=total)


def fit_light(thumbnail: np.ndarray, sample: np.ndarray, glass: Glass) -> tuple[np.ndarray, Glass]:
    """log10 of the glass's RGB at every pixel ``[h, w, 3]``, and the glass with the noise left once uneven light is
    out.

    A plane per channel in log intensity (light falling off across the slide) is fitted to the ``sample``
    pixels (glass for sure), once, then again without the pixels that sit far below the first fit (pale tissue
    that slipped into the sample). Too few sample pixels: the slide-wide colour everywhere.
    """
    height, width = sample.shape
    rows, cols = np.nonzero(sample & (thumbnail.min(axis=-1) < BLANK))
    if len(rows) < max(500, 0.01 * sample.size):
        log_colour = np.log10(np.maximum(np.asarray(glass.colour, np.float32), 1))
        return np.broadcast_to(log_colour, thumbnail.shape), glass
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
    # Never brighter or darker than glass was seen to be: no extrapolation into corners the sample did not reach.
    lowest, highest = np.percentile(values[inliers], [0.5, 99.5], axis=0)
    log_light = np.empty((height, width, 3), np.float32)
    row_term = (np.arange(height, dtype=np.float32) / height)[:, None]
    col_term = (np.arange(width, dtype=np.float32) / width)[None, :]
    for channel, (a, b, c) in enumerate(coefficients.T.astype(np.float32)):
        plane = log_light[..., channel]
        np.add(a + b * row_term, c * col_term, out=plane)
        np.clip(plane, lowest[channel], highest[channel], out=plane)
    # Glass pixels' distance comes from their darker-than-fit residuals, summed over the channels as in the norm.
    noise = float(np.sqrt((np.minimum(residual, 0) ** 2).mean(axis=0).sum()))
    return log_light, Glass(glass.colour, max(noise, 1e-4))
