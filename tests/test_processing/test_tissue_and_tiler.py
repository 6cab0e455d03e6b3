import numpy as np
import pytest

from pathflip.processing.reader import SlideError, SlideReader
from pathflip.processing.tiler import TilingOptions, tile_slide
from pathflip.processing.tissue import otsu_threshold, saturation, tissue_mask


def test_otsu_splits_two_modes():
    values = np.concatenate([np.full(500, 0.1), np.full(500, 0.7)])
    assert 0.1 < otsu_threshold(values) < 0.7


def test_mask_of_generated_tissue_matches_the_truth(make_tissue_image):
    image, truth = make_tissue_image(512, 768, seed=3)
    mask = tissue_mask(image, thumbnail_mpp=4.0)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9


def test_blank_glass_has_no_tissue(make_tissue_image):
    image, _ = make_tissue_image(512, 768, seed=3, tissue=False)
    assert not tissue_mask(image, thumbnail_mpp=4.0).any()


@pytest.mark.parametrize("layout, mpp, expected_size", [("generic", 0.5, 256), ("aperio", 0.25, 512)])
def test_tiling_gives_grid_coords_inside_tissue(slide_factory, make_tissue_image, layout, mpp, expected_size):
    with SlideReader(slide_factory(f"tiling-{layout}-{mpp}", layout=layout, mpp=mpp)) as reader:
        tiling = tile_slide(reader)
        width, height = reader.dimensions
    coords = tiling.coords
    assert tiling.patch_size_level0 == expected_size
    assert len(coords) > 0 and (coords % expected_size == 0).all()
    assert (coords[:, 0] + expected_size <= width).all() and (coords[:, 1] + expected_size <= height).all()
    order = np.lexsort((coords[:, 0], coords[:, 1]))
    assert (order == np.arange(len(coords))).all(), "row-major order"
    _, truth = make_tissue_image(1536, 2048, seed=0)
    coverage = {
        (x, y): truth[y : y + expected_size, x : x + expected_size].mean()
        for y in range(0, height - expected_size + 1, expected_size)
        for x in range(0, width - expected_size + 1, expected_size)
    }
    kept = {tuple(xy) for xy in coords.tolist()}
    assert all(coverage[xy] > 0.2 for xy in kept), "kept patches hold tissue"
    assert all(xy in kept for xy, value in coverage.items() if value > 0.5), "tissue patches are kept"


def test_tiling_is_deterministic(slide_factory):
    path = slide_factory("deterministic")
    with SlideReader(path) as first, SlideReader(path) as second:
        assert np.array_equal(tile_slide(first).coords, tile_slide(second).coords)


def test_real_slide_mask_keeps_tissue_and_drops_white_background(cmu_slide):
    with SlideReader(cmu_slide) as reader:
        tiling = tile_slide(reader)
    gray = tiling.thumbnail.mean(axis=-1)
    dark = (gray < 200) & (saturation(tiling.thumbnail) > 0.1)  # plainly stained tissue
    white = gray > 225  # bare glass
    mask = tiling.mask
    assert mask[dark].mean() > 0.85, "tissue is kept"
    assert mask[white].mean() < 0.1, "white background is dropped"
    assert len(tiling.coords) > 0 and (tiling.coords % tiling.patch_size_level0 == 0).all()


def test_real_slide_without_mpp_needs_the_override(tcga_slide):
    with SlideReader(tcga_slide) as reader, pytest.raises(SlideError, match=r"tcga-cr-7395-01a-01-ts1.*--mpp"):
        tile_slide(reader)
    with SlideReader(tcga_slide, mpp=0.5) as reader:
        tiling = tile_slide(reader, TilingOptions())
    assert tiling.patch_size_level0 == 256 and len(tiling.coords) > 50
