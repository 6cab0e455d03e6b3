"""Synthetic H&E textures and the pyramidal TIFF writer, checked through OpenSlide itself."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from pathflip.synthetic.textures import TISSUE_TYPES, render_texture, write_pyramid

HEIGHT, WIDTH = 768, 1024


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(7)
    left = render_texture("tumour", HEIGHT, WIDTH // 2, rng)
    right = render_texture("stroma", HEIGHT, WIDTH // 2, rng)
    return np.concatenate([left, right], axis=1)


def _rgb(region) -> np.ndarray:
    return np.asarray(region.convert("RGB"))


@pytest.mark.parametrize("layout, vendor", [("generic", "generic-tiff"), ("aperio", "aperio")])
@pytest.mark.parametrize("mpp", [0.5, None])
def test_openslide_reads_both_layouts(tmp_path, image, layout, vendor, mpp):
    path = write_pyramid(tmp_path / f"slide-{layout}.tiff", image, mpp=mpp, layout=layout, levels=3)
    with openslide.OpenSlide(path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == vendor
        assert slide.level_count == 3
        assert slide.level_downsamples == pytest.approx((1, 2, 4))
        assert slide.level_dimensions == ((WIDTH, HEIGHT), (WIDTH // 2, HEIGHT // 2), (WIDTH // 4, HEIGHT // 4))
        if mpp is None:
            assert openslide.PROPERTY_NAME_MPP_X not in slide.properties
        else:
            assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(mpp)
            assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(mpp)
        if layout == "aperio":
            assert slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "20"
            assert "thumbnail" in slide.associated_images
        # JPEG (the default) is lossy but must stay close to the source at every level.
        region = _rgb(slide.read_region((0, 0), 1, (WIDTH // 2, HEIGHT // 2))).astype(float)
        expected = image.reshape(HEIGHT // 2, 2, WIDTH // 2, 2, 3).mean((1, 3))
        assert np.abs(region - expected).mean() < 6


def test_aperio_magnification_is_written(tmp_path, image):
    path = write_pyramid(tmp_path / "forty.svs", image, layout="aperio", magnification=40, mpp=0.25, levels=2)
    with openslide.OpenSlide(path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "40"
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert slide.level_count == 2


@pytest.mark.parametrize("layout", ["generic", "aperio"])
def test_lossless_levels_match_the_source_exactly(tmp_path, image, layout):
    path = write_pyramid(tmp_path / "zlib.tiff", image, layout=layout, compression="zlib", levels=3)
    with openslide.OpenSlide(path) as slide:
        assert np.array_equal(_rgb(slide.read_region((0, 0), 0, (WIDTH, HEIGHT))), image)
        level1 = _rgb(slide.read_region((0, 0), 1, (WIDTH // 2, HEIGHT // 2)))
    blocks = image.reshape(HEIGHT // 2, 2, WIDTH // 2, 2, 3).mean((1, 3), dtype=np.float32)
    assert np.array_equal(level1, (blocks + 0.5).astype(np.uint8))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((64, 64, 3), np.float32), "uint8"),
        (np.zeros((64, 64), np.uint8), r"\[H, W, 3\]"),
        (np.zeros((64, 64, 4), np.uint8), r"\[H, W, 3\]"),
    ],
)
def test_write_rejects_bad_images(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        write_pyramid(tmp_path / "bad.tiff", bad)


def test_write_rejects_bad_options(tmp_path, image):
    with pytest.raises(ValueError, match="layout"):
        write_pyramid(tmp_path / "x.tiff", image, layout="hamamatsu")
    with pytest.raises(ValueError, match="too small"):
        write_pyramid(tmp_path / "x.tiff", image[:8, :8], levels=5)
    with pytest.raises(ValueError, match="mpp"):
        write_pyramid(tmp_path / "x.tiff", image, mpp=0.0)


@pytest.mark.parametrize("kind", TISSUE_TYPES)
def test_textures_are_seeded_and_shaped(kind):
    first = render_texture(kind, 96, 128, np.random.default_rng(3))
    again = render_texture(kind, 96, 128, np.random.default_rng(3))
    other = render_texture(kind, 96, 128, np.random.default_rng(4))
    assert first.shape == (96, 128, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_texture_colours_look_like_h_and_e():
    def render(kind, scale=1.0):
        return render_texture(kind, 256, 256, np.random.default_rng(0), stain_scale=scale).reshape(-1, 3)

    background = render("background").mean(0)
    assert np.all((background > 230) & (background < 248))
    fat = render("fat")
    assert np.mean(fat.min(1) > 220) > 0.8  # mostly empty vacuoles
    for kind in ("tumour", "lymphocytes"):
        pixels = render(kind)
        # Haematoxylin-dark nuclei: dark pixels whose blue exceeds their red.
        nuclear = (pixels.sum(1) < 300) & (pixels[:, 2] > pixels[:, 0])
        assert nuclear.mean() > 0.15, kind
    stroma = render("stroma").mean(0)
    assert stroma[0] > stroma[2] > stroma[1]  # eosin pink: red > blue > green
    assert render("tumour", 1.3).mean() < render("tumour", 0.7).mean()  # stain_scale darkens


def test_unknown_texture_kind_raises():
    with pytest.raises(ValueError, match="unknown tissue kind 'bone'"):
        render_texture("bone", 8, 8, np.random.default_rng(0))
