"""A seeded synthetic whole-slide cohort with ground truth: slides, lesion masks, captions, diagnoses, a split.

Every slide is an irregular piece of tissue on glass: fibrous stroma holding lesions of other tissue kinds
(tumour, necrosis, lymphocytes, fat) of varying size and position. The diagnosis follows from which kinds
are present (`diagnosis_of`); distractor findings occur in every class, lesion sizes and stain intensity vary
per slide, so slide colour does not give the diagnosis away. Layout of an output folder::

    generator.json          seed and generator version (a rerun into the folder must match them)
    slides/<slide_id>.tif   pyramidal TIFF (3 levels), level 0 at 0.5 um/px, OpenSlide vendor generic-tiff
    masks/<slide_id>.png    uint8 labels, index into synthetic.TISSUE_TYPES, at 1 / MASK_DOWNSAMPLE
    cohort.jsonl            one row per slide, written last

Rendering every slide afresh with `synthetic.render_texture` costs about 2 s a slide, so textures come from
a bank rendered once per cohort: a slide is a mosaic of randomly placed, rotated and mirrored crops of it, and
its stain intensity is varied the Beer-Lambert way (optical density times ``stain_scale``: a per-channel power
of the transmittance, with a small per-channel jitter). Slide files depend on (seed, index) only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from .synthetic import TISSUE_TYPES, render_texture, write_pyramid

DIAGNOSES = ("invasive carcinoma", "carcinoma with necrosis", "reactive lymphoid hyperplasia")
MASK_DOWNSAMPLE = 16
MPP = 0.5
GENERATOR_VERSION = 1
_GRID = 8  # level-0 pixels per pixel of the geometry grid (the mask is its 2x2 majority)
_SIZE_RANGE = (2048, 3072)  # level-0 slide sides, in steps of _SIZE_STEP
_SIZE_STEP = 64
_DIAMETER_RANGE = (300, 1200)  # level-0 lesion diameters
_BLOCK = 1024  # mosaic block side
_BANK_SIDES = {"stroma": 2048, "background": 1536}  # other kinds: 1536
_INDEX = {kind: index for index, kind in enumerate(TISSUE_TYPES)}
_REQUIRED = {0: ("tumour",), 1: ("tumour", "necrosis"), 2: ("lymphocytes",)}

_PLACES = (("upper left", "upper", "upper right"), ("left", "central", "right"), ("lower left", "lower", "lower right"))
_STROMA_SENTENCES = (
    "Fibrous stroma throughout the section.",
    "The background is dense collagenous stroma.",
    "Bundles of fibrous stroma make up most of the tissue.",
)
# (singular, plural) openings of a finding sentence; a location may follow.
_PHRASES = {
    "tumour": (
        ("A nest of atypical tumour cells", "Nests of atypical tumour cells"),
        ("An infiltrating tumour focus with pleomorphic nuclei", "Infiltrating tumour foci with pleomorphic nuclei"),
        ("A sheet of malignant epithelial cells", "Sheets of malignant epithelial cells"),
    ),
    "necrosis": (
        ("A focus of coagulative necrosis", "Foci of coagulative necrosis"),
        ("An area of necrotic debris with nuclear dust", "Areas of necrotic debris with nuclear dust"),
        ("A patch of necrosis", "Patches of necrosis"),
    ),
    "lymphocytes": (
        ("A dense lymphoid aggregate", "Dense lymphoid aggregates"),
        ("A cluster of small lymphocytes", "Clusters of small lymphocytes"),
        ("A lymphocytic infiltrate", "Lymphocytic infiltrates"),
    ),
    "fat": (
        ("A lobule of mature adipose tissue", "Lobules of mature adipose tissue"),
        ("A group of adipocytes", "Groups of adipocytes"),
        ("An island of fat", "Islands of fat"),
    ),
}
_DIAGNOSIS_SENTENCES = ("Diagnosis: {}.", "Final diagnosis: {}.", "The findings are consistent with {}.")


def class_prompts() -> list[str]:
    """The zero-shot class prompts: the diagnosis names, in label order."""
    return list(DIAGNOSES)


def diagnosis_of(tissues: Iterable[str]) -> int | None:
    """The label implied by the tissue kinds present: tumour -> 0 (1 with necrosis); else lymphocytes -> 2."""
    present = set(tissues)
    if "tumour" in present:
        return 1 if "necrosis" in present else 0
    return 2 if "lymphocytes" in present else None


@dataclass
class _Plan:
    """Everything about one slide but its pixels (cheap, so a resumed run recomputes it)."""

    slide_id: str
    label: int
    width: int
    height: int
    stain: np.ndarray  # per-channel optical-density factors
    grid: np.ndarray  # uint8 tissue labels, one per _GRID x _GRID level-0 pixels
    regions: list[tuple[str, tuple[int, int, int, int]]]  # (kind, grid box r0, r1, c0, c1), stroma first
    caption: str
    findings: list[dict[str, str]]

    @property
    def mask(self) -> np.ndarray:
        """The ground-truth mask at MASK_DOWNSAMPLE: the majority label of each block of the grid."""
        factor = MASK_DOWNSAMPLE // _GRID
        height, width = self.grid.shape
        blocks = self.grid.reshape(height // factor, factor, width // factor, factor)
        counts = np.stack([(blocks == index).sum((1, 3)) for index in range(len(TISSUE_TYPES))])
        return counts.argmax(0).astype(np.uint8)


def _label(seed: int, index: int) -> int:
    """Balanced labels: each run of len(DIAGNOSES) indices holds every class once, in seeded order."""
    classes = len(DIAGNOSES)
    return int(np.random.default_rng([seed, 1, index // classes]).permutation(classes)[index % classes])


def _smooth_noise(shape: tuple[int, int], scale: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean unit-std noise whose blobs are about ``scale`` pixels across (Gaussian interpolation of knots)."""
    scale = max(int(scale), 2)
    knots = rng.standard_normal((shape[0] // scale + 4, shape[1] // scale + 4))
    field = _interpolation(shape[0], scale, knots.shape[0]) @ knots @ _interpolation(shape[1], scale, knots.shape[1]).T
    return (field - field.mean()) / (field.std() + 1e-9)


def _interpolation(size: int, scale: int, knots: int) -> np.ndarray:
    """[size, knots] row-normalised Gaussian weights of knots spaced ``scale`` pixels apart."""
    distance = (np.arange(size)[:, None] / scale + 1.5) - np.arange(knots)[None, :]
    weights = np.exp(-0.5 * (distance / 0.6) ** 2)
    return weights / weights.sum(1, keepdims=True)


def _blob(shape: tuple[int, int], axes: tuple[float, float], roughness: float, rng: np.random.Generator) -> np.ndarray:
    """An irregular filled blob: a rotated ellipse (semi-axes relative to the half sides) with a noisy outline."""
    height, width = shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    rows, cols = (rows - height / 2) / (height / 2), (cols - width / 2) / (width / 2)
    angle = rng.uniform(0, np.pi)
    along, across = cols * np.cos(angle) + rows * np.sin(angle), rows * np.cos(angle) - cols * np.sin(angle)
    field = 1 - (along / axes[0]) ** 2 - (across / axes[1]) ** 2
    field += roughness * _smooth_noise(shape, max(height, width) // 4, rng)
    field += 0.3 * roughness * _smooth_noise(shape, max(height, width) // 12, rng)
    blob = (field > 0) & (rows**2 + cols**2 < 1)
    labels, count = ndimage.label(blob)
    if count > 1:
        blob = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(blob)


def _lesion_kinds(label: int, rng: np.random.Generator) -> list[str]:
    """Required kinds first (one lesion each), then extra lesions and distractors that may be dropped."""
    kinds = list(_REQUIRED[label])
    for kind in _REQUIRED[label]:
        kinds += [kind] * int(rng.integers(0, 3 if kind == "lymphocytes" else 2))
    if label != 2 and rng.random() < 0.5:
        kinds += ["lymphocytes"] * int(rng.integers(1, 3))
    if rng.random() < 0.6:
        kinds += ["fat"] * int(rng.integers(1, 3))
    return kinds


def _place(
    tissue: np.ndarray, kinds: list[str], required: int, rng: np.random.Generator
) -> list[tuple[str, int, int, int]] | None:
    """Non-overlapping lesion discs (kind, centre row, centre col, diameter) well inside the tissue (grid units).

    Returns None when one of the first ``required`` lesions finds no room; later ones are dropped instead.
    """
    depth = ndimage.distance_transform_edt(tissue)
    inside = np.argwhere(tissue)
    placed: list[tuple[str, int, int, int]] = []
    for number, kind in enumerate(kinds):
        diameter = rng.uniform(*_DIAMETER_RANGE) / _GRID
        spot = None
        for attempt in range(60):
            if attempt % 15 == 14:
                diameter = max(diameter * 0.75, _DIAMETER_RANGE[0] / _GRID)
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
    """Tissue labels on the grid, the painted regions and the placed lesions; None when they do not fit."""
    tissue = _blob(shape, (rng.uniform(0.78, 0.95), rng.uniform(0.78, 0.95)), 0.35, rng)
    tissue[:2], tissue[-2:], tissue[:, :2], tissue[:, -2:] = False, False, False, False
    lesions = _place(tissue, kinds, required, rng)
    if lesions is None:
        return None
    grid = np.where(tissue, _INDEX["stroma"], _INDEX["background"]).astype(np.uint8)
    rows, cols = np.nonzero(tissue)
    regions = [("stroma", (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1))]
    for kind, row, col, diameter in lesions:
        shape_ = _blob((diameter, diameter), (rng.uniform(0.75, 0.95), rng.uniform(0.5, 0.95)), 0.45, rng)
        r0, c0 = row - diameter // 2, col - diameter // 2
        box = (max(r0, 0), min(r0 + diameter, shape[0]), max(c0, 0), min(c0 + diameter, shape[1]))
        shape_ = shape_[box[0] - r0 : box[1] - r0, box[2] - c0 : box[3] - c0]
        view = grid[box[0] : box[1], box[2] : box[3]]
        view[shape_ & tissue[box[0] : box[1], box[2] : box[3]]] = _INDEX[kind]
        regions.append((kind, box))
    return grid, regions, lesions, regions[0][1]


def _place_name(row: int, col: int, box: tuple[int, int, int, int]) -> str:
    """Where (row, col) lies in the box, by thirds: 'upper left', 'central', ..."""
    third_row = min(int(3 * (row - box[0]) / max(box[1] - box[0], 1)), 2)
    third_col = min(int(3 * (col - box[2]) / max(box[3] - box[2], 1)), 2)
    return _PLACES[third_row][third_col]


def _sentence(kind: str, places: list[str], rng: np.random.Generator) -> str:
    """One finding sentence in a seeded phrasing, with its location(s) most of the time."""
    opening = _PHRASES[kind][rng.integers(len(_PHRASES[kind]))][len(places) > 1]
    if rng.random() < 0.3:
        return f"{opening}."
    unique = list(dict.fromkeys(places))
    where = unique[0] if len(unique) == 1 else ", ".join(unique[:-1]) + " and " + unique[-1]
    plural = len(unique) > 1
    suffix = ("parts of the section", "regions") if plural else ("part of the section", "region")
    return f"{opening} in the {where} {suffix[rng.integers(2)]}."


def _caption(label: int, lesions: list, present: set[str], box, rng: np.random.Generator):
    """The caption and its findings ({"sentence", "tissue"}), one sentence per lesion kind present."""
    findings = [{"sentence": _STROMA_SENTENCES[rng.integers(len(_STROMA_SENTENCES))], "tissue": "stroma"}]
    kinds = [kind for kind in dict.fromkeys(kind for kind, *_ in lesions) if kind in present]
    for kind in (kinds[i] for i in rng.permutation(len(kinds))):
        places = [_place_name(row, col, box) for k, row, col, _ in lesions if k == kind]
        findings.append({"sentence": _sentence(kind, places, rng), "tissue": kind})
    if rng.random() < 0.3:
        findings.append(findings.pop(0))
    diagnosis = _DIAGNOSIS_SENTENCES[rng.integers(len(_DIAGNOSIS_SENTENCES))].format(DIAGNOSES[label])
    return " ".join([finding["sentence"] for finding in findings] + [diagnosis]), findings


def _plan_slide(seed: int, index: int) -> _Plan:
    """The slide's geometry, stain and caption from its own generator (seed, index)."""
    rng = np.random.default_rng([seed, 0, index])
    label = _label(seed, index)
    steps = (_SIZE_RANGE[1] - _SIZE_RANGE[0]) // _SIZE_STEP + 1
    height, width = (_SIZE_RANGE[0] + _SIZE_STEP * rng.integers(0, steps, 2)).tolist()
    stain = rng.uniform(0.75, 1.25) * rng.uniform(0.92, 1.08, 3)
    while True:  # a retry draws a new tissue shape: rare, and deterministic
        kinds = _lesion_kinds(label, rng)
        geometry = _geometry((height // _GRID, width // _GRID), kinds, len(_REQUIRED[label]), rng)
        if geometry is None:
            continue
        grid, regions, lesions, box = geometry
        plan = _Plan(_slide_id(index), label, width, height, stain, grid, regions, "", [])
        present = {TISSUE_TYPES[value] for value in np.unique(plan.mask)}
        if diagnosis_of(present) == label:
            plan.caption, plan.findings = _caption(label, lesions, present, box, rng)
            return plan


@functools.lru_cache(maxsize=1)
def _texture_bank(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One large seeded render of every tissue kind (stain scale 1) and its transpose, shared by all slides."""
    bank = {}
    for number, kind in enumerate(TISSUE_TYPES):
        side = _BANK_SIDES.get(kind, 1536)
        texture = render_texture(kind, side, side, np.random.default_rng([seed, 2, number]))
        bank[kind] = (texture, np.ascontiguousarray(texture.transpose(1, 0, 2)))
        for array in bank[kind]:
            array.setflags(write=False)
    return bank


def _mosaic(textures: tuple[np.ndarray, ...], height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """[height, width, 3] of _BLOCK-sized crops of a texture, each at a random offset and in one of 8 orientations."""
    out = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, _BLOCK):
        for left in range(0, width, _BLOCK):
            rows, cols = min(_BLOCK, height - top), min(_BLOCK, width - left)
            view = textures[int(rng.integers(2))]  # as rendered or transposed, then flipped either way
            step_rows, step_cols = rng.choice((-1, 1), 2)
            r0 = int(rng.integers(view.shape[0] - rows + 1))
            c0 = int(rng.integers(view.shape[1] - cols + 1))
            crop = view[r0 : r0 + rows, c0 : c0 + cols][::step_rows, ::step_cols]
            out[top : top + rows, left : left + cols] = crop
    return out


def _stain_table(factors: np.ndarray) -> list[int]:
    """A PIL RGB lookup table scaling optical density per channel (Beer-Lambert: transmittance to a power)."""
    transmittance = np.arange(256) / 255
    return np.concatenate([np.round(255 * transmittance**factor) for factor in factors]).astype(int).tolist()


def _render(plan: _Plan, bank: dict[str, tuple[np.ndarray, ...]], rng: np.random.Generator) -> np.ndarray:
    """The slide's level-0 RGB: glass, then stroma over the tissue, then each lesion, composited by label."""
    image = Image.fromarray(_mosaic(bank["background"], plan.height, plan.width, rng))
    table = _stain_table(plan.stain)
    for kind, (r0, r1, c0, c1) in plan.regions:
        size = ((c1 - c0) * _GRID, (r1 - r0) * _GRID)
        texture = Image.fromarray(_mosaic(bank[kind], size[1], size[0], rng)).point(table)
        inside = Image.fromarray((plan.grid[r0:r1, c0:c1] == _INDEX[kind]).astype(np.uint8) * 255)
        image.paste(texture, (c0 * _GRID, r0 * _GRID), inside.resize(size, Image.Resampling.NEAREST))
    return np.asarray(image)


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary name next to ``path``; move it into place only when the block succeeds."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _slide_id(index: int) -> str:
    return f"slide-{index:04d}"


def _paths(slide_id: str) -> tuple[str, str]:
    """The slide's TIFF and mask, relative to the output folder."""
    return f"slides/{slide_id}.tif", f"masks/{slide_id}.png"


def _make_slide(root: Path, seed: int, index: int) -> dict:
    """Plan one slide, write whichever of its files are missing, and return its row (without the split)."""
    plan = _plan_slide(seed, index)
    slide, mask = _paths(plan.slide_id)
    if not (root / mask).exists():
        with _atomic(root / mask) as temporary:
            Image.fromarray(plan.mask).save(temporary, format="PNG")
    if not (root / slide).exists():
        image = _render(plan, _texture_bank(seed), np.random.default_rng([seed, 4, index]))
        with _atomic(root / slide) as temporary:
            write_pyramid(temporary, image, mpp=MPP, layout="generic", levels=3)
    return {
        "slide_id": plan.slide_id,
        "split": "",
        "label": plan.label,
        "diagnosis": DIAGNOSES[plan.label],
        "caption": plan.caption,
        "findings": plan.findings,
        "slide": slide,
        "mask": mask,
        "mask_downsample": MASK_DOWNSAMPLE,
        "mpp": MPP,
        "width": plan.width,
        "height": plan.height,
    }


def _splits(labels: list[int], seed: int, test_fraction: float) -> list[str]:
    """Seeded split stratified by label: round(test_fraction * n) test slides per class (>= 1 of each split)."""
    rng = np.random.default_rng([seed, 3])
    splits = ["train"] * len(labels)
    for label in range(len(DIAGNOSES)):
        members = np.flatnonzero(np.asarray(labels) == label)
        count = int(round(test_fraction * len(members)))
        if test_fraction > 0 and len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        for index in rng.permutation(members)[:count]:
            splits[index] = "test"
    return splits


def _check_folder(root: Path, seed: int) -> None:
    """Record the generator and seed in ``generator.json``; refuse a folder generated otherwise."""
    expected = {"generator": "processing.cohort", "version": GENERATOR_VERSION, "seed": seed}
    path = root / "generator.json"
    if path.exists():
        found = json.loads(path.read_text())
        if found != expected:
            raise ValueError(
                f"{root} holds a cohort made with {found}, not {expected}; use another output_dir or delete it"
            )
        return
    with _atomic(path) as temporary:
        temporary.write_text(json.dumps(expected) + "\n")


def _check_arguments(num_slides: int, seed: int, test_fraction: float, num_workers: int | None) -> None:
    def is_int(value) -> bool:
        return isinstance(value, int | np.integer) and not isinstance(value, bool)

    if not is_int(num_slides) or num_slides < len(DIAGNOSES):
        raise ValueError(f"num_slides must be an int >= {len(DIAGNOSES)} (one per diagnosis), got {num_slides!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(test_fraction, float | int) or not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if num_workers is not None and (not is_int(num_workers) or num_workers < 1):
        raise ValueError(f"num_workers must be a positive int or None, got {num_workers!r}")


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

    Slides whose files exist are kept, so an interrupted run resumes; ``cohort.jsonl`` is rewritten at the end
    and is the same for a fresh and a resumed run. ``num_workers`` rendering processes (spawned; default: up to
    2 when there are 16 slides or more to render, else this process); the output does not depend on it.
    """
    _check_arguments(num_slides, seed, test_fraction, num_workers)
    root = Path(output_dir)
    for folder in ("slides", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    _check_folder(root, seed)
    todo = [i for i in range(num_slides) if not all((root / path).exists() for path in _paths(_slide_id(i)))]
    workers = num_workers or (min(2, os.cpu_count() or 1) if len(todo) >= 16 else 1)
    make = functools.partial(_make_slide, root, seed)
    rows: dict[int, dict] = {}
    with tqdm(total=num_slides, desc="synthetic slides", unit="slide", disable=not progress) as bar:
        if workers > 1 and todo:
            context = multiprocessing.get_context("spawn")  # fork is unsafe in a process running threads (torch)
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context) as pool:
                for index, row in zip(todo, pool.map(make, todo), strict=True):
                    rows[index] = row
                    bar.update()
        for index in range(num_slides):
            if index not in rows:
                rows[index] = make(index)
                bar.update()
    ordered = [rows[index] for index in range(num_slides)]
    for row, split in zip(ordered, _splits([row["label"] for row in ordered], seed, test_fraction), strict=True):
        row["split"] = split
    with _atomic(root / "cohort.jsonl") as temporary:
        temporary.write_text("".join(json.dumps(row) + "\n" for row in ordered))
    return ordered


def load_cohort(output_dir: str | Path) -> list[dict]:
    """The rows of ``output_dir/cohort.jsonl``."""
    path = Path(output_dir) / "cohort.jsonl"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: generate the cohort first with "
            f"processing.cohort.generate_cohort({str(output_dir)!r})"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_mask(output_dir: str | Path, row: dict) -> np.ndarray:
    """A row's ground-truth label mask (uint8, index into TISSUE_TYPES, at ``row["mask_downsample"]``)."""
    with Image.open(Path(output_dir) / row["mask"]) as image:
        return np.asarray(image)


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

    ``coords`` are level-0 top-left (x, y) ``[N, 2]``; mask pixels outside the mask do not count.
    """
    mask, coords = np.asarray(mask), np.asarray(coords)
    if tissue not in _INDEX:
        raise ValueError(f"unknown tissue {tissue!r}; expected one of {TISSUE_TYPES}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [height, width], got shape {mask.shape}")
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be [N, 2] level-0 (x, y), got shape {coords.shape}")
    if patch_size_level0 < 1 or mask_downsample < 1 or not 0 < min_fraction <= 1:
        raise ValueError("patch_size_level0 and mask_downsample must be >= 1 and min_fraction in (0, 1]")
    hits = np.pad((mask == _INDEX[tissue]).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    x0 = np.clip(coords[:, 0] // mask_downsample, 0, mask.shape[1])
    y0 = np.clip(coords[:, 1] // mask_downsample, 0, mask.shape[0])
    x1 = np.clip(-(-(coords[:, 0] + patch_size_level0) // mask_downsample), 0, mask.shape[1])
    y1 = np.clip(-(-(coords[:, 1] + patch_size_level0) // mask_downsample), 0, mask.shape[0])
    count = hits[y1, x1] - hits[y0, x1] - hits[y1, x0] + hits[y0, x0]
    area = (x1 - x0) * (y1 - y0)
    return (area > 0) & (count >= min_fraction * area)
