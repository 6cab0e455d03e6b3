"""The viewer's API through the app's test client: slides, Deep Zoom tiles, grounding, zero-shot, search, files."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from pathflip.eval.spec import ZERO_SHOT_TEMPLATES

DZI = "{http://schemas.microsoft.com/deepzoom/2008}"


@pytest.fixture(scope="module")
def ready(viewer):
    """The viewer with every slide prepared (tiled and encoded from the slide files)."""
    client, encodings = viewer
    for key in encodings.library.slides:
        encodings.wait(key, timeout=300)
    return client, encodings


def test_the_slide_list_names_every_slide_with_its_state(viewer, lesion_slides):
    client, _ = viewer
    answer = client.get("/api/slides").json()
    assert sorted(slide["slide_id"] for slide in answer["slides"]) == sorted(lesion_slides[1])
    assert {slide["state"] for slide in answer["slides"]} <= {"new", "queued", "encoding", "ready"}
    assert answer["templates"] == list(ZERO_SHOT_TEMPLATES)
    thumbnail = client.get(f"/api/slides/{answer['slides'][0]['key']}/thumbnail.jpg")
    assert thumbnail.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) == 256


def test_the_dzi_descriptor_and_its_tiles_cover_level_0(viewer, lesion_slides):
    client, encodings = viewer
    descriptor = ElementTree.fromstring(client.get("/api/slides/tumour-a/image.dzi").text)
    size = descriptor.find(f"{DZI}Size")
    width, height = int(size.get("Width")), int(size.get("Height"))
    assert (width, height) == (3072, 3072)  # 12 x 12 cells of 256 level-0 pixels
    tile_size, overlap = int(descriptor.get("TileSize")), int(descriptor.get("Overlap"))
    deepest = int(np.ceil(np.log2(max(width, height))))
    tile = client.get(f"/api/slides/tumour-a/image_files/{deepest}/1_2.jpeg")
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(tile.content))
    assert image.format == "JPEG" and image.size == (tile_size + 2 * overlap, tile_size + 2 * overlap)
    # The tile shows level-0 pixels at (254, 508) onwards, minus one pixel of overlap on each side.
    expected = encodings.library.deep_zoom("tumour-a").get_tile(deepest, (1, 2))
    assert np.abs(np.asarray(image, float) - np.asarray(expected, float)).mean() < 6  # JPEG re-encoding only
    assert client.get(f"/api/slides/tumour-a/image_files/{deepest}/1_2.jpeg").content == tile.content  # cached
    overview = Image.open(io.BytesIO(client.get("/api/slides/tumour-a/image_files/0/0_0.jpeg").content))
    assert overview.size == (1, 1)


@pytest.mark.parametrize(("path", "fragment"), [
    ("/api/slides/tumour-a/image_files/99/0_0.jpeg", "levels are 0.."),
    ("/api/slides/tumour-a/image_files/12/99_0.jpeg", "does not exist"),
    ("/api/slides/tumour-a/image_files/12/one_two.jpeg", "COLUMN_ROW"),
    ("/api/slides/no-such-slide/image.dzi", "GET /api/slides lists"),
])  # fmt: skip
def test_bad_tile_requests_are_json_errors(viewer, path, fragment):
    client, _ = viewer
    answer = client.get(path)
    assert answer.status_code in (400, 404) and fragment in answer.json()["error"]


def test_a_sentence_becomes_a_layer_aligned_with_the_bag(ready, lesion_model_dir, lesion_slides):
    client, encodings = ready
    prepared = encodings.get("tumour-a")
    sentence = lesion_slides[1]["tumour-a"]["sentence"]
    answer = client.post("/api/slides/tumour-a/grounding", json={"text": sentence, "top_k": 4})
    assert answer.status_code == 200, answer.text
    (layer,) = answer.json()["layers"]

    grounder = pipeline("slide-grounding", model=str(lesion_model_dir))
    bag = {"features": prepared.inputs["patch_features"][0].numpy(), "coords": prepared.coords.numpy(),
           "patch_size_level0": prepared.patch_size_level0}  # fmt: skip
    (reference,) = grounder(bag, sentences=[sentence], top_k=4)
    expected = [feature["geometry"]["coordinates"][0][0] for feature in reference["geojson"]["features"]]
    assert [[patch["x"], patch["y"]] for patch in layer["top_patches"]] == expected
    scores = [feature["properties"]["score"] for feature in reference["geojson"]["features"]]
    np.testing.assert_allclose([patch["score"] for patch in layer["top_patches"]], scores, rtol=1e-5)

    # One PNG pixel per patch cell, placed at level-0 bounds: each patch's pixel carries its own score.
    size, coords = prepared.patch_size_level0, prepared.coords.numpy()
    origin = coords.min(axis=0) % size
    assert (layer["bounds"]["x"], layer["bounds"]["y"]) == tuple(origin)
    alpha = np.asarray(Image.open(io.BytesIO(_png_bytes(layer["image"]))))[..., 3]
    assert alpha.shape == (layer["bounds"]["height"] // size, layer["bounds"]["width"] // size)
    cells = (coords - origin) // size
    normalised = (reference["patch_scores"] - reference["patch_scores"].min()) / np.ptp(reference["patch_scores"])
    np.testing.assert_allclose(alpha[cells[:, 1], cells[:, 0]], np.round(255 * normalised.numpy() ** 2), atol=1)
    covered = np.zeros(alpha.shape, bool)
    covered[cells[:, 1], cells[:, 0]] = True
    assert (alpha[~covered] == 0).all()


def test_the_lesion_sentence_lands_on_the_lesion(ready, lesion_slides):
    client, _ = ready
    for slide_id, truth in lesion_slides[1].items():
        (layer,) = client.post(f"/api/slides/{slide_id}/grounding", json={"text": truth["sentence"]}).json()["layers"]
        x, y, width, height = truth["box"]
        top = layer["top_patches"][0]
        assert x <= top["x"] < x + width and y <= top["y"] < y + height, (slide_id, top, truth["box"])


def test_a_pasted_report_gives_one_layer_per_sentence_in_its_own_colour(ready):
    client, _ = ready
    report = "Fibrous stroma. Dense tumour cells in the left region.\n- Focal necrosis."
    layers = client.post("/api/slides/necrosis-b/grounding", json={"text": report}).json()["layers"]
    assert [layer["sentence"] for layer in layers] == ["Fibrous stroma.", "Dense tumour cells in the left region.",
                                                       "Focal necrosis."]  # fmt: skip
    assert len({layer["colour"] for layer in layers}) == 3
    again = client.post("/api/slides/necrosis-b/grounding", json={"text": ["Fibrous stroma.", report]}).json()
    assert [layer["sentence"] for layer in again["layers"]] == [layer["sentence"] for layer in layers]


def test_zero_shot_matches_the_zero_shot_pipeline(ready, lesion_model_dir):
    client, encodings = ready
    labels = ["dense tumour cells", "focal necrosis", "lymphocytes", "fat"]
    answer = client.post("/api/slides/necrosis-b/zero-shot", json={"labels": labels}).json()
    classifier = pipeline("zero-shot-slide-classification", model=str(lesion_model_dir))
    prepared = encodings.get("necrosis-b")
    bag = {"features": prepared.inputs["patch_features"][0].numpy(), "coords": prepared.coords.numpy(),
           "patch_size_level0": prepared.patch_size_level0}  # fmt: skip
    expected = classifier(bag, candidate_labels=labels, hypothesis_template=list(ZERO_SHOT_TEMPLATES))
    assert [item["label"] for item in answer["scores"]] == [item["label"] for item in expected]
    np.testing.assert_allclose([item["score"] for item in answer["scores"]], [item["score"] for item in expected],
                               rtol=1e-4)  # fmt: skip


def test_search_ranks_every_slide_by_the_retrieval_score(ready, lesion_model_dir):
    client, encodings = ready
    answer = client.post("/api/search", json={"text": "focal necrosis.", "top_k": 10}).json()
    assert (answer["indexed"], answer["total"]) == (3, 3)
    retriever = pipeline("slide-text-retrieval", model=str(lesion_model_dir))
    expected = {}
    for key in encodings.library.slides:
        prepared = encodings.get(key)
        bag = {"features": prepared.inputs["patch_features"][0].numpy(), "coords": prepared.coords.numpy(),
               "patch_size_level0": prepared.patch_size_level0}  # fmt: skip
        expected[key] = retriever(bag, candidate_texts=["focal necrosis."])[0]["score"]
    assert [result["key"] for result in answer["results"]] == sorted(expected, key=lambda key: -expected[key])
    for result in answer["results"]:
        assert result["score"] == pytest.approx(expected[result["key"]], abs=1e-5)


def test_layers_download_as_qupath_geojson_and_png(ready, lesion_slides):
    client, encodings = ready
    sentences = ["focal necrosis.", "fibrous stroma."]
    answer = client.post("/api/slides/necrosis-b/layers.geojson", json={"text": sentences, "top_k": 3})
    assert answer.headers["content-disposition"] == 'attachment; filename="necrosis-b.geojson"'
    collection = answer.json()
    assert [feature["properties"]["classification"]["name"] for feature in collection["features"]] == (
        ["focal necrosis."] * 3 + ["fibrous stroma."] * 3)  # fmt: skip
    prepared = encodings.get("necrosis-b")
    rings = [feature["geometry"]["coordinates"][0] for feature in collection["features"]]
    coords = {tuple(row) for row in prepared.coords.tolist()}
    for ring in rings:
        (x, y), size = ring[0], prepared.patch_size_level0
        assert (x, y) in coords and ring == [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]

    png = client.post("/api/slides/necrosis-b/layers.png", json={"text": sentences[:1], "opacity": 1.0})
    blended = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"), float)
    plain = np.asarray(encodings.library.thumbnail_image("necrosis-b", 2048), float)
    assert blended.shape == plain.shape
    x, y, width, height = (value * blended.shape[1] / 3072 for value in lesion_slides[1]["necrosis-b"]["box"])
    change = np.abs(blended - plain).sum(-1)
    lesion = change[int(y) : int(y + height), int(x) : int(x + width)].mean()
    assert lesion > 3 * change.mean()  # the layer shows on the lesion, not evenly over the slide


@pytest.mark.parametrize(("body", "fragment"), [
    ({"text": ""}, "no sentence to ground"),
    ({"text": 5}, "text must be a sentence"),
    ({"text": "Fat.", "top_k": 0}, "top_k must be a positive whole number"),
    ({"text": "Fat.", "colour": "red"}, "unknown field(s) ['colour']"),
    ({"text": ". ".join(f"Sentence {i}" for i in range(12))}, "at most 8"),
    ([1, 2], "must be a JSON object"),
])  # fmt: skip
def test_bad_grounding_requests_are_one_line_json_errors(ready, body, fragment):
    client, _ = ready
    answer = client.post("/api/slides/tumour-a/grounding", json=body)
    assert answer.status_code == 400 and fragment in answer.json()["error"]
    assert "\n" not in answer.json()["error"]


def test_bodies_that_are_not_json_or_too_large_are_refused(ready):
    client, _ = ready
    answer = client.post("/api/slides/tumour-a/grounding", content=b"not json",
                         headers={"content-type": "application/json"})  # fmt: skip
    assert answer.status_code == 400 and "bad request" in answer.json()["error"]
    answer = client.post("/api/slides/tumour-a/zero-shot", json={"labels": ["x" * 70_000]})
    assert answer.status_code == 413 and "texts only" in answer.json()["error"]

    def chunked():  # no Content-Length: the body is counted as it is read
        yield b'{"labels": ["'
        yield from (b"x" * 1000 for _ in range(70))
        yield b'"]}'

    json_type = {"content-type": "application/json"}
    answer = client.post("/api/slides/tumour-a/zero-shot", content=chunked(), headers=json_type)
    assert answer.status_code == 413 and "texts only" in answer.json()["error"]
    answer = client.post("/api/search", content=b'{"text": "fat"}', headers={"content-length": "many"})
    assert answer.status_code == 400 and "Content-Length 'many' is not a number" in answer.json()["error"]


def _png_bytes(data_url: str) -> bytes:
    import base64

    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    return base64.b64decode(data_url[len(prefix) :])


def test_kept_slide_encodings_equal_a_fresh_encoding(ready):
    _, encodings = ready
    prepared = encodings.get("tumour-a")
    with torch.no_grad():
        fresh = encodings.model.get_slide_features(**prepared.inputs).slide_embeds[0]
    torch.testing.assert_close(prepared.slide_features.slide_embeds[0], fresh)


@pytest.mark.parametrize(("body", "fragment"), [
    ({}, "labels are missing"),
    ({"labels": None}, "labels are missing"),
    ({"labels": ["fat"]}, "two or more classes"),
    ({"labels": [f"class {number}" for number in range(65)]}, "give at most 64"),
])  # fmt: skip
def test_bad_zero_shot_requests_are_one_line_json_errors(ready, body, fragment):
    client, _ = ready
    answer = client.post("/api/slides/tumour-a/zero-shot", json=body)
    assert answer.status_code == 400 and fragment in answer.json()["error"], answer.json()


def test_a_null_top_k_is_the_default_and_a_failed_slide_says_why_without_being_encoded_again(ready):
    from pathflip.viewer.encoding import Preparation

    client, encodings = ready
    layers = client.post("/api/slides/tumour-a/grounding", json={"text": "Fat.", "top_k": None}).json()["layers"]
    assert len(layers[0]["top_patches"]) == 10
    kept = encodings._prepared.pop("tumour-a")
    encodings._status["tumour-a"] = Preparation(state="failed", message="slide 'tumour-a': no mpp in its metadata")
    try:
        answer = client.post("/api/slides/tumour-a/grounding", json={"text": "Fat."})
        assert answer.status_code == 422 and "no mpp in its metadata" in answer.json()["error"]
        assert encodings.status("tumour-a").state == "failed", "asking again does not queue it again"
    finally:
        encodings._prepared["tumour-a"] = kept
        encodings._status["tumour-a"] = Preparation(state="ready")
