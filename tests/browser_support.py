"""What the browser tests share: Debian's chromium driven by playwright (no browser download) against
a studio served on 127.0.0.1, at the 1400x1000 viewport the issues' trials used.

Needs the Debian package ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python
package; the tests that use it are skipped with the reason when either is missing.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("REVIOSA_CHROMIUM", "/usr/bin/chromium"))
VIEWPORT = {"width": 1400, "height": 1000}
# Forced answer: the tiny test model then draws both an actor and a target track.
BOTH_ROLES = "Sure, [SEG_ACT] and [SEG_TAR]."

requires_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} missing: apt-get install -y chromium (Debian)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model: str, forced_answer: str | None = None):
    """The studio as `python app.py` serves it (its CSS included). Returns (demo, address)."""
    from app import CSS, Studio, build_demo
    from studio.limits import Limits
    from studio.service import ModelRegistry

    demo = build_demo(Studio(ModelRegistry(model), Limits(), forced_answer=forced_answer))
    _app, address, _share = demo.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, css=CSS
    )
    return demo, address


@contextlib.contextmanager
def browser_page(timeout_ms: int):
    """A fresh chromium page; every wait (``expect`` included) allows ``timeout_ms``."""
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where chromium's sandbox cannot start.
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(timeout_ms)
        sync_api.expect.set_options(timeout=timeout_ms)
        try:
            yield page
        finally:
            browser.close()


def screenshot_dir(tmp_path: Path) -> Path:
    """``$REVIOSA_SCREENSHOTS`` when set (to look at the pictures), else the test's temporary folder."""
    folder = Path(os.environ.get("REVIOSA_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
