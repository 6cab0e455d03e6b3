"""A seeded synthetic whole-slide cohort with ground truth, to pretrain and evaluate slide-text models on.

Slides: irregular fibrous stroma on glass with lesions (tumour, necrosis, lymphocytes, fat) of varying size and
place; the diagnosis follows from the kinds present (`diagnosis_of`). Output folder::

    generator.json          generator version and seed (a rerun into the folder must match them)
    slides/<slide_id>.tif   pyramidal TIFF, 3 levels, level 0 at 0.5 um/px (OpenSlide vendor generic-tiff)
    masks/<slide_id>.png    uint8 labels (index into textures.TISSUE_TYPES) at 1 / MASK_DOWNSAMPLE
    cohort.jsonl            one row per slide, written last

Slides are mosaics of crops of a texture bank (`textures.render_texture`, once per seed: rendering each slide
costs ~2 s); a slide's stain factor scales optical density. Slide files depend on (seed, index) only.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from ..files import atomic_path, write_text
from .textures import TISSUE_TYPES, render_texture, write_pyramid

DIAGNOSES = ("invasive carcinoma", "carcinoma with necrosis", "reactive lymphoid hyperplasia")
MASK_DOWNSAMPLE = 16
MPP = 0.5
GENERATOR_VERSION = 1
_GRID = 8  # level-0 pixels per pixel of the geometry grid (the mask is the grid's 2x2 majority)
_SIZES = (2048, 3072, 64)  # level-0 slide sides: lowest, highest, step
_DIAMETERS = (400, 1300)  # level-0 lesion diameters
_BLOCK, _BANK_SIDE = 1024, 1536  # mosaic block side, side of each texture in the bank
_INDEX = {kind: index for index, kind in enumerate(TISSUE_TYPES)}
_REQUIRED = {0: ("tumour",), 1: ("tumour", "necrosis"), 2: ("lymphocytes",)}
_PLACES = (("upper left", "upper", "upper right"), ("left", "central", "right"), ("lower left", "lower", "lower right"))
_DIAGNOSIS_SENTENCES = ("Diagnosis: {}.", "Final diagnosis: {}.", "The findings are consistent with {}.")
# Finding phrasings, one a line: "kind: singular | plural"; a location may follow (stroma: none, no plural).
_PHRASINGS = """
stroma: Fibrous stroma throughout the section
stroma: The background is dense collagenous stroma
stroma: Bundles of fibrous stroma make up most of the tissue
tumour: A nest of atypical tumour cells | Nests of atypical tumour cells
tumour: An infiltrating tumour focus with pleomorphic nuclei | Infiltrating tumour foci with pleomorphic nuclei
tumour: A sheet of malignant epithelial cells | Sheets of malignant epithelial cells
necrosis: A focus of coagulative necrosis | Foci of coagulative necrosis
necrosis: An area of necrotic debris with nuclear dust | Areas of necrotic debris with nuclear dust
necrosis: A patch of necrosis | Patches of necrosis
lymphocytes: A dense lymphoid aggregate | Dense lymphoid aggregates
lymphocytes: A cluster of small lymphocytes | Clusters of small lymphocytes
lymphocytes: A lymphocytic infiltrate | Lymphocytic infiltrates
fat: A lobule of mature adipose tissue | Lobules of mature adipose tissue
fat: A group of adipocytes | Groups of adipocytes
fat: An island of fat | Islands of fat
"""
_LINES = [line.split(": ", 1) for line in _PHRASINGS.strip().splitlines()]
_PHRASES = {kind: [text.split(" | ") for other, text in _LINES if other == kind] for kind, _ in _LINES}


def diagnosis_of(tissues: Iterable[str]) -> int | None:
    """The label the tissue kinds present imply: tumour 0, tumour and necrosis 1, else lymphocytes 2."""
    present = set(tissues)
    return (1 if "necrosis" in present else 0) if "tumour" in present else (2 if "lymphocytes" in present else None)


@dataclass
class _Plan:
    """Everything about one slide but its pixels: cheap, so a resumed run recomputes it."""

    slide_id: str
    label: int
    width: int
    height: int
    stain: np.ndarray  # per-channel optical-density factors
    grid: np.ndarray  # uint8 labels, one per _GRID x _GRID level-0 pixels
    regions: list  # (kind, (r0, r1, c0, c1)): grid boxes to paint, stroma first
    caption: str = ""
    findings: list = field(default_factory=list)

    @property
    def mask(self) -> np.ndarray:
        """The ground truth at MASK_DOWNSAMPLE: the majority label of each block of the grid."""
        f = MASK_DOWNSAMPLE // _GRID
        blocks = self.grid.reshape(self.grid.shape[0] // f, f, self.grid.shape[1] // f, f)
        return np.stack([(blocks == i).sum((1, 3)) for i in range(len(TISSUE_TYPES))]).argmax(0).astype(np.uint8)


def _smooth_noise(shape: tuple[int, int], scale: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean unit-std noise with blobs about ``scale`` pixels across (Gaussian interpolation of knots)."""
    scale, weights = max(int(scale), 2), []
    for size in shape:
        distance = np.arange(size)[:, None] / scale + 1.5 - np.arange(size // scale + 4)[None, :]
        weight = np.exp(-0.5 * (distance / 0.6) ** 2)
        weights.append(weight / weight.sum(1, keepdims=True))
    noise = weights[0] @ rng.standard_normal((weights[0].shape[1], weights[1].shape[1])) @ weights[1].T
    return (noise - noise.mean()) / (noise.std() + 1e-9)


def _blob(shape: tuple[int, int], axes: tuple[float, float], roughness: float, rng: np.random.Generator) -> np.ndarray:
    """A filled irregular blob: a rotated ellipse (semi-axes relative to the half sides) with a noisy outline."""
    rows, cols = np.ogrid[-1 : 1 : shape[0] * 1j, -1 : 1 : shape[1] * 1j]
    angle = rng.uniform(0, np.pi)
    along, across = cols * np.cos(angle) + rows * np.sin(angle), rows * np.cos(angle) - cols * np.sin(angle)
    field_ = 1 - (along / axes[0]) ** 2 - (across / axes[1]) ** 2
    field_ += roughness * _smooth_noise(shape, max(shape) // 4, rng)
    field_ += 0.3 * roughness * _smooth_noise(shape, max(shape) // 12, rng)
    blob = (field_ > 0) & (rows**2 + cols**2 < 1)
    labels, count = ndimage.label(blob)
    largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1 if count > 1 else blob
    return ndimage.binary_fill_holes(largest)


def _lesion_kinds(label: int, rng: np.random.Generator) -> list[str]:
    """Required kinds first (one lesion each), then extra lesions and distractors, which may be dropped."""
    kinds = list(_REQUIRED[label])
    for kind in _REQUIRED[label]:
        kinds += [kind] * int(rng.integers(0, 3 if kind == "lymphocytes" else 2))
    if label != 2 and rng.random() < 0.5:
        kinds += ["lymphocytes"] * int(rng.integers(1, 3))
    if rng.random() < 0.6:
        kinds += ["fat"] * int(rng.integers(1, 3))
    return kinds


def _place(tissue: np.ndarray, kinds: list[str], required: int, rng: np.random.Generator) -> list | None:
    """Disjoint lesion discs (kind, row, col, diameter) inside the tissue (grid units); None if a required one fails."""
    depth, inside = ndimage.distance_transform_edt(tissue), np.argwhere(tissue)
    placed = []
    for number, kind in enumerate(kinds):
        diameter, spot = rng.uniform(*_DIAMETERS) / _GRID, None
        for attempt in range(60):
            if attempt % 15 == 14:
                diameter = max(diameter * 0.75, _DIAMETERS[0] / _GRID)
            row, col = inside[rng.integers(len(inside))]
            clear = all(np.hypot(row - r, col - c) > (diameter + d) / 2 + 2 for _, r, c, d in placed)
            if clear and depth[row, col] >= 0.4 * diameter:
                spot = (kind, int(row), int(col), int(diameter))
                break
        if spot is None and number < required:
            return None
        placed += [spot] if spot else []
    return placed


def _geometry(shape: tuple[int, int], kinds: list[str], required: int, rng: np.random.Generator):
    """(grid labels, regions to paint, placed lesions, tissue box), or None when the lesions do not fit."""
    tissue = _blob(shape, (rng.uniform(0.82, 0.97), rng.uniform(0.82, 0.97)), 0.35, rng)
    tissue[[0, 1, -2, -1]], tissue[:, [0, 1, -2, -1]] = False, False
    lesions = _place(tissue, kinds, required, rng)
    if lesions is None:
        return None
    grid = np.where(tissue, _INDEX["stroma"], _INDEX["background"]).astype(np.uint8)
    rows, cols = np.nonzero(tissue)
    regions = [("stroma", (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1))]
    for kind, row, col, diameter in lesions:
        lesion = _blob((diameter, diameter), (rng.uniform(0.8, 1.0), rng.uniform(0.6, 1.0)), 0.4, rng)
        r0, c0 = row - diameter // 2, col - diameter // 2
        box = (max(r0, 0), min(r0 + diameter, shape[0]), max(c0, 0), min(c0 + diameter, shape[1]))
        lesion = lesion[box[0] - r0 : box[1] - r0, box[2] - c0 : box[3] - c0]
        grid[box[0] : box[1], box[2] : box[3]][lesion & tissue[box[0] : box[1], box[2] : box[3]]] = _INDEX[kind]
        regions.append((kind, box))
    return grid, regions, lesions, regions[0][1]


def _place_name(row: int, col: int, box: tuple[int, int, int, int]) -> str:
    """Where (row, col) lies in the box, by thirds: 'upper left', 'central', ..."""
    third_row = min(int(3 * (row - box[0]) / max(box[1] - box[0], 1)), 2)
    third_col = min(int(3 * (col - box[2]) / max(box[3] - box[2], 1)), 2)
    return _PLACES[third_row][third_col]


def _sentence(kind: str, places: list[str], rng: np.random.Generator) -> str:
    """A finding sentence in a seeded phrasing, most of the time with its location(s)."""
    opening = _PHRASES[kind][rng.integers(len(_PHRASES[kind]))][len(places) > 1]
    unique = list(dict.fromkeys(places))
    if not unique or rng.random() < 0.3:
        return f"{opening}."
    where = unique[0] if len(unique) == 1 else ", ".join(unique[:-1]) + " and " + unique[-1]
    suffix = ("parts of the section", "regions") if len(unique) > 1 else ("part of the section", "region")
    return f"{opening} in the {where} {suffix[rng.integers(2)]}."


def _caption(label: int, lesions: list, present: set[str], box: tuple, rng: np.random.Generator):
    """The caption and its findings [{"sentence", "tissue"}]: stroma, one per lesion kind present, diagnosis."""
    findings = [{"sentence": _sentence("stroma", [], rng), "tissue": "stroma"}]
    kinds = [kind for kind in dict.fromkeys(kind for kind, *_ in lesions) if kind in present]
    for kind in (kinds[i] for i in rng.permutation(len(kinds))):
        places = [_place_name(row, col, box) for k, row, col, _ in lesions if k == kind]
        findings.append({"sentence": _sentence(kind, places, rng), "tissue": kind})
    if rng.random() < 0.3:
        findings.append(findings.pop(0))
    diagnosis = _DIAGNOSIS_SENTENCES[rng.integers(len(_DIAGNOSIS_SENTENCES))].format(DIAGNOSES[label])
    return " ".join([finding["sentence"] for finding in findings] + [diagnosis]), findings


def _plan_slide(seed: int, index: int) -> _Plan:
    """Slide ``index``'s label, size, stain, geometry and caption, from its own generator."""
    classes = len(DIAGNOSES)  # every run of `classes` slides holds each label once, in seeded order
    label = int(np.random.default_rng([seed, 1, index // classes]).permutation(classes)[index % classes])
    rng = np.random.default_rng([seed, 0, index])
    height, width = (_SIZES[0] + _SIZES[2] * rng.integers(0, (_SIZES[1] - _SIZES[0]) // _SIZES[2] + 1, 2)).tolist()
    stain = rng.uniform(0.75, 1.25) * rng.uniform(0.92, 1.08, 3)
    for _ in range(100):  # a retry draws another tissue shape: rare, and deterministic
        geometry = _geometry((height // _GRID, width // _GRID), _lesion_kinds(label, rng), len(_REQUIRED[label]), rng)
        if geometry is None:
            continue
        grid, regions, lesions, box = geometry
        plan = _Plan(_paths(index)[0], label, width, height, stain, grid, regions)
        present = {TISSUE_TYPES[value] for value in np.unique(plan.mask)}
        if diagnosis_of(present) == label:
            plan.caption, plan.findings = _caption(label, lesions, present, box, rng)
            return plan
    raise RuntimeError(f"slide {index} of seed {seed}: no lesion layout fits (a bug in pathflip.synthetic.cohort)")


@functools.lru_cache(maxsize=2)
def _texture_bank(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every tissue kind rendered once (stain scale 1), as rendered and transposed."""
    bank = {}
    for number, kind in enumerate(TISSUE_TYPES):
        texture = render_texture(kind, _BANK_SIDE, _BANK_SIDE, np.random.default_rng([seed, 2, number]))
        bank[kind] = (texture, np.ascontiguousarray(texture.transpose(1, 0, 2)))
    return bank


def _mosaic(textures: tuple[np.ndarray, ...], height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """[height, width, 3] of _BLOCK-sized texture crops, each at a random offset and in one of 8 orientations."""
    out = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, _BLOCK):
        for left in range(0, width, _BLOCK):
            rows, cols = min(_BLOCK, height - top), min(_BLOCK, width - left)
            view = textures[int(rng.integers(2))]  # as rendered or transposed, then flipped either way
            step_rows, step_cols = rng.choice((-1, 1), 2)
            r0, c0 = int(rng.integers(view.shape[0] - rows + 1)), int(rng.integers(view.shape[1] - cols + 1))
            out[top : top + rows, left : left + cols] = view[r0 : r0 + rows, c0 : c0 + cols][::step_rows, ::step_cols]
    return out


def _render(plan: _Plan, bank: dict[str, tuple[np.ndarray, ...]], rng: np.random.Generator) -> np.ndarray:
    """The level-0 RGB: glass, then stroma over the tissue and each lesion, composited by label and stained."""
    image = Image.fromarray(_mosaic(bank["background"], plan.height, plan.width, rng))
    # Optical density times the factor is transmittance to its power: one lookup table per channel.
    table = np.concatenate([np.round(255 * (np.arange(256) / 255) ** f) for f in plan.stain]).astype(int).tolist()
    for kind, (r0, r1, c0, c1) in plan.regions:
        size = ((c1 - c0) * _GRID, (r1 - r0) * _GRID)
        texture = Image.fromarray(_mosaic(bank[kind], size[1], size[0], rng)).point(table)
        inside = Image.fromarray((plan.grid[r0:r1, c0:c1] == _INDEX[kind]).astype(np.uint8) * 255)
        image.paste(texture, (c0 * _GRID, r0 * _GRID), inside.resize(size, Image.Resampling.NEAREST))
    return np.asarray(image)


def _slide_image(plan: _Plan, seed: int, index: int) -> np.ndarray:
    """Slide ``index``'s level-0 RGB, from a generator of its own (so that planning stays cheap)."""
    return _render(plan, _texture_bank(seed), np.random.default_rng([seed, 4, index]))


def _paths(index: int) -> tuple[str, str, str]:
    """Slide id, TIFF and mask (relative to the output folder) of slide ``index``."""
    slide_id = f"slide-{index:04d}"
    return slide_id, f"slides/{slide_id}.tif", f"masks/{slide_id}.png"


def _make_slide(root: Path, seed: int, index: int) -> dict:
    """Plan slide ``index``, write whichever of its files are missing and return its row (split left blank)."""
    plan = _plan_slide(seed, index)
    _, slide, mask = _paths(index)
    if not (root / mask).exists():
        with atomic_path(root / mask) as temporary:
            Image.fromarray(plan.mask).save(temporary, format="PNG")
    if not (root / slide).exists():
        image = _slide_image(plan, seed, index)
        with atomic_path(root / slide) as temporary:
            write_pyramid(temporary, image, mpp=MPP, layout="generic", levels=3)
    row = {"slide_id": plan.slide_id, "split": "", "label": plan.label, "diagnosis": DIAGNOSES[plan.label]}
    row |= {"caption": plan.caption, "findings": plan.findings, "slide": slide, "mask": mask}
    return row | {"mask_downsample": MASK_DOWNSAMPLE, "mpp": MPP, "width": plan.width, "height": plan.height}


def _splits(labels: list[int], seed: int, test_fraction: float) -> list[str]:
    """Seeded split stratified by label: round(test_fraction * n) test slides per class, >= 1 in each split."""
    rng, splits = np.random.default_rng([seed, 3]), ["train"] * len(labels)
    for label in range(len(DIAGNOSES)):
        members = np.flatnonzero(np.asarray(labels) == label)
        count = int(round(test_fraction * len(members)))
        count = min(max(count, 1), len(members) - 1) if test_fraction > 0 and len(members) >= 2 else count
        for index in rng.permutation(members)[:count]:
            splits[index] = "test"
    return splits


def generate_cohort(
    output_dir: str | Path,
    *,
    num_slides: int = 150,
    seed: int = 0,
    test_fraction: float = 0.3,
    progress: bool = True,
    num_workers: int | None = None,
) -> list[dict]:
    """Write (or complete) a synthetic cohort under ``output_dir`` and return its rows (see the module doc).

    Slides whose files exist are kept, so an interrupted run resumes (``generator.json`` guards the seed);
    ``cohort.jsonl`` is rewritten at the end, the same for a fresh and a resumed run. ``num_workers`` threads
    render (default: up to 2; numpy, PIL and the JPEG codec release the GIL); the output does not depend on it.
    """
    if not isinstance(num_slides, int) or num_slides < len(DIAGNOSES):
        raise ValueError(f"num_slides must be an int >= {len(DIAGNOSES)} (one per diagnosis), got {num_slides!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(test_fraction, float | int) or not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
        raise ValueError(f"num_workers must be a positive int or None, got {num_workers!r}")
    root = Path(output_dir)
    generator = {"generator": "pathflip.synthetic.cohort", "version": GENERATOR_VERSION, "seed": seed}
    if not (root / "generator.json").exists():
        write_text(root / "generator.json", json.dumps(generator) + "\n")
    elif (found := json.loads((root / "generator.json").read_text())) != generator:
        raise ValueError(f"{root} holds a cohort made with {found}, not {generator}; use another output_dir")
    for folder in ("slides", "masks"):
        (root / folder).mkdir(exist_ok=True)
    if not all((root / path).exists() for index in range(num_slides) for path in _paths(index)[1:]):
        _texture_bank(seed)  # once, before the threads
    rows = []
    with ThreadPoolExecutor(num_workers or min(2, os.cpu_count() or 1)) as pool:
        jobs = pool.map(functools.partial(_make_slide, root, seed), range(num_slides))
        rows += tqdm(jobs, total=num_slides, desc="synthetic slides", unit="slide", disable=not progress)
    for row, split in zip(rows, _splits([row["label"] for row in rows], seed, test_fraction), strict=True):
        row["split"] = split
    write_text(root / "cohort.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    return rows


def load_cohort(output_dir: str | Path) -> list[dict]:
    """The rows of ``output_dir/cohort.jsonl``."""
    path = Path(output_dir) / "cohort.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: generate it with generate_cohort({str(output_dir)!r})")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_mask(output_dir: str | Path, row: dict) -> np.ndarray:
    """A row's ground-truth mask: uint8, index into TISSUE_TYPES, one pixel per ``row["mask_downsample"]``."""
    with Image.open(Path(output_dir) / row["mask"]) as image:
        return np.array(image)


def patch_targets(
    mask: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    tissue: str,
    *,
    mask_downsample: int = MASK_DOWNSAMPLE,
    min_fraction: float = 0.5,
) -> np.ndarray:
    """Bool per patch: at least ``min_fraction`` of the mask pixels the patch touches are ``tissue``.

    ``coords`` are level-0 top-left (x, y) ``[N, 2]``; only pixels inside the mask count (none: False).
    """
    mask, coords = np.asarray(mask), np.asarray(coords)
    if tissue not in _INDEX:
        raise ValueError(f"unknown tissue {tissue!r}; expected one of {TISSUE_TYPES}")
    if mask.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"need a 2-D mask and coords [N, 2] (level-0 x, y); got {mask.shape} and {coords.shape}")
    if patch_size_level0 < 1 or mask_downsample < 1 or not 0 < min_fraction <= 1:
        raise ValueError("patch_size_level0 and mask_downsample must be >= 1, min_fraction in (0, 1]")
    hits = np.pad((mask == _INDEX[tissue]).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    x0, y0 = np.clip(coords // mask_downsample, 0, mask.shape[::-1]).T
    x1, y1 = np.clip(-(-(coords + patch_size_level0) // mask_downsample), 0, mask.shape[::-1]).T
    count = hits[y1, x1] - hits[y0, x1] - hits[y1, x0] + hits[y0, x0]
    area = (x1 - x0) * (y1 - y0)
    return (area > 0) & (count >= min_fraction * area)
