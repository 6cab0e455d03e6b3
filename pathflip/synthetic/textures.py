"""Seeded synthetic H&E: tissue textures and pyramidal TIFF slides that OpenSlide reads.

Textures are painted as stain concentrations (haematoxylin, eosin, a neutral grey) and turned into RGB
with the Beer-Lambert law, so they carry realistic stain statistics as well as realistic structure
(nuclei, fibres, vacuoles, debris). Sizes assume about 0.5 µm per pixel (20x).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

TISSUE_TYPES = ("tumour", "stroma", "necrosis", "lymphocytes", "fat", "background")

# Rendering stain vectors (a typical Macenko H&E reference), not the Ruifrok matrix that the stain-texture
# encoder deconvolves with: real stains never match a textbook matrix exactly either.
_HAEMATOXYLIN = np.array([0.5626, 0.7201, 0.4062], dtype=np.float32)
_EOSIN = np.array([0.2159, 0.8012, 0.5581], dtype=np.float32)
_NEUTRAL = np.full(3, 3**-0.5, dtype=np.float32)

LAYOUTS = ("generic", "aperio")


def _noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise with std about 1 whose blobs are about ``scale`` pixels across."""
    height, width = shape
    if scale < 4:
        sigma = scale / 2
        white = rng.standard_normal(shape, dtype=np.float32)
        # Undo the variance loss of a 2D Gaussian blur of unit white noise.
        return ndimage.gaussian_filter(white, sigma, truncate=3) * np.float32(2 * np.sqrt(np.pi) * sigma)
    low = rng.standard_normal((int(height / scale) + 4, int(width / scale) + 4), dtype=np.float32)
    # Separable cubic B-spline upsampling as two small matrix products: much faster than ndimage.zoom.
    # 151/315 is the mean squared B-spline weight sum per axis, so this restores unit variance.
    smooth = _spline_matrix(height, scale, low.shape[0]) @ low @ _spline_matrix(width, scale, low.shape[1]).T
    return smooth * np.float32(315 / 151)


def _spline_matrix(size: int, scale: float, knots: int) -> np.ndarray:
    """[size, knots] cubic B-spline weights sampling ``knots`` control points every ``scale`` pixels."""
    position = np.arange(size) / scale + 1
    start, fraction = np.floor(position).astype(np.int64), position % 1
    weights = (
        np.stack(
            [
                (1 - fraction) ** 3,
                3 * fraction**3 - 6 * fraction**2 + 4,
                -3 * fraction**3 + 3 * fraction**2 + 3 * fraction + 1,
                fraction**3,
            ]
        )
        / 6
    )
    matrix = np.zeros((size, knots), dtype=np.float32)
    for offset in range(4):
        matrix[np.arange(size), start - 1 + offset] = weights[offset]
    return matrix


def _nuclei(
    shape: tuple[int, int],
    centres: np.ndarray,
    axes: np.ndarray,
    angles: np.ndarray,
    levels: np.ndarray,
    rng: np.random.Generator,
    *,
    irregularity: float,
) -> np.ndarray:
    """Paint soft-edged ellipses with a random wobbly outline; returns haematoxylin concentration [H, W].

    ``centres`` [N, 2] integer (row, col), ``axes`` [N, 2] semi-axes (major, minor) in pixels, ``angles`` [N]
    major-axis directions, ``levels`` [N] stain concentration; overlapping nuclei keep the darker value.
    """
    count = len(centres)
    # Pleomorphism: a 2nd and 3rd harmonic wobble of every outline, as (amplitude * cos, amplitude * sin).
    amplitude = rng.uniform(-irregularity, irregularity, (2, count)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (2, count)).astype(np.float32)
    wobble = np.stack([amplitude * np.cos(phase), amplitude * np.sin(phase)], axis=1)  # [harmonic, cos|sin, N]
    canvas = np.zeros(shape[0] * shape[1], dtype=np.float32)
    # Chunks of similar size keep the [chunk, K, K] temporaries in cache and the K x K boxes tight.
    by_size = np.argsort(axes[:, 0], kind="stable")
    for start in range(0, count, 512):
        part = by_size[start : start + 512]
        reach = int(np.ceil(axes[part, 0].max() * (1 + 2 * irregularity))) + 1
        _stamp(canvas, shape, reach, centres[part], axes[part], angles[part], levels[part], wobble[..., part])
    return canvas.reshape(shape)


