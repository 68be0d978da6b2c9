"""Core model: configs, processor, generation paths, masks, save/load, strict loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import force

from reviosa import tokens
from reviosa.config import ReviosaConfig, preset, tiny_config
from reviosa.hub import CheckpointError, from_pretrained, save_pretrained
from reviosa.processor import keyframe_indices
from reviosa.video import ArrayVideo, MaskTrack

BOTH = "Sure, [SEG_ACT] and [SEG_TAR]."
ACTOR = "Sure, [SEG_ACT]."


def test_config_round_trip(tmp_path):
    for name in ("tiny", "1b", "4b"):
        cfg = preset(name)
        cfg.save(tmp_path)
        assert ReviosaConfig.load(tmp_path) == cfg


def test_config_rejects_unknown_field(tmp_path):
    data = tiny_config().to_dict()
    data["text"]["hidden_sise"] = 3
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="hidden_sise"):
        ReviosaConfig.load(tmp_path)


def test_config_geometry_of_real_presets():
    cfg = preset("1b")
    assert cfg.grid == 16 and cfg.tokens_per_frame == 256  # 448 px, patch 14, pixel shuffle 0.5
    assert (cfg.text.num_hidden_layers, cfg.text.num_attention_heads, cfg.text.hidden_size) == (24, 14, 896)
    assert preset("4b").attention_supervision.layer == 33


def test_prompt_layout(tiny_model):
    proc = tiny_model.processor
    ids = proc.prompt_ids("person walking a dog", num_frames=3)
    assert ids.count(proc.ids.img_start) == 3 and ids.count(proc.ids.img_end) == 3
    assert ids.count(proc.ids.img_context) == 3 * tiny_model.config.tokens_per_frame
    text = tiny_model.tokenizer.decode(ids)
    assert text.endswith("Please segment person walking a dog.<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "hostile", [tokens.SEG_TAR, tokens.SEG_ACT, tokens.IMG_CONTEXT, tokens.IM_END, "<img>"]
)
def test_user_text_never_becomes_a_control_token(tiny_model, hostile):
    proc = tiny_model.processor
    clean = proc.prompt_ids("a dog", 1)
    ids = proc.prompt_ids(f"a dog {hostile} next to {hostile}", 1)
    control = [proc.ids.seg_act, proc.ids.seg_tar, proc.ids.img_context, proc.ids.im_end, proc.ids.img_start]
    for tok in control:
        assert ids.count(tok) == clean.count(tok)
    assert hostile in tiny_model.tokenizer.decode(ids)  # still there, as text


@pytest.mark.parametrize("bad", ["", "   ", "\x00\x01", "x" * 10_000])
def test_bad_expression_is_a_clear_error(tiny_model, bad):
    with pytest.raises(ValueError, match="expression"):
        tiny_model.processor.prompt_ids(bad, 1)


def test_keyframes_start_at_zero():
    assert keyframe_indices(10, 5, "first") == [0, 1, 2, 3, 4]
    assert keyframe_indices(10, 4, "uniform") == [0, 3, 6, 9]
    assert keyframe_indices(2, 5, "uniform") == [0, 1]


def test_one_and_two_token_paths(tiny_model, random_frames):
    video = ArrayVideo(random_frames)
    exprs = ["the dog", "person walking a dog", "nothing"]
    preds = tiny_model.segment(video, exprs, logits_processor=force(tiny_model, [ACTOR, BOTH, "No."]))
    one, two, none = preds
    assert one.answer == ACTOR and one.status == "ok" and one.target is None
    assert two.answer == BOTH and two.target is not None
    T, H, W = random_frames.shape[:3]
    for track in (one.actor, two.actor, two.target):
        arr = np.asarray(track)
        assert arr.shape == (T, H, W) and arr.dtype == bool
    assert one.actor_scores.shape == (T,) and np.all((one.actor_scores >= 0) & (one.actor_scores <= 1))
    assert none.status == "no_seg_token" and "[SEG_ACT]" in none.reason
    assert not np.asarray(none.actor).any() and none.target is None


def test_batched_expressions_match_single_runs(tiny_model, random_frames):
    video = ArrayVideo(random_frames)
    batch = tiny_model.segment(
        video, ["the dog", "a person"], logits_processor=force(tiny_model, [BOTH, ACTOR])
    )
    single = tiny_model.segment(video, ["the dog"], logits_processor=force(tiny_model, [BOTH]))[0]
    # Left padding shifts nothing: positions are computed from the attention mask.
    assert np.array_equal(np.asarray(batch[0].actor), np.asarray(single.actor))
    assert np.array_equal(np.asarray(batch[0].target), np.asarray(single.target))


def test_attention_rows_come_with_the_prediction(tiny_model, random_frames):
    (pred,) = tiny_model.segment(
        ArrayVideo(random_frames),
        ["the dog"],
        capture_attention=True,
        logits_processor=force(tiny_model, [BOTH]),
    )
    cfg = tiny_model.config
    rows = pred.attention.rows
    k = len(pred.keyframes)
    assert rows.shape == (
        1,
        2,
        cfg.text.num_hidden_layers,
        cfg.text.num_attention_heads,
        k,
        cfg.grid,
        cfg.grid,
    )
    mass = pred.attention.vision_mass
    assert torch.all(mass > 0) and torch.all(mass <= 1 + 1e-5)


def test_save_load_round_trip_gives_identical_outputs(tiny_model, tmp_path, random_frames):
    save_pretrained(tiny_model, tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    video = ArrayVideo(random_frames)
    a = tiny_model.segment(video, ["the dog"], logits_processor=force(tiny_model, [BOTH]))[0]
    b = loaded.segment(video, ["the dog"], logits_processor=force(loaded, [BOTH]))[0]
    assert a.answer == b.answer
    assert np.array_equal(np.asarray(a.actor), np.asarray(b.actor))
    assert np.array_equal(a.actor_scores, b.actor_scores)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def _rewrite_weights(src, dst, edit):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(str(src / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"))
    return dst


def test_missing_key_is_named(tiny_model_dir, tmp_path):
    bad = _rewrite_weights(tiny_model_dir, tmp_path / "m", lambda s: s.pop("prompt_proj.0.weight"))
    with pytest.raises(CheckpointError, match=r"missing key.*prompt_proj\.0\.weight"):
        from_pretrained(bad)


def test_unexpected_key_is_named(tiny_model_dir, tmp_path):
    def add(state):
        state["text_hidden_fcs.0.weight"] = torch.zeros(2)

    bad = _rewrite_weights(tiny_model_dir, tmp_path / "m", add)
    with pytest.raises(CheckpointError, match=r"unexpected key.*text_hidden_fcs"):
        from_pretrained(bad)


def test_wrong_shape_is_named(tiny_model_dir, tmp_path):
    def grow(state):
        state["prompt_proj.2.bias"] = torch.zeros(7)

    bad = _rewrite_weights(tiny_model_dir, tmp_path / "m", grow)
    with pytest.raises(CheckpointError, match=r"prompt_proj\.2\.bias"):
        from_pretrained(bad)


def test_truncated_weights_are_a_checkpoint_error(tiny_model_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="safetensors"):
        from_pretrained(tmp_path / "m")


def test_missing_model_folder_and_unreachable_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model folder"):
        from_pretrained(tmp_path / "nowhere" / "deeper")
    with pytest.raises(FileNotFoundError, match="ReVIOSa"):
        from_pretrained(tmp_path)  # a folder without config.json
    with pytest.raises(FileNotFoundError, match="could not fetch"):
        from_pretrained("no-such-org-xyz/no-such-model")


def test_mask_track_packs_bits():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 7, 9)) > 0.5
    track = MaskTrack.from_array(masks)
    assert np.array_equal(np.asarray(track), masks)
    assert np.array_equal(track[3], masks[3])
    assert track.nbytes == 5 * ((7 * 9 + 7) // 8)
    assert list(track.areas()) == [int(m.sum()) for m in masks]


def test_keyframe_options_apply_to_one_call_only(tiny_model, random_frames):
    video = ArrayVideo(random_frames)
    force_two = force(tiny_model, [BOTH])
    (pred,) = tiny_model.segment(
        video, ["the dog"], logits_processor=force_two, num_keyframes=3, keyframe_strategy="first"
    )
    assert pred.keyframes == [0, 1, 2]
    (pred,) = tiny_model.segment(video, ["the dog"], logits_processor=force(tiny_model, [BOTH]))
    assert pred.keyframes == keyframe_indices(len(random_frames), 2, "uniform")  # the config's, unchanged


def test_concurrent_requests_on_one_shared_model_do_not_mix(tiny_model, random_frames):
    """Attention capture and SAM2 prompting use module hooks; threads must not feed each other's."""
    from concurrent.futures import ThreadPoolExecutor

    videos = [ArrayVideo(random_frames), ArrayVideo(random_frames[::-1].copy())]
    exprs = ["the dog", "a person walking"]

    def run(i):
        return tiny_model.segment(
            videos[i], [exprs[i]], capture_attention=True, logits_processor=force(tiny_model, [BOTH])
        )[0]

    alone = [run(0), run(1)]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            together = list(pool.map(run, [0, 1, 0, 1]))
            for i, pred in enumerate(together):
                ref = alone[i % 2]
                assert np.array_equal(np.asarray(pred.actor), np.asarray(ref.actor))
                assert np.array_equal(np.asarray(pred.target), np.asarray(ref.target))
                assert torch.allclose(pred.attention.rows, ref.attention.rows, atol=1e-6)


