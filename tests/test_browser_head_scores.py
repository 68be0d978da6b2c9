"""Head scores in a real browser: Debian's chromium driven by playwright (no browser download).

Runs a synthetic example, opens the Attention tab, and checks the head-score table (sorted from a
column's menu), its heatmap, the keyframe and role pickers, and the CSV / JSON downloads. Screenshots go
to ``$REVIOSA_SCREENSHOTS`` when set (to look at them), else to the test's temporary folder.

Skipped, with the reason, without ``/usr/bin/chromium`` or the ``playwright`` package.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from browser_support import BOTH_ROLES, browser_page, requires_chromium, screenshot_dir, serve

EXPRESSION = "white circle pushing the big red cross"  # a synthetic example (its button holds this)
TIMEOUT_MS = 90_000  # the first request loads the model; the machine may be busy
TABLE = "#head-scores-table"
# The table's rows on screen, top to bottom (Gradio draws them as positioned divs).
_ROWS = (
    "[...document.querySelectorAll('#head-scores-table [role=row].virtual-row')]"
    ".sort((a, b) => a.dataset.index - b.dataset.index)"
)

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


def _column(page, index: int) -> list[float]:
    """The numbers of one column of the head-score table, top to bottom (its rows are virtual divs)."""
    cells = page.evaluate(
        f"() => {_ROWS}.map(r => r.querySelectorAll('[role=gridcell]')[{index}].innerText.trim())"
    )
    return [float(c) for c in cells if c]


def _note(page) -> str:
    return page.locator("#head-scores-note").inner_text()


def test_head_scores_table_heatmap_pickers_and_downloads(url, page, shots):
    page.goto(url)
    page.locator("#examples-synthetic").get_by_text(EXPRESSION, exact=True).first.click()
    sync_api.expect(page.locator("#expression textarea")).to_have_value(EXPRESSION)
    page.locator("#run").click()
    page.wait_for_function("document.querySelector('#overlay video')?.readyState >= 2")
    page.get_by_role("tab", name="Attention").click()
    page.wait_for_function("document.querySelector('#head-scores-map img')?.naturalWidth > 0")
    sync_api.expect(page.locator("#head-scores-note")).to_contain_text("actor token, all keyframes")

    layers, heads = _column(page, 0), _column(page, 1)
    assert len(layers) == 2 * 4  # the tiny model: 2 layers x 4 heads
    actor = _column(page, 2)
    assert all(0.0 <= v <= 1.0 for v in actor)
    page.locator(TABLE).scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "head_scores.png"))

    # Sorted from the column's menu: the same rows, highest actor share first.
    header = page.locator(f"{TABLE} th[title='actor']").first
    header.hover()  # the menu button shows on hover
    header.locator("button[aria-label='Open cell menu']").click()
    page.get_by_text("Sort descending").first.click()
    page.wait_for_function(
        f"""() => {{ const v = {_ROWS}.map(r => parseFloat(r.querySelectorAll('[role=gridcell]')[2].innerText));
                    return v.length > 1 && v.every((x, i) => i === 0 || v[i - 1] >= x); }}"""
    )
    assert sorted(_column(page, 2), reverse=True) == _column(page, 2) == sorted(actor, reverse=True)
    rows_before = sorted(zip(layers, heads, actor, strict=True))
    rows_after = sorted(zip(_column(page, 0), _column(page, 1), _column(page, 2), strict=True))
    assert rows_after == rows_before

    # One keyframe instead of the mean; then the target token.
    heatmap_src = page.locator("#head-scores-map img").get_attribute("src")
    page.locator("#score-keyframe input").click()
    page.get_by_role("option", name="1 (frame", exact=False).click()
    sync_api.expect(page.locator("#head-scores-note")).to_contain_text("actor token, keyframe 1")
    page.wait_for_function(
        f"document.querySelector('#head-scores-map img')?.getAttribute('src') !== {json.dumps(heatmap_src)}"
    )
    page.get_by_label("target").first.check()
    sync_api.expect(page.locator("#head-scores-note")).to_contain_text("target token, keyframe 1")
    page.wait_for_function("document.querySelector('#head-scores-map img')?.naturalWidth > 0")

    # The downloads: the whole table, both roles, every keyframe and the mean.
    link = page.locator("#score-files a[download='head_scores.csv']")
    response = page.request.get(link.get_attribute("href"))
    assert response.ok
    rows = list(csv.DictReader(io.StringIO(response.text())))
    assert {r["role"] for r in rows} == {"actor", "target"} and "mean" in {r["keyframe"] for r in rows}
    assert page.locator("#score-files a[download='head_scores.json']").count() == 1
    page.locator(TABLE).scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "head_scores_target_keyframe1.png"))
