"""Print how our still-image tiling compares with the recorded reference tiling.

    .venv/bin/python scripts/parity/measure_tiling.py

The comparisons of ``tests/test_parity_tiling.py`` (grids, tile pixels, Sa2VA's image path), with
the numbers shown.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_parity_tiling import FIXTURE, measure_image_path, synthetic_image  # noqa: E402

from reviosa.config import internvl_1b_config  # noqa: E402
from reviosa.image import tile_grid, tile_image  # noqa: E402
from reviosa.processor import ReviosaProcessor, add_role_tokens  # noqa: E402
from reviosa.tokenizer import build_tokenizer  # noqa: E402


def main() -> None:
    grids = json.loads((FIXTURE / "grids.json").read_text())["grids"]
    wrong = sum(tile_grid(w, h, n) != (c, r) for w, h, n, c, r in grids)
    print(f"grids: {len(grids) - wrong} of {len(grids)} equal the reference's")
    tokenizer = build_tokenizer(["a"], vocab_size=300)
    add_role_tokens(tokenizer)
    processor = ReviosaProcessor(tokenizer, internvl_1b_config())
    with np.load(FIXTURE / "pixels.npz") as golden:
        pos = golden["positions"]
        for key in sorted(k.removesuffix("_samples") for k in golden.files if k.endswith("_samples")):
            w, h = map(int, key.split("x"))
            x = processor.mllm_pixels(tile_image(synthetic_image(w, h), max_tiles=12)).numpy()
            err = np.abs(x[:, pos[:, 0], pos[:, 1], pos[:, 2]] - golden[f"{key}_samples"]).max()
            c, r = tile_grid(w, h, 12)
            print(
                f"{key}: {c}x{r} tiles + {'a thumbnail' if c * r > 1 else 'none'}, {len(x)} images, max error {err:.3g}"
            )
    with tempfile.TemporaryDirectory() as tmp:
        print("Sa2VA still-image path (tests/fixtures/parity/image):")
        for key, value in measure_image_path(Path(tmp)).items():
            print(f"  {key}: {value:.3g}")


if __name__ == "__main__":
    main()
