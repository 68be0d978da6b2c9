"""Install sam2 on a Hugging Face Space, where requirements.txt cannot pass its install flags.

The sam2 sdist declares torchvision and a CUDA torch as dependencies, and builds a CUDA extension
unless told not to; it installs with ``SAM2_BUILD_CUDA=0 pip install --no-build-isolation --no-deps``
(README, "Install details"). A Space runs only ``pip install -r requirements.txt``, so on a Space
(``SPACE_ID`` is set) the app installs it once at start-up, hash-pinned by requirements-sam2.txt.
Everywhere else this does nothing: scripts/setup.sh installs sam2.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)
PINNED = Path(__file__).resolve().parent.parent / "requirements-sam2.txt"


def ensure_sam2() -> None:
    if importlib.util.find_spec("sam2") is not None or not os.environ.get("SPACE_ID"):
        return
    logger.info("installing sam2 (first start of this Space)")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-r", str(PINNED)],
        check=True,
        env={**os.environ, "SAM2_BUILD_CUDA": "0"},
    )
    importlib.invalidate_caches()
