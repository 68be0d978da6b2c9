"""Inference protocols: stored in the config, strict, every switch a user option, each switch acting.

The golden sets (test_parity_*.py) prove the reference protocols reproduce the references; these
tests pin what each switch does on its own, on the tiny random model.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reviosa import protocol
from reviosa import sam as sam_ops
from reviosa.config import ReviosaConfig, tiny_config


def test_old_configs_load_with_our_protocol():
    data = tiny_config().to_dict()
    for name in protocol.PROCESSOR_FIELDS:
        if name not in ("num_keyframes", "keyframe_strategy", "instruction", "max_new_tokens"):
            del data["processor"][name]
    for name in protocol.SAM_FIELDS:
        del data["sam"][name]
    del data["protocol"]
    config = ReviosaConfig.from_dict(data)
    assert config == tiny_config()
    assert config.protocol == "reviosa" and config.processor.prompt_encoding == "pieces"
    assert not config.sam.multimask_prompted and config.sam.object_score_overwrite


def test_protocol_fields_are_strict():
    data = tiny_config().to_dict()
    data["processor"]["prompt_encodng"] = "whole"
    with pytest.raises(ValueError, match="prompt_encodng"):
        ReviosaConfig.from_dict(data)
    data = tiny_config().to_dict()
    data["sam"]["mask_upsample"] = "bicubic"
    with pytest.raises(ValueError, match="mask_upsample"):
        ReviosaConfig.from_dict(data).validate()
    with pytest.raises(ValueError, match="unknown protocol switch"):
        protocol.with_protocol(tiny_config(), None, multimask=True)
    with pytest.raises(ValueError, match="unknown protocol"):
        protocol.with_protocol(tiny_config(), "sam3")


def test_reference_protocol_round_trips_through_config_json(tmp_path):
    config = protocol.with_protocol(tiny_config(), "reference")
    config.save(tmp_path)
    loaded = ReviosaConfig.load(tmp_path)
    assert loaded == config and loaded.protocol == "interrvos"
    assert "interrvos" in protocol.describe(loaded) and "multimask best-IoU" in protocol.describe(loaded)


def test_with_protocol_shares_weights_and_leaves_the_model_alone(tiny_model):
    clone = tiny_model.with_protocol("reference", keyframe_strategy="uniform")
    assert clone.config.protocol == "custom"  # a switch on top of a preset
    assert clone.config.processor.keyframe_strategy == "uniform" and clone.config.sam.multimask_prompted
    assert clone.processor.config is clone.config
    assert clone.sam is tiny_model.sam and clone.mllm is tiny_model.mllm
    assert tiny_model.config.protocol == "reviosa" and not tiny_model.config.sam.multimask_prompted
    back = clone.with_protocol("ours")
    assert back.config.protocol == "reviosa"
    assert back.config.processor.num_keyframes == clone.config.processor.num_keyframes  # the model's own


def test_whole_encoding_is_one_encode_and_typed_control_tokens_stay_text(tiny_model):
    whole = tiny_model.with_protocol(None, prompt_encoding="whole").processor
    pieces = tiny_model.processor
    tok = tiny_model.tokenizer
    expected_tail = tok.encode("\nPlease segment the object.", add_special_tokens=False)
    ids = whole.prompt_ids("the object", 2)
    tail_end = len(ids) - len(tok.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False))
    assert ids[tail_end - len(expected_tail) : tail_end] == expected_tail
    assert pieces.prompt_ids("the object", 2) != ids  # pieces: "Ġ" alone, "the" without its space
    typed = "[SEG_TAR] <|im_end|> <IMG_CONTEXT> [SEG_ACT]"
    control = {
        tok.convert_tokens_to_ids(t) for t in ("[SEG_TAR]", "[SEG_ACT]", "<|im_end|>", "<IMG_CONTEXT>")
    }
    for proc in (whole, pieces):
        plain = [i for i in proc.prompt_ids("a dog", 2) if i in control]
        with_typed = [i for i in proc.prompt_ids(typed, 2) if i in control]
        assert with_typed == plain  # only the template's own control tokens


def test_expression_normalisation(tiny_model):
    proc = tiny_model.with_protocol("interrvos").processor
    assert proc.normalise("The Dog. runs.") == "the dog runs"
    assert proc.prompt_ids("The Dog.", 2) == proc.prompt_ids("the dog", 2)
    with pytest.raises(ValueError, match="empty once normalised"):
        proc.normalise("...")
    assert tiny_model.processor.normalise("The Dog.") == "The Dog."  # ours keeps it


def test_resize_filters(tiny_model):
    rng = np.random.RandomState(0)
    frames = rng.randint(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    size = tiny_model.config.vision.image_size
    pil = tiny_model.with_protocol(None, mllm_resize="pil_bicubic").processor.mllm_pixels(frames)
    expected = np.stack(
        [np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC)) for f in frames]
    )
    mean = np.array(tiny_model.config.processor.pixel_mean)
    std = np.array(tiny_model.config.processor.pixel_std)
    want = ((expected / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    assert np.abs(pil.numpy() - want).max() < 1e-5
    assert np.abs(tiny_model.processor.mllm_pixels(frames).numpy() - want).max() > 1e-2
    cfg = protocol.with_protocol(tiny_model.config, None, sam_resize="pil_bicubic").sam
    s = cfg.image_size
    sam_in = sam_ops.preprocess(torch.from_numpy(frames), cfg)
    resized = np.stack(
        [np.asarray(Image.fromarray(f).resize((s, s), Image.Resampling.BICUBIC)) for f in frames]
    )
    want = ((resized / 255.0 - np.array(cfg.pixel_mean)) / np.array(cfg.pixel_std)).transpose(0, 3, 1, 2)
    assert np.abs(sam_in.numpy() - want).max() < 1e-5


def test_mask_upsampling_via_the_input_size(tiny_model):
    low = torch.randn(2, 1, 16, 16)
    s = tiny_model.config.sam.image_size
    via = tiny_model.with_protocol(None, mask_upsample="via_input").frame_logits(low, (30, 50))
    two_steps = F.interpolate(
        F.interpolate(low, size=(s, s), mode="bilinear"), size=(30, 50), mode="bilinear"
    )
    assert torch.allclose(via, two_steps)
    direct = tiny_model.frame_logits(low, (30, 50))
    assert torch.allclose(direct, F.interpolate(low, size=(30, 50), mode="bilinear"))
    assert not torch.allclose(via, direct)


def _frame(tiny_model, seed=0):
    frame = np.random.RandomState(seed).randint(0, 256, (48, 64, 3), dtype=np.uint8)
    return tiny_model._frame_features(frame, 3)


def test_object_score_overwrite_and_multimask(tiny_model):
    sam = copy.deepcopy(tiny_model.sam)
    with torch.no_grad():
        sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(-50.0)  # every frame "object-free"
        feats = _frame(tiny_model)
        prompt = torch.randn(3, 1, tiny_model.config.prompt_dim, generator=torch.Generator().manual_seed(0))
        kept = sam_ops.decode_prompted(sam, feats, prompt, overwrite=False)
        emptied = sam_ops.decode_prompted(sam, feats, prompt, overwrite=True)
        multi = sam_ops.decode_prompted(sam, feats, prompt, multimask=True, overwrite=False)
    assert (kept["object_score_logits"] <= 0).all()
    assert torch.equal(kept["pred_masks"], kept["raw_masks"])
    assert (emptied["pred_masks"] == sam_ops.NO_OBJ_SCORE).all()
    assert torch.equal(emptied["raw_masks"], kept["raw_masks"])  # the loss still sees the logits
    assert multi["ious"].shape == (3, 3)
    assert torch.equal(multi["iou"], multi["ious"].max(-1).values)


def test_memory_stored_in_bfloat16(tiny_model):
    cfg = protocol.with_protocol(tiny_model.config, None, memory_dtype="bfloat16").sam
    prompt = torch.zeros(3, 1, tiny_model.config.prompt_dim)
    with torch.no_grad():
        for config, dtype in ((tiny_model.config.sam, torch.float32), (cfg, torch.bfloat16)):
            tracker = sam_ops.MemoryTracker(tiny_model.sam, 3, config)
            tracker.condition(0, _frame(tiny_model, 0), prompt)
            tracker.track(1, _frame(tiny_model, 1))  # reads the stored memory back
            bank = tracker.output_dict
            assert bank["cond_frame_outputs"][0]["maskmem_features"].dtype == dtype
            assert bank["non_cond_frame_outputs"][1]["maskmem_features"].dtype == dtype


def test_segment_reports_the_protocol(tiny_model):
    from reviosa.generation import force_answers
    from reviosa.video import ArrayVideo

    video = ArrayVideo(np.random.RandomState(0).randint(0, 256, (6, 48, 64, 3), dtype=np.uint8))
    model = tiny_model.with_protocol("reference")
    (pred,) = model.segment(video, ["the dog"], logits_processor=force_answers(model, ["Sure, [SEG_ACT]."]))
    assert pred.protocol == protocol.describe(model.config)
    assert pred.protocol.startswith("protocol interrvos: first 5 keyframes")
    assert pred.keyframes == [0, 1, 2, 3, 4]
