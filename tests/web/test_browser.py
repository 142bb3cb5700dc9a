"""The app in a real browser: Debian's headless Chromium driven by Playwright against the server on a free port,
serving a tiny random model. Screenshots go to the test's tmp folder (``WEB_SCREENSHOT_DIR`` copies them)."""
import os
import shutil
import socket
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 120_000

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (.ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(service, web_config):
    from robust_r1_jax.web import app
    page = app.build(service, web_config)
    port = free_port()
    app.launch(page, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/", service
    page.close()


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1300})
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.requested = []  # every URL the page asks for: the app must work offline
        context.on("request", lambda request: page.requested.append(request.url))
        yield page
        context.close()


@pytest.fixture
def image_file(tmp_path):
    from robust_r1_jax.web import samples
    path = tmp_path / "shapes.png"
    Image.fromarray(samples.bundled_samples(3, 168)[2].image).save(path)
    return path


def keep_screenshot(page, path):
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("WEB_SCREENSHOT_DIR")
    if target:
        shutil.copy(path, os.path.join(target, os.path.basename(path)))


def run_and_wait(page):
    page.click("#run")
    page.wait_for_function("document.querySelector('#stats') && "
                           "document.querySelector('#stats').innerText.startsWith('done')")


def upload(page, path):
    page.locator("#upload input[type=file]").set_input_files(str(path))


def test_upload_degrade_run_streams_the_chain(server, browser_page, image_file, tmp_path):
    page = browser_page
    page.goto(server[0])
    upload(page, image_file)
    page.wait_for_selector("#degraded img")
    before = page.get_attribute("#degraded img", "src")
    page.focus("#intensity input[type=range]")
    for _ in range(30):  # drag the slider: 0.45 -> 0.75, the preview follows
        page.keyboard.press("ArrowRight")
    page.wait_for_function("document.querySelector('#applied').innerText.includes('lens blur 0.75')")
    assert page.get_attribute("#degraded img", "src") != before
    page.fill("#question textarea", "What colour is the circle?")
    page.fill("#options textarea", "red\ngreen\nblue\nyellow")
    page.click("#run")
    # the chain arrives in pieces: text shows up while the run is still going
    page.wait_for_function("document.querySelector('#stream textarea').value.length > 0")
    page.wait_for_function("document.querySelector('#stats').innerText.startsWith('done')")
    streamed = page.input_value("#stream textarea")
    stats = page.inner_text("#stats")
    assert streamed.strip() and "tokens/s" in stats and "time to first token" in stats
    assert "lens blur" in page.inner_text("#chips")  # the applied type's chip
    keep_screenshot(page, tmp_path / "web_run.png")
    assert Image.open(tmp_path / "web_run.png").size[0] == 1400
    assert any(urlparse(u).hostname == "127.0.0.1" for u in page.requested)
    outside = [u for u in page.requested if urlparse(u).scheme in ("http", "https", "ws", "wss")
               and urlparse(u).hostname != "127.0.0.1"]
    assert not outside, f"the page fetched from outside: {outside[:5]}"


def test_non_image_gets_a_message_and_the_server_keeps_serving(server, browser_page, image_file, tmp_path):
    page = browser_page
    page.goto(server[0])
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is a text file, not a picture\n" * 20)
    upload(page, bad)
    page.wait_for_function("document.querySelector('#status').innerText.includes('is not an image')")
    assert "notes.png" in page.inner_text("#status")
    page.fill("#question textarea", "")
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Upload an image')")
    upload(page, image_file)
    page.wait_for_selector("#degraded img")
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Type a question')")
    page.fill("#question textarea", "What shape is it?")
    run_and_wait(page)
    assert page.input_value("#stream textarea").strip()
    keep_screenshot(page, tmp_path / "web_after_error.png")


def test_extreme_aspect_image_is_refused(server, browser_page, tmp_path):
    page = browser_page
    page.goto(server[0])
    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((10, 400, 3), np.uint8)).save(strip)
    upload(page, strip)
    page.wait_for_function("document.querySelector('#status').innerText.includes('aspect ratio')")


class ScriptedStreamer:
    """Stands in for the sampler: the token ids of ``text`` and the stop token, one by one."""

    def __init__(self, tokenizer, config, text):
        self.config = config
        self.ids = tokenizer.encode(text, add_special_tokens=False) + [config.stop_token_ids[0]]

    def stream(self, *args):
        yield from self.ids


def test_chain_renders_as_chips_panels_and_answer(server, browser_page, tmp_path):
    from conftest import CHAIN
    url, service = server
    trained_like = ScriptedStreamer(service.processor.tokenizer, service.streamer.config, CHAIN)
    random_model, service.streamer = service.streamer, trained_like
    try:
        page = browser_page
        page.goto(url)
        page.locator("#sample input").click()
        page.get_by_role("option").first.click()
        page.wait_for_selector("#degraded img")
        page.wait_for_function("document.querySelector('#question textarea').value.length > 0")
        run_and_wait(page)
        chips = page.inner_text("#chips")
        assert "lens blur" in chips and "predicted 0.42" in chips and "noise" in chips
        assert page.locator("#chips .rr-hit").count() == 1 and page.locator("#chips .rr-extra").count() == 1
        assert "answer: 2 (triangle)" in page.inner_text("#panels")
        assert page.locator("#panels .rr-panel").count() == 3
        page.click("#sweep")
        page.wait_for_function("document.querySelector('#status').innerText.startsWith('sweep done')")
        page.wait_for_selector("#sweep-plot img, #sweep-plot svg, #sweep-plot canvas")
        table = page.inner_text("#sweep-table")
        for level in ("clean", "25%", "50%", "100%"):
            assert level in table
        assert table.count("2 (triangle)") == 4
        keep_screenshot(page, tmp_path / "web_chain.png")
    finally:
        service.streamer = random_model
