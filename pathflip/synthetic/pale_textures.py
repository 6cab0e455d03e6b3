"""Textures that fool a saturation threshold: mucin, loose (oedematous) stroma, and haemorrhage; and clean glass.

Mucin and loose stroma are pale and barely coloured, so they sit close to glass; haemorrhage is the opposite, a
strongly red focus that drags a slide-wide split towards itself. Painted as stain concentrations and rendered
with the same Beer-Lambert model as `textures.render_texture`; sizes assume about 0.5 µm per pixel.
"""

from __future__ import annotations

import numpy as np

from .textures import _noise, _nuclei, _round_axes, jittered_grid, render_texture, stain_rgb

PALE_TYPES = ("mucin", "loose stroma", "haemorrhage", "glass")


def _strands(shape: tuple[int, int], period: float, sharpness: float, rng: np.random.Generator) -> np.ndarray:
    """Wavy parallel strands in [0, 1] (1 on a strand), their direction bent by slow noise."""
    height, width = shape
    theta = rng.uniform(0, np.pi)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = (cols * np.cos(theta) + rows * np.sin(theta) + 40 * _noise(shape, 120, rng)) * (2 * np.pi / period)
    phase += 3.0 * _noise(shape, 30, rng)
    return (0.5 + 0.5 * np.sin(phase)) ** sharpness


def _mucin(shape, rng):
    """Pale blue-grey wisps of mucin with clear pools and a few floating strips of tumour cells."""
    density = np.clip(0.7 + 0.6 * _noise(shape, 80, rng), 0.05, 1.3)  # clear pools where it runs thin
    wisps = _strands(shape, rng.uniform(14, 24), 3.0, rng)
    haematoxylin = (0.025 + 0.07 * wisps + 0.012 * _noise(shape, 6, rng)) * density
    # Floating clusters: nuclei only where slow noise peaks, a few percent of the lake.
    count = int(shape[0] * shape[1] / 900)
    centres = np.stack([rng.integers(0, shape[0], count), rng.integers(0, shape[1], count)], axis=1)
    clusters = _noise(shape, 60, rng)
    centres = centres[clusters[tuple(centres.T)] > 1.6]
    nuclei = _nuclei(shape, centres, _round_axes(len(centres), 6.0, 11.0, 0.6, rng),
                     rng.uniform(0, np.pi, len(centres)).astype(np.float32),
                     rng.uniform(0.6, 1.0, len(centres)).astype(np.float32), rng, irregularity=0.12)  # fmt: skip
    eosin = 0.008 + 0.012 * wisps * density + 0.25 * (nuclei > 0.05)
    return haematoxylin + nuclei, eosin, np.full(shape, 0.004, np.float32)


def _loose_stroma(shape, rng):
    """Oedematous stroma: thin, sparse, pale collagen fibres far apart, with a few spindle nuclei."""
    fibres = _strands(shape, rng.uniform(16, 28), 6.0, rng) * np.clip(0.5 + 0.6 * _noise(shape, 30, rng), 0, 1.2)
    count = int(shape[0] * shape[1] / 12000)
    centres = np.stack([rng.integers(0, shape[0], count), rng.integers(0, shape[1], count)], axis=1)
    axes = np.stack([rng.uniform(8, 14, count), rng.uniform(2.0, 3.0, count)], axis=1).astype(np.float32)
    nuclei = _nuclei(shape, centres, axes, rng.uniform(0, np.pi, count).astype(np.float32),
                     rng.uniform(0.5, 0.9, count).astype(np.float32), rng, irregularity=0.05)  # fmt: skip
    eosin = 0.02 + 0.16 * fibres + 0.01 * _noise(shape, 10, rng)
    return 0.01 + nuclei, eosin, np.full(shape, 0.004, np.float32)


def _haemorrhage(shape, rng):
    """Sheets of packed red cells: intensely eosinophilic discs on pink plasma, hardly any haematoxylin."""
    centres = jittered_grid(shape, 7.5, 0.15, 2, rng)
    count = len(centres)
    cells = _nuclei(shape, centres, _round_axes(count, 3.2, 4.0, 0.8, rng),
                    rng.uniform(0, np.pi, count).astype(np.float32),
                    rng.uniform(0.8, 1.1, count).astype(np.float32), rng, irregularity=0.08)  # fmt: skip
    eosin = 0.45 + 0.1 * _noise(shape, 40, rng) + 0.6 * cells
    return 0.02 + 0.01 * _noise(shape, 8, rng), eosin, np.full(shape, 0.02, np.float32)


def _glass(shape, rng):
    """Clean glass under a coverslip: an even light grey, more uniform than `textures`' background (which carries
    the mottling of a dirty slide); real scanned glass varies by about 1 % over a thumbnail."""
    flat = np.zeros(shape, np.float32)
    return flat, flat + 0.002, 0.03 + 0.002 * _noise(shape, 64, rng)


_PAINTERS = {"mucin": _mucin, "loose stroma": _loose_stroma, "haemorrhage": _haemorrhage, "glass": _glass}


def render_any_texture(
    kind: str, height: int, width: int, rng: np.random.Generator, *, stain_scale: float = 1.0
) -> np.ndarray:
    """`textures.render_texture` for its kinds and for PALE_TYPES: uint8 RGB ``[height, width, 3]``."""
    if kind not in _PAINTERS:
        return render_texture(kind, height, width, rng, stain_scale=stain_scale)
    if height < 1 or width < 1:
        raise ValueError(f"texture size must be positive, got {height}x{width}")
    return stain_rgb(*_PAINTERS[kind]((height, width), rng), rng, stain_scale=stain_scale)
