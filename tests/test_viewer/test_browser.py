"""The page in headless Chromium: open a generated slide, type the lesion's sentence, see the layer on the lesion.

Needs Debian's ``chromium`` (``apt-get install chromium``; `.ci/run` installs it) and the ``playwright`` Python
package, which drives that browser (no browser download). Set ``PATHFLIP_SCREENSHOT=docs/viewer.png`` to keep the
screenshot.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The flags a closed network needs: no background connections, no GPU, no first-run work.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

if CHROMIUM is None and os.environ.get("PATHFLIP_REQUIRE_BROWSER"):  # CI installs it: a skip there would hide a gap
    raise RuntimeError("PATHFLIP_REQUIRE_BROWSER is set but chromium is not installed: apt-get install chromium.")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def server(viewer, free_port):
    """The viewer app served by uvicorn on a loopback port, in a thread."""
    import uvicorn

    client, encodings = viewer
    config = uvicorn.Config(client.app, host="127.0.0.1", port=free_port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started:
        assert time.monotonic() < deadline, "the viewer did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{free_port}"
    running.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_typing_the_lesion_sentence_shows_a_layer_on_the_lesion(server, lesion_slides, tmp_path):
    from playwright.sync_api import sync_playwright

    slide_id, truth = "tumour-a", lesion_slides[1]["tumour-a"]
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{server}/?slide={slide_id}")
        page.wait_for_selector(f"body[data-ready='{slide_id}']", timeout=120_000)  # tiled and encoded on first use
        _wait_until_drawn(page)
        viewer = page.locator("#viewer")
        before = _pixels(viewer.screenshot())

        page.fill("#ground-text", truth["sentence"])
        page.click("#ground-button")
        page.wait_for_selector("body[data-layers='1']", timeout=60_000)
        _wait_until_drawn(page)
        after = _pixels(viewer.screenshot())
        box = page.evaluate(_LESION_ON_SCREEN, list(truth["box"]))
        legend = page.locator("#layers li").inner_text()

        page.fill("#labels", "\n".join(LABELS))
        page.click("#classify")
        page.wait_for_function("document.querySelectorAll('#scores li').length === 4")
        scores = page.locator("#scores li").all_inner_texts()
        _search_until_every_slide_is_ranked(page, "focal necrosis.", len(lesion_slides[1]))
        ranked = page.locator("#search-results li").all_inner_texts()
        shot = tmp_path / "viewer.png"
        page.screenshot(path=str(shot))
        browser.close()
    assert not errors, errors
    assert truth["sentence"] in legend
    assert sorted(text.split(":")[0] for text in scores) == sorted(LABELS)
    assert sum(float(text.split(": ")[1].rstrip("%")) for text in scores) == pytest.approx(100, abs=0.3)
    assert sorted(text.split()[0] for text in ranked) == sorted(lesion_slides[1])

    # Where the layer is brightest: the pixels the layer changed most.
    change = np.abs(after - before).sum(-1)
    brightest = change >= np.quantile(change, 0.995)
    rows, columns = np.nonzero(brightest)
    left, top, right, bottom = box
    inside = (columns >= left) & (columns < right) & (rows >= top) & (rows < bottom)
    assert change.max() > 60, "no layer was drawn"
    assert inside.mean() > 0.6, f"only {inside.mean():.0%} of the layer's brightest pixels lie on the lesion {box}"
    if os.environ.get("PATHFLIP_SCREENSHOT"):
        shutil.copy(shot, Path(os.environ["PATHFLIP_SCREENSHOT"]))


LABELS = ("dense tumour cells", "focal necrosis", "lymphocytes", "fat")


def _search_until_every_slide_is_ranked(page, text: str, slides: int) -> None:
    """Search; the page asks the server to encode slides not yet indexed, so search again until all are ranked."""
    deadline = time.monotonic() + 120
    while True:
        page.fill("#search-text", text)
        page.press("#search-text", "Enter")
        page.wait_for_function("document.querySelector('#search-note').textContent.startsWith('ranked')")
        if page.locator("#search-results li").count() == slides:
            return
        assert time.monotonic() < deadline, page.locator("#search-note").inner_text()
        page.wait_for_timeout(1000)


# The lesion's level-0 box in the viewer element's pixels.
_LESION_ON_SCREEN = """([x, y, width, height]) => {
  const image = window.pathflip.viewer.world.getItemAt(0);
  const topLeft = image.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
  const bottomRight = image.imageToViewerElementCoordinates(new OpenSeadragon.Point(x + width, y + height));
  return [topLeft.x, topLeft.y, bottomRight.x, bottomRight.y];
}"""


def _wait_until_drawn(page) -> None:
    page.wait_for_function("""() => {
      const world = window.pathflip.viewer.world;
      for (let i = 0; i < world.getItemCount(); i++) if (!world.getItemAt(i).getFullyLoaded()) return false;
      return world.getItemCount() > 0 && !window.pathflip.viewer.world.needsDraw();
    }""", timeout=60_000)  # fmt: skip
    page.wait_for_timeout(500)  # one more paint after the last tile


def _pixels(png: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32)
