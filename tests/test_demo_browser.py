"""The Gradio demo in a real headless Chromium: generate into the gallery, then ask about an uploaded image.

Needs Chromium from the system's packages (`apt-get install chromium`; `.ci/run` installs it) and the `playwright`
Python package, which drives that binary: no browser is ever downloaded. Skips, saying why, where either is missing.
With OPENBLIP3O_SCREENSHOT set the screenshot goes to docs/images/demo.png (or to the path it names), taken with the
shipped model at its default settings; else to tmp, with random weights and few steps (fast).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

gradio = pytest.importorskip("gradio", reason="needs the serve extras: pip install -e '.[serve]'")
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install -e '.[test]'")

from openblip3o import BLIP3oPipeline
from openblip3o.data.shapes import ShapesWorld
from openblip3o.serving.demo import launch_demo

# Gradio's own pandas calls warn under pandas 3; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")

REPO = Path(__file__).resolve().parent.parent
SCREENSHOT_ENV = "OPENBLIP3O_SCREENSHOT"
DOCS_SCREENSHOT = REPO / "docs" / "images" / "demo.png"
BROWSER_ENV = "OPENBLIP3O_CHROMIUM"
BROWSER_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "/usr/bin/chromium")
# The machine may have no network at all: anything Chromium would fetch by itself only produces timeouts and errors.
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage"]
UI_TIMEOUT_MS = 90_000  # first generation includes warm-up on a shared 2-core CPU
VIEWPORT = {"width": 1280, "height": 820}
IMAGES = 4
QUESTION = "how many shapes are there?"


def find_chromium() -> str | None:
    for candidate in (os.environ.get(BROWSER_ENV), *BROWSER_CANDIDATES):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def documenting() -> bool:
    return bool(os.environ.get(SCREENSHOT_ENV, ""))


def screenshot_path(tmp_path: Path) -> Path:
    value = os.environ.get(SCREENSHOT_ENV, "")
    if not value:
        return tmp_path / "demo.png"
    return Path(value) if value.endswith(".png") else DOCS_SCREENSHOT


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        pytest.skip(f"no Chromium installed (apt-get install chromium, or set {BROWSER_ENV}); the browser test needs one")
    return path


@pytest.fixture(scope="module")
def demo(chromium):
    torch.manual_seed(0)
    if documenting():  # the README's picture: the shipped model at its default settings
        pipe, decoder_steps = BLIP3oPipeline.from_pretrained("mini"), None
    else:  # two decoder steps keep a click to a few seconds on a CPU; the DiT's steps are set in the page
        pipe, decoder_steps = BLIP3oPipeline.from_preset("mini"), 2
    app, url = launch_demo(pipe, "mini", port=free_port(), decoder_steps=decoder_steps, block=False)
    yield pipe, url
    app.close()
    app.batcher.close()


def scene_image(path: Path):
    """A ShapesWorld scene to upload: what the model is about."""
    image = ShapesWorld("eval", seed=3)[0].image.convert("RGB")
    image.save(path)
    return image


def test_generate_then_ask_in_a_headless_browser(demo, chromium, tmp_path):
    pipe, url = demo
    profile = tmp_path / "profile"  # a fresh user-data-dir: no state from earlier runs
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, headless=True, args=BROWSER_ARGS, viewport=VIEWPORT)
        try:
            page = browser.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.goto(url, wait_until="domcontentloaded")

            # Generate tab: type a prompt, fewer steps, click, wait for the gallery.
            page.locator("#prompt textarea").fill("a photo of two stars")
            if not documenting():
                steps = page.locator("#steps input[type=number]")
                steps.fill("4")
                steps.press("Tab")
            page.locator("#generate-button").click()
            gallery = page.locator("#gallery img")
            gallery.nth(IMAGES - 1).wait_for(state="visible")
            assert gallery.count() >= IMAGES
            page.wait_for_timeout(300)  # let the gallery finish laying out before the picture is taken
            shot = screenshot_path(tmp_path)
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # Ask tab: upload an image, ask, read the answer.
            page.get_by_role("tab", name="Ask").click()
            picture = scene_image(tmp_path / "scene.png")
            page.locator("#ask-image input[type=file]").set_input_files(str(tmp_path / "scene.png"))
            page.locator("#ask-image img").first.wait_for(state="visible")
            page.locator("#question textarea").fill(QUESTION)
            page.locator("#ask-button").click()
            answer = page.locator("#answer textarea")
            page.wait_for_function("el => el.value.length > 0", arg=answer.element_handle())
            expected = pipe.answer([picture], [QUESTION])[0]
            assert answer.input_value() == expected
        finally:
            browser.close()
