"""A seeded synthetic whole-slide cohort with ground truth, to pretrain and evaluate slide-text models on.

Two families (``generate_cohort(family=...)``). "lesions" (the default, this module): irregular fibrous stroma on
glass with lesions (tumour, necrosis, lymphocytes, fat) of varying size and place; the diagnosis follows from the
kinds present (`diagnosis_of`). "hierarchical" (`pathflip.synthetic.hierarchical`): 1-3 fragments, seven tissue
patterns, four diagnoses by hierarchical rules, rare findings and described, graded background. Output folder::

    generator.json          generator version, seed and family (a rerun into the folder must match them)
    slides/<slide_id>.tif   pyramidal TIFF, 3 levels, level 0 at 0.5 um/px (OpenSlide vendor generic-tiff)
    masks/<slide_id>.png    uint8 labels (index into the row's "tissue_types", else textures.TISSUE_TYPES)
                            at 1 / MASK_DOWNSAMPLE
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
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from ..files import atomic_path, write_text
from . import hierarchical
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
    stratified_splits,
)
from .textures import TISSUE_TYPES, render_texture, write_pyramid

DIAGNOSES = ("invasive carcinoma", "carcinoma with necrosis", "reactive lymphoid hyperplasia")
GENERATOR_VERSION = 1
_SIZES = (2048, 3072, 64)  # level-0 slide sides: lowest, highest, step
_DIAMETERS = (400, 1300)  # level-0 lesion diameters
_INDEX = {kind: index for index, kind in enumerate(TISSUE_TYPES)}
_REQUIRED = {0: ("tumour",), 1: ("tumour", "necrosis"), 2: ("lymphocytes",)}
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
        diameter, spot = rng.uniform(*_DIAMETERS) / GRID, None
        for attempt in range(60):
            if attempt % 15 == 14:
                diameter = max(diameter * 0.75, _DIAMETERS[0] / GRID)
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
    tissue = blob(shape, (rng.uniform(0.82, 0.97), rng.uniform(0.82, 0.97)), 0.35, rng)
    tissue[[0, 1, -2, -1]], tissue[:, [0, 1, -2, -1]] = False, False
    lesions = _place(tissue, kinds, required, rng)
    if lesions is None:
        return None
    grid = np.where(tissue, _INDEX["stroma"], _INDEX["background"]).astype(np.uint8)
    rows, cols = np.nonzero(tissue)
    regions = [("stroma", (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1))]
    for kind, row, col, diameter in lesions:
        lesion = blob((diameter, diameter), (rng.uniform(0.8, 1.0), rng.uniform(0.6, 1.0)), 0.4, rng)
        r0, c0 = row - diameter // 2, col - diameter // 2
        box = (max(r0, 0), min(r0 + diameter, shape[0]), max(c0, 0), min(c0 + diameter, shape[1]))
        lesion = lesion[box[0] - r0 : box[1] - r0, box[2] - c0 : box[3] - c0]
        grid[box[0] : box[1], box[2] : box[3]][lesion & tissue[box[0] : box[1], box[2] : box[3]]] = _INDEX[kind]
        regions.append((kind, box))
    return grid, regions, lesions, regions[0][1]


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
        places = [place_name(row, col, box) for k, row, col, _ in lesions if k == kind]
        findings.append({"sentence": _sentence(kind, places, rng), "tissue": kind})
    if rng.random() < 0.3:
        findings.append(findings.pop(0))
    diagnosis = _DIAGNOSIS_SENTENCES[rng.integers(len(_DIAGNOSIS_SENTENCES))].format(DIAGNOSES[label])
    return " ".join([finding["sentence"] for finding in findings] + [diagnosis]), findings


def _plan_slide(seed: int, index: int) -> Plan:
    """Slide ``index``'s label, size, stain, geometry and caption, from its own generator."""
    label = balanced_label(seed, 1, index, len(DIAGNOSES))
    rng = np.random.default_rng([seed, 0, index])
    height, width = (_SIZES[0] + _SIZES[2] * rng.integers(0, (_SIZES[1] - _SIZES[0]) // _SIZES[2] + 1, 2)).tolist()
    stain = rng.uniform(0.75, 1.25) * rng.uniform(0.92, 1.08, 3)
    for _ in range(100):  # a retry draws another tissue shape: rare, and deterministic
        geometry = _geometry((height // GRID, width // GRID), _lesion_kinds(label, rng), len(_REQUIRED[label]), rng)
        if geometry is None:
            continue
        grid, regions, lesions, box = geometry
        plan = Plan(slide_paths(index)[0], label, width, height, stain, grid, regions)
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
        texture = render_texture(kind, BANK_SIDE, BANK_SIDE, np.random.default_rng([seed, 2, number]))
        bank[kind] = (texture, np.ascontiguousarray(texture.transpose(1, 0, 2)))
    return bank


def _slide_image(plan: Plan, seed: int, index: int) -> np.ndarray:
    """Slide ``index``'s level-0 RGB, from a generator of its own (so that planning stays cheap)."""
    return render(plan, _texture_bank(seed), np.random.default_rng([seed, 4, index]))


FAMILIES = {
    "lesions": Family("lesions", DIAGNOSES, TISSUE_TYPES, _plan_slide, _texture_bank, _slide_image),
    "hierarchical": hierarchical.FAMILY,
}


def _make_slide(root: Path, family: Family, seed: int, index: int) -> dict:
    """Plan slide ``index``, write whichever of its files are missing and return its row (split left blank)."""
    plan = family.plan(seed, index)
    _, slide, mask = slide_paths(index)
    if not (root / mask).exists():
        with atomic_path(root / mask) as temporary:
            Image.fromarray(plan.mask).save(temporary, format="PNG")
    if not (root / slide).exists():
        image = family.image(plan, seed, index)
        with atomic_path(root / slide) as temporary:
            write_pyramid(temporary, image, mpp=MPP, layout="generic", levels=3)
    row = {"slide_id": plan.slide_id, "split": "", "label": plan.label, "diagnosis": family.diagnoses[plan.label]}
    row |= {"caption": plan.caption, "findings": plan.findings, "slide": slide, "mask": mask}
    row |= {"mask_downsample": MASK_DOWNSAMPLE, "mpp": MPP, "width": plan.width, "height": plan.height}
    return row | plan.extra


def cohort_family(family: str) -> Family:
    """The family called ``family``; a one-line ValueError naming the choices otherwise."""
    if family not in FAMILIES:
        raise ValueError(f"unknown cohort family {family!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


def check_generator(output_dir: str | Path, *, seed: int, family: str = "lesions") -> dict:
    """The ``generator.json`` record of a cohort of ``seed`` and ``family``; a ValueError when ``output_dir``
    already holds a different one. Family "lesions" writes no family key (folders written before it had one)."""
    generator = {"generator": "pathflip.synthetic.cohort", "version": GENERATOR_VERSION, "seed": seed}
    generator |= {} if cohort_family(family).name == "lesions" else {"family": family}
    path = Path(output_dir) / "generator.json"
    if path.exists() and (found := json.loads(path.read_text())) != generator:
        raise ValueError(f"{output_dir} holds a cohort made with {found}, not {generator}; use another output_dir")
    return generator


def generate_cohort(
    output_dir: str | Path,
    *,
    num_slides: int = 150,
    seed: int = 0,
    test_fraction: float = 0.3,
    progress: bool = True,
    num_workers: int | None = None,
    family: str = "lesions",
) -> list[dict]:
    """Write (or complete) a synthetic cohort of ``family`` under ``output_dir`` and return its rows (see the module
    doc).

    Slides whose files exist are kept, so an interrupted run resumes (``generator.json`` guards seed and family);
    ``cohort.jsonl`` is rewritten at the end, the same for a fresh and a resumed run. ``num_workers`` threads
    render (default: up to 2; numpy, PIL and the JPEG codec release the GIL); the output does not depend on it.
    """
    chosen = cohort_family(family)
    classes = len(chosen.diagnoses)
    if not isinstance(num_slides, int) or num_slides < classes:
        raise ValueError(f"num_slides must be an int >= {classes} (one per diagnosis), got {num_slides!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(test_fraction, float | int) or not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
        raise ValueError(f"num_workers must be a positive int or None, got {num_workers!r}")
    root = Path(output_dir)
    generator = check_generator(root, seed=seed, family=family)
    if not (root / "generator.json").exists():
        write_text(root / "generator.json", json.dumps(generator) + "\n")
    for folder in ("slides", "masks"):
        (root / folder).mkdir(exist_ok=True)
    if not all((root / path).exists() for index in range(num_slides) for path in slide_paths(index)[1:]):
        chosen.bank(seed)  # once, before the threads
    rows = []
    with ThreadPoolExecutor(num_workers or min(2, os.cpu_count() or 1)) as pool:
        jobs = pool.map(functools.partial(_make_slide, root, chosen, seed), range(num_slides))
        rows += tqdm(jobs, total=num_slides, desc="synthetic slides", unit="slide", disable=not progress)
    splits = stratified_splits([row["label"] for row in rows], seed, test_fraction, classes)
    for row, split in zip(rows, splits, strict=True):
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
    """A row's ground-truth mask: uint8, index into ``row_tissue_types(row)``, one pixel per
    ``row["mask_downsample"]``."""
    with Image.open(Path(output_dir) / row["mask"]) as image:
        return np.array(image)


def row_tissue_types(row: dict) -> tuple[str, ...]:
    """What a row's mask values mean: its "tissue_types" (family "hierarchical"), else textures.TISSUE_TYPES."""
    return tuple(row.get("tissue_types", TISSUE_TYPES))


def patch_targets(
    mask: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    tissue: str,
    *,
    mask_downsample: int = MASK_DOWNSAMPLE,
    min_fraction: float = 0.5,
    tissue_types: tuple[str, ...] = TISSUE_TYPES,
) -> np.ndarray:
    """Bool per patch: at least ``min_fraction`` of the mask pixels the patch touches are ``tissue``.

    ``coords`` are level-0 top-left (x, y) ``[N, 2]``; only pixels inside the mask count (none: False).
    ``tissue_types``: what the mask values mean (a row's, see `row_tissue_types`).
    """
    mask, coords, tissue_types = np.asarray(mask), np.asarray(coords), tuple(tissue_types)
    if tissue not in tissue_types:
        raise ValueError(f"unknown tissue {tissue!r}; expected one of {tissue_types}")
    if mask.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"need a 2-D mask and coords [N, 2] (level-0 x, y); got {mask.shape} and {coords.shape}")
    if patch_size_level0 < 1 or mask_downsample < 1 or not 0 < min_fraction <= 1:
        raise ValueError("patch_size_level0 and mask_downsample must be >= 1, min_fraction in (0, 1]")
    hits = np.pad((mask == tissue_types.index(tissue)).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    x0, y0 = np.clip(coords // mask_downsample, 0, mask.shape[::-1]).T
    x1, y1 = np.clip(-(-(coords + patch_size_level0) // mask_downsample), 0, mask.shape[::-1]).T
    count = hits[y1, x1] - hits[y0, x1] - hits[y1, x0] + hits[y0, x0]
    area = (x1 - x0) * (y1 - y0)
    return (area > 0) & (count >= min_fraction * area)