def _stamp(canvas, shape, reach, centres, axes, angles, levels, wobble) -> None:
    offsets = np.arange(-reach, reach + 1, dtype=np.float32)
    dy, dx = offsets[:, None], offsets[None, :]
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    along, across = dx * cos + dy * sin, dy * cos - dx * sin
    minor = axes[:, 1, None, None]
    radius = np.hypot(along / axes[:, 0, None, None], across / minor)
    # The outline's harmonics from the point's direction cosines (double/triple-angle formulas), not arctan2.
    norm = np.hypot(along, across) + np.float32(1e-6)
    cos1, sin1 = along / norm, across / norm
    cos2, sin2 = cos1 * cos1 - sin1 * sin1, 2 * cos1 * sin1
    cos3, sin3 = cos1 * cos2 - sin1 * sin2, sin1 * cos2 + cos1 * sin2
    (c2, s2), (c3, s3) = wobble[..., None, None]
    outline = 1 + c2 * cos2 - s2 * sin2 + c3 * cos3 - s3 * sin3
    # (outline - radius) * minor is roughly the distance to the edge in pixels: a one-pixel anti-aliased rim.
    values = np.clip((outline - radius) * minor + 0.5, 0, 1) * levels[:, None, None]
    height, width = shape
    rows = centres[:, 0, None, None] + offsets[:, None].astype(np.int64)
    cols = centres[:, 1, None, None] + offsets[None, :].astype(np.int64)
    keep = (values > 0) & (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    np.maximum.at(canvas, (rows * width + cols)[keep], values[keep])


def _scatter(shape: tuple[int, int], count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` uniform integer centres [count, 2] (row, col), spilling a little past the borders."""
    height, width = shape
    return np.stack([rng.integers(-8, height + 8, count), rng.integers(-8, width + 8, count)], axis=1)


def _round_axes(count: int, low: float, high: float, roundness: float, rng: np.random.Generator) -> np.ndarray:
    major = rng.uniform(low, high, count)
    return np.stack([major, major * rng.uniform(roundness, 1.0, count)], axis=1).astype(np.float32)


def _tumour(shape, rng):
    area = shape[0] * shape[1]
    count = int(0.4 * area / 230)
    nuclei = _nuclei(
        shape,
        _scatter(shape, count, rng),
        _round_axes(count, 6.5, 13.0, 0.55, rng),
        rng.uniform(0, np.pi, count).astype(np.float32),
        rng.uniform(0.75, 1.25, count).astype(np.float32),
        rng,
        irregularity=0.14,
    )
    chromatin = 1 + 0.35 * _noise(shape, 1.5, rng)
    haematoxylin = 0.14 + 0.04 * _noise(shape, 16, rng) + nuclei * chromatin
    eosin = 0.30 + 0.07 * _noise(shape, 12, rng) + 0.04 * _noise(shape, 2, rng)
    return haematoxylin, eosin, np.full(shape, 0.03, np.float32)


def _stroma(shape, rng):
    height, width = shape
    theta = rng.uniform(0, np.pi)
    warp = 30 * _noise(shape, 96, rng)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    # Slow phase noise lets fibres split and merge instead of running as perfect parallel stripes.
    phase = (cols * np.cos(theta) + rows * np.sin(theta) + warp) * (2 * np.pi / rng.uniform(8, 12))
    phase += 2.5 * _noise(shape, 20, rng)
    fibres = (0.5 + 0.5 * np.sin(phase)) ** 2 * np.clip(0.8 + 0.5 * _noise(shape, 4, rng), 0, 1.3)
    clefts = np.clip(_noise(shape, 40, rng) - 0.5, 0, None)  # loose, paler patches between bundles
    count = int(shape[0] * shape[1] / 3500)
    centres = _scatter(shape, count, rng)
    # Nuclei lie along the fibres: their major axis follows the local stripe direction.
    inside = np.clip(centres, 0, [height - 1, width - 1])
    grad_rows, grad_cols = np.gradient(warp)
    normal = np.arctan2(np.sin(theta) + grad_rows[tuple(inside.T)], np.cos(theta) + grad_cols[tuple(inside.T)])
    axes = np.stack([rng.uniform(9, 16, count), rng.uniform(2.0, 3.5, count)], axis=1).astype(np.float32)
    angles = (normal + np.pi / 2 + rng.normal(0, 0.15, count)).astype(np.float32)
    nuclei = _nuclei(
        shape, centres, axes, angles, rng.uniform(0.7, 1.1, count).astype(np.float32), rng, irregularity=0.05
    )
    eosin = (0.16 + 0.50 * fibres) * np.clip(1 - 0.6 * clefts, 0.3, 1)
    haematoxylin = 0.04 + 0.01 * _noise(shape, 8, rng) + nuclei
    return haematoxylin, eosin, np.full(shape, 0.02, np.float32)


def _necrosis(shape, rng):
    count = int(shape[0] * shape[1] / 260)
    centres = _scatter(shape, count, rng)
    # Karyorrhectic fragments cluster where cells died together.
    clumps = _noise(shape, 48, rng)
    centres = centres[clumps[tuple(np.clip(centres, 0, np.array(shape) - 1).T)] > -0.2]
    count = len(centres)
    fragments = _nuclei(
        shape,
        centres,
        _round_axes(count, 1.0, 3.0, 0.5, rng),
        rng.uniform(0, np.pi, count).astype(np.float32),
        rng.uniform(0.6, 1.3, count).astype(np.float32),
        rng,
        irregularity=0.3,
    )
    granules = _noise(shape, 2, rng)
    haematoxylin = 0.07 + 0.03 * _noise(shape, 3, rng) + fragments
    eosin = 0.17 + 0.05 * _noise(shape, 10, rng) + 0.05 * granules
    neutral = 0.12 + 0.05 * _noise(shape, 20, rng) + 0.03 * granules
    return haematoxylin, eosin, neutral


def jittered_grid(shape: tuple[int, int], spacing: float, drop: float, jitter: float,
                  rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Integer (row, col) centres on a grid of ``spacing`` px, a ``drop`` fraction left out, each moved by up to
    ``jitter`` px: packs small round cells densely without piling them on top of each other."""
    height, width = shape
    grid_rows, grid_cols = np.mgrid[0 : height + spacing : spacing, 0 : width + spacing : spacing]
    centres = np.stack([grid_rows.ravel(), grid_cols.ravel()], axis=1)
    centres = centres[rng.random(len(centres)) > drop]
    return np.rint(centres + rng.uniform(-jitter, jitter, centres.shape)).astype(np.int64)


def _lymphocytes(shape, rng):
    centres = jittered_grid(shape, 12.5, 0.1, 3, rng)
    count = len(centres)
    nuclei = _nuclei(
        shape,
        centres,
        _round_axes(count, 4.3, 6.0, 0.85, rng),
        rng.uniform(0, np.pi, count).astype(np.float32),
        rng.uniform(1.2, 1.6, count).astype(np.float32),
        rng,
        irregularity=0.05,
    )
    haematoxylin = 0.10 + 0.02 * _noise(shape, 6, rng) + nuclei * (1 + 0.15 * _noise(shape, 1.5, rng))
    eosin = 0.13 + 0.03 * _noise(shape, 10, rng)
    return haematoxylin, eosin, np.full(shape, 0.03, np.float32)


def _fat(shape, rng):
    height, width = shape
    spacing = int(rng.integers(90, 141))
    cells_y, cells_x = -(-height // spacing), -(-width // spacing)
    # One jittered seed per grid cell (plus a ring outside): a pixel's two nearest seeds are then in the
    # 3x3 cells around its own, so distances are computed block-wise without any per-pixel gather.
    grid = np.stack(np.mgrid[-1 : cells_y + 1, -1 : cells_x + 1], axis=-1) + 0.5
    seeds = ((grid + rng.uniform(-0.35, 0.35, grid.shape)) * spacing).astype(np.float32)
    local = np.arange(spacing, dtype=np.float32)
    rows = np.arange(cells_y, dtype=np.float32)[:, None] * spacing + local  # [cells_y, spacing]
    cols = np.arange(cells_x, dtype=np.float32)[:, None] * spacing + local  # [cells_x, spacing]
    first = np.full((cells_y, spacing, cells_x, spacing), np.inf, np.float32)
    second = first.copy()
    for step_y in range(3):
        for step_x in range(3):
            seed = seeds[step_y : step_y + cells_y, step_x : step_x + cells_x]  # [cells_y, cells_x, 2]
            row_gap = (rows[:, :, None] - seed[:, None, :, 0]) ** 2  # [cells_y, spacing, cells_x]
            col_gap = (cols[None] - seed[..., 1, None]) ** 2  # [cells_y, cells_x, spacing]
            distance = row_gap[..., None] + col_gap[:, None]
            np.minimum(second, np.maximum(first, distance), out=second)
            np.minimum(first, distance, out=first)
    first = np.sqrt(first.reshape(cells_y * spacing, -1)[:height, :width])
    second = np.sqrt(second.reshape(cells_y * spacing, -1)[:height, :width])
    # Half the gap between the two nearest seeds approximates the distance to the shared cell wall.
    wall = np.exp(-(((second - first) / 2 / rng.uniform(0.9, 1.4)) ** 2))
    wisps = np.clip(0.8 + 0.4 * _noise(shape, 6, rng), 0.2, 1.2)
    eosin = 0.01 + 0.42 * wall * wisps
    haematoxylin = 0.005 + 0.05 * wall
    return haematoxylin, eosin, np.full(shape, 0.015, np.float32)


def _background(shape, rng):
    flat = np.zeros(shape, np.float32)
    return flat + 0.004, flat + 0.006, 0.045 + 0.01 * _noise(shape, 32, rng)


# Each painter returns stain concentration maps (haematoxylin, eosin, neutral grey), each [H, W].
_PAINTERS = {
    "tumour": _tumour,
    "stroma": _stroma,
    "necrosis": _necrosis,
    "lymphocytes": _lymphocytes,
    "fat": _fat,
    "background": _background,
}


def render_texture(
    kind: str, height: int, width: int, rng: np.random.Generator, *, stain_scale: float = 1.0
) -> np.ndarray:
    """Render an H&E-like texture of tissue ``kind`` (one of TISSUE_TYPES) as uint8 RGB [height, width, 3].

    ``stain_scale`` (about 0.7-1.3) scales stain uptake, as between labs or staining batches; a small
    seeded jitter of the haematoxylin/eosin balance is added on top.
    """
    if kind not in _PAINTERS:
        raise ValueError(f"unknown tissue kind {kind!r}; expected one of {TISSUE_TYPES}")
    if height < 1 or width < 1:
        raise ValueError(f"texture size must be positive, got {height}x{width}")
    return stain_rgb(*_PAINTERS[kind]((height, width), rng), rng, stain_scale=stain_scale)


def stain_rgb(
    haematoxylin: np.ndarray, eosin: np.ndarray, neutral: np.ndarray, rng: np.random.Generator, *, stain_scale: float
) -> np.ndarray:
    """uint8 RGB [H, W, 3] of stain concentration maps (each [H, W]), with a seeded stain balance and noise."""
    height, width = haematoxylin.shape
    balance = rng.uniform(0.92, 1.08, 2) * stain_scale
    concentration = np.stack([haematoxylin, eosin, neutral], axis=-1)
    np.clip(concentration, 0, None, out=concentration)
    stains = np.stack([balance[0] * _HAEMATOXYLIN, balance[1] * _EOSIN, _NEUTRAL]).astype(np.float32)
    # Beer-Lambert with decadic optical density; shared-channel noise stands in for sensor/JPEG noise.
    rgb = np.exp((concentration @ stains) * np.float32(-np.log(10)))
    rgb *= 255
    rgb += 2 * rng.standard_normal((height, width, 1), dtype=np.float32) + 0.5
    return np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)


def _pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Level 0 plus ``levels - 1`` successive 2x2-mean reductions."""
    pyramid = [image]
    for _ in range(levels - 1):
        above = pyramid[-1]
        height, width = above.shape[0] // 2, above.shape[1] // 2
        if height == 0 or width == 0:
            raise ValueError(f"image {image.shape[1]}x{image.shape[0]} is too small for {levels} levels")
        even = above[: 2 * height, : 2 * width]
        # Round-half-up 2x2 mean in integers, (sum + 2) // 4: equal to a float mean, ~6x faster.
        total = even[0::2, 0::2].astype(np.uint16)
        for rows, columns in ((1, 0), (0, 1), (1, 1)):
            total += even[rows::2, columns::2]
        pyramid.append(((total + 2) // 4).astype(np.uint8))
    return pyramid


def _check_write_arguments(image: np.ndarray, mpp: float | None, layout: str, levels: int, tile: int) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be a uint8 numpy array [H, W, 3] (RGB), got {type(image).__name__} {shape}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16 (a TIFF rule), got {tile}")
    if mpp is not None and not mpp > 0:
        raise ValueError(f"mpp must be positive or None, got {mpp}")


def _aperio_description(
    image: np.ndarray, tile: int, compression: str | None, mpp: float | None, magnification: int
) -> str:
    """Page-0 description in Aperio's format; OpenSlide reads AppMag and MPP from its |-separated fields."""
    height, width = image.shape[:2]
    codec = {"jpeg": "JPEG/RGB Q=90", None: "RAW/RGB"}.get(compression, f"{str(compression).upper()}/RGB")
    fields = [f"AppMag = {magnification}"] + ([f"MPP = {mpp}"] if mpp is not None else [])
    header = f"Aperio Image Library v12.0.0\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) {codec}"
    return "|".join([header, *fields])


def write_pyramid(
    path: str | Path,
    image: np.ndarray,
    *,
    mpp: float | None = 0.5,
    layout: str = "generic",
    levels: int = 3,
    tile: int = 256,
    compression: str | None = "jpeg",
    magnification: int = 20,
) -> Path:
    """Write ``image`` (uint8 [H, W, 3]) as a tiled pyramidal TIFF that OpenSlide opens; returns the path.

    ``layout="generic"``: every level its own top-level tiled page (OpenSlide vendor ``generic-tiff``), mpp
    stored as the TIFF resolution. ``layout="aperio"``: an SVS-style file (vendor ``aperio``) whose page 0
    description carries AppMag and MPP, then a stripped thumbnail, then the reduced levels. ``mpp=None``
    writes no mpp at all, for testing slides with missing metadata.
    """
    _check_write_arguments(image, mpp, layout, levels, tile)
    path = Path(path)
    pyramid = _pyramid(image, levels)
    # metadata=None: otherwise tifffile adds its own JSON description and OpenSlide stops seeing the vendor.
    options = {
        "photometric": "rgb",
        "compression": compression,
        "compressionargs": {"level": 90} if compression == "jpeg" else None,
        "metadata": None,
    }
    with tifffile.TiffWriter(path, bigtiff=image.nbytes > 2**31) as writer:
        if layout == "generic":
            for index, level in enumerate(pyramid):
                resolution = {}
                if mpp is not None:
                    pixels_per_cm = 1e4 / (mpp * 2**index)
                    resolution = {"resolution": (pixels_per_cm, pixels_per_cm), "resolutionunit": "CENTIMETER"}
                subfiletype = 0 if index == 0 else 1
                writer.write(level, tile=(tile, tile), subfiletype=subfiletype, **resolution, **options)
        else:
            description = _aperio_description(image, tile, compression, mpp, magnification)
            writer.write(pyramid[0], tile=(tile, tile), description=description, **options)
            writer.write(_thumbnail(pyramid[-1]), **options)
            # No subfiletype on reduced Aperio levels: tiffslide would then see only level 0.
            for level in pyramid[1:]:
                writer.write(level, tile=(tile, tile), **options)
    return path


def _thumbnail(smallest: np.ndarray, *, longest: int = 512) -> np.ndarray:
    """A small stripped overview, as Aperio's second page; OpenSlide lists it as associated image 'thumbnail'."""
    step = max(1, int(np.ceil(max(smallest.shape[:2]) / longest)))
    return np.ascontiguousarray(smallest[::step, ::step])
