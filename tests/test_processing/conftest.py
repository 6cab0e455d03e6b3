"""Generated slides for the processing tests (pyramidal TIFFs that OpenSlide reads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
CMU = SHARED_DATA / "cmu-1-small-region.svs"
TCGA = SHARED_DATA / "tcga-cr-7395-01a-01-ts1.svs"


def tissue_image(height: int, width: int, seed: int, *, tissue: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like slide image: an elliptical piece of tissue (tumour + stroma halves) on white glass.

    Returns the RGB image and the true tissue mask.
    """
    from processing.synthetic import render_texture

    rng = np.random.default_rng(seed)
    image = render_texture("background", height, width, rng)
    yy, xx = np.mgrid[0:height, 0:width]
    mask = ((yy - height / 2) / (height * 0.35)) ** 2 + ((xx - width / 2) / (width * 0.35)) ** 2 < 1
    if tissue:
        left = render_texture("tumour", height, width, rng)
        right = render_texture("stroma", height, width, rng)
        tissue_pixels = np.where((xx < width / 2)[..., None], left, right)
        image = np.where(mask[..., None], tissue_pixels, image)
    return image.astype(np.uint8), mask & tissue


@pytest.fixture(scope="session")
def slide_factory(tmp_path_factory):
    """Write a generated slide: ``slide_factory(name, layout=..., mpp=..., tissue=...) -> Path``."""
    from processing.synthetic import write_pyramid

    folder = tmp_path_factory.mktemp("slides")

    def make(
        name: str,
        *,
        layout: str = "generic",
        mpp: float | None = 0.5,
        tissue: bool = True,
        seed: int = 0,
        size: tuple[int, int] = (1536, 2048),
        compression: str | None = "jpeg",
    ) -> Path:
        path = folder / f"{name}.{'svs' if layout == 'aperio' else 'tiff'}"
        if not path.exists():
            image, _ = tissue_image(*size, seed, tissue=tissue)
            write_pyramid(path, image, mpp=mpp, layout=layout, levels=3, compression=compression)
        return path

    return make


def _shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path.name} not available (../shared/data is absent)")
    return path


@pytest.fixture
def cmu_slide() -> Path:
    """The real OpenSlide test slide (Aperio, one level, mpp 0.499); skips when ../shared/data is absent."""
    return _shared(CMU)


@pytest.fixture
def tcga_slide() -> Path:
    """The real TCGA slide (two levels, no mpp); skips when ../shared/data is absent."""
    return _shared(TCGA)


@pytest.fixture(scope="session")
def make_tissue_image():
    return tissue_image
