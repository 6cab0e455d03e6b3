"""What the viewer refuses: paths out of its folder, requests without the token, foreign Host headers, early asks."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from pathflip.viewer import build_viewer
from pathflip.viewer.server import check_binding

LOOPBACK_URL = "http://127.0.0.1:8000"  # the viewer answers only loopback Host names

TOKEN = "a-long-enough-secret-token"


@pytest.mark.parametrize("path", [
    "/api/slides/..%2F..%2Fetc%2Fpasswd/image.dzi",
    "/api/slides/../../etc/passwd",
    "/api/slides/%2e%2e/image.dzi",
    "/static/../../pyproject.toml",
    "/static/%2e%2e/%2e%2e/pyproject.toml",
    "/static/..%2F..%2Fpyproject.toml",
    "/api/slides/tumour-a/image_files/12/..%2F..%2F0_0.jpeg",
])  # fmt: skip
def test_traversal_attempts_are_refused_as_json(viewer, path):
    client, _ = viewer
    answer = client.get(path)
    assert answer.status_code in (400, 404), path
    assert answer.headers["content-type"].startswith("application/json") and "error" in answer.json()
    assert "root:" not in answer.text and "[project]" not in answer.text


def test_a_symlink_out_of_the_slide_folder_is_not_served(tmp_path, lesion_model_dir, lesion_slides):
    inside, outside = tmp_path / "slides", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    shutil.copy(lesion_slides[0] / "tumour-a.tiff", inside / "tumour-a.tiff")
    shutil.copy(lesion_slides[0] / "necrosis-b.tiff", outside / "secret.tiff")
    (inside / "linked.tiff").symlink_to(outside / "secret.tiff")
    (inside / "linked-folder").symlink_to(outside, target_is_directory=True)
    app, encodings = build_viewer(str(lesion_model_dir), inside)
    with TestClient(app, base_url=LOOPBACK_URL) as client:
        listed = [slide["slide_id"] for slide in client.get("/api/slides").json()["slides"]]
        assert listed == ["tumour-a"]
        assert [path.name for path in encodings.library.skipped] == ["linked.tiff"]
        for key in ("linked", "secret"):
            assert client.get(f"/api/slides/{key}/image.dzi").status_code == 404
        # A file swapped for a link after start-up is refused when opened.
        (inside / "tumour-a.tiff").unlink()
        (inside / "tumour-a.tiff").symlink_to(outside / "secret.tiff")
        answer = client.get("/api/slides/tumour-a/image.dzi")
        assert answer.status_code == 404 and "outside" in answer.json()["error"]
    encodings.close()


def test_off_loopback_needs_a_token_and_every_request_carries_it(lesion_model_dir, lesion_slides):
    with pytest.raises(ValueError, match="--token"):
        check_binding("0.0.0.0", None)
    with pytest.raises(ValueError, match="at least 16"):
        check_binding("0.0.0.0", "short")
    app, encodings = build_viewer(str(lesion_model_dir), lesion_slides[0], host="0.0.0.0", token=TOKEN)
    with TestClient(app, base_url=LOOPBACK_URL) as client:
        refused = client.get("/api/slides")
        assert refused.status_code == 401 and "token" in refused.json()["error"]
        assert client.get("/", headers={"Authorization": "Bearer wrong-token-of-enough-length"}).status_code == 401
        assert client.get("/static/viewer.js").status_code == 401
        assert client.get("/api/slides", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get("/api/slides", headers={"X-PathFLIP-Token": TOKEN}).status_code == 200
        page = client.get(f"/?token={TOKEN}")  # the address `pathflip serve` prints: it sets the page's cookie
        assert page.status_code == 200 and "PathFLIP" in page.text
        assert client.get("/api/slides/tumour-a/image.dzi").status_code == 200  # the cookie now carries it
    encodings.close()


def test_a_loopback_server_answers_only_loopback_host_names(lesion_model_dir, lesion_slides):
    app, encodings = build_viewer(str(lesion_model_dir), lesion_slides[0])
    with TestClient(app, base_url=LOOPBACK_URL) as client:
        assert client.get("/api/slides").status_code == 200
        assert client.get("/api/slides", headers={"host": "localhost:8000"}).status_code == 200
        # A page on another site whose name resolves to 127.0.0.1 (DNS rebinding) sends its own Host.
        assert client.get("/api/slides", headers={"host": "evil.example:8000"}).status_code == 400
    encodings.close()


def test_asking_before_the_slide_is_prepared_says_so(lesion_model_dir, lesion_slides):
    app, encodings = build_viewer(str(lesion_model_dir), lesion_slides[0])
    encodings._worker.submit(lambda: __import__("time").sleep(2))  # keep the worker busy
    with TestClient(app, base_url=LOOPBACK_URL) as client:
        answer = client.post("/api/slides/necrosis-b/grounding", json={"text": "focal necrosis."})
        assert answer.status_code == 409 and "poll its status" in answer.json()["error"]
        assert client.get("/api/slides/necrosis-b/status").json()["state"] in ("queued", "encoding")
        encodings.wait("necrosis-b", timeout=120)
        assert client.post("/api/slides/necrosis-b/grounding", json={"text": "focal necrosis."}).status_code == 200
    encodings.close()


def test_a_slide_that_cannot_be_encoded_reports_why(tmp_path, lesion_model_dir, lesion_slides):
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / "broken.tiff").write_bytes(b"not a tiff")
    shutil.copy(lesion_slides[0] / "tumour-a.tiff", folder / "tumour-a.tiff")
    app, encodings = build_viewer(str(lesion_model_dir), folder)
    with TestClient(app, base_url=LOOPBACK_URL) as client:
        with pytest.raises(ValueError, match="broken"):
            encodings.wait("broken", timeout=60)
        status = client.get("/api/slides/broken/status").json()
        assert status["state"] == "failed" and "broken" in status["message"]
        assert status["message"].count("slide 'broken'") == 1 and "(in the viewer: " in status["message"]
        answer = client.post("/api/slides/broken/grounding", json={"text": "Fat."})
        assert answer.status_code == 422 and answer.json()["error"].startswith("slide 'broken'")
        answer = client.get("/api/slides/broken/image.dzi")
        assert answer.status_code == 400 and "cannot be read" in answer.json()["error"]
    encodings.close()


def test_a_slide_dropped_from_memory_is_prepared_again_when_asked(lesion_model_dir, lesion_slides):
    app, encodings = build_viewer(str(lesion_model_dir), lesion_slides[0])
    encodings.keep = 1
    with TestClient(app, base_url=LOOPBACK_URL) as client:
        first = encodings.wait("tumour-a", timeout=120)
        encodings.wait("necrosis-b", timeout=120)  # only one slide is kept: tumour-a is dropped
        answer = client.post("/api/slides/tumour-a/grounding", json={"text": "dense tumour cells."})
        assert answer.status_code == 409  # asked again: it is being prepared again, and the page polls
        again = encodings.wait("tumour-a", timeout=120)
        assert again is not first and len(again.coords) == len(first.coords)
        assert sorted(encodings.embeddings) == ["necrosis-b", "tumour-a"]  # the search index keeps both
    encodings.close()
