"""The glass model: its colour found on any scanner's glass, unscanned white and bright pieces inside the tissue
ignored, uneven light taken out, and the distance that tissue detection thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from pathflip.processing.glass import distance_from_log, estimate_glass, fit_light, glass_distance

RNG = np.random.default_rng(0)


def _slide(glass=(236.0, 232.0, 238.0), size=(200, 240), noise=1.0) -> np.ndarray:
    """A thumbnail of ``glass`` with pixel noise and a block of stroma-coloured tissue in the middle."""
    image = np.asarray(glass, np.float32) + noise * RNG.standard_normal((*size, 1))
    image[60:140, 70:170] = (200.0, 140.0, 170.0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("glass", [(236.0, 232.0, 238.0), (212.0, 214.0, 213.0), (246.0, 241.0, 225.0)])
def test_glass_colour_of_any_scanner(glass):
    found = estimate_glass(_slide(glass))
    assert np.allclose(found.colour, glass, atol=1.5)
    assert 0 < found.noise < 0.02


def test_unscanned_white_is_not_the_glass_even_when_it_is_larger():
    """Scanners fill what they did not scan with 255: taken for glass, the real glass would all be 'tissue'."""
    image = _slide((238.0, 236.0, 239.0))
    image[:, :150] = 255
    assert np.allclose(estimate_glass(image).colour, (238, 236, 239), atol=1.5)


def test_bright_pieces_inside_the_tissue_do_not_pass_for_glass():
    image = _slide((230.0, 230.0, 232.0))
    image[70:130, 80:160] = 248  # fat or a bubble brighter than the glass around the tissue
    assert np.allclose(estimate_glass(image).colour, (230, 230, 232), atol=1.5)


def test_glass_clipped_at_255_is_still_found():
    image = _slide((255.0, 255.0, 255.0), noise=2.0)
    found = estimate_glass(image)
    assert min(found.colour) >= 251


def test_distance_is_the_norm_of_optical_densities_above_the_glass():
    glass = (240.0, 240.0, 240.0)
    pixels = np.array([[[240, 240, 240], [255, 255, 255], [24, 240, 240], [120, 120, 120]]], np.uint8)
    distance = glass_distance(pixels, glass)[0]
    assert distance[0] == pytest.approx(0, abs=1e-6) and distance[1] == 0, "glass and brighter-than-glass: 0"
    assert distance[2] == pytest.approx(1.0, abs=1e-3), "a tenth of the light in one channel: OD 1"
    assert distance[3] == pytest.approx(np.sqrt(3) * np.log10(2), abs=1e-3)
    assert np.allclose(glass_distance(pixels.astype(np.float32), glass), glass_distance(pixels, glass), atol=1e-5)


def test_fitted_light_takes_out_a_gradient():
    """Light falling off by 4 % across the slide puts the dark side's glass at an OD of ~0.03 from the mode's
    colour; against the fitted light it stays at the noise."""
    image = _slide((236.0, 234.0, 238.0)).astype(np.float32)
    ramp = np.linspace(1.02, 0.98, image.shape[1], dtype=np.float32)
    image = np.clip(np.rint(image * ramp[None, :, None]), 0, 255).astype(np.uint8)
    glass = estimate_glass(image)
    sample = np.ones(image.shape[:2], bool)
    sample[50:150, 60:180] = False
    log_light, fitted = fit_light(image, sample, glass)
    on_glass = sample.copy()
    assert glass_distance(image, glass.colour)[on_glass].max() > 0.02
    assert np.percentile(distance_from_log(image, log_light)[on_glass], 99) < 0.012
    assert np.allclose(glass_distance(image, 10**log_light), distance_from_log(image, log_light), atol=1e-4)
    assert fitted.noise < glass.noise and fitted.colour == glass.colour


def test_too_little_glass_to_fit_keeps_the_slide_wide_colour():
    image = _slide()
    glass = estimate_glass(image)
    log_light, same = fit_light(image, np.zeros(image.shape[:2], bool), glass)
    assert same == glass and np.allclose(10**log_light, glass.colour)
