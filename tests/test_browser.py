"""The studio in a real browser: Debian's chromium driven by playwright (no browser download).

Opens the page, picks a synthetic example, runs it, and checks that the overlay video plays and the
attention tab shows a heatmap grid. Screenshots go to ``$REVIOSA_SCREENSHOTS`` when set (to look at
them), else to the test's temporary folder.

Needs the Debian package ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python
package; skipped with the reason when either is missing.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("REVIOSA_CHROMIUM", "/usr/bin/chromium"))
EXAMPLE = "white circle pushing the big red cross (built-in model)"
TIMEOUT_MS = 90_000  # the first request loads the model; the CI machine may be busy

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} missing: apt-get install -y chromium (Debian)"
)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url(answering_model_dir):
    from app import Studio, build_demo
    from studio.limits import Limits
    from studio.service import ModelRegistry

    # Forced answer: the tiny test model then draws both an actor and a target track.
    studio = Studio(
        ModelRegistry(str(answering_model_dir)), Limits(), forced_answer="Sure, [SEG_ACT] and [SEG_TAR]."
    )
    demo = build_demo(studio)
    _app, address, _share = demo.launch(
        server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True
    )
    yield address
    demo.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("REVIOSA_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page():
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where chromium's sandbox cannot start.
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def test_example_runs_and_shows_overlay_and_heatmap(url, page, shots):
    page.goto(url)
    page.get_by_text(EXAMPLE).first.click()
    sync_api.expect(page.locator("#expression textarea")).to_have_value(EXAMPLE.split(" (")[0])
    page.locator("#run").click()

    video = page.locator("#overlay video")
    video.wait_for(state="attached")
    page.wait_for_function("document.querySelector('#overlay video').readyState >= 2")  # decoded a frame
    assert page.locator("#overlay video").evaluate("v => v.videoWidth") == 128
    page.locator("#frame img").wait_for()
    page.locator("#answer").get_by_text("[SEG_TAR]").wait_for()
    page.screenshot(path=str(shots / "studio_result.png"), full_page=True)

    page.get_by_role("tab", name="Attention").click()
    grid = page.locator("#heatmap-grid img")
    grid.wait_for()
    page.wait_for_function("document.querySelector('#heatmap-grid img').naturalWidth > 0")
    page.screenshot(path=str(shots / "studio_attention.png"), full_page=True)
    assert (shots / "studio_attention.png").stat().st_size > 10_000


def test_bad_input_shows_error_and_page_keeps_working(url, page, shots):
    page.goto(url)
    page.get_by_text(EXAMPLE).first.click()
    sync_api.expect(page.locator("#expression textarea")).to_have_value(EXAMPLE.split(" (")[0])
    page.locator("#expression textarea").fill("   ")
    page.locator("#run").click()
    page.get_by_text("expression is empty").first.wait_for()
    page.screenshot(path=str(shots / "studio_error.png"))
    page.locator("#expression textarea").fill("the white circle")
    page.locator("#run").click()
    page.wait_for_function("document.querySelector('#overlay video')?.readyState >= 2")
