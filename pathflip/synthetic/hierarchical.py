"""The "hierarchical" synthetic cohort family: what the "lesions" family does not exercise.

- Four diagnoses by hierarchical rules on the tissues of the final mask (`diagnosis_of`): mucin -> mucinous
  adenocarcinoma; else tumour -> invasive carcinoma; else a lymphoid sheet (lymphocytes over SHEET_AREA_MM2) ->
  lymphoma; else benign (which may hold small lymphoid aggregates, fat, haemorrhage, necrosis).
- Seven tissue patterns on glass (TISSUE_TYPES; masks index into it, and rows say so in "tissue_types").
- Rare findings: necrosis and haemorrhage each in exactly one slide of every run of 8 (12.5 %).
- A large, described background: stroma everywhere, fat filling 35-60 % of the tissue in ~60 % of slides;
  their sentences are graded findings (`hierarchical_text`).
- Lesions from below a region window of the demo (256 um = 512 level-0 px) to several windows (2.4 mm sheets);
  small ones are centred on a patch of the demo's 256-px grid so that one patch lies mostly inside them.
- Its own look: 1-3 tissue fragments, stain factors 0.65-1.35, its own texture bank, and glass brighter than any
  tissue (fat included), so the `od` tissue detector keeps all of it.

Written by `pathflip.synthetic.cohort.generate_cohort(..., family="hierarchical")`; rows add "family",
"tissue_types" and "lesions" ([{"tissue", "x", "y", "diameter_um"}], level-0 centres) to the shared keys.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from .hierarchical_text import describe
from .layout import (
    BANK_SIDE,
    GRID,
    MASK_DOWNSAMPLE,
    MPP,
    Family,
    Plan,
    balanced_label,
    blob,
    place_name,
    render,
    slide_paths,
    smooth_noise,
)
from .pale_textures import render_any_texture

DIAGNOSES = ("benign", "lymphoma", "invasive carcinoma", "mucinous adenocarcinoma")
TISSUE_TYPES = ("tumour", "stroma", "fat", "lymphocytes", "necrosis", "mucin", "haemorrhage", "background")
SHEET_AREA_MM2 = 0.6  # lymphocytes covering at least this much make a lymphoid sheet (lymphoma)
RARE_EVERY = 8  # necrosis and haemorrhage: each in one slide of every run of RARE_EVERY
_SIZES = (2560, 3584, 64)  # level-0 slide sides: lowest, highest, step
_STAIN = (0.65, 1.35)
# Level-0 lesion diameters by size class, drawn log-uniformly; a _SMALL_SHARE of tumour, mucin, necrosis and
# haemorrhage lesions are drawn from _SMALL_RANGE instead, below a region window (512 px) even before the blob's
# outline trims them. Lymphoid aggregates are small, sheets span several windows.
_DIAMETERS = {"tumour": (900, 3600), "mucin": (900, 3600), "necrosis": (700, 2000), "haemorrhage": (700, 1600),
              "aggregate": (340, 900), "sheet": (2000, 3200)}  # fmt: skip
_SMALL_RANGE, _SMALL_SHARE = (340, 480), 0.45
_PATCH = 256  # level-0 px of the demo's patches (128 px at 1 um/px)
_SMALL = 640  # level-0 px: smaller lesions are centred on a patch and kept whole inside the tissue
_MIN_COVER = 0.55  # a lesion must fill this share of its best patch on the demo's grid (the mask's rule is 0.5)
# Transmittance factors baked into the bank: the section itself absorbs a little (so fat, mucin's clear pools
# and pale stains stay darker than glass), and glass is cleaner than `pale_textures`' (its OD times 0.4).
_SECTION_OD, _GLASS_POWER = 0.012, 0.4
_INDEX = {kind: index for index, kind in enumerate(TISSUE_TYPES)}
_HALVES = ("lower", "upper", "right", "left")


def diagnosis_of(areas_mm2: Mapping[str, float]) -> int:
    """The label the tissue areas (mm^2 by tissue, see `tissue_areas`) imply, by the first rule that holds:
    mucin 3, tumour 2, lymphocytes >= SHEET_AREA_MM2 1, else 0 (benign)."""
    if areas_mm2.get("mucin", 0) > 0:
        return 3
    if areas_mm2.get("tumour", 0) > 0:
        return 2
    return 1 if areas_mm2.get("lymphocytes", 0) >= SHEET_AREA_MM2 else 0


def tissue_areas(mask: np.ndarray, *, mask_downsample: int = MASK_DOWNSAMPLE, mpp: float = MPP) -> dict[str, float]:
    """mm^2 of every tissue present in a mask of this family (background left out)."""
    counts = np.bincount(np.asarray(mask).ravel(), minlength=len(TISSUE_TYPES))
    pixel = (mask_downsample * mpp / 1000) ** 2
    return {kind: float(count * pixel) for kind, count in zip(TISSUE_TYPES, counts, strict=False)
            if count and kind != "background"}  # fmt: skip


def _lesion_specs(label: int, necrosis: bool, haemorrhage: bool, rng: np.random.Generator) -> tuple[list, int]:
    """(tissue, size class) of each lesion to place, the required ones first, and how many are required."""
    required = [[], [("lymphocytes", "sheet")], [("tumour", "tumour")], [("mucin", "mucin")]][label]
    required += [("necrosis", "necrosis")] * necrosis + [("haemorrhage", "haemorrhage")] * haemorrhage
    optional = []
    if label == 1 and rng.random() < 0.35:
        optional.append(("lymphocytes", "sheet"))
    if label == 2:
        optional += [("tumour", "tumour")] * int(rng.integers(0, 3))
    if label == 3:
        optional += [("mucin", "mucin")] * int(rng.integers(0, 2))
        optional += [("tumour", "tumour")] * int(rng.integers(1, 3)) * (rng.random() < 0.5)  # carcinoma is outranked
    lymphoid = rng.random()
    if label != 1 and lymphoid < 0.5:
        optional += [("lymphocytes", "aggregate")] * int(rng.integers(1, 3))
    elif label >= 2 and lymphoid < 0.75:
        optional.append(("lymphocytes", "sheet"))  # a sheet under carcinoma: the rule's order decides
    return required + optional, len(required)


def _fragments(shape: tuple[int, int], count: int, rng: np.random.Generator) -> np.ndarray:
    """1-3 irregular tissue pieces side by side along the slide's longer side (grid units)."""
    tissue, axis = np.zeros(shape, bool), int(shape[1] > shape[0])
    cuts = (np.arange(1, count) + rng.uniform(-0.12, 0.12, count - 1)) / count
    edges = [0, *(cuts * shape[axis]).astype(int).tolist(), shape[axis]]
    for start, stop in zip(edges, edges[1:], strict=False):
        gap = 6 if count > 1 else 0  # keeps the pieces apart
        span = (start + gap, stop - gap)
        piece = blob((span[1] - span[0], shape[1 - axis]) if axis == 0 else (shape[0], span[1] - span[0]),
                     (rng.uniform(0.8, 0.97), rng.uniform(0.75, 0.95)), 0.35, rng)  # fmt: skip
        if axis == 0:
            tissue[span[0] : span[1]] |= piece
        else:
            tissue[:, span[0] : span[1]] |= piece
    tissue[[0, 1, -2, -1]], tissue[:, [0, 1, -2, -1]] = False, False
    return tissue


