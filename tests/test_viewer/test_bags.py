"""Bags from `pathflip extract` (its folder or its dataset) and slides from a cohort table."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from pathflip.processing.encoders import load_encoder
from pathflip.processing.extract import ExtractionOptions, run_extraction
from pathflip.processing.inputs import slide_tiling
from pathflip.viewer import build_viewer
from pathflip.viewer.bags import BagSource

LOOPBACK_URL = "http://127.0.0.1:8000"  # the viewer answers only loopback Host names


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, lesion_slides):
    """`pathflip extract` of the lesion slides at the lesion model's patch geometry."""
    output = tmp_path_factory.mktemp("extracted")
    options = ExtractionOptions(tiling=slide_tiling(128.0, 128), num_workers=0)
    report = run_extraction(sorted(lesion_slides[0].glob("*.tiff")), output, load_encoder("stain-texture"), options)
    assert not report.failed, report.failed
    return output


@pytest.mark.parametrize("where", ["folder", "dataset"])
def test_bags_from_extraction_give_what_encoding_on_first_use_gives(where, extracted, viewer, lesion_model_dir,
                                                                     lesion_slides):  # fmt: skip
    _, encoded = viewer
    source = extracted if where == "folder" else extracted / "dataset"
    app, encodings = build_viewer(str(lesion_model_dir), lesion_slides[0], bags=source)
    with TestClient(app, base_url=LOOPBACK_URL) as client:
        slides = client.get("/api/slides").json()["slides"]
        assert all(slide["has_bag"] for slide in slides)
        for key in encodings.library.slides:
            from_bag, from_slide = encodings.wait(key, timeout=120), encoded.wait(key, timeout=120)
            torch.testing.assert_close(from_bag.coords, from_slide.coords, check_dtype=False)
            torch.testing.assert_close(from_bag.slide_embedding, from_slide.slide_embedding, atol=1e-4, rtol=1e-4)
        search = client.post("/api/search", json={"text": "lymphocytes."}).json()
        assert search["indexed"] == search["total"] == 3  # bags are indexed for search right after start
    encodings.close()


def test_a_cohort_table_names_slides_labels_and_captions(tmp_path, extracted, lesion_model_dir, lesion_slides):
    folder = lesion_slides[0]
    table = tmp_path / "cohort.csv"
    table.write_text("slide,slide_id,label,caption\n"
                     f"{folder / 'tumour-a.tiff'},tumour-a,carcinoma,Fibrous stroma. Dense tumour cells.\n"
                     f"{folder / 'necrosis-b.tiff'},necrosis-b,necrosis,Focal necrosis.\n")  # fmt: skip
    app, encodings = build_viewer(str(lesion_model_dir), table, bags=extracted)
    with TestClient(app, base_url=LOOPBACK_URL) as client:
        answer = client.get("/api/slides").json()
        assert answer["labels"] == ["carcinoma", "necrosis"]
        assert [(slide["slide_id"], slide["label"], slide["caption"]) for slide in answer["slides"]] == [
            ("tumour-a", "carcinoma", "Fibrous stroma. Dense tumour cells."), ("necrosis-b", "necrosis",
                                                                              "Focal necrosis.")]  # fmt: skip
        assert client.get("/api/slides/lymphocytes-c/image.dzi").status_code == 404  # not in the table
    encodings.close()


def test_bag_sources_that_cannot_be_used_say_why(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        BagSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a dataset folder"):
        BagSource(tmp_path / "empty")


def test_a_pathflip2_model_serves_every_panel(tmp_path, extracted, lesion_slides, tokenizer,
                                              pathflip2_config_factory):  # fmt: skip
    """The authors' released architecture grounds through patch features, not regions: the viewer serves it too."""
    from transformers import pipeline

    from modeling_pathflip import PathFLIP2Model, PathFLIP2Processor
    from pathflip.processing.encoders import StainTextureEncoder

    torch.manual_seed(0)
    config = pathflip2_config_factory(patch_dim=StainTextureEncoder.dim)
    folder = tmp_path / "pathflip2"
    PathFLIP2Model(config).eval().save_pretrained(folder)
    PathFLIP2Processor.from_model_config(tokenizer, config).save_pretrained(folder)
    app, encodings = build_viewer(str(folder), lesion_slides[0], bags=extracted)
    with TestClient(app, base_url=LOOPBACK_URL) as client:
        prepared = encodings.wait("tumour-a", timeout=120)
        layers = client.post("/api/slides/tumour-a/grounding", json={"text": "fat.", "top_k": 3}).json()["layers"]
        bag = {"features": prepared.inputs["patch_features"][0].numpy(), "coords": prepared.coords.numpy(),
               "patch_size_level0": prepared.patch_size_level0}  # fmt: skip
        (reference,) = pipeline("slide-grounding", model=str(folder))(bag, sentences=["fat."], top_k=3)
        expected = [feature["geometry"]["coordinates"][0][0] for feature in reference["geojson"]["features"]]
        assert [[patch["x"], patch["y"]] for patch in layers[0]["top_patches"]] == expected
        assert client.post("/api/slides/tumour-a/zero-shot", json={"labels": ["fat", "tumour"]}).status_code == 200
        assert client.post("/api/search", json={"text": "fat."}).json()["indexed"] >= 1
    encodings.close()


def test_a_symlink_loop_in_the_slides_folder_is_skipped(tmp_path, slide_factory):
    import shutil

    from pathflip.viewer.library import SlideLibrary

    shutil.copy(slide_factory("loop-neighbour"), tmp_path / "kept.tiff")
    (tmp_path / "a.svs").symlink_to(tmp_path / "b.svs")
    (tmp_path / "b.svs").symlink_to(tmp_path / "a.svs")
    library = SlideLibrary(tmp_path)
    assert sorted(library.slides) == ["kept"] and sorted(path.name for path in library.skipped) == ["a.svs", "b.svs"]
