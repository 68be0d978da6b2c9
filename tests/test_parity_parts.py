"""InternVL2.5 + Meta SAM2 "from parts" equal their references (issue 15).

Golden set tests/fixtures/parity/parts/, recorded by scripts/parity/record_parts.py:
- ``internvl/``: a tiny InternVL2.5 written by the reference's own InternVLChatModel
  (OpenGVLab/InternVL 2410d1d) in the remote-code HF layout, and ``mllm.npz``: the ids its
  ``chat()`` builds for two questions about one still image, that image's tiles, the vision
  features after ``mlp1``, logits and last hidden states of its ``forward``.
- ``sam2_micro.pt``: a small SAM 2.1 in Meta's ``{"model": state_dict}`` layout, and ``sam2.npz``:
  what sam2 1.1.0 (Meta's code) computes with two language-prompt embeddings (one object batch),
  frames 0-4 prompted and 5-7 tracked from memory: mask logits, IoU, object pointers and scores.

Both parts are loaded together through ``from_pretrained`` (format detected as ``internvl``) and
compared at the issue's tolerances: ids exactly; features, logits and states <= 1e-4; mask logits
<= 1e-3 with >= 99.9 % of thresholded pixels equal, prompted and tracked frames alike.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reviosa import protocol
from reviosa import sam as sam_ops
from reviosa.config import SamConfig
from reviosa.hub import from_pretrained
from reviosa.image import tile_image
from reviosa.importers import detect_format
from reviosa.processor import ReviosaProcessor

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "parts"
TOL_MLLM = 1e-4
TOL_MASK = 1e-3
MIN_EQUAL_PIXELS = 0.999


def _load(name: str) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(FIXTURE / f"{name}.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, json.loads((FIXTURE / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def mllm_golden():
    return _load("mllm")


@pytest.fixture(scope="module")
def sam_golden():
    return _load("sam2")


@pytest.fixture(scope="module")
def model(sam_golden):
    """The two parts through the public loader; SAM2 built from the recording's own overrides."""
    meta = sam_golden[1]
    size = [o for o in meta["overrides"] if o.startswith("++model.image_size=")]
    sam_config = SamConfig(
        config_name=meta["config"],
        image_size=int(size[0].split("=")[1]),
        overrides=[o for o in meta["overrides"] if o not in size],
    )
    assert detect_format(FIXTURE / "internvl") == "internvl"
    return from_pretrained(FIXTURE / "internvl", sam2=FIXTURE / "sam2_micro.pt", sam_config=sam_config)


def _internvl_chat_processor(model, system_message: str) -> ReviosaProcessor:
    """Our processor set up as InternVL's ``chat()`` builds a prompt: its system message, the user
    text after the image block in one piece, the question as typed."""
    config = protocol.with_protocol(model.config, "sa2va")
    config = dataclasses.replace(
        config, processor=dataclasses.replace(config.processor, system_prompt=system_message)
    )
    return ReviosaProcessor(model.tokenizer, config)


def test_prompt_ids_equal_the_reference_chat(model, mllm_golden):
    arrays, meta = mllm_golden
    proc = _internvl_chat_processor(model, meta["system_message"])
    prefix = "Please segment "
    for q, question in enumerate(meta["questions"]):
        expression = question.removeprefix(prefix).removesuffix(".")
        ours = proc.prompt_ids(expression, num_frames=1, tiles=meta["tiles"])
        assert ours == arrays[f"ids_{q}"].tolist(), question


def test_still_image_tiles_equal_the_reference(model, mllm_golden):
    arrays, meta = mllm_golden
    tiles = tile_image(arrays["image"], max_tiles=12, tile=meta["tile"])
    assert len(tiles) == meta["tiles"] == len(arrays["pixel_values"])
    ours = model.processor.mllm_pixels(tiles).numpy()
    assert np.abs(ours - arrays["pixel_values"]).max() <= 1e-6


