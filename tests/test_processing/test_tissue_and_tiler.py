import numpy as np
import pytest
from PIL import Image

from pathflip.processing.reader import SlideError, SlideReader
from pathflip.processing.tiler import TilingOptions, tile_slide
from pathflip.processing.tissue import (
    KEPT_TINT,
    LEFT_OUT_TINT,
    detect_tissue,
    otsu_threshold,
    saturation,
    save_overlay,
    tissue_mask,
)
from pathflip.synthetic.tissue_slides import PATTERNS, detection_scores, kept_map, make_tissue_slide, write_tissue_slide

SATURATION = TilingOptions(tissue_method="saturation")


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
    assert mask[dark].mean() > 0.95, "tissue is kept"
    assert mask[white].mean() < 0.1, "white background is dropped"
    assert len(tiling.coords) > 0 and (tiling.coords % tiling.patch_size_level0 == 0).all()
    with SlideReader(cmu_slide) as reader:
        before = tile_slide(reader, SATURATION)
    kept, kept_before = ({tuple(xy) for xy in t.coords.tolist()} for t in (tiling, before))
    assert kept >= kept_before and len(kept) > len(kept_before), "the pale fragments gain patches, none is lost"


def test_real_slide_without_mpp_needs_the_override(tcga_slide):
    with SlideReader(tcga_slide) as reader, pytest.raises(SlideError, match=r"tcga-cr-7395-01a-01-ts1.*--mpp"):
        tile_slide(reader)
    with SlideReader(tcga_slide, mpp=0.5) as reader:
        tiling = tile_slide(reader, TilingOptions())
    assert tiling.patch_size_level0 == 256 and len(tiling.coords) > 50


# ---- pale tissue and dominant foci, against ground truth ---------------------------------------------------------


def _detection_slides(folder, seeds):
    """Every pattern for each seed, written as pyramidal TIFFs: [(slide, path)]."""
    slides = [make_tissue_slide(pattern, seed) for seed in seeds for pattern in PATTERNS]
    return [(slide, write_tissue_slide(slide, folder)[0]) for slide in slides]


def _scores(slides, options: TilingOptions | None = None) -> list[dict]:
    scores = []
    for slide, path in slides:
        with SlideReader(path) as reader:
            tiling = tile_slide(reader, options or TilingOptions())
        kept = kept_map(tiling.coords, tiling.patch_size_level0, slide.labels.shape)
        scores.append(detection_scores(slide.labels, tiling.mask, kept) | {"slide": slide.slide_id})
    return scores


def _recall_by_area(scores: list[dict], measure: str) -> dict[str, float]:
    """Recall of each kind over all slides, weighted by area."""
    found, total = {}, {}
    for score in scores:
        for kind, area in score["area"].items():
            found[kind] = found.get(kind, 0.0) + score[measure][kind] * area
            total[kind] = total.get(kind, 0) + area
    return {kind: found[kind] / total[kind] for kind in total}


def _assert_detects(scores: list[dict]) -> None:
    """Each slide keeps >= 95 % of every kind in its mask and calls <= 2 % of its glass tissue; over all slides,
    >= 95 % of every kind's area lies in kept patches."""
    for score in scores:
        assert score["glass_as_tissue"] <= 0.02, score
        assert min(score["mask_recall"].values()) >= 0.95, score
    recall = _recall_by_area(scores, "patch_recall")
    assert {"mucin", "fat", "loose stroma", "haemorrhage", "lymphocytes"} <= set(recall)
    assert min(recall.values()) >= 0.95, recall


@pytest.fixture(scope="module")
def detection_slides(tmp_path_factory):
    return _detection_slides(tmp_path_factory.mktemp("detection"), seeds=[0])


def test_pale_tissue_and_tissue_beside_a_dominant_focus_are_kept(detection_slides):
    _assert_detects(_scores(detection_slides))


def test_the_saturation_threshold_loses_them(detection_slides):
    """The earlier detector on the same slides: pale kinds and the stroma beside blood mostly left out."""
    scores = _scores(detection_slides, SATURATION)
    recall = _recall_by_area(scores, "patch_recall")
    assert recall["mucin"] < 0.5 and recall["fat"] < 0.5 and recall["loose stroma"] < 0.5, recall
    beside_blood = next(score for score in scores if score["slide"].startswith("haemorrhage"))
    assert beside_blood["patch_recall"]["stroma"] < 0.5, beside_blood


@pytest.mark.slow
def test_pale_tissue_is_kept_on_more_seeds(tmp_path):
    _assert_detects(_scores(_detection_slides(tmp_path, seeds=[1, 2, 3, 4])))


