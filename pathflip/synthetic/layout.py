"""What every synthetic cohort family shares: the slide plan, its geometry grid, blobs, place names, the
mosaic render, file names and the stratified split.

A family (`Family`) says which tissues and diagnoses it has and how it plans and renders one slide;
`pathflip.synthetic.cohort.generate_cohort` writes the files and rows of any family the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from .textures import TISSUE_TYPES

MASK_DOWNSAMPLE = 16
MPP = 0.5
GRID = 8  # level-0 pixels per pixel of the geometry grid (the mask is the grid's 2x2 majority)
BLOCK, BANK_SIDE = 1024, 1536  # mosaic block side, side of each texture in a bank
_PLACES = (("upper left", "upper", "upper right"), ("left", "central", "right"), ("lower left", "lower", "lower right"))


@dataclass
class Plan:
    """Everything about one slide but its pixels: cheap, so a resumed run recomputes it."""

    slide_id: str
    label: int
    width: int
    height: int
    stain: np.ndarray  # per-channel optical-density factors
    grid: np.ndarray  # uint8 labels (index into ``kinds``), one per GRID x GRID level-0 pixels
    regions: list  # (kind, (r0, r1, c0, c1)): grid boxes to paint, stroma first
    caption: str = ""
    findings: list = field(default_factory=list)
    kinds: tuple[str, ...] = TISSUE_TYPES  # the family's tissue types, "background" among them
    extra: dict = field(default_factory=dict)  # family-specific row keys, appended to the shared ones

    @property
    def mask(self) -> np.ndarray:
        """The ground truth at MASK_DOWNSAMPLE: the majority label of each block of the grid."""
        f = MASK_DOWNSAMPLE // GRID
        blocks = self.grid.reshape(self.grid.shape[0] // f, f, self.grid.shape[1] // f, f)
        return np.stack([(blocks == i).sum((1, 3)) for i in range(len(self.kinds))]).argmax(0).astype(np.uint8)


@dataclass(frozen=True)
class Family:
    """A cohort family: its tissue types (mask values), diagnoses (labels), and how it plans a slide
    (``plan(seed, index)``), renders its texture bank once per seed (``bank(seed)``) and renders a planned
    slide (``image(plan, seed, index)``)."""

    name: str
    diagnoses: tuple[str, ...]
    tissue_types: tuple[str, ...]
    plan: Callable[[int, int], Plan]
    bank: Callable[[int], dict]
    image: Callable[[Plan, int, int], np.ndarray]


def smooth_noise(shape: tuple[int, int], scale: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean unit-std noise with blobs about ``scale`` pixels across (Gaussian interpolation of knots)."""
    scale, weights = max(int(scale), 2), []
    for size in shape:
        distance = np.arange(size)[:, None] / scale + 1.5 - np.arange(size // scale + 4)[None, :]
        weight = np.exp(-0.5 * (distance / 0.6) ** 2)
        weights.append(weight / weight.sum(1, keepdims=True))
    noise = weights[0] @ rng.standard_normal((weights[0].shape[1], weights[1].shape[1])) @ weights[1].T
    return (noise - noise.mean()) / (noise.std() + 1e-9)


def blob(shape: tuple[int, int], axes: tuple[float, float], roughness: float, rng: np.random.Generator) -> np.ndarray:
    """A filled irregular blob: a rotated ellipse (semi-axes relative to the half sides) with a noisy outline."""
    rows, cols = np.ogrid[-1 : 1 : shape[0] * 1j, -1 : 1 : shape[1] * 1j]
    angle = rng.uniform(0, np.pi)
    along, across = cols * np.cos(angle) + rows * np.sin(angle), rows * np.cos(angle) - cols * np.sin(angle)
    field_ = 1 - (along / axes[0]) ** 2 - (across / axes[1]) ** 2
    field_ += roughness * smooth_noise(shape, max(shape) // 4, rng)
    field_ += 0.3 * roughness * smooth_noise(shape, max(shape) // 12, rng)
    filled = (field_ > 0) & (rows**2 + cols**2 < 1)
    labels, count = ndimage.label(filled)
    largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1 if count > 1 else filled
    return ndimage.binary_fill_holes(largest)


def place_name(row: int, col: int, box: tuple[int, int, int, int]) -> str:
    """Where (row, col) lies in the box, by thirds: 'upper left', 'central', ..."""
    third_row = min(int(3 * (row - box[0]) / max(box[1] - box[0], 1)), 2)
    third_col = min(int(3 * (col - box[2]) / max(box[3] - box[2], 1)), 2)
    return _PLACES[third_row][third_col]


def mosaic(textures: tuple[np.ndarray, ...], height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """[height, width, 3] of BLOCK-sized texture crops, each at a random offset and in one of 8 orientations."""
    out = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, BLOCK):
        for left in range(0, width, BLOCK):
            rows, cols = min(BLOCK, height - top), min(BLOCK, width - left)
            view = textures[int(rng.integers(2))]  # as rendered or transposed, then flipped either way
            step_rows, step_cols = rng.choice((-1, 1), 2)
            r0, c0 = int(rng.integers(view.shape[0] - rows + 1)), int(rng.integers(view.shape[1] - cols + 1))
            out[top : top + rows, left : left + cols] = view[r0 : r0 + rows, c0 : c0 + cols][::step_rows, ::step_cols]
    return out


def render(plan: Plan, bank: dict[str, tuple[np.ndarray, ...]], rng: np.random.Generator) -> np.ndarray:
    """The level-0 RGB: glass, then stroma over the tissue and each lesion, composited by label and stained."""
    image = Image.fromarray(mosaic(bank["background"], plan.height, plan.width, rng))
    # Optical density times the factor is transmittance to its power: one lookup table per channel.
    table = np.concatenate([np.round(255 * (np.arange(256) / 255) ** f) for f in plan.stain]).astype(int).tolist()
    for kind, (r0, r1, c0, c1) in plan.regions:
        size = ((c1 - c0) * GRID, (r1 - r0) * GRID)
        texture = Image.fromarray(mosaic(bank[kind], size[1], size[0], rng)).point(table)
        inside = Image.fromarray((plan.grid[r0:r1, c0:c1] == plan.kinds.index(kind)).astype(np.uint8) * 255)
        image.paste(texture, (c0 * GRID, r0 * GRID), inside.resize(size, Image.Resampling.NEAREST))
    return np.asarray(image)


def slide_paths(index: int) -> tuple[str, str, str]:
    """Slide id, TIFF and mask (relative to the output folder) of slide ``index``."""
    slide_id = f"slide-{index:04d}"
    return slide_id, f"slides/{slide_id}.tif", f"masks/{slide_id}.png"


def balanced_label(seed: int, stream: int, index: int, classes: int) -> int:
    """Slide ``index``'s label: every run of ``classes`` slides holds each label once, in a seeded order."""
    return int(np.random.default_rng([seed, stream, index // classes]).permutation(classes)[index % classes])


def stratified_splits(labels: list[int], seed: int, test_fraction: float, classes: int) -> list[str]:
    """Seeded split stratified by label: round(test_fraction * n) test slides per class, >= 1 in each split."""
    rng, splits = np.random.default_rng([seed, 3]), ["train"] * len(labels)
    for label in range(classes):
        members = np.flatnonzero(np.asarray(labels) == label)
        count = int(round(test_fraction * len(members)))
        count = min(max(count, 1), len(members) - 1) if test_fraction > 0 and len(members) >= 2 else count
        for index in rng.permutation(members)[:count]:
            splits[index] = "test"
    return splits
