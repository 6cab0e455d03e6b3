"""Slides for testing tissue detection: what each pattern holds, pale kinds pale, blood red, files OpenSlide reads,
and the scores a detector is judged by."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pathflip.processing.glass import estimate_glass, glass_distance
from pathflip.processing.reader import SlideReader
from pathflip.processing.tissue import saturation
from pathflip.synthetic.pale_textures import PALE_TYPES, render_any_texture
from pathflip.synthetic.tissue_slides import (
    KINDS,
    LABEL_DOWNSAMPLE,
    PATTERNS,
    detection_scores,
    kept_map,
    make_tissue_slide,
    write_tissue_slide,
)

SIDE = 1024


def _pixels(slide, kind: str) -> np.ndarray:
    """The level-0 RGB pixels of ``kind`` (labels upsampled), [n, 3]."""
    level0 = np.repeat(np.repeat(slide.labels, LABEL_DOWNSAMPLE, 0), LABEL_DOWNSAMPLE, 1)
    return slide.image[level0 == KINDS.index(kind)]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_pattern_holds_its_kinds_on_glass(pattern):
    slide = make_tissue_slide(pattern, 0, side=SIDE)
    present = {KINDS[index] for index in np.unique(slide.labels)}
    base, lesions = PATTERNS[pattern]
    assert present == {"glass", base} | {kind for kind, *_ in lesions}
    assert slide.image.shape[:2] == tuple(LABEL_DOWNSAMPLE * np.array(slide.labels.shape))
    assert 0.2 < (slide.labels > 0).mean() < 0.8, "tissue with glass around it"


def test_slides_are_deterministic_and_seeds_differ():
    first, again, other = (make_tissue_slide("mucinous", seed, side=SIDE) for seed in (3, 3, 4))
    assert np.array_equal(first.image, again.image) and np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.labels, other.labels)


def test_pale_kinds_sit_near_glass_and_blood_is_red():
    """What breaks a saturation threshold: mucin, fat and loose stroma barely coloured, blood far more than stroma."""
    slides = {pattern: make_tissue_slide(pattern, 1, side=SIDE) for pattern in ("mucinous", "fatty", "loose",
                                                                                 "haemorrhage")}  # fmt: skip
    glass = np.median(_pixels(slides["mucinous"], "glass"), axis=0)

    def mean_saturation(pattern, kind):
        return float(saturation(_pixels(slides[pattern], kind)[None]).mean())

    for pattern, kind in (("mucinous", "mucin"), ("fatty", "fat"), ("loose", "loose stroma")):
        assert mean_saturation(pattern, kind) < 0.1, kind
    assert mean_saturation("haemorrhage", "haemorrhage") > 2 * mean_saturation("haemorrhage", "stroma")
    mucin = np.median(_pixels(slides["mucinous"], "mucin"), axis=0)
    assert 0.01 < glass_distance(mucin[None, None], glass)[0, 0] < 0.15, "pale, yet darker than its glass"
    labels = slides["haemorrhage"].labels
    assert (labels == KINDS.index("haemorrhage")).sum() > 0.2 * (labels > 0).sum(), "a dominant focus of blood"


@pytest.mark.parametrize("kind", PALE_TYPES)
def test_pale_textures_are_seeded(kind):
    first = render_any_texture(kind, 64, 96, np.random.default_rng(2))
    assert first.shape == (64, 96, 3) and first.dtype == np.uint8
    assert np.array_equal(first, render_any_texture(kind, 64, 96, np.random.default_rng(2)))
    assert not np.array_equal(first, render_any_texture(kind, 64, 96, np.random.default_rng(3)))


def test_written_slide_opens_at_half_a_micron_with_its_labels(tmp_path):
    slide = make_tissue_slide("fatty", 2, side=SIDE)
    path, labels = write_tissue_slide(slide, tmp_path)
    with SlideReader(path) as reader:
        assert reader.mpp == 0.5 and reader.dimensions == slide.image.shape[1::-1]
        thumbnail = reader.thumbnail(256)
    assert np.array_equal(np.asarray(Image.open(labels)), slide.labels)
    glass = estimate_glass(thumbnail).colour
    assert np.allclose(glass, np.median(_pixels(slide, "glass"), axis=0), atol=4), "the glass survives JPEG"


def test_scores_of_a_perfect_and_of_an_empty_detector():
    slide = make_tissue_slide("solid", 0, side=SIDE)
    truth = slide.labels > 0
    perfect = detection_scores(slide.labels, truth, truth)
    assert perfect["glass_as_tissue"] == 0 and set(perfect["mask_recall"].values()) == {1.0}
    empty = detection_scores(slide.labels, np.zeros((10, 10), bool), np.zeros_like(truth))
    assert set(empty["patch_recall"].values()) == {0.0}
    everything = detection_scores(slide.labels, np.ones((10, 10), bool), np.ones_like(truth))
    assert everything["glass_as_tissue"] == 1.0
    assert perfect["area"]["stroma"] == int((slide.labels == KINDS.index("stroma")).sum())


def test_kept_map_covers_exactly_the_patches():
    kept = kept_map(np.array([[0, 0], [512, 256]]), 256, (64, 96))
    side = 256 // LABEL_DOWNSAMPLE
    assert kept.sum() == 2 * side * side
    assert kept[:side, :side].all() and kept[side : 2 * side, 2 * side : 3 * side].all()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown pattern 'bone'"):
        make_tissue_slide("bone", 0)
    with pytest.raises(ValueError, match="multiple of 8"):
        make_tissue_slide("solid", 0, side=1001)