@pytest.mark.parametrize("pattern", ["solid", "mucinous", "faint"])
def test_blank_glass_stays_blank(pattern):
    """Glass with uneven light, dust and an unscanned white corner, without tissue: nothing is tissue."""
    glass = make_tissue_slide(pattern, 5, side=2048, tissue=False).image
    thumbnail = np.asarray(Image.fromarray(glass).reduce(8))
    for method in ("od", "saturation"):
        assert not tissue_mask(thumbnail, thumbnail_mpp=4.0, method=method).any(), method


def test_real_glass_stays_blank(cmu_slide):
    """The glass left of the CMU section (level-0 x < 400, y 1300-2600) holds no tissue."""
    with SlideReader(cmu_slide) as reader:
        glass = np.asarray(Image.fromarray(reader.read_region((0, 1300), 0, (400, 1300))).reduce(8))
    assert not tissue_mask(glass, thumbnail_mpp=4.0).any()


def test_a_threshold_override_changes_the_detection(make_tissue_image):
    image, truth = make_tissue_image(512, 768, seed=3)
    own = detect_tissue(image, thumbnail_mpp=4.0)
    assert own.method == "od" and 0.015 <= own.threshold <= 0.05
    strict = detect_tissue(image, thumbnail_mpp=4.0, threshold=0.5)
    assert strict.threshold == 0.5 and strict.mask.sum() < 0.8 * own.mask.sum()
    lax = detect_tissue(image, thumbnail_mpp=4.0, threshold=0.002)
    assert (lax.mask & ~truth).sum() > 10 * (own.mask & ~truth).sum(), "below the glass's noise: glass is tissue"
    assert detect_tissue(image, thumbnail_mpp=4.0, method="saturation", threshold=0.9).mask.sum() == 0
    with pytest.raises(ValueError, match="unknown tissue method 'otsu'"):
        detect_tissue(image, thumbnail_mpp=4.0, method="otsu")


@pytest.mark.parametrize("options, message", [
    (dict(tissue_method="otsu"), r"--tissue-method 'otsu' is not a tissue detector; use one of od, saturation"),
    (dict(tissue_threshold=1.5), r"--tissue-threshold 1.5 is not an optical density above the glass between 0 and 1"),
    (dict(tissue_method="saturation", tissue_threshold=0), r"is not a saturation between 0 and 1"),
    (dict(min_tissue_fraction=2), r"--min-tissue 2 is not a fraction"),
])  # fmt: skip
def test_tiling_options_are_checked_when_made(options, message):
    with pytest.raises(ValueError, match=message):
        TilingOptions(**options)


# ---- quality control ----------------------------------------------------------------------------------------------


def test_quality_figures_and_a_warning_when_tissue_is_left_out(detection_slides):
    slide, path = next(item for item in detection_slides if item[0].pattern == "mucinous")
    with SlideReader(path) as reader:
        good, bad = tile_slide(reader), tile_slide(reader, SATURATION)
    quality = good.quality
    assert quality["tissue_method"] == "od" and quality["patches"] == len(good.coords)
    truth = (slide.labels > 0).mean()
    assert abs(quality["tissue_fraction"] - truth) < 0.03 and abs(quality["non_glass_fraction"] - truth) < 0.03
    assert quality["non_glass_kept"] >= 0.9 and quality["warnings"] == []
    assert quality["kept_fraction"] == pytest.approx(good.kept.mean(), abs=1e-4)
    assert bad.quality["non_glass_kept"] < 0.8 and bad.quality["tissue_method"] == "saturation"
    assert len(bad.quality["warnings"]) == 1 and "tissue may have been left out" in bad.quality["warnings"][0]


def test_a_slide_that_keeps_almost_nothing_is_warned_about(detection_slides):
    _, path = next(item for item in detection_slides if item[0].pattern == "solid")
    with SlideReader(path) as reader:
        nearly_nothing = tile_slide(reader, TilingOptions(tissue_method="saturation", tissue_threshold=0.6))
    assert nearly_nothing.quality["patches"] < 16
    assert any("patches kept of" in warning for warning in nearly_nothing.quality["warnings"])


def test_overlay_shows_kept_patches_and_left_out_tissue_apart(tmp_path):
    thumbnail = np.full((40, 60, 3), 200, np.uint8)
    mask, kept = np.zeros((40, 60), bool), np.zeros((40, 60), bool)
    mask[10:30, 10:50], kept[10:30, 10:30] = True, True
    image = np.asarray(Image.open(save_overlay(thumbnail, mask, tmp_path / "qc.png", kept=kept)).convert("RGB"))
    green, magenta, glass = image[20, 20].astype(int), image[20, 40].astype(int), image[2, 2].astype(int)
    assert green[1] > green[0] and green[1] > green[2], "kept: green"
    assert magenta[0] > magenta[1] and magenta[2] > magenta[1], "left out: magenta"
    assert (glass < 200).all() and glass[0] == glass[1] == glass[2], "glass: dimmed, untinted"
    assert KEPT_TINT != LEFT_OUT_TINT
