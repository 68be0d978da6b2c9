"""Record the reference's dynamic tiling of still images: tests/fixtures/parity/tiling/.

Reference: OpenGVLab/InternVL at 2410d1d, ``internvl_chat/internvl/train/dataset.py``
(``dynamic_preprocess`` / ``find_closest_aspect_ratio``; Sa2VA at d01bf3f carries the same two
functions in ``projects/llava_sam2/hf/models/modeling_sa2va_chat.py`` and calls them with min 1,
max 12, 448 px, thumbnail on). Not run in CI: it needs the fetched repository.

    python scripts/parity/record_tiling.py --internvl /path/to/InternVL [--out tests/fixtures/parity/tiling]

``--internvl`` is a checkout (or ``git archive``) of InternVL at 2410d1d. The reference module is
imported, never copied; its data-pipeline imports that this tiling does not use (cv2, imageio,
decord, torchvision) are stubbed. The normalisation after tiling is torchvision's ``ToTensor`` +
``Normalize`` in the reference; torchvision does not install beside a CPU torch here, so it is
written out below with the same float32 operations (divide by 255, subtract mean, divide by std).

Writes ``grids.json`` (the reference's grid for many image sizes, max 12 and max 6 tiles) and
``pixels.npz`` (for four synthetic images: tile count and, per tile, the normalised values at fixed
sample positions and the float64 sum of each channel).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

COMMIT = "2410d1d"
TILE = 448
MAX_TILES = 12
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Image sizes (W, H) whose tiles' pixel values are recorded (the issue's four, and a 5:4 tie case).
PIXEL_SIZES = [(640, 480), (300, 900), (1000, 200), (448, 448), (1280, 1024)]
SAMPLES_PER_TILE = 512
# Sides whose every (W, H) pair gets its reference grid recorded.
SIDES = [1, 2, 7, 28, 100, 199, 200, 224, 300, 333, 447, 448, 449, 480, 500, 512, 600, 640, 720, 768, 800,
         896, 900, 1000, 1024, 1080, 1280, 1344, 1500, 1920, 2000, 2048, 3000, 4032, 5000]  # fmt: skip


def synthetic_image(width: int, height: int) -> np.ndarray:
    """uint8 (H, W, 3) made by integer arithmetic only, so the test rebuilds it bit for bit."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    r = (x * 7 + y * 3) % 256
    g = (x * y // 17 + y * 5) % 256
    b = ((x // 9) * 40 + (y // 11) * 70 + x * y % 13) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def sample_positions(count: int) -> np.ndarray:
    """Fixed (count, 3) (channel, row, col) positions inside a TILE x TILE tile, integers only."""
    i = np.arange(count, dtype=np.int64)
    return np.stack([i % 3, (i * 97 + 13) % TILE, (i * 389 + 7) % TILE], axis=1)


def import_reference(root: Path):
    """The reference's ``internvl.train.dataset`` with its unused heavy imports stubbed."""
    # Loaded before the stubs: transformers probes for torchvision and must find none.
    importlib.import_module("transformers.trainer_pt_utils")
    stubs = ["cv2", "imageio", "decord", "torchvision", "torchvision.transforms",
             "torchvision.transforms.functional", "petrel_client", "petrel_client.client",
             "petrel_client.common", "petrel_client.common.config"]  # fmt: skip
    for name in stubs:
        module = types.ModuleType(name)
        module.__getattr__ = lambda attr, _n=name: mock.MagicMock(name=f"{_n}.{attr}")
        sys.modules.setdefault(name, module)
    sys.path.insert(0, str(root / "internvl_chat"))
    return importlib.import_module("internvl.train.dataset")


class SizeProbe:
    """Stands in for a PIL image of size (w, h): records what the reference resizes it to."""

    def __init__(self, w: int, h: int):
        self.size = (w, h)
        self.resized: list[tuple[int, int]] = []

    def resize(self, size):
        self.resized.append(tuple(size))
        return self

    def crop(self, box):
        return box


def reference_grid(ref, w: int, h: int, max_num: int) -> tuple[int, int]:
    """(columns, rows) the reference's dynamic_preprocess picks for a w x h image (no pixels made)."""
    probe = SizeProbe(w, h)
    ref.dynamic_preprocess(probe, min_num=1, max_num=max_num, image_size=TILE, use_thumbnail=True)
    tw, th = probe.resized[0]
    return tw // TILE, th // TILE


def normalise(tile: Image.Image) -> torch.Tensor:
    """torchvision ToTensor + Normalize, float32: (3, TILE, TILE)."""
    x = torch.from_numpy(np.asarray(tile, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    return x.sub(torch.tensor(MEAN).view(3, 1, 1)).div(torch.tensor(STD).view(3, 1, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--internvl", type=Path, required=True, help=f"InternVL checkout at {COMMIT}")
    p.add_argument("--out", type=Path, default=Path("tests/fixtures/parity/tiling"))
    args = p.parse_args()
    ref = import_reference(args.internvl)
    args.out.mkdir(parents=True, exist_ok=True)

    grids = []
    for max_num in (MAX_TILES, 6):
        for w in SIDES:
            for h in SIDES:
                c, r = reference_grid(ref, w, h, max_num)
                grids.append([w, h, max_num, c, r])
    (args.out / "grids.json").write_text(
        json.dumps({"reference": f"OpenGVLab/InternVL@{COMMIT}", "tile": TILE, "grids": grids}) + "\n"
    )

    positions = sample_positions(SAMPLES_PER_TILE)
    arrays: dict[str, np.ndarray] = {"positions": positions}
    for w, h in PIXEL_SIZES:
        image = Image.fromarray(synthetic_image(w, h))
        tiles = ref.dynamic_preprocess(
            image, min_num=1, max_num=MAX_TILES, image_size=TILE, use_thumbnail=True
        )
        x = torch.stack([normalise(t) for t in tiles]).numpy()  # (N, 3, TILE, TILE)
        key = f"{w}x{h}"
        arrays[f"{key}_samples"] = x[:, positions[:, 0], positions[:, 1], positions[:, 2]]
        arrays[f"{key}_sums"] = x.astype(np.float64).sum(axis=(2, 3))  # (N, 3)
        print(f"{key}: {len(tiles)} images")
    np.savez_compressed(args.out / "pixels.npz", **arrays)
    print(f"wrote {args.out}/grids.json ({len(grids)} grids) and pixels.npz")


if __name__ == "__main__":
    main()