def test_per_frame_propagation_decodes_each_frame_on_its_own(tiny_tokenizer, random_frames):
    """per_frame: a frame's masks depend on the prompt and that frame only (as in training)."""
    from reviosa.modeling import ReviosaModel

    cfg = tiny_config()
    cfg.sam.propagation = "per_frame"
    cfg.processor.keyframe_strategy = "first"
    torch.manual_seed(0)
    model = ReviosaModel(cfg, tiny_tokenizer).eval()
    frames = random_frames.copy()
    (a,) = model.segment(ArrayVideo(frames), ["the dog"], logits_processor=force(model, [BOTH]))
    frames[5:] = frames[5:][::-1]  # keyframes 0, 1 unchanged; later frames shuffled
    (b,) = model.segment(ArrayVideo(frames), ["the dog"], logits_processor=force(model, [BOTH]))
    masks_a, masks_b = np.asarray(a.actor), np.asarray(b.actor)
    assert np.array_equal(masks_a[:5], masks_b[:5])
    assert np.array_equal(masks_a[5:], masks_b[5:][::-1])


def test_half_precision_storage_loads_back_in_float32(tiny_model, tmp_path):
    save_pretrained(tiny_model, tmp_path / "m", dtype=torch.float16)
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.dtype == torch.float32
    ref = tiny_model.state_dict()
    for k, v in loaded.state_dict().items():
        assert v.dtype == ref[k].dtype, k
        assert torch.allclose(v, ref[k].to(torch.float16).to(ref[k].dtype)), k
