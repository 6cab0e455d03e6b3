"""Generated slides for testing tissue detection, each with its ground-truth tissue map.

Every slide follows one of `PATTERNS`: a piece of tissue on glass made of what a saturation threshold loses
(mucin lakes, fat, loose stroma, faint staining) or of what drags a slide-wide threshold up (a dominant
haemorrhage focus), beside ordinary tissue. Glass changes from slide to slide as it does between scanners and
coverslips: brightness, tint, a slow illumination gradient, dust specks, and on some slides an unscanned corner
filled with pure white. Labels index `KINDS` (0 is glass), one per ``LABEL_DOWNSAMPLE`` level-0 pixels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..files import atomic_path
from .layout import blob as _blob
from .pale_textures import render_any_texture
from .textures import write_pyramid

KINDS = ("glass", "stroma", "tumour", "necrosis", "lymphocytes", "fat", "mucin", "loose stroma", "haemorrhage")
# pattern -> (kind filling the tissue, lesions as (kind, count, diameter range relative to the tissue's size))
PATTERNS = {
    "solid": ("stroma", (("tumour", 2, (0.3, 0.5)), ("necrosis", 1, (0.2, 0.35)))),
    "lymphoid": ("stroma", (("lymphocytes", 3, (0.3, 0.5)),)),
    "mucinous": ("stroma", (("mucin", 3, (0.35, 0.6)), ("tumour", 1, (0.15, 0.3)))),
    "fatty": ("fat", (("stroma", 2, (0.15, 0.3)), ("lymphocytes", 1, (0.1, 0.2)))),
    "loose": ("loose stroma", (("stroma", 1, (0.2, 0.35)), ("lymphocytes", 1, (0.15, 0.25)))),
    "faint": ("stroma", (("tumour", 1, (0.25, 0.4)), ("fat", 1, (0.25, 0.4)), ("mucin", 1, (0.25, 0.4)))),
    "haemorrhage": ("stroma", (("haemorrhage", 1, (0.75, 0.9)), ("lymphocytes", 1, (0.2, 0.3)),
                               ("loose stroma", 1, (0.2, 0.3)))),
}  # fmt: skip
LABEL_DOWNSAMPLE = 8
MPP = 0.5
_BANK_SIDE, _BLOCK = 1024, 512
# Slide-wide stain factors: weak staining, and a pale section beside blood, whose red comes from haemoglobin and
# so does not fade with the stain (haemorrhage keeps its own factor).
_STAIN = {"faint": (0.35, 0.5), "haemorrhage": (0.5, 0.75)}
_BLOOD_STAIN = (0.9, 1.2)
_GLASS_TRANSMITTANCE = 0.93  # mountant and glass absorb a little over tissue too, as in the glass texture


@dataclass
class TissueSlide:
    """A generated slide: level-0 RGB ``image`` and ``labels`` (index into KINDS) at 1/LABEL_DOWNSAMPLE."""

    pattern: str
    seed: int
    image: np.ndarray
    labels: np.ndarray

    @property
    def slide_id(self) -> str:
        return f"{self.pattern}-{self.seed}"


def make_tissue_slide(pattern: str, seed: int, *, side: int = 3072, tissue: bool = True) -> TissueSlide:
    """Slide ``seed`` of ``pattern`` (about ``side`` level-0 pixels square, at 0.5 µm per pixel); with
    ``tissue=False`` glass only, under the same kinds of light, dust and unscanned corner."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {tuple(PATTERNS)}")
    if not isinstance(side, int) or side < 512 or side % LABEL_DOWNSAMPLE:
        raise ValueError(f"side must be an int >= 512 and a multiple of {LABEL_DOWNSAMPLE}, got {side!r}")
    rng = np.random.default_rng([seed, list(PATTERNS).index(pattern)])
    grid = side // LABEL_DOWNSAMPLE
    shape = (grid + int(rng.integers(-grid // 8, grid // 8 + 1)), grid)
    labels = _layout(pattern, shape, rng) if tissue else np.zeros(shape, np.uint8)
    stain = rng.uniform(*_STAIN.get(pattern, (0.75, 1.25))) * rng.uniform(0.92, 1.08, 3)
    image = _render(labels, _bank(seed % 4), stain, rng)
    return TissueSlide(pattern, seed, _on_glass(image, labels, rng), labels)


def _layout(pattern: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Labels of one slide: the tissue piece filled with the pattern's base kind, then its lesions."""
    base, lesions = PATTERNS[pattern]
    tissue = _blob(shape, (rng.uniform(0.7, 0.9), rng.uniform(0.7, 0.9)), 0.35, rng)
    labels = np.where(tissue, KINDS.index(base), 0).astype(np.uint8)
    inside = np.argwhere(ndimage.binary_erosion(tissue, iterations=max(shape) // 12))
    extent = np.sqrt(tissue.sum())
    for kind, count, (low, high) in lesions:
        for _ in range(count):
            diameter = max(int(extent * rng.uniform(low, high)), 8)
            row, col = inside[rng.integers(len(inside))]
            spot = _blob((diameter, diameter), (rng.uniform(0.8, 1.0), rng.uniform(0.6, 1.0)), 0.4, rng)
            r0, c0 = row - diameter // 2, col - diameter // 2
            box = (max(r0, 0), min(r0 + diameter, shape[0]), max(c0, 0), min(c0 + diameter, shape[1]))
            spot = spot[box[0] - r0 : box[1] - r0, box[2] - c0 : box[3] - c0]
            region = labels[box[0] : box[1], box[2] : box[3]]
            region[spot & (region > 0)] = KINDS.index(kind)
    return labels


@functools.lru_cache(maxsize=2)
def _bank(seed: int) -> dict[str, np.ndarray]:
    """Every kind rendered once at stain scale 1 (slides crop, flip and restain it)."""
    return {
        kind: render_any_texture(kind, _BANK_SIDE, _BANK_SIDE,
                                 np.random.default_rng([seed, 7, number]))
        for number, kind in enumerate(KINDS)
    }  # fmt: skip


def _mosaic(texture: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """[height, width, 3] of _BLOCK-sized crops of ``texture``, each at a random offset, flipped either way."""
    out = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, _BLOCK):
        for left in range(0, width, _BLOCK):
            rows, cols = min(_BLOCK, height - top), min(_BLOCK, width - left)
            r0, c0 = rng.integers(0, _BANK_SIDE - _BLOCK + 1, 2)
            flip_rows, flip_cols = rng.choice((-1, 1), 2)
            crop = texture[r0 : r0 + _BLOCK, c0 : c0 + _BLOCK][::flip_rows, ::flip_cols]
            out[top : top + rows, left : left + cols] = crop[:rows, :cols]
    return out


def _render(labels: np.ndarray, bank: dict, stain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Level-0 float RGB in [0, 1]: each kind's restained texture where the labels say, glass elsewhere."""
    level0 = np.repeat(np.repeat(labels, LABEL_DOWNSAMPLE, 0), LABEL_DOWNSAMPLE, 1)
    height, width = level0.shape
    image = _mosaic(bank["glass"], height, width, rng).astype(np.float32) / 255
    for index in np.unique(labels[labels > 0]):
        where = level0 == index
        texture = _mosaic(bank[KINDS[index]], height, width, rng)[where].astype(np.float32) / 255
        # Optical density times the stain factor is transmittance to that power.
        factor = rng.uniform(*_BLOOD_STAIN) if KINDS[index] == "haemorrhage" else stain
        image[where] = texture ** np.float32(factor) * _GLASS_TRANSMITTANCE
    return image


def _on_glass(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 RGB under this slide's light: brightness, tint and gradient; dust; maybe an unscanned white corner."""
    height, width = image.shape[:2]
    rows, cols = np.ogrid[0 : 1 : height * 1j, 0 : 1 : width * 1j]
    angle, slope = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.03)
    gradient = 1 + slope * ((cols - 0.5) * np.cos(angle) + (rows - 0.5) * np.sin(angle))
    light = rng.uniform(0.86, 1.03) * (1 + rng.uniform(-0.02, 0.02, 3))
    image *= (gradient[..., None] * light * 255).astype(np.float32)
    glass = ~ndimage.binary_dilation(labels > 0, iterations=4)
    for _ in range(int(rng.integers(5, 20))):  # dust: dark specks far below any minimum tissue area
        row, col = int(rng.integers(height)), int(rng.integers(width))
        radius, density = rng.uniform(3, 25), rng.uniform(0.1, 0.6)
        r0, c0 = max(int(row - radius), 0), max(int(col - radius), 0)
        box = np.s_[r0 : min(int(row + radius) + 1, height), c0 : min(int(col + radius) + 1, width)]
        yy, xx = np.ogrid[box]
        image[box][(yy - row) ** 2 + (xx - col) ** 2 <= radius**2] *= np.float32(10**-density)
    if rng.random() < 0.4:  # a scanner's unscanned area, filled with white, in one corner
        corner = np.zeros(labels.shape, bool)
        size = (labels.shape[0] // 4, labels.shape[1] // 3)
        corner[: size[0], : size[1]] = True
        corner = corner[:: rng.choice((-1, 1)), :: rng.choice((-1, 1))]
        fill = np.repeat(np.repeat(corner & glass, LABEL_DOWNSAMPLE, 0), LABEL_DOWNSAMPLE, 1)
        image[fill] = 255
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_tissue_slide(slide: TissueSlide, folder: str | Path) -> tuple[Path, Path]:
    """Write ``<slide_id>.tif`` (a JPEG pyramid OpenSlide reads, 0.5 µm per pixel) and ``<slide_id>-labels.png``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = folder / f"{slide.slide_id}-labels.png"
    with atomic_path(labels) as partial:
        Image.fromarray(slide.labels).save(partial, format="PNG")
    path = folder / f"{slide.slide_id}.tif"
    with atomic_path(path) as partial:
        write_pyramid(partial, slide.image, mpp=MPP, levels=3)
    return path, labels


def kept_map(coords: np.ndarray, patch_size_level0: int, shape: tuple[int, int]) -> np.ndarray:
    """Bool ``shape`` map at 1/LABEL_DOWNSAMPLE: True under the patches at ``coords`` (level-0 top-left x, y)."""
    kept = np.zeros(shape, bool)
    side = -(-patch_size_level0 // LABEL_DOWNSAMPLE)
    for x, y in np.asarray(coords) // LABEL_DOWNSAMPLE:
        kept[y : y + side, x : x + side] = True
    return kept


def detection_scores(labels: np.ndarray, mask: np.ndarray, kept: np.ndarray) -> dict:
    """How a detector did against the truth: per kind present, the share of its area in the ``mask`` and under
    ``kept`` patches (recall by area); and the share of the glass that the mask calls tissue.

    ``mask`` (any size, resized to the labels by nearest neighbour) and ``kept`` (labels' shape) are booleans.
    """
    mask = np.asarray(Image.fromarray(np.asarray(mask, np.uint8)).resize(labels.shape[::-1], Image.NEAREST)) > 0
    scores = {"glass_as_tissue": float(mask[labels == 0].mean()), "area": {}, "mask_recall": {}, "patch_recall": {}}
    for index in np.unique(labels[labels > 0]):
        where = labels == index
        scores["area"][KINDS[index]] = int(where.sum())
        scores["mask_recall"][KINDS[index]] = float(mask[where].mean())
        scores["patch_recall"][KINDS[index]] = float(kept[where].mean())
    return scores
