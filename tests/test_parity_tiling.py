"""Still-image tiling equals the reference's (InternVL 2410d1d ``dynamic_preprocess``, as Sa2VA calls it).

Goldens: tests/fixtures/parity/tiling/, recorded by scripts/parity/record_tiling.py from the
reference's own functions: the grid it picks for 2450 image sizes (max 12 and max 6 tiles), and the
normalised pixel values of every tile for five synthetic images. tests/fixtures/parity/image/,
recorded by scripts/parity/record_image.py: Sa2VA d01bf3f's ``predict_forward(image=...)`` on the
committed tiny Sa2VA (13 tiles in one image block, SAM2 on the one image), end to end.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from parity_reference import GoldenSet
from PIL import Image

from reviosa import sam as sam_ops
from reviosa.config import internvl_1b_config
from reviosa.generation import force_answers
from reviosa.image import StillImage, tile_count, tile_grid, tile_image
from reviosa.processor import ReviosaProcessor

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "tiling"
# Float32 normalisation of identical uint8 tiles: equal up to the order of float32 operations.
PIXEL_TOL = 1e-5


def synthetic_image(width: int, height: int) -> np.ndarray:
    """The recording script's image: integer arithmetic only, rebuilt bit for bit."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    r = (x * 7 + y * 3) % 256
    g = (x * y // 17 + y * 5) % 256
    b = ((x // 9) * 40 + (y // 11) * 70 + x * y % 13) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def golden_pixels():
    with np.load(FIXTURE / "pixels.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def processor(tiny_model):
    # The 1B preset's 448 px vision geometry; the tokenizer is only needed to build the processor.
    return ReviosaProcessor(tiny_model.tokenizer, internvl_1b_config())


def test_grid_matches_the_reference_for_every_recorded_size():
    data = json.loads((FIXTURE / "grids.json").read_text())
    assert data["tile"] == 448 and len(data["grids"]) == 2450
    wrong = [
        (w, h, n, (c, r), tile_grid(w, h, n))
        for w, h, n, c, r in data["grids"]
        if tile_grid(w, h, n) != (c, r)
    ]
    assert not wrong, wrong[:10]
    # The recorded sizes reach every count the reference can pick, 7 x 1 and 11 x 1 included.
    assert {c * r for w, h, n, c, r in data["grids"] if n == 12} == set(range(1, 13))


@pytest.mark.parametrize(
    ("size", "grid"),
    [
        ((640, 480), (4, 3)),
        ((300, 900), (1, 3)),
        ((1000, 200), (5, 1)),
        ((448, 448), (1, 1)),
        ((1280, 1024), (4, 3)),
    ],
)
def test_tile_counts_of_the_issue_sizes(size, grid, golden_pixels):
    w, h = size
    assert tile_grid(w, h, 12) == grid
    n = grid[0] * grid[1] + (grid[0] * grid[1] > 1)
    assert tile_count(w, h, 12) == n == len(golden_pixels[f"{w}x{h}_sums"])
    assert tile_count(w, h, 1) == 1  # our own models: never tiled


@pytest.mark.parametrize("size", [(640, 480), (300, 900), (1000, 200), (448, 448), (1280, 1024)])
def test_tile_pixels_match_the_reference(size, golden_pixels, processor):
    w, h = size
    tiles = tile_image(synthetic_image(w, h), max_tiles=12)  # uint8 (N, 448, 448, 3)
    x = processor.mllm_pixels(tiles).numpy()  # (N, 3, 448, 448), normalised as the MLLM sees it
    pos = golden_pixels["positions"]
    samples = x[:, pos[:, 0], pos[:, 1], pos[:, 2]]
    expected = golden_pixels[f"{w}x{h}_samples"]
    assert samples.shape == expected.shape
    assert np.abs(samples - expected).max() <= PIXEL_TOL
    sums = x.astype(np.float64).sum(axis=(2, 3))
    # Per-channel sums over 200,704 pixels: a single wrong pixel would move one by > 1e-2.
    assert np.abs(sums - golden_pixels[f"{w}x{h}_sums"]).max() <= 2e-3


def test_one_tile_is_the_whole_image_resized():
    frame = synthetic_image(64, 40)
    tiles = tile_image(frame, max_tiles=1, tile=32)
    assert tiles.shape == (1, 32, 32, 3)
    many = tile_image(frame, max_tiles=12, tile=32)
    assert tile_grid(64, 40, 12, tile=32) == (3, 2)
    assert many.shape == (7, 32, 32, 3)  # 3x2 tiles, then the thumbnail: the one-tile resize
    np.testing.assert_array_equal(many[-1], tiles[0])


def test_bad_tiling_arguments_are_refused():
    with pytest.raises(ValueError, match="empty"):
        tile_grid(0, 10, 12)
    with pytest.raises(ValueError, match="min_tiles"):
        tile_grid(10, 10, 0)
    with pytest.raises(ValueError, match="uint8"):
        tile_image(np.zeros((4, 4), np.uint8), 12)


# --- Sa2VA's still-image path end to end (tests/fixtures/parity/image, scripts/parity/record_image.py) ---


def measure_image_path(tmp_path: Path) -> dict[str, float]:
    """Our segment() of the recorded still with the tiny Sa2VA (tests/fixtures/parity/sa2va/model)
    against the reference's predict_forward(image=...): max errors, and the equal share of pixels."""
    directory = FIXTURE.parent / "image"
    meta = json.loads((directory / "meta.json").read_text())
    with np.load(directory / "goldens.npz") as data:
        g = {k: data[k] for k in data.files}
    weights = GoldenSet.load("sa2va").directory / "model" / "model.safetensors"
    if hashlib.sha256(weights.read_bytes()).hexdigest() != meta["model_sha256"]:
        raise AssertionError(
            "the sa2va set's weights changed since the image golden: rerun scripts/parity/record_image.py"
        )
    model = GoldenSet.load("sa2va").model()
    assert model.config.processor.max_image_tiles == 12  # the sa2va protocol travels with the import
    Image.fromarray(g["image"]).save(tmp_path / "still.png")
    seen: dict[str, list] = {"ids": [], "feats": [], "states": [], "prompts": [], "masks": []}
    embed, features, project = model.embed, model.mllm.model.get_image_features, model.prompts_from_states
    condition = sam_ops.MemoryTracker.condition

    def spy_embed(input_ids, pixel_values, image_index=None):
        seen["ids"].append(input_ids[0].tolist())
        return embed(input_ids, pixel_values, image_index)

    def spy_features(*args, **kwargs):
        out = features(*args, **kwargs)
        seen["feats"].append(out.pooler_output)
        return out

    def spy_project(hidden, positions):
        seen["states"].append(hidden[0, positions[0, 0]])
        out = project(hidden, positions)
        seen["prompts"].append(out[0, 0])
        return out

    def spy_condition(self, frame_idx, feats, prompt):
        out = condition(self, frame_idx, feats, prompt)
        seen["masks"].append(out["pred_masks"])
        return out

    model.embed, model.mllm.model.get_image_features, model.prompts_from_states = (
        spy_embed,
        spy_features,
        spy_project,
    )
    sam_ops.MemoryTracker.condition = spy_condition
    try:
        (pred,) = model.segment(StillImage(tmp_path / "still.png"), [meta["expression"]],
                                logits_processor=force_answers(model, ["Sure, [SEG_ACT]."]))  # fmt: skip
    finally:
        sam_ops.MemoryTracker.condition = condition
    assert seen["ids"][0] == g["ids"].tolist(), "prompt ids differ from the reference's"
    assert len(seen["feats"][0]) == meta["tiles"]
    size = meta["sam_size"]
    logits = F.interpolate(seen["masks"][0].float(), size=(size, size), mode="bilinear", align_corners=False)
    ours_mask, ref_mask = np.asarray(pred.actor)[0], g["mask"][0]
    return {
        "thumbnail features": float(
            (seen["feats"][0][-1] - torch.from_numpy(g["thumbnail_features"])).abs().max()
        ),
        "[SEG] state": float((seen["states"][0] - torch.from_numpy(g["seg_state"][0])).abs().max()),
        "[SEG] prompt": float((seen["prompts"][0] - torch.from_numpy(g["seg_prompt"][0])).abs().max()),
        "mask logits at SAM2 size": float(
            (logits[:, 0] - torch.from_numpy(g["sam_logits"][:, 0])).abs().max()
        ),
        "equal mask pixels": float((ours_mask == ref_mask).mean()),
        "reference mask cover": float(ref_mask.mean()),
    }


def test_sa2va_still_image_path_equals_the_reference(tmp_path):
    errors = measure_image_path(tmp_path)
    assert errors["thumbnail features"] <= 1e-4 and errors["[SEG] state"] <= 1e-4, errors
    assert errors["[SEG] prompt"] <= 1e-4 and errors["mask logits at SAM2 size"] <= 1e-3, errors
    assert errors["equal mask pixels"] >= 0.999, errors
    assert 0.02 < errors["reference mask cover"] < 0.98, errors  # the mask is not trivially empty or full
