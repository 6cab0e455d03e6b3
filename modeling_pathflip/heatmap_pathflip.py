"""Grounding scores as a heatmap raster and QuPath GeoJSON (torch and the standard library only)."""

from __future__ import annotations

import torch


def heatmap_raster(
    scores: torch.Tensor,
    coords: torch.Tensor,
    patch_size_level0: int,
    dimensions: tuple[int, int],
    size: tuple[int, int],
) -> torch.Tensor:
    """Per-patch scores as a float raster ``[height, width]`` of ``size`` (width, height) covering the slide.

    ``dimensions`` is the slide's level-0 (width, height). Each raster pixel takes the score of the patch
    under its centre; scores are min-max normalised over the patches; pixels over no patch are NaN.
    """
    grid, origin = patch_grid(scores, coords, patch_size_level0)
    columns = _cell_index(size[0], dimensions[0], origin[0], patch_size_level0, grid.shape[1])
    rows = _cell_index(size[1], dimensions[1], origin[1], patch_size_level0, grid.shape[0])
    raster = grid[rows.clamp(min=0)][:, columns.clamp(min=0)]
    raster[rows < 0] = float("nan")
    raster[:, columns < 0] = float("nan")
    return raster


def patch_grid(scores: torch.Tensor, coords: torch.Tensor, patch_size_level0: int) -> tuple[torch.Tensor, tuple]:
    """Per-patch scores min-max normalised on the patch grid: ``(grid [rows, columns], origin (x, y))``.

    Cell (r, c) covers level-0 pixels ``origin + (c, r) * patch_size_level0`` onwards; cells without a patch are NaN.
    """
    scores, coords = torch.as_tensor(scores).float().cpu(), torch.as_tensor(coords).long().cpu()
    if scores.numel() == 0:
        raise ValueError("no patch scores to paint: the bag is empty.")
    span = scores.max() - scores.min()
    normalised = (scores - scores.min()) / span if span > 0 else torch.zeros_like(scores)
    origin = coords.min(dim=0).values % patch_size_level0  # patches lie on a grid offset from (0, 0)
    cells = torch.div(coords - origin, patch_size_level0, rounding_mode="floor")
    grid = torch.full((int(cells[:, 1].max()) + 1, int(cells[:, 0].max()) + 1), float("nan"))
    grid[cells[:, 1], cells[:, 0]] = normalised
    return grid, (int(origin[0]), int(origin[1]))


def _cell_index(pixels: int, extent: int, origin: int, patch_size: int, cells: int) -> torch.Tensor:
    """The grid cell under each pixel centre along one axis; -1 outside the grid."""
    centres = (torch.arange(pixels, dtype=torch.float64) + 0.5) * (extent / pixels)
    index = torch.floor((centres - origin) / patch_size).long()
    return torch.where((index >= 0) & (index < cells), index, torch.full_like(index, -1))


def top_patches_geojson(
    scores: torch.Tensor, coords: torch.Tensor, patch_size_level0: int, *, top_k: int = 20, name: str = "grounding"
) -> dict:
    """A GeoJSON FeatureCollection (QuPath-compatible) of the ``top_k`` highest-scoring patches.

    Each feature is a closed square Polygon in level-0 pixels with ``score`` and ``rank`` properties.
    """
    scores, coords = torch.as_tensor(scores).double().cpu(), torch.as_tensor(coords).long().cpu()
    size = int(patch_size_level0)
    features = []
    for rank, index in enumerate(scores.argsort(descending=True, stable=True)[:top_k].tolist(), start=1):
        x, y = (int(value) for value in coords[index])
        ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "name": f"{name} #{rank}", "score": float(scores[index]),
                           "rank": rank},
        })  # fmt: skip
    return {"type": "FeatureCollection", "features": features}
