"""Grounding outputs as files: a PNG overlay on the slide thumbnail and QuPath GeoJSON.

The raster and the GeoJSON collection themselves come from `modeling_pathflip.heatmap_pathflip`, which the
slide-grounding pipeline uses without this package.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_path, write_text

# A blue -> yellow -> red ramp: readable on H&E and for red-green colour blindness.
_RAMP = np.array([[49, 54, 149], [116, 173, 209], [254, 224, 144], [244, 109, 67], [165, 0, 38]], np.float32)


def overlay_png(raster, path: str | Path, background: np.ndarray | None = None, alpha: float = 0.5) -> Path:
    """Colour the raster and blend it over ``background`` (a slide thumbnail of the same size, else white)."""
    raster = np.asarray(raster, np.float32)
    height, width = raster.shape
    base = np.full((height, width, 3), 255, np.float32) if background is None else background.astype(np.float32)
    if base.shape[:2] != (height, width):
        raise ValueError(f"background is {base.shape[:2]}, the heatmap {(height, width)}; resize one to the other.")
    covered = ~np.isnan(raster)
    position = np.nan_to_num(raster) * (len(_RAMP) - 1)
    low = np.clip(np.floor(position).astype(int), 0, len(_RAMP) - 2)
    colour = _RAMP[low] + (position - low)[..., None] * (_RAMP[low + 1] - _RAMP[low])
    base[covered] = (1 - alpha) * base[covered] + alpha * colour[covered]
    path = Path(path)
    with atomic_path(path) as partial:
        Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(partial, format="PNG")
    return path


def write_geojson(collection: dict, path: str | Path) -> Path:
    """Write a FeatureCollection to ``path``."""
    return write_text(path, json.dumps(collection))


def slide_canvas(path: str | Path, *, mpp: float | None = None, longest: int = 1024):
    """``(thumbnail, level-0 (width, height))`` of a slide file, or None when ``path`` is not a slide."""
    from .extract import SLIDE_SUFFIXES
    from .reader import SlideReader

    if Path(path).suffix.lower() not in SLIDE_SUFFIXES:
        return None
    with SlideReader(path, mpp=mpp) as reader:
        return reader.thumbnail(longest), reader.dimensions