def _fat_region(tissue: np.ndarray, box: tuple, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Fat filling 35-60 % of the tissue towards one side, with an irregular front; and that side's half."""
    side = _HALVES[int(rng.integers(4))]
    rows, cols = np.ogrid[0 : tissue.shape[0], 0 : tissue.shape[1]]
    across = (rows - box[0]) / max(box[1] - box[0], 1) if side in ("lower", "upper") else None
    across = (cols - box[2]) / max(box[3] - box[2], 1) if across is None else across
    front = np.broadcast_to(across if side in ("lower", "right") else -across, tissue.shape)
    front = front + 0.25 * smooth_noise(tissue.shape, max(tissue.shape) // 3, rng)
    cut = np.quantile(front[tissue], 1 - rng.uniform(0.35, 0.6))
    return tissue & (front > cut), f"{side} half"


def _place(tissue: np.ndarray, specs: list, required: int, rng: np.random.Generator) -> list | None:
    """Disjoint lesions (tissue, size class, row, col, diameter) in grid units; None if a required one fails.
    Small ones sit whole inside the tissue, centred on a patch; large ones may run over its edge."""
    depth, inside, step = ndimage.distance_transform_edt(tissue), np.argwhere(tissue), _PATCH // GRID
    placed = []
    for number, (kind, size) in enumerate(specs):
        below_window = size not in ("aggregate", "sheet") and rng.random() < _SMALL_SHARE
        low, high = _SMALL_RANGE if below_window else _DIAMETERS[size]
        diameter, spot = np.exp(rng.uniform(np.log(low), np.log(high))) / GRID, None
        for attempt in range(60):
            if attempt % 15 == 14:  # no room: a smaller one
                diameter = max(diameter * 0.8, _SMALL_RANGE[0] / GRID)
            row, col = inside[rng.integers(len(inside))]
            small = diameter * GRID < _SMALL
            if small:  # the centre of the demo's patch that holds this cell
                row, col = min(row // step * step + step // 2, tissue.shape[0] - 1), col // step * step + step // 2
                col = min(col, tissue.shape[1] - 1)
            clear = all(np.hypot(row - r, col - c) > (diameter + d) / 2 + 2 for _, _, r, c, d in placed)
            if clear and depth[row, col] >= (0.5 * diameter + 2 if small else 0.2 * diameter):
                spot = (kind, size, int(row), int(col), int(diameter))
                break
        if spot is None and number < required:
            return None
        placed += [spot] if spot else []
    return placed


def _best_cover(cells: np.ndarray, box: tuple) -> float:
    """The largest share of one patch of the demo's grid that ``cells`` (the lesion within grid ``box``) fill."""
    step = _PATCH // GRID
    r0, c0 = box[0] // step * step, box[2] // step * step
    padded = np.zeros((-(-(box[1] - r0) // step) * step, -(-(box[3] - c0) // step) * step), bool)
    padded[box[0] - r0 : box[1] - r0, box[2] - c0 : box[3] - c0] = cells
    return float(padded.reshape(padded.shape[0] // step, step, -1, step).mean((1, 3)).max())


def _lesion_shape(diameter: int, rng: np.random.Generator) -> np.ndarray:
    """A lesion's outline in a ``diameter``-cell square: small ones rounder and smoother (they must fill a patch)."""
    if diameter * GRID < _SMALL:
        return blob((diameter, diameter), (rng.uniform(0.85, 1.0), rng.uniform(0.75, 1.0)), 0.25, rng)
    return blob((diameter, diameter), (rng.uniform(0.8, 1.0), rng.uniform(0.6, 1.0)), 0.4, rng)


def _layout(shape: tuple[int, int], label: int, rare: tuple[bool, bool], rng: np.random.Generator) -> dict | None:
    """Grid labels, regions to paint, lesions and what the caption needs; None when the lesions do not fit."""
    count = int(rng.choice((1, 2, 3), p=(0.4, 0.35, 0.25) if label != 1 else (0.6, 0.4, 0.0)))
    tissue = _fragments(shape, count, rng)
    rows, cols = np.nonzero(tissue)
    box = (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1)
    grid = np.where(tissue, _INDEX["stroma"], _INDEX["background"]).astype(np.uint8)
    regions, fat_half = [("stroma", box)], None
    if rng.random() < 0.6:
        fat, fat_half = _fat_region(tissue, box, rng)
        grid[fat] = _INDEX["fat"]
        rows, cols = np.nonzero(fat)
        regions.append(("fat", (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1)))
    lesions = _place(tissue, *_lesion_specs(label, *rare, rng), rng)
    if lesions is None:
        return None
    drawn = []
    for kind, size, row, col, diameter in lesions:
        r0, c0 = row - diameter // 2, col - diameter // 2
        cut = (max(r0, 0), min(r0 + diameter, shape[0]), max(c0, 0), min(c0 + diameter, shape[1]))
        for _ in range(6):  # a small lesion's outline is redrawn until one patch lies mostly inside it
            cells = _lesion_shape(diameter, rng)[cut[0] - r0 : cut[1] - r0, cut[2] - c0 : cut[3] - c0]
            cells &= tissue[cut[0] : cut[1], cut[2] : cut[3]]
            if _best_cover(cells, cut) >= _MIN_COVER:
                break
        else:
            return None
        grid[cut[0] : cut[1], cut[2] : cut[3]][cells] = _INDEX[kind]
        regions.append((kind, cut))
        drawn.append((kind, size, cut, cells))
    return {"grid": grid, "regions": regions, "lesions": drawn, "box": box, "fat_half": fat_half}


def _lesion_rows(layout: dict) -> list[dict]:
    """Each lesion's tissue, level-0 centre and equivalent-circle diameter (um), measured on what was painted."""
    out = []
    for kind, _, (r0, _, c0, _), cells in layout["lesions"]:
        rows, cols = np.nonzero(cells)
        diameter = 2 * np.sqrt(len(rows) / np.pi) * GRID * MPP
        out.append({"tissue": kind, "x": int((c0 + cols.mean() + 0.5) * GRID),
                    "y": int((r0 + rows.mean() + 0.5) * GRID), "diameter_um": round(float(diameter), 1)})  # fmt: skip
    return out


def _caption(label: int, layout: dict, present: dict[str, float], rng: np.random.Generator):
    """The caption and findings of a planned slide: lesions of the tissues present, by caption kind and place."""
    sheet = present.get("lymphocytes", 0) >= SHEET_AREA_MM2
    places: dict[str, list[str]] = {}
    for kind, size, (r0, r1, c0, c1), _ in layout["lesions"]:
        if kind in present:
            key = ("sheet" if sheet else "aggregate") if kind == "lymphocytes" else size
            places.setdefault(key, []).append(place_name((r0 + r1) // 2, (c0 + c1) // 2, layout["box"]))
    fat_half = layout["fat_half"] if "fat" in present else None
    return describe(DIAGNOSES[label], places, fat_half, rng)


def plan_slide(seed: int, index: int) -> Plan:
    """Slide ``index``'s label, rare findings, size, stain, geometry and caption, from its own generators."""
    label = balanced_label(seed, 11, index, len(DIAGNOSES))
    rare = tuple(balanced_label(seed, stream, index, RARE_EVERY) == 0 for stream in (15, 16))
    rng = np.random.default_rng([seed, 10, index])
    height, width = (_SIZES[0] + _SIZES[2] * rng.integers(0, (_SIZES[1] - _SIZES[0]) // _SIZES[2] + 1, 2)).tolist()
    stain = rng.uniform(*_STAIN) * rng.uniform(0.92, 1.08, 3)
    for _ in range(200):  # a retry draws another layout: deterministic
        layout = _layout((height // GRID, width // GRID), label, rare, rng)
        if layout is None:
            continue
        plan = Plan(slide_paths(index)[0], label, width, height, stain, layout["grid"], layout["regions"],
                    kinds=TISSUE_TYPES)  # fmt: skip
        present = tissue_areas(plan.mask)
        rare_seen = all(kind in present for kind, drawn in zip(("necrosis", "haemorrhage"), rare, strict=True) if drawn)
        if diagnosis_of(present) == label and rare_seen:
            plan.caption, plan.findings = _caption(label, layout, present, rng)
            plan.extra = {"family": "hierarchical", "tissue_types": list(TISSUE_TYPES), "lesions": _lesion_rows(layout)}
            return plan
    raise RuntimeError(f"slide {index} of seed {seed}: no layout fits (a bug in pathflip.synthetic.hierarchical)")


def _absorb(texture: np.ndarray, kind: str) -> np.ndarray:
    """A bank texture with the family's look: glass cleaner (OD times _GLASS_POWER), tissue a little denser."""
    values = np.arange(256) / 255
    table = values**_GLASS_POWER if kind == "background" else values * 10**-_SECTION_OD
    return np.round(255 * table).astype(np.uint8)[texture]


@functools.lru_cache(maxsize=2)
def texture_bank(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every tissue of the family rendered once (stain scale 1; glass from `pale_textures`), as rendered and
    transposed; its own seed stream, apart from the "lesions" family's."""
    bank = {}
    for number, kind in enumerate(TISSUE_TYPES):
        rng = np.random.default_rng([seed, 12, number])
        texture = render_any_texture("glass" if kind == "background" else kind, BANK_SIDE, BANK_SIDE, rng)
        texture = _absorb(texture, kind)
        bank[kind] = (texture, np.ascontiguousarray(texture.transpose(1, 0, 2)))
    return bank


def slide_image(plan: Plan, seed: int, index: int) -> np.ndarray:
    """Slide ``index``'s level-0 RGB, from a generator of its own (so that planning stays cheap)."""
    return render(plan, texture_bank(seed), np.random.default_rng([seed, 14, index]))


FAMILY = Family("hierarchical", DIAGNOSES, TISSUE_TYPES, plan_slide, texture_bank, slide_image)
