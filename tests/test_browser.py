"""The studio in a real browser: Debian's chromium driven by playwright (no browser download), 1400x1000.

Picks a synthetic example and runs it (the overlay plays, the attention tab shows a grid); uploads an
RGBA gif and an avi (accepted, with a preview that plays); an error leaves the last result on screen;
the examples sit above the fold with whole labels; the attention grid fits its panel and the layer
picker keeps its pick across runs. Screenshots go to ``$REVIOSA_SCREENSHOTS`` when set (to look at
them), else to the test's temporary folder.

Needs the Debian package ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python
package; skipped with the reason when either is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trial_inputs
from browser_support import BOTH_ROLES, VIEWPORT, browser_page, requires_chromium, screenshot_dir, serve

EXAMPLE = "white circle pushing the big red cross"  # a synthetic example (its button holds this)
TIMEOUT_MS = 90_000  # the first request loads the model; the CI machine may be busy

pytestmark = requires_chromium
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


@pytest.fixture(scope="module")
def url(answering_model_dir):
    demo, address = serve(str(answering_model_dir), BOTH_ROLES)
    yield address
    demo.close()


@pytest.fixture(scope="module")
def builtin_url():
    """The shipped built-in model: 3 layers x 6 heads, the grid of the trial (H0-H5)."""
    demo, address = serve("builtin")
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
    page.locator("#examples-synthetic").get_by_text(EXAMPLE, exact=True).first.click()
    sync_api.expect(page.locator("#expression textarea")).to_have_value(EXAMPLE)


def _run_and_wait(page) -> None:
    """Press Segment and wait until a new overlay has been decoded by the browser."""
    old = (
        page.locator("#overlay video").get_attribute("src")
        if page.locator("#overlay video").count()
        else None
    )
    page.locator("#run").click()
    try:
        page.wait_for_function(
            "old => { const v = document.querySelector('#overlay video');"
            " return v && v.getAttribute('src') !== old && v.readyState >= 2; }",
            arg=old,
        )
    except sync_api.TimeoutError:
        raise AssertionError(f"no new overlay; message: {page.locator('#message').inner_text()!r}") from None


def test_example_runs_and_shows_overlay_and_heatmap(url, page, shots):
    page.goto(url)
    _pick_example(page)
    _run_and_wait(page)
    assert page.locator("#overlay video").evaluate("v => v.videoWidth") == 384  # 128 px shown 3x
    page.locator("#frame img").wait_for()
    page.locator("#answer").get_by_text("[SEG_TAR]").wait_for()
    page.screenshot(path=str(shots / "studio_result.png"))
    page.locator("#frame img").screenshot(path=str(shots / "studio_frame_128.png"))
    # The player's label no longer sits over the overlay's top-left corner, where the legend is.
    assert page.locator("#overlay [data-testid=block-label]:not(.hide)").count() == 0

    page.get_by_role("tab", name="Attention").click()
    page.wait_for_function("document.querySelector('#heatmap-grid img')?.naturalWidth > 0")
    page.screenshot(path=str(shots / "studio_attention.png"), full_page=True)
    assert (shots / "studio_attention.png").stat().st_size > 10_000


def test_examples_above_the_fold_with_whole_labels(url, page, shots):
    page.goto(url)
    examples = page.locator("#examples-synthetic")
    examples.wait_for()
    top = examples.bounding_box()["y"]
    page.screenshot(path=str(shots / "studio_start.png"))
    assert top < VIEWPORT["height"] - 150, f"examples start {top:.0f} px down"
    labels = page.locator("#examples-synthetic button, #examples-real button")
    assert labels.count() >= 6
    for i in range(labels.count()):
        button = labels.nth(i)
        # Whole text, nothing hidden: no ellipsis and no overflow beyond the button.
        assert "..." not in button.inner_text() and "…" not in button.inner_text()
        assert button.evaluate("b => b.scrollWidth <= b.clientWidth + 1"), button.inner_text()
    assert examples.get_by_text("big red cross pushed by the white circle", exact=True).count() == 1
    _pick_example(page)  # a chosen clip's preview must not push them below the fold
    page.wait_for_function("document.querySelector('#clip-preview video')?.readyState >= 2")
    page.screenshot(path=str(shots / "studio_picked.png"))
    top = examples.bounding_box()["y"]
    assert top < VIEWPORT["height"] - 150, f"examples start {top:.0f} px down with a clip chosen"


@pytest.mark.parametrize("builder", ["rgba_gif", "avi"])
def test_gif_and_avi_upload_with_a_preview_that_plays(builder, url, page, shots, tmp_path):
    page.goto(url)
    clip = getattr(trial_inputs, builder)(tmp_path)
    page.locator("#clip input[type=file]").set_input_files(str(clip))
    page.wait_for_function("document.querySelector('#clip-preview video')?.readyState >= 2")
    assert page.locator("#clip-preview video").evaluate("v => v.videoWidth") == 64
    assert page.get_by_text("Invalid file type").count() == 0
    page.screenshot(path=str(shots / f"studio_upload_{builder}.png"))
    page.locator("#expression textarea").fill("the red square")
    _run_and_wait(page)
    assert page.locator("#message").inner_text().strip() == ""


def test_error_keeps_the_result_and_shows_one_message(url, page, shots):
    page.goto(url)
    _pick_example(page)
    _run_and_wait(page)
    shown = page.locator("#overlay video").get_attribute("src")
    summary = page.locator("#summary").inner_text()
    page.locator("#expression textarea").fill("   ")
    page.locator("#run").click()
    page.locator("#message").get_by_text("expression is empty").wait_for()
    page.screenshot(path=str(shots / "studio_error.png"))
    assert page.locator("#overlay video").get_attribute("src") == shown
    assert page.locator("#summary").inner_text() == summary
    # No panel painted "Error" by Gradio's status tracker.
    for panel in ("#overlay", "#frame", "#answer", "#summary"):
        assert "Error" not in page.locator(panel).inner_text()
    page.locator("#expression textarea").fill("the white circle")
    _run_and_wait(page)
    assert page.locator("#message").inner_text().strip() == ""


def test_attention_grid_fits_and_the_layer_pick_survives_a_run(builtin_url, page, shots):
    page.goto(builtin_url)
    _pick_example(page)
    _run_and_wait(page)
    page.locator("#frame img").screenshot(path=str(shots / "studio_frame_builtin.png"))
    page.get_by_role("tab", name="Attention").click()
    page.wait_for_function("document.querySelector('#heatmap-grid img')?.naturalWidth > 0")
    sync_api.expect(page.locator("#layer-pick input")).to_have_value("all")
    page.locator("#layer-pick input").click()
    page.get_by_role("option", name="2", exact=True).click()
    page.locator("#grid-heading").get_by_text("layer 2 (one row)").wait_for()
    # The new grid has loaded (a fixed pause was too short on a busy CI machine).
    page.wait_for_function(
        "(i => i?.complete && i.naturalWidth > 0)(document.querySelector('#heatmap-grid img'))"
    )
    page.screenshot(path=str(shots / "studio_attention_one_layer.png"), full_page=True)
    page.locator("#heatmap-grid").screenshot(path=str(shots / "studio_grid_one_layer.png"))
    # The whole grid is inside its panel (the trial saw H5 cut off at the right) and no toolbar covers it.
    img, panel = page.locator("#heatmap-grid img"), page.locator("#heatmap-grid")
    assert (
        img.bounding_box()["x"] + img.bounding_box()["width"]
        <= panel.bounding_box()["x"] + panel.bounding_box()["width"] + 1
    )
    assert img.evaluate("i => i.naturalWidth / i.naturalHeight") == pytest.approx(
        img.evaluate("i => i.clientWidth / i.clientHeight"), rel=0.03
    )  # shown whole (scaled), not cropped
    buttons = page.locator("#heatmap-grid button:not(:has(img)):visible")  # toolbar buttons, not the picture
    assert buttons.count() == 0, buttons.evaluate_all("bs => bs.map(b => b.outerHTML.slice(0, 200))")
    # A second run keeps the pick, and the heading still says what the grid shows.
    page.get_by_role("tab", name="Result").click()
    page.locator("#expression textarea").fill("the white circle")
    _run_and_wait(page)
    page.get_by_role("tab", name="Attention").click()
    sync_api.expect(page.locator("#layer-pick input")).to_have_value("2")
    page.locator("#grid-heading").get_by_text("layer 2 (one row)").wait_for()
