"""The viewer's world: a tiny PathFLIP trained to ground lesions, and slide files with one lesion each."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from lesion_world import train_lesion_model, write_lesion_slide

LOOPBACK_URL = "http://127.0.0.1:8000"  # the viewer answers only loopback Host names

# (file stem, lesion layout index, render seed): index 0 draws a tumour lesion, 1 necrosis, 2 lymphocytes.
SLIDES = (("tumour-a", 0, 10), ("necrosis-b", 1, 11), ("lymphocytes-c", 2, 12))


@pytest.fixture(scope="session")
def lesion_model_dir(tmp_path_factory, tokenizer, config_factory):
    """A saved model folder whose config records the stain-texture encoder and the slides' patch geometry."""
    model, processor = train_lesion_model(tokenizer, config_factory)
    folder = tmp_path_factory.mktemp("lesion-model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def lesion_slides(tmp_path_factory):
    """A folder of generated slides; returns ``(folder, {slide id: {tissue, sentence, box}})``."""
    folder = tmp_path_factory.mktemp("lesion-slides")
    truth = {stem: write_lesion_slide(folder / f"{stem}.tiff", index, seed) for stem, index, seed in SLIDES}
    return folder, truth


@pytest.fixture(scope="session")
def viewer(lesion_model_dir, lesion_slides):
    """``(TestClient, SlideEncodings)`` over the lesion slides, encoded on first use."""
    from pathflip.viewer import build_viewer

    app, encodings = build_viewer(str(lesion_model_dir), lesion_slides[0])
    with TestClient(app, base_url=LOOPBACK_URL) as client:
        yield client, encodings
    encodings.close()
