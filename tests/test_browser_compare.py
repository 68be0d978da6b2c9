"""Compare and Fix & export in a real browser: Debian's chromium driven by playwright.

Compare: an example clip, model B with other keyframes, both overlays play, both grids and head-score
tables appear. Fix & export: a run, a click on the shown frame (its coordinates checked against where
the pointer was), undo, another click, export. Screenshots (1400x1000) go to ``$REVIOSA_SCREENSHOTS``
when set, else to the test's temporary folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_support import BOTH_ROLES, browser_page, requires_chromium, screenshot_dir, serve

EXPRESSION = "white circle pushing the big red cross"
TIMEOUT_MS = 120_000  # two runs on a busy machine

pytestmark = requires_chromium
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


@pytest.fixture(scope="module")
def url(answering_model_dir):
    demo, address = serve(str(answering_model_dir), BOTH_ROLES)
    yield address
    demo.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    return screenshot_dir(tmp_path)


@pytest.fixture
def page():
    with browser_page(TIMEOUT_MS) as page:
        yield page


def _pick_example(page) -> None:
    page.get_by_text(EXPRESSION).first.click()
    sync_api.expect(page.locator("#expression textarea")).to_have_value(EXPRESSION)


def _video_plays(page, elem_id: str) -> None:
    page.wait_for_function(f"document.querySelector('#{elem_id} video')?.readyState >= 2")


def test_compare_two_protocols_side_by_side(url, page, shots):
    page.goto(url)
    _pick_example(page)
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-run").wait_for()
    page.get_by_text("first", exact=True).last.click()  # model B: keyframes 0..K-1
    page.locator("#compare-run").click()
    _video_plays(page, "compare-a-overlay")
    _video_plays(page, "compare-b-overlay")
    sync_api.expect(page.locator("#compare-summary")).to_contain_text("mean IoU")
    sync_api.expect(page.locator("#compare-b-heading")).to_contain_text("(first)")
    for side in ("a", "b"):
        page.wait_for_function(f"document.querySelector('#compare-{side}-grid img')?.naturalWidth > 0")
        sync_api.expect(page.locator(f"#compare-{side}-scores")).to_contain_text("elsewhere")
    page.screenshot(path=str(shots / "studio_compare.png"), full_page=True)
    # The role picker redraws both sides from the kept runs.
    page.locator("#compare-role").get_by_text("target").click()
    sync_api.expect(page.locator("#compare-a-note")).to_contain_text("target token")
    sync_api.expect(page.locator("#compare-b-note")).to_contain_text("target token")


def _status(page) -> str:
    return page.locator("#fix-status").inner_text()


def _click_frame(page, fx: float, fy: float) -> tuple[float, float]:
    """Click at a fraction of the shown frame; returns the frame pixel the page should report."""
    image = page.locator("#fix-frame img")
    box = image.bounding_box()
    natural = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    image.click(position={"x": fx * box["width"], "y": fy * box["height"]})
    scale = natural[0] // 128  # the 128 px synthetic clip is shown enlarged by an integer factor
    return fx * natural[0] / scale, fy * natural[1] / scale


def test_fix_clicks_undo_and_export(url, page, shots):
    page.goto(url)
    _pick_example(page)
    page.locator("#run").click()
    _video_plays(page, "overlay")
    page.get_by_role("tab", name="Fix & export").click()
    page.wait_for_function("document.querySelector('#fix-frame img')?.naturalWidth > 0")
    sync_api.expect(page.locator("#fix-status")).to_contain_text("no clicks yet")

    page.locator("#fix-polarity").get_by_text("remove (negative)").click()
    x, y = _click_frame(page, 0.3, 0.6)
    sync_api.expect(page.locator("#fix-status")).to_contain_text("1 click(s)")
    got = re.search(r"remove at \((\d+), (\d+)\)", _status(page))
    assert got and abs(int(got[1]) - x) <= 2 and abs(int(got[2]) - y) <= 2  # the pixel under the pointer
    assert "frames before 0 are unchanged" in _status(page)
    page.screenshot(path=str(shots / "studio_fix_click.png"), full_page=True)

    page.locator("#fix-undo").click()
    sync_api.expect(page.locator("#fix-status")).to_contain_text("no clicks yet")
    page.locator("#fix-role").get_by_text("target").click()
    page.locator("#fix-polarity").get_by_text("add (positive)").click()
    _click_frame(page, 0.8, 0.2)
    sync_api.expect(page.locator("#fix-status")).to_contain_text("target, add")

    page.locator("#fix-export").click()
    sync_api.expect(page.locator("#fix-export-note")).to_contain_text("unidirectional")
    downloads = page.locator("#fix-downloads")
    for name in ("corrected_overlay.mp4", "annotate_input.zip", "interrvos_sample.zip"):
        sync_api.expect(downloads.get_by_role("cell", name=name)).to_be_visible()
    page.screenshot(path=str(shots / "studio_fix_export.png"), full_page=True)
