"""Grounding outputs as pictures and annotations: a heatmap raster, a PNG overlay and QuPath GeoJSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# A blue -> yellow -> red ramp: readable on H&E and for red-green colour blindness.
_RAMP = np.array([[49, 54, 149], [116, 173, 209], [254, 224, 144], [244, 109, 67], [165, 0, 38]], np.float32)


def heatmap_raster(scores, coords, patch_size_level0: int, dimensions: tuple[int, int], size: tuple[int, int]):
    """Per-patch scores painted into a float raster of ``size`` (width, height) covering the slide.

    Scores are min-max normalised over the patches; pixels without a patch are NaN.
    """
    scores, coords = np.asarray(scores, np.float32), np.asarray(coords, np.int64)
    width, height = size
    scale_x, scale_y = width / dimensions[0], height / dimensions[1]
    raster = np.full((height, width), np.nan, np.float32)
    span = float(scores.max() - scores.min()) if len(scores) else 0.0
    normalised = (scores - scores.min()) / span if span > 0 else np.zeros_like(scores)
    for (x, y), value in zip(coords, normalised, strict=True):
        x0, y0 = int(x * scale_x), int(y * scale_y)
        x1 = max(x0 + 1, int(np.ceil((x + patch_size_level0) * scale_x)))
        y1 = max(y0 + 1, int(np.ceil((y + patch_size_level0) * scale_y)))
        raster[y0:y1, x0:x1] = value
    return raster


def overlay_png(raster: np.ndarray, path: str | Path, background: np.ndarray | None = None, alpha: float = 0.5) -> Path:
    """Colour the raster and blend it over ``background`` (a slide thumbnail of the same size, else white)."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(path)
    return path


def top_patches_geojson(scores, coords, patch_size_level0: int, *, top_k: int = 20, name: str = "grounding") -> dict:
    """A GeoJSON FeatureCollection (QuPath-compatible) of the ``top_k`` highest-scoring patches.

    Each feature is a closed square Polygon in level-0 pixels with ``score`` and ``rank`` properties.
    """
    scores, coords = np.asarray(scores, np.float64), np.asarray(coords, np.int64)
    features = []
    for rank, index in enumerate(np.argsort(-scores)[:top_k]):
        x, y = (int(value) for value in coords[index])
        size = int(patch_size_level0)
        ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "name": f"{name} #{rank + 1}", "score": float(scores[index]),
                           "rank": rank + 1},
        })  # fmt: skip
    return {"type": "FeatureCollection", "features": features}


def write_geojson(collection: dict, path: str | Path) -> Path:
    """Write a FeatureCollection to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(collection))
    return path
