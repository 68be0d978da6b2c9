"""Pictures handed to Gradio as files written once, never as arrays.

Gradio saves an array output under its content's hash and rewrites that file each time the same
picture comes back (a redraw after a pick that leaves it unchanged). A browser still reading the
earlier copy then gets a response shorter than its Content-Length and shows a broken image; CI saw
it on the attention grid (`h11 LocalProtocolError: Too little data for declared Content-Length`).
A file output is copied into Gradio's cache once, under a temporary name and renamed, so handing
Gradio a file that is itself written once and renamed into place leaves no window for a torn read.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

FOLDER = "pictures"  # under a run's own folder, so it goes when the run is discarded


def picture_file(image: np.ndarray | None, run_dir: Path) -> str | None:
    """Write `image` (uint8 (H, W, 3) or (H, W)) as PNG under `run_dir`/pictures; return its path.

    The name is the hash of the pixels, so the same picture is written once and reused.
    """
    if image is None:
        return None
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    digest = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()[:32]
    folder = Path(run_dir) / FOLDER
    path = folder / f"{digest}.png"
    if path.is_file():
        return str(path)
    folder.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{digest}.", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(pixels).save(f, format="PNG", compress_level=1)  # speed over size: local files
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return str(path)