def test_vision_features_logits_and_states_equal_the_reference(model, mllm_golden):
    arrays, _meta = mllm_golden
    pixels = torch.from_numpy(arrays["pixel_values"])
    with torch.no_grad():
        feats = model.mllm.model.get_image_features(
            pixels,
            vision_feature_layer=model.mllm.config.vision_feature_layer,
            vision_feature_select_strategy=model.mllm.config.vision_feature_select_strategy,
        ).pooler_output
        assert np.abs(feats.numpy() - arrays["vision_features"]).max() <= TOL_MLLM
        for q in range(2):
            ids = torch.from_numpy(arrays[f"ids_{q}"])[None]
            hidden = model.hidden_states(model.embed(ids, pixels), torch.ones_like(ids))
            assert np.abs(hidden[0].numpy() - arrays[f"last_hidden_{q}"]).max() <= TOL_MLLM
            start = int(arrays[f"logits_from_{q}"])
            vocab = arrays[f"logits_{q}"].shape[-1]  # ours has the two appended role tokens after these
            logits = model.mllm.lm_head(hidden[0, start:])[:, :vocab]
            assert np.abs(logits.numpy() - arrays[f"logits_{q}"]).max() <= TOL_MLLM


def _meta_sam2_protocol(model) -> SamConfig:
    """sam2 1.1.0 as Meta ships it: multimask on prompted frames (no clicks), the object-score
    overwrite on, memory in the model's dtype, float ImageNet statistics (the InterRVOS protocol,
    whose vendored SAM2 differs in the last three)."""
    float_stats = SamConfig()
    config = protocol.with_protocol(
        model.config, "interrvos", object_score_overwrite=True, memory_dtype="model",
        pixel_mean=float_stats.pixel_mean, pixel_std=float_stats.pixel_std,
    )  # fmt: skip
    assert config.sam.multimask_prompted
    return config.sam


def test_sam2_masks_pointers_and_scores_equal_meta_sam2(model, sam_golden):
    arrays, meta = sam_golden
    cfg = _meta_sam2_protocol(model)
    frames, prompt = arrays["frames"], torch.from_numpy(arrays["prompt"])  # (T, H, W, 3), (N, 1, P)
    n = prompt.shape[0]
    tracker = sam_ops.MemoryTracker(model.sam, len(frames), cfg)
    prompted = set(meta["prompted_frames"])
    assert len(prompted) >= 5 and len(meta["tracked_frames"]) >= 2
    with torch.no_grad():
        for t, frame in enumerate(frames):
            feats = sam_ops.encode_images(model.sam, sam_ops.preprocess(torch.from_numpy(frame[None]), cfg))
            feats = sam_ops.FrameFeatures(
                [f.expand(-1, n, -1) for f in feats.vision_feats],
                [p.expand(-1, n, -1) for p in feats.vision_pos],
                feats.feat_sizes,
            )
            out = tracker.condition(t, feats, prompt) if t in prompted else tracker.track(t, feats)
            logits = out["pred_masks"][:, 0].float()
            expected = torch.from_numpy(arrays["mask_logits"][t])
            assert (logits - expected).abs().max() <= TOL_MASK, t
            # Pixels at the frame's size, thresholded as predictions are.
            h, w = frame.shape[:2]
            ours_px = F.interpolate(logits[:, None], size=(h, w), mode="bilinear") > 0
            ref_px = F.interpolate(expected[:, None], size=(h, w), mode="bilinear") > 0
            assert (ours_px == ref_px).float().mean() >= MIN_EQUAL_PIXELS, t
            assert np.abs(out["obj_ptr"].numpy() - arrays["obj_ptr"][t]).max() <= TOL_MASK, t
            scores = out["object_score_logits"][:, 0].numpy()
            assert np.abs(scores - arrays["object_score"][t]).max() <= TOL_MASK, t
            if t in prompted:
                assert np.abs(out["iou"].numpy() - arrays["iou"][t]).max() <= TOL_MASK, t
    # The golden covers both of SAM2's branches: on prompted frames one track is scored object-free
    # (its logits overwritten) and one kept; tracked frames keep both, with masks of some extent.
    scores, kept = arrays["object_score"], arrays["mask_logits"] > 0  # (T, 2), (T, 2, h, w)
    p = sorted(prompted)
    assert (scores[p, 0] < -0.2).all() and (scores[p, 1] > 0.5).all() and not kept[p, 0].any()
    assert (scores[len(p) :] > 0.1).all()
    assert 0.1 < kept[p, 1].mean() < 0.9 and 0.1 < kept[len(p) :].mean() < 0.9
