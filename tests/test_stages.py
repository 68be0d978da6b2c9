"""The built-in model's stages (train/stages/) at tiny size: data, prompts, each stage's command,
its checkpoint loading strictly into the next stage, and the report."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

TINY_RECIPE = """\
preset: tiny
model:
  overrides:
    sam.propagation: memory
    sam.overrides:
      - ++model.image_encoder.trunk.embed_dim=32
      - ++model.image_encoder.trunk.num_heads=1
      - ++model.image_encoder.trunk.stages=[1,1,2,1]
      - ++model.image_encoder.trunk.global_att_blocks=[3]
      - ++model.image_encoder.trunk.window_spec=[8,4,4,4]
      - ++model.image_encoder.neck.backbone_channel_list=[256,128,64,32]
      - ++model.memory_attention.num_layers=1
      - ++model.memory_attention.layer.dim_feedforward=256
      - ++model.memory_encoder.fuser.num_layers=1
      - ++model.memory_attention.layer.self_attention.feat_sizes=[4,4]
      - ++model.memory_attention.layer.cross_attention.feat_sizes=[4,4]
      - ++model.multimask_output_in_sam=false
      - ++model.multimask_output_for_tracking=false
attention: {layer: 1, heads: [0, 1]}
data:
  synth: {clips: 3, val_clips: 1, seed: 0, size: 64, frames: [6, 8]}
log: {progress: false, tensorboard: false}
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return str(path)


# --- the pretraining data -------------------------------------------------------------------------


def test_random_clips_label_what_they_show():
    from reviosa.data.synth_render import COLOURS
    from train.stages.clips import Backgrounds, random_clip

    rng = np.random.default_rng(0)
    backgrounds = Backgrounds(rng, 64, count=2)
    kinds = set()
    for _ in range(12):
        clip = random_clip(rng, backgrounds, 5)
        n = len(clip.looks)
        assert clip.frames.shape == (5, 64, 64, 3) and clip.labels.shape == (5, 64, 64)
        assert clip.paths.shape == (n, 5, 2) and len(clip.motions) == n
        assert clip.labels.max() < n
        for k, look in enumerate(clip.looks):
            shown = clip.frames[clip.masks(k)]
            if look.texture == "plain" and len(shown):
                assert np.abs(shown.astype(int) - COLOURS[look.colour]).max() <= 1
        kinds |= set(clip.motions)
    assert len(kinds) > 3  # single motions and interactions both drawn


def test_questions_answer_what_the_clip_shows():
    from reviosa.data.synth_language import MOTION_PHRASES
    from train.stages.clips import Backgrounds, random_clip
    from train.stages.vl_pretrain import questions_about

    rng = np.random.default_rng(1)
    backgrounds = Backgrounds(rng, 128, count=2)
    seen = set()
    for _ in range(30):
        clip = random_clip(rng, backgrounds, 4, stride=9)
        for k, look in enumerate(clip.looks):
            for q in questions_about(clip, k, 128):
                seen.add(q.kind)
                expected = {
                    "colour": look.colour, "shape": look.shape, "size": look.size,
                    "motion": MOTION_PHRASES.get(clip.motions[k]),
                }.get(q.kind)  # fmt: skip
                if q.kind == "position":
                    x, y = clip.paths[k, 0]
                    expected = f"{'top' if y < 64 else 'bottom'} {'left' if x < 64 else 'right'}"
                assert q.answer == expected and q.target == k, q
                # The question never gives its answer away (the size one names both options).
                assert q.answer not in q.text.replace("big or small", "")
    assert seen == {"colour", "shape", "size", "position", "motion"}


def test_packed_questions_score_as_one_row_per_question(recipe):
    """A clip's questions share one row; each answer's logits, and which answers are right, are
    those of the question asked alone through the model's own prompt path."""
    from train.stages.clips import Backgrounds
    from train.stages.vl_pretrain import QAConfig, answer_logits, answers_right, build, draw, make_batch

    model = build(recipe, []).eval()
    rng = np.random.default_rng(3)
    clips, questions = draw(
        rng, Backgrounds(rng, model.config.vision.image_size, 2), QAConfig(questions=5), 3
    )
    assert max(len(q) for q in questions) > 1
    with torch.no_grad():
        packed = make_batch(model, clips, questions)
        logits = answer_logits(model, packed)[0]
        got = logits[:, :-1][packed.question[:, 1:] >= 0]
        want, right = [], []
        for clip, qs in zip(clips, questions, strict=True):
            for q in qs:
                alone = make_batch(model, [clip], [[q]])
                mask = alone.attention_mask[:, 0, -1]  # the last row: keys of the whole sequence
                embeds = model.embed(alone.input_ids, alone.pixels, alone.image_index)
                plain = model.mllm.lm_head(model.hidden_states(embeds, mask.long()))  # the 2-D mask path
                want.append(plain[:, :-1][alone.question[:, 1:] >= 0])
                right.append(answers_right(plain, alone))
    assert packed.input_ids.shape[0] == len(clips) and len(packed.kinds) == sum(map(len, questions))
    torch.testing.assert_close(got, torch.cat(want), atol=1e-4, rtol=1e-4)
    assert answers_right(logits, packed).tolist() == torch.cat(right).tolist()


def test_binding_term_reads_attention_on_the_object_asked_about(recipe):
    """Each turn's asked position is the one that predicts its answer; attention wholly on the
    asked object's cells scores share 1 (loss ~0), attention elsewhere share 0; the captured rows
    respect the packed mask (a turn never attends another turn)."""
    from train.stages.clips import Backgrounds
    from train.stages.vl_pretrain import (
        QAConfig,
        answer_logits,
        binding_loss,
        build,
        capture_of,
        draw,
        make_batch,
    )

    model = build(recipe, []).eval()
    rng = np.random.default_rng(4)
    clips, questions = draw(
        rng, Backgrounds(rng, model.config.vision.image_size, 2), QAConfig(questions=4), 3
    )
    batch = make_batch(model, clips, questions)
    for c, qs in enumerate(questions):
        for t, q in enumerate(qs):
            at = int(batch.asked[c, t])
            assert batch.labels[c, at + 1] == model.processor.answer_ids(q.answer)[0]
            assert torch.allclose(batch.cover[c, t].sum(), torch.tensor(0.0)) == (q.target < 0)
    on = (batch.cover >= 1).float()[:, :, None, None]  # cells the object fills
    rows_on = on / on.flatten(-3).sum(-1).clamp_min(1)[..., None, None, None]
    rows_off = (batch.cover == 0).float()[:, :, None, None]
    rows_off = rows_off / rows_off.flatten(-3).sum(-1)[..., None, None, None]
    keep = (batch.cover >= 1).flatten(2).any(-1)  # questions whose object fills a whole cell
    loss_on, share_on = binding_loss(rows_on, batch)
    assert share_on.shape[0] == int(((batch.asked >= 0) & (batch.cover.flatten(2).sum(-1) > 0)).sum())
    assert torch.allclose(share_on.flatten()[keep[(batch.asked >= 0) & (batch.cover.flatten(2).sum(-1) > 0)]],
                          torch.tensor(1.0))  # fmt: skip
    assert float(binding_loss(rows_off, batch)[1].max()) == 0.0
    with torch.no_grad():
        _, rows, _ = answer_logits(model, batch, capture_of(model, QAConfig()))
    assert rows.shape[:4] == (len(clips), batch.asked.shape[1], 1, 2)
    share = binding_loss(rows, batch)[1]
    assert bool(((share > 0) & (share < 1)).all())


def test_binding_probe_counts_every_question_once(recipe):
    from train.probes.qa_binding import binding_report, name_probe
    from train.stages.clips import Backgrounds
    from train.stages.vl_pretrain import QAConfig, build, draw

    model = build(recipe, [])
    rng = np.random.default_rng(5)
    clips, questions = draw(rng, Backgrounds(rng, model.config.vision.image_size, 2), QAConfig(), 7)
    tally, share, even = binding_report(model, clips, questions, chunk=3)
    assert sum(t for _r, t in tally.values()) == sum(map(len, questions))
    assert {n for _k, n in tally} <= {1, 2, 3} and all(0 <= r <= t for r, t in tally.values())
    cfg = model.config.text
    assert share.shape == (cfg.num_hidden_layers, cfg.num_attention_heads)
    assert bool(((share > 0) & (share < 1)).all()) and 0 < even < 1
    names = name_probe(model, clips, questions, chunk=3)
    assert set(names) == {"colour", "shape"}
    for rows in names.values():
        assert len(rows) == cfg.num_hidden_layers + 1 and all(0 <= a <= 1 and 0 < c <= 1 for a, c in rows)


def test_name_term_reads_what_each_question_names(recipe):
    """Each turn's name targets are the asked object's colour and shape, except the attribute it
    asks about, and both words stand in the question; the states handed to the name head are the
    asked positions' states after the chosen layer; steps with the term record how well its head
    reads and add nothing to the model."""
    from reviosa.data.synth_render import COLOURS, SHAPES
    from train.stages.clips import Backgrounds
    from train.stages.vl_pretrain import NameHead, QAConfig, answer_logits, build, draw, make_batch, train_qa

    model = build(recipe, []).eval()
    rng = np.random.default_rng(6)
    clips, questions = draw(
        rng, Backgrounds(rng, model.config.vision.image_size, 2), QAConfig(questions=5), 4
    )
    batch = make_batch(model, clips, questions)
    colours, shapes = list(COLOURS), list(SHAPES)
    for c, qs in enumerate(questions):
        assert (batch.named[c, len(qs) :] == -100).all()
        for t, q in enumerate(qs):
            colour, shape = batch.named[c, t].tolist()
            look = clips[c].looks[q.target]
            assert (colour == -100) == (q.kind == "colour") and (shape == -100) == (q.kind == "shape")
            if colour >= 0:
                assert colours[colour] == look.colour and look.colour in q.text.rstrip("?").split()
            if shape >= 0:
                assert shapes[shape] == look.shape and look.shape in q.text.rstrip("?").split()
    with torch.no_grad():
        _, _, states = answer_logits(model, batch, state_layer=0)
        out = model.language_model(
            inputs_embeds=model.embed(batch.input_ids, batch.pixels, batch.image_index),
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            output_hidden_states=True,
        )
    c, t = 1, len(questions[1]) - 1
    torch.testing.assert_close(states[c, t], out.hidden_states[1][c, int(batch.asked[c, t])])
    loss, right = NameHead(model.config.text.hidden_size).loss(states, batch.named)
    assert float(loss.detach()) > 0 and 0 <= right <= 1
    keys = set(model.state_dict())
    records = train_qa(
        model.train(),
        QAConfig(steps=4, clips=2, val_clips=4, every=2, names=1.0, names_layer=0),
        log=lambda _m: None,
    )
    assert all(0 <= r["names_train"] <= 1 for r in records)
    assert set(model.state_dict()) == keys  # the head is the term's, never the model's


def test_token_position_probe_tells_placed_tokens_from_placeless_ones():
    from train.probes.token_position import position_probe

    gen = torch.Generator().manual_seed(0)
    frames, grid, width = 40, 4, 24
    placeless = torch.randn(frames, grid * grid, width, generator=gen)
    # The same noise plus a fixed vector per cell: what absolute position embeddings add.
    placed = placeless + 3 * torch.randn(1, grid * grid, width, generator=gen)
    lost, kept = position_probe(placeless), position_probe(placed)
    for name in ("cell", "row", "quadrant"):
        acc, chance = lost[name]
        assert acc < chance + 0.15, (name, acc)
        assert kept[name][0] > 0.95, (name, kept[name])
    assert lost["quadrant"][1] == 0.25 and lost["cell"][1] == 1 / 16
    with pytest.raises(ValueError, match="square grid"):
        position_probe(torch.randn(2, 15, 4))


# --- stage 2's prompts -------------------------------------------------------------------------------


def test_prompts_land_where_they_should():
    from train.stages.sam_pretrain import box_of, click_inside, correction_click

    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 16, 16)
    masks[0, 2:6, 3:9] = 1
    masks[1, 10:14, 10:12] = 1
    masks[2, 0:16, 0:2] = 1
    for _ in range(5):
        xy = click_inside(masks, gen)[:, 0]  # (B, 2) as (x, y)
        assert all(masks[b, int(y), int(x)] == 1 for b, (x, y) in enumerate(xy.tolist()))
    boxes = box_of(masks, gen, jitter=0.0)
    assert boxes[0].tolist() == [[3, 2], [9, 6]]
    # a prediction that misses most of object 0 gets a positive click on it; one that spills
    # over half the frame gets a negative click on the spill
    pred = torch.zeros(3, 16, 16, dtype=torch.bool)
    pred[0, 2:3, 3:4] = True
    pred[1] = masks[1] > 0
    pred[1, :8] = True
    pred[2] = masks[2] > 0
    xy, labels = correction_click(pred, masks, gen)
    assert labels[:2, 0].tolist() == [1, 0]
    x0, y0 = xy[0, 0].long().tolist()
    assert masks[0, y0, x0] == 1 and not pred[0, y0, x0]
    x1, y1 = xy[1, 0].long().tolist()
    assert pred[1, y1, x1] and masks[1, y1, x1] == 0


def test_several_objects_of_a_clip_are_tracked_each_on_its_own(recipe):
    from train.stages.clips import Backgrounds, full_area, random_clip
    from train.stages.common import stage_model_config
    from train.stages.sam_pretrain import build_stage_sam, clip_loss, draw_batch, draw_objects, single_mask

    sam_cfg = stage_model_config(recipe).sam
    rng = np.random.default_rng(3)
    backgrounds = Backgrounds(rng, sam_cfg.image_size, count=4)
    batch = draw_batch(rng, backgrounds, 3, 3, sam_cfg, 0.4, objects=3)
    objects, frames = batch.shape
    assert batch.pixels.shape[0] == 3 * frames and objects == len(batch.clip_of) >= 3
    owners = batch.clip_of.tolist()
    assert owners == sorted(owners) and set(owners) == {0, 1, 2}
    for c in range(3):  # a clip's objects are different objects: their masks never overlap
        rows = batch.masks[batch.clip_of == c]
        assert rows.sum(0).max() <= 1 and (rows.flatten(1).sum(1) > 0).all()
    # one object a clip draws what the first stage-2 run drew (its held-out clips stay the same)
    clip = random_clip(np.random.default_rng(1), backgrounds, 2, max_objects=4)
    seen = [k for k, look in enumerate(clip.looks) if clip.masks(k)[0].sum() >= 0.4 * full_area(look)]
    assert len(seen) >= 2
    assert draw_objects(np.random.default_rng(5), clip, 0.4) == [int(np.random.default_rng(5).choice(seen))]
    # the later frames' own clicks add decoded frames to the loss, and their gradient reaches the decoder
    sam = build_stage_sam(stage_model_config(recipe))
    with single_mask(sam):
        plain, _ = clip_loss(sam, batch, "click", 0, torch.Generator().manual_seed(0))
        clicked, _ = clip_loss(sam, batch, "click", 0, torch.Generator().manual_seed(0), frame_clicks=True)
    assert not torch.isclose(plain, clicked)
    clicked.backward()
    assert sam.sam_mask_decoder.mask_tokens.weight.grad.abs().sum() > 0


def test_world_clips_are_what_the_datasets_show(recipe, tmp_path):
    from reviosa.data.interrvos import InterRVOSDataset, write_dataset
    from reviosa.data.synth import make_clip
    from train.stages.common import stage_model_config
    from train.stages.sam_pretrain import draw_world_batch, jpeg_round_trip

    sam_cfg = stage_model_config(recipe).sam
    batch = draw_world_batch(np.random.default_rng(0), 0, 3, 4, sam_cfg, 0.4, objects=3)
    objects, frames = batch.shape
    assert frames == 4 and batch.pixels.shape == (3 * 4, 3, sam_cfg.image_size, sam_cfg.image_size)
    assert batch.masks.shape[-2:] == (sam_cfg.image_size,) * 2 and set(batch.clip_of.tolist()) == {0, 1, 2}
    for c in range(3):  # different objects of one clip, each on frame 0
        rows = batch.masks[batch.clip_of == c]
        assert rows.sum(0).max() <= 1 and (rows[:, 0].flatten(1).sum(1) > 0).all()
    # a frame as a dataset written by `synth` reads it back, JPEG artefacts and all
    record = make_clip(7, "train", 0)[0]
    write_dataset(tmp_path / "train", [record])
    stored = next(InterRVOSDataset(tmp_path / "train").samples()).load_frames([0])[0]
    back = jpeg_round_trip(record.frames[0])
    assert np.array_equal(back, stored) and not np.array_equal(back, record.frames[0])
    # the held-out world clips are the validation split's, never the training stream's
    val = draw_world_batch(np.random.default_rng(0), 0, 1, 4, sam_cfg, 0.4, split="val", seed=0)
    assert not torch.equal(val.pixels, batch.pixels[:4])


def test_example_prompts_are_features_pooled_under_the_mask(recipe):
    from reviosa import sam as sam_ops
    from train.stages.clips import Backgrounds
    from train.stages.common import stage_model_config
    from train.stages.sam_pretrain import build_stage_sam, clip_loss, draw_batch, single_mask

    # two cells of a 2x2 grid in one frame, features 1 and 3: a mask covering both halves of them
    per_frame = torch.tensor([1.0, 3.0, 100.0, 100.0]).reshape(4, 1, 1, 1)  # (gy*gx, B, F, C)
    masks = torch.zeros(1, 1, 1, 4, 4)
    masks[..., :2, :2] = 1  # cell 0 whole
    masks[..., 0:2, 2] = 1  # half of cell 1 (a 2x2 cell is 2x2 pixels)
    prompts, valid = sam_ops.pooled_under_masks(per_frame, masks, (2, 2))
    torch.testing.assert_close(prompts[0, 0, 0], torch.tensor((1.0 * 1 + 3.0 * 0.5) / 1.5))
    empty, none = sam_ops.pooled_under_masks(per_frame, torch.zeros_like(masks), (2, 2))
    assert valid.all() and not none.any() and torch.equal(empty, torch.zeros_like(empty))
    # the example decoding adds to the loss and trains the decoder to read the extra token
    config = stage_model_config(recipe)
    rng = np.random.default_rng(3)
    batch = draw_batch(
        rng, Backgrounds(rng, config.sam.image_size, count=4), 2, 3, config.sam, 0.4, objects=2
    )
    sam = build_stage_sam(config)
    with single_mask(sam):
        plain, _ = clip_loss(sam, batch, "click", 0, torch.Generator().manual_seed(0))
        both, info = clip_loss(sam, batch, "click", 0, torch.Generator().manual_seed(0), examples=True)
    assert not torch.isclose(plain, both) and info["example"] > 0
    both.backward()
    assert sam.sam_mask_decoder.transformer.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


# --- the stages' commands, end to end at tiny size -------------------------------------------------


@pytest.fixture(scope="module")
def stage12(recipe, tmp_path_factory):
    """Stages 1 and 2 at a few steps each, with their report sections."""
    from train.stages import sam_pretrain, vl_pretrain

    root = tmp_path_factory.mktemp("stages")
    rep = root / "report"
    common = ["--recipe", recipe, "--every", "3", "--report", str(rep)]
    vl_pretrain.main(["--out", str(root / "s1"), "--tower-steps", "3", "--qa-steps", "3", "--val-scenes", "8",
                      "--qa-val-clips", "6", *common])  # fmt: skip
    sam_pretrain.main(
        ["--out", str(root / "s2"), "--steps", "3", "--val-clips", "3", "--frames", "3", *common]
    )
    # the second phase, from the first's weights, with its own report section
    sam_pretrain.main(["--out", str(root / "s2b"), "--init", str(root / "s2" / "sam.safetensors"), "--steps", "2",
                       "--val-clips", "2", "--frames", "3", "--objects", "2", "--frame-clicks", *common])  # fmt: skip
    # the third phase: the RVOS world's frames and example prompts, from the second's weights
    sam_pretrain.main(["--out", str(root / "s2c"), "--init", str(root / "s2b" / "sam.safetensors"), "--steps", "2",
                       "--val-clips", "2", "--frames", "3", "--objects", "2", "--world", "--examples",
                       *common])  # fmt: skip
    # the third phase continued from its own weights (stage 2d): a section of its own, not the third's
    sam_pretrain.main(["--out", str(root / "s2d"), "--init", str(root / "s2c" / "sam.safetensors"), "--steps", "1",
                       "--val-clips", "2", "--frames", "3", "--objects", "2", "--world", "--examples",
                       "--seed", "1", *common])  # fmt: skip
    # the fourth phase (stage 2e): soft targets and the attribute term, a section of its own
    sam_pretrain.main(["--out", str(root / "s2e"), "--init", str(root / "s2d" / "sam.safetensors"), "--steps", "1",
                       "--val-clips", "2", "--frames", "3", "--objects", "2", "--world", "--examples",
                       "--soft-targets", "--attributes", "0.5", "--seed", "3", *common])  # fmt: skip
    return root


def test_sam_pretrain_trains_every_sam_part_and_resumes(recipe, tmp_path):
    from train.stages.common import stage_model_config
    from train.stages.sam_pretrain import SamPretrainConfig, build_stage_sam, load_sam, pretrain

    config = stage_model_config(recipe)
    sam = build_stage_sam(config)
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    cfg = SamPretrainConfig(steps=4, batch=2, frames=3, val_clips=2, val_frames=3, every=2, corrections=1)
    records = pretrain(sam, cfg, tmp_path / "a", log=lambda _m: None)
    assert [r["step"] for r in records] == [2, 4]
    assert 0 <= records[-1]["click_iou"] <= 1 and 0 <= records[-1]["jf"] <= 100
    changed = {k.split(".")[0] for k, v in sam.state_dict().items() if not torch.equal(v, before[k])}
    # the encoder, the decoder and the memory modules all learn (frames 1.. go through the memory)
    assert {"image_encoder", "sam_mask_decoder", "memory_attention", "memory_encoder"} <= changed
    # killed after step 2 and resumed from its folder: the unbroken run's weights
    broken = build_stage_sam(config)
    pretrain(broken, cfg, tmp_path / "b", log=lambda _m: None, stop_after=2)
    resumed = build_stage_sam(config)
    again = pretrain(resumed, cfg, tmp_path / "b", resume=True, log=lambda _m: None)
    assert [r["step"] for r in again] == [2, 4]
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, sam.state_dict()[k])
    fresh = build_stage_sam(config)
    load_sam(fresh, tmp_path / "a" / "sam.safetensors")
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, sam.state_dict()[k])


def test_attribute_term_reads_looks_from_example_prompts_and_resumes(recipe, tmp_path):
    """Stage 2 with --attributes: heads read each tracked object's looks from its example prompt,
    their gradient reaches the encoder, their weights live in the resumable state (never in the
    SAM2 file), and the held-out records say how they read and how same-coloured objects decode."""
    from safetensors.torch import load_file

    from reviosa import sam as sam_ops
    from train.stages.common import stage_model_config
    from train.stages.sam_pretrain import (
        AttributeHeads,
        SamPretrainConfig,
        attribute_loss,
        build_stage_sam,
        draw_world_batch,
        pretrain,
    )  # fmt: skip

    config = stage_model_config(recipe)
    sam = build_stage_sam(config)
    batch = draw_world_batch(np.random.default_rng(0), 0, 2, 2, config.sam, 0.4, objects=3)
    assert len(batch.looks) == len(batch.masks) == len(batch.same_colour)
    heads = AttributeHeads(sam.sam_prompt_embed_dim)
    attribute_loss(heads, sam_ops.encode_images(sam, batch.pixels), batch).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in sam.image_encoder.parameters())
    cfg = SamPretrainConfig(steps=2, batch=2, frames=2, val_clips=3, val_frames=2, every=1, objects=2,
                            world=True, examples=True, soft_targets=True, attributes=1.0)  # fmt: skip
    sam = build_stage_sam(config)
    records = pretrain(sam, cfg, tmp_path / "a", log=lambda _m: None)
    assert {"read_colour", "read_shape", "read_size", "read_texture"} <= set(records[-1])
    assert "heads" in torch.load(tmp_path / "a" / "state.pt", weights_only=False)
    assert all(k.startswith("sam.") for k in load_file(str(tmp_path / "a" / "sam.safetensors")))
    broken = build_stage_sam(config)
    pretrain(broken, cfg, tmp_path / "b", log=lambda _m: None, stop_after=1)
    resumed = build_stage_sam(config)
    pretrain(resumed, cfg, tmp_path / "b", resume=True, log=lambda _m: None)
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, sam.state_dict()[k])


def test_stage_files_load_strictly_into_the_stage3_model(stage12, recipe, tmp_path):
    from safetensors.torch import load_file, save_file

    from train.config import load_config
    from train.model import build_model
    from train.stages.sam_pretrain import load_sam
    from train.stages.vl_pretrain import load_mllm

    s1, s2 = stage12 / "s1", stage12 / "s2"
    cfg = load_config(
        recipe, [f"model.mllm_init={s1 / 'mllm.safetensors'}", f"model.sam_init={s2 / 'sam.safetensors'}"]
    )
    model = build_model(cfg, [], tmp_path / "run")
    mllm = load_file(str(s1 / "mllm.safetensors"))
    for k, v in model.mllm.state_dict().items():
        torch.testing.assert_close(v, mllm[f"mllm.{k}"])
    sam = load_file(str(s2 / "sam.safetensors"))
    for k, v in model.sam.state_dict().items():
        torch.testing.assert_close(v, sam[f"sam.{k}"])
    # the run adopted stage 1's tokenizer (its embedding rows were trained with it)
    assert (tmp_path / "run" / "tokenizer" / "tokenizer_config.json").read_text() == (
        s1 / "tokenizer" / "tokenizer_config.json"
    ).read_text()
    broken = {k: v for k, v in sam.items() if "memory_encoder" not in k}
    save_file(broken, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="does not fit"):
        load_sam(model.sam, tmp_path / "bad.safetensors")
    save_file({**mllm, "sam.x": torch.zeros(1)}, str(tmp_path / "bad2.safetensors"))
    with pytest.raises(ValueError, match="outside the MLLM"):
        load_mllm(model, tmp_path / "bad2.safetensors")
    with pytest.raises(ValueError, match="from-scratch"):
        load_config(
            recipe, ["model.kind=pretrained", "model.path=x", f"model.sam_init={s2 / 'sam.safetensors'}"]
        )


def test_qa_phase_trains_the_language_side_only(stage12, recipe):
    from train.stages.vl_pretrain import QAConfig, build, load_mllm, train_qa

    model = build(recipe, [])
    load_mllm(model, stage12 / "s1" / "mllm.safetensors")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    records = train_qa(model, QAConfig(steps=6, clips=2, val_clips=4, every=3, lr=3e-3), log=lambda _m: None)
    assert records[-1]["loss"] < records[0]["loss"]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("mllm.model.language_model") for k in changed)
    assert any(k.startswith("mllm.lm_head") for k in changed)
    assert not any(
        k.startswith(("mllm.model.vision_tower", "mllm.model.multi_modal_projector", "sam.")) for k in changed
    )


def test_qa_phase_with_a_vision_rate_trains_the_tower_too(stage12, recipe, tmp_path):
    from train.stages.vl_pretrain import MLLM, QA_RECORDS, build, load_mllm, main

    main(["--recipe", str(recipe), "--out", str(tmp_path / "s1b"), "--phase", "qa", "--init", str(stage12 / "s1"),
          "--qa-steps", "3", "--qa-val-clips", "4", "--every", "3", "--qa-vision-lr", "1e-3", "--report", ""])  # fmt: skip
    before, after = build(recipe, []), build(recipe, [])
    load_mllm(before, stage12 / "s1" / MLLM)
    load_mllm(after, tmp_path / "s1b" / MLLM)
    old, new = before.state_dict(), after.state_dict()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert any(k.startswith("mllm.model.vision_tower") for k in changed)
    assert any(k.startswith("mllm.model.multi_modal_projector") for k in changed)
    assert any(k.startswith("mllm.model.language_model") for k in changed)
    assert not any(k.startswith(("sam.", "prompt_proj.")) for k in changed)
    assert json.loads((tmp_path / "s1b" / QA_RECORDS).read_text())["config"]["vision_lr"] == 1e-3
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--init", str(stage12 / "s1")])


def test_tower_phase_from_another_folder_with_the_position_term(stage12, recipe, tmp_path):
    """``--phase tower --init FOLDER --tower-position W``: the tower starts from FOLDER's weights
    (a 0 learning rate keeps them) and reports the tokens' cell score."""
    from safetensors.torch import load_file

    from train.stages.vision_tower import REPORT, WEIGHTS
    from train.stages.vl_pretrain import main

    main(["--recipe", str(recipe), "--out", str(tmp_path / "s1p"), "--phase", "tower", "--init", str(stage12 / "s1"),
          "--tower-steps", "2", "--tower-lr", "0", "--tower-position", "1", "--every", "2", "--val-scenes", "4",
          "--report", ""])  # fmt: skip
    record = json.loads((tmp_path / "s1p" / REPORT).read_text())
    assert record["config"]["position"] == 1.0 and 0 <= record["records"][-1]["cell"] <= 1
    old, new = load_file(str(stage12 / "s1" / WEIGHTS)), load_file(str(tmp_path / "s1p" / WEIGHTS))
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)


def test_stages_3_to_5_run_from_the_stage_files_and_report(stage12, recipe, tmp_path):
    from train.stages import ablation, reviosa, sa2va

    rep = stage12 / "report"
    tiny = ["--set", "eval.clips=1", "--set", "eval.at_end=true", "--set", "checkpoint.every=2"]
    s3 = tmp_path / "s3"
    sa2va.main(["--stage1", str(stage12 / "s1"), "--stage2", str(stage12 / "s2c"), "--out", str(s3),
                "--recipe", recipe, "--steps", "2", "--report", str(rep), *tiny])  # fmt: skip
    saved = json.loads((s3 / "train_config.json").read_text())
    assert saved["data"]["two_tokens"] is False and saved["loss"]["aml"] == 0
    assert (s3 / "model" / "model.safetensors").is_file()
    # what stage 3 trains: the projector, but neither the vision tower nor SAM2's image encoder
    exported = load_file(str(s3 / "model" / "model.safetensors"))  # float16
    given = {
        **load_file(str(stage12 / "s1" / "mllm.safetensors")),
        **load_file(str(stage12 / "s2c" / "sam.safetensors")),
    }

    def same(prefix: str) -> bool:
        keys = [k for k in given if k.startswith(prefix) and given[k].is_floating_point()]
        return bool(keys) and all(torch.equal(exported[k], given[k].half()) for k in keys)

    assert same("mllm.model.vision_tower") and same("sam.image_encoder")
    assert not same("mllm.model.multi_modal_projector")
    # the binding probe reads stage 3's MLLM with stage 1's questions: every tensor, as exported
    from train.probes.qa_binding import load_any_mllm
    from train.stages.vl_pretrain import build

    probe = build(recipe, [], seed=9)
    load_any_mllm(probe, s3 / "model")
    assert all(torch.equal(v.half(), exported[f"mllm.{k}"]) for k, v in probe.mllm.state_dict().items())
    s4 = tmp_path / "s4"
    reviosa.main(["--stage3", str(s3), "--out", str(s4), "--recipe", recipe, "--steps", "2", "--samples", "2",
                  "--report", str(rep), *tiny])  # fmt: skip
    chosen = json.loads((s4 / "heads" / "selection.json").read_text())
    saved = json.loads((s4 / "train_config.json").read_text())
    assert saved["data"]["two_tokens"] is True and saved["attention"]["layer"] == chosen["layer"]
    assert saved["model"]["kind"] == "pretrained" and saved["model"]["path"] == str(s3 / "model")
    s5 = tmp_path / "s5"
    ablation.main(["--stage3", str(s3), "--stage4", str(s4), "--out", str(s5), "--recipe", recipe, "--steps", "1",
                   "--seeds", "1", "--test-clips", "1", "--report", str(rep)])  # fmt: skip
    table = (s5 / "ablation.md").read_text()
    assert table.count("±") >= 8  # Actor and RVOS of four variants (Target where the split has one)
    for name in ("single_seg", "single_seg_aml", "two_tokens", "two_tokens_aml"):
        saved = json.loads((s5 / name / "seed1" / "train_config.json").read_text())
        assert saved["model"]["path"] == str(s3 / "model") and saved["seed"] == 1
        assert (s5 / name / "seed1.json").is_file()
    for model in (s3 / "model", s4 / "model"):  # committed at half the size
        tensors = load_file(str(model / "model.safetensors"))
        assert {v.dtype for v in tensors.values() if v.is_floating_point()} == {torch.float16}
    # A fresh clone holds what .gitignore keeps: the exports and the scores, not the generated data
    # or the per-seed runs. The ablation renders the data again and trains nothing already scored.
    shutil.rmtree(s3 / "data")
    for name in ("single_seg", "single_seg_aml", "two_tokens", "two_tokens_aml"):
        shutil.rmtree(s5 / name / "seed1")
    ablation.main(["--stage3", str(s3), "--stage4", str(s4), "--out", str(s5), "--recipe", recipe, "--steps", "1",
                   "--seeds", "1", "--test-clips", "1", "--report", str(rep)])  # fmt: skip
    assert (s3 / "data" / "train" / "meta_expressions.json").is_file()
    assert not (s5 / "single_seg" / "seed1").exists()
    assert (s5 / "ablation.md").read_text() == table
    assert "the other 4 were scored earlier and read back" in (rep / "ablation.md").read_text()
    # scores of another stage-3 model are never mixed into the table
    (s5 / "stage3.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(SystemExit, match="another stage-3 model"):
        ablation.main(["--stage3", str(s3), "--stage4", str(s4), "--out", str(s5), "--recipe", recipe, "--steps", "1",
                       "--seeds", "1", "--test-clips", "1", "--report", ""])  # fmt: skip
    report = (rep / "report.md").read_text()
    for title in ("Stage 1", "Stage 2", "Stage 3", "Stage 4", "Stage 5"):
        assert title in report
    assert report.index("Stage 1") < report.index("Stage 2") < report.index("Stage 2, second phase")
    assert (
        report.index("Stage 2, second phase")
        < report.index("Stage 2, third phase:")
        < report.index("Stage 2, third phase continued")
        < report.index("Stage 2, fourth phase: example prompts that read")
        < report.index("Stage 3")
    )
    assert report.index("Stage 3") < report.index("Stage 5")
    assert "up to 2 objects each, every frame also clicked" in report
    assert "world clips x 3 frames, up to 2 objects each, every frame also from its example prompt" in report
    assert "Not run yet" not in report
    assert "State: tower done (3 steps); QA done (3 steps, 18 held-out questions)" in report


def test_stage1_report_from_a_tower_under_way(recipe, tmp_path):
    """A stage-1 folder killed during the tower phase reports its newest probe figures and says how
    it resumes (``--phase report`` trains nothing)."""
    from train.stages import vision_tower, vl_pretrain

    model = vl_pretrain.build(recipe, [])
    cfg = vision_tower.PretrainConfig(steps=4, batch=4, val_scenes=8, every=2)
    (tmp_path / "s1").mkdir()
    vision_tower.pretrain(model, cfg, lambda _m: None, tmp_path / "s1" / vision_tower.STATE)
    vl_pretrain.main(["--out", str(tmp_path / "s1"), "--phase", "report", "--report", str(tmp_path / "rep")])
    section = (tmp_path / "rep" / "vl_pretrain.md").read_text()
    assert "tower under way (step 4" in section and "QA not run yet" in section
    assert "probe reads shape" in section and "LLM answers" not in section


def test_ablation_summary_is_mean_and_spread_over_seeds():
    from train.stages.ablation import report_figures, summarise, table

    def scores(actor, rvos, target=None):
        out = {"actor": {"JF": actor}, "rvos": {"JF": rvos}}
        return out | ({"target": {"JF": target}} if target is not None else {})

    no_target = {"target": {"JF": 0.0, "count": 9}}  # evaluate scores a one-token variant's targets as empty
    summary = summarise({
        "single_seg": [scores(20.0, 30.0) | no_target, scores(24.0, 34.0) | no_target],
        "two_tokens_aml": [scores(30.0, 40.0, 10.0), scores(30.0, 42.0, 14.0), scores(30.0, 44.0, 18.0)],
    })  # fmt: skip
    assert summary["single_seg"]["actor"] == pytest.approx((22.0, 2.0**0.5 * 2))
    assert summary["two_tokens_aml"]["target"] == pytest.approx((14.0, 4.0))
    assert summary["two_tokens_aml"]["actor"] == (30.0, 0.0)
    figures = report_figures(summary)
    assert "single_seg target J&F mean" not in figures and figures["two_tokens_aml target J&F mean"] == 14.0
    text = table(summary, 3)
    assert "| 14.0 ± 4.0 | 42.0 ± 2.0 |" in text
    assert "(i) single_seg | no | no | 22.0 ± 2.8 | - | 32.0 ± 2.8 |" in text
    assert "(ii) single_seg_aml | no | yes | - | - | - |" in text  # not run


def test_sam_click_probe_tells_a_model_that_follows_its_click_from_one_that_does_not(recipe, monkeypatch):
    from train.probes import sam_clicks
    from train.stages.common import stage_model_config
    from train.stages.sam_pretrain import build_stage_sam

    config = stage_model_config(recipe)
    frames = sam_clicks.held_out_frames(4, config.sam)
    assert all(
        len(f.masks) >= 2 and (f.masks.sum(0) <= 1).all() and (f.masks.any(0) <= f.every).all()
        for f in frames
    )
    sam = build_stage_sam(config)

    def oracle(answer):
        """A decoder whose mask is ``answer(frame, click)``, found by where the click lands."""
        current = iter(frames)

        def decode(_sam, _features, clicks):
            frame = next(current)
            rows = []
            for x, y in clicks[:, 0].long().tolist():
                k = int(frame.masks[:, y, x].float().argmax())
                rows.append(answer(frame, k))
            return torch.stack(rows)

        return decode

    monkeypatch.setattr(sam_clicks, "decode_clicks", oracle(lambda frame, k: frame.masks[k]))
    follows = sam_clicks.probe(sam, frames)
    monkeypatch.setattr(sam_clicks, "decode_clicks", oracle(lambda frame, k: frame.every))
    ignores = sam_clicks.probe(sam, frames)
    assert follows["iou"] == 1.0 and follows["moved"] == 1.0 and follows["iou_every"] < 1.0
    assert ignores["iou_every"] == 1.0 and ignores["moved"] == 0.0 and ignores["iou"] < follows["iou"]


# --- the grounding phase of stages 3-4 ----------------------------------------------------------


def _grounding_pool(model, cfg, count=2):
    from train.stages.grounding import pool_clip

    return [pool_clip(model, cfg, "train", i, np.random.default_rng(i)) for i in range(count)]


def test_grounding_batch_gives_the_prompts_of_the_plain_path(recipe):
    """A clip's expressions packed in one row give each role token the state, and so the prompt,
    that the model's own one-expression prompt path gives it; the candidates are the clip's objects'
    example prompts (SAM2's features pooled under their masks), then the referent set's."""
    from reviosa import sam as sam_ops
    from train.stages.grounding import GroundingConfig, candidates, choose, make_batch, terms_of
    from train.stages.vl_pretrain import build

    model = build(recipe, []).eval()
    cfg = GroundingConfig(two_tokens=True, keyframes=3, world_size=64)
    clips = _grounding_pool(model, cfg)
    chosen = choose(clips, 4, True, np.random.default_rng(0))
    batch = make_batch(model, clips, chosen, True)
    assert batch.packed.input_ids.shape[0] == len(clips) and len(batch.chosen) == sum(map(len, chosen))
    with torch.no_grad():
        _, prompts = terms_of(model, batch, clips, cfg, None)
        for q, c in enumerate(batch.chosen):
            ids = model.processor.prompt_ids(c.text, 3) + model.processor.answer_ids(
                "Sure, [SEG_ACT] and [SEG_TAR]." if c.caption_type == "unidirectional" else "Sure, [SEG_ACT]."
            )
            ids = torch.tensor([ids])
            hidden = model.hidden_states(
                model.embed(ids, model.processor.mllm_pixels(clips[c.clip].frames)), torch.ones_like(ids)
            )
            pos = torch.stack([(ids[0] == t).nonzero()[0, 0] if (ids[0] == t).any() else torch.tensor(-1)
                               for t in (model.processor.ids.seg_act, model.processor.ids.seg_tar)])  # fmt: skip
            pos = torch.where(torch.tensor([bool(r) for r in c.roles]), pos, -1)
            assert (batch.positions[q] >= 0).tolist() == (pos >= 0).tolist()
            want = model.prompts_from_states(hidden, pos[None])[0]
            present = pos >= 0
            torch.testing.assert_close(prompts[q][present], want[present], atol=1e-4, rtol=1e-4)
    # example prompts: SAM2's top-level features pooled under each object's masks on the keyframes
    from reviosa.data.synth import WorldConfig, make_clip

    clip = clips[0]
    record, _ = make_clip(0, "train", 0, WorldConfig(size=64))
    masks = torch.from_numpy(
        np.stack([t.masks[clip.keyframes] for t in record.objects])
    ).float()  # (N, K, s, s)
    with torch.no_grad():
        feats = sam_ops.encode_images(
            model.sam, sam_ops.preprocess(torch.from_numpy(clip.frames), model.config.sam)
        )
    gy, gx = feats.feat_sizes[-1]
    per_frame = (
        feats.vision_feats[-1].reshape(gy * gx, 1, len(clip.keyframes), -1).expand(-1, len(masks), -1, -1)
    )
    want, _ = sam_ops.pooled_under_masks(per_frame, masks[:, None], (gy, gx))
    cand, right = candidates(clip, [1])
    torch.testing.assert_close(cand, want[:, 0], atol=1e-4, rtol=1e-4)
    assert right == 1
    pair, right = candidates(clip, [0, 1])
    assert right == len(masks) and pair.shape[0] == len(masks) + 1
    union, _ = sam_ops.pooled_under_masks(per_frame[:, :1], masks[None, :2].amax(1, keepdim=True), (gy, gx))
    torch.testing.assert_close(pair[-1], union[0, 0], atol=1e-4, rtol=1e-4)


def test_displacements_follow_the_cover_centroid():
    """An object's move between keyframes in cells, from its cover; no move where it is not shown."""
    from train.stages.grounding import displacements

    cover = torch.zeros(2, 4, 8, 8)
    for k in range(4):
        cover[0, k, 2:4, 1 + k : 3 + k] = 1.0  # a 2x2 square one cell right a keyframe
    cover[1, 0, 5:7, 5:7] = 1.0  # shown on keyframe 0 only (then hidden)
    cover[1, 1, 5:7, 5:7] = 0.5  # half covered: still there, not moved
    moved, valid = displacements(cover)
    torch.testing.assert_close(moved[0, 1:], torch.tensor([[0.0, 1.0]] * 3))
    assert valid[0].tolist() == [False, True, True, True]
    assert valid[1].tolist() == [False, True, False, False]
    torch.testing.assert_close(moved[1, 1], torch.zeros(2))


def test_motion_term_is_zero_for_the_true_moves_and_one_for_none():
    """The term is the relative squared error of the head's (dy, dx) under each object's cover:
    states that carry the true move through an identity head give 0, a head that says no motion 1."""
    from train.stages.grounding import PoolClip, displacements, motion_term

    cover = torch.zeros(1, 3, 4, 4)
    for k in range(3):
        cover[0, k, k : k + 2, 0:2] = 1.0  # moving down one cell a keyframe
    clip = PoolClip([0, 1, 2], np.zeros((3, 4, 4, 3), np.uint8), cover, cover, torch.zeros(1, 2),
                    torch.ones(1), [])  # fmt: skip
    moved, _ = displacements(cover)
    states = (cover[0, ..., None] * moved[0, :, None, None, :])[None]  # (C, K, g, g, 2)
    identity = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(2))
        assert float(motion_term(identity, states, [clip])) < 1e-6
        identity.weight.zero_()
        assert float(motion_term(identity, states, [clip])) == pytest.approx(1.0)


def test_role_term_reads_who_acts_on_whom_from_the_expressions():
    """Roles come from the clip's interaction expressions, a passive one flipped ("B pushed by A":
    A acts); the term is ~0 for states that carry the roles through an identity head and 3 ln 2 for
    a head that says nothing; the order figure is 1 for those states and 0 with actor and target
    swapped."""
    from train.stages.grounding import PoolClip, interaction_roles, role_order, role_term

    cover = torch.zeros(4, 3, 4, 4)
    for n in range(4):
        cover[n, :, n, :2] = 1.0  # each object one row of its own
    expressions = [
        ("red square pushing the blue circle", "unidirectional", [0], [1]),
        ("blue circle being pushed by the red square", "unidirectional", [1], [0]),
        ("two objects bumping into each other", "bidirectional", [2, 3], []),
        ("the red square", "single", [0], []),
    ]
    clip = PoolClip([0, 1, 2], np.zeros((3, 4, 4, 3), np.uint8), cover, cover, torch.zeros(4, 2),
                    torch.ones(4), expressions)  # fmt: skip
    roles = interaction_roles(clip)
    assert roles.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]
    signs = 2 * roles - 1  # (N, 3)
    states = (20 * cover[..., None] * signs[:, None, None, None, :]).sum(0)[None]  # (C, K, g, g, 3)
    identity = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(3))
        assert float(role_term(identity, states, [clip])) < 1e-6
        assert role_order(identity, states, [clip]) == [1.0]
        assert role_order(identity, states[..., [1, 0, 2]], [clip]) == [0.0]
        identity.weight.zero_()
        assert float(role_term(identity, states, [clip])) == pytest.approx(3 * math.log(2))


def test_role_query_term_asks_each_role_token_for_its_referents_side():
    """[SEG_ACT] of an active expression refers to the one acting, of a passive one to the one acted
    on, [SEG_TAR] the other way round; single expressions give no target; the term is ~0 when the
    states carry those sides through an identity head."""
    from train.stages.grounding import Chosen, GroundBatch, query_roles, role_query_term

    chosen = [
        Chosen(0, "object pushing another object", "unidirectional", ([0], [1])),
        Chosen(0, "object being pushed by another object", "unidirectional", ([1], [0])),
        Chosen(0, "the red square", "single", ([0], [])),
    ]
    positions = torch.tensor([[5, 6], [9, 10], [12, -1]])
    batch = GroundBatch(packed=None, pixels=None, positions=positions, chosen=chosen)
    labels, has = query_roles(batch)
    assert has.tolist() == [[True, True], [True, True], [False, False]]
    assert labels[0].tolist() == [[1, 0, 0], [0, 1, 0]]
    assert labels[1].tolist() == [[0, 1, 0], [1, 0, 0]]
    states = 20 * (2 * labels - 1)  # (Q, R, 3)
    identity = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(3))
        assert float(role_query_term(identity, states, batch)) < 1e-6
        assert float(role_query_term(identity, -states, batch)) > 10


def test_motion_query_term_asks_the_actor_token_for_its_referents_move():
    """Only expressions naming one direction and no interaction get a goal: the referents' mean move
    per keyframe step, and only where it goes the named way; the term is 0 for states carrying that
    move through an identity head and 1 for a head that says no motion."""
    from train.stages.grounding import Chosen, GroundBatch, PoolClip, motion_query_term, query_motions

    cover = torch.zeros(3, 3, 6, 6)
    for k in range(3):
        cover[0, k, k : k + 2, 0:2] = 1.0  # moving down one cell a keyframe
        cover[1, k, 4:6, 3 - k : 5 - k] = 1.0  # moving left
        cover[2, k, 0:2, 4:6] = 1.0  # still
    clip = PoolClip([0, 1, 2], np.zeros((3, 6, 6, 3), np.uint8), cover, cover, torch.zeros(3, 2),
                    torch.ones(3), [])  # fmt: skip
    chosen = [
        Chosen(0, "the object moving down", "single", ([0], [])),
        Chosen(0, "the red square moving left", "single", ([1], [])),
        Chosen(0, "the object moving up", "single", ([0], [])),  # its referent moves down: no goal
        Chosen(0, "the red square", "single", ([2], [])),
        Chosen(0, "object pushing another object", "unidirectional", ([0], [1])),
    ]
    batch = GroundBatch(
        packed=None, pixels=None, positions=torch.zeros(5, 2, dtype=torch.long), chosen=chosen
    )
    goals, has = query_motions(batch, [clip])
    assert has.tolist() == [True, True, False, False, False]
    torch.testing.assert_close(goals[:2], torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    states = torch.zeros(5, 2, 2)
    states[:, 0] = goals
    identity = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(2))
        assert float(motion_query_term(identity, states, batch, [clip])) < 1e-6
        identity.weight.zero_()
        assert float(motion_query_term(identity, states, batch, [clip])) == pytest.approx(1.0)


def test_dense_heads_start_from_the_runs_seed():
    """The dense terms' heads start the same for the same seed (the global RNG untouched) and
    differently for another seed."""
    from train.stages.grounding import GroundingConfig, dense_heads

    cfg = GroundingConfig(motion=1.0, roles=1.0)
    state = torch.random.get_rng_state()
    a, b = dense_heads(cfg, 8), dense_heads(cfg, 8)
    assert torch.equal(torch.random.get_rng_state(), state)
    other = dense_heads(GroundingConfig(motion=1.0, roles=1.0, seed=1), 8)
    for name in ("motion", "roles"):
        assert torch.equal(a[name].weight, b[name].weight)
        assert not torch.equal(a[name].weight, other[name].weight)


def test_grounding_trains_the_vision_tower_only_when_asked(recipe, tmp_path):
    """`vision_lr_scale` 0 keeps the MLLM's vision tower frozen, as stages 3-4 do; above 0 the tower
    trains in its own group at that scale of the rate, SAM2 frozen either way."""
    from train.config import load_config
    from train.model import build_model
    from train.stages.grounding import VISION, GroundingConfig, param_groups

    model = build_model(load_config(recipe, []), [], tmp_path / "run")
    for scale, expected in ((0.0, 2), (0.25, 3)):
        groups = param_groups(model, GroundingConfig(vision_lr_scale=scale))
        assert len(groups) == expected
        vision = {id(p) for n, p in model.named_parameters() if n.startswith(VISION)}
        trained = {id(p) for g in groups for p in g["params"]}
        assert (vision <= trained) == (scale > 0) and not (scale == 0 and vision & trained)
        if scale:
            assert groups[-1]["lr_scale"] == scale and {id(p) for p in groups[-1]["params"]} == vision
        assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("sam."))


def test_grounding_draw_favours_expressions_naming_neither_colour_nor_shape():
    """Weight 1 draws a plain permutation's head (the runs before the weight draw what they drew);
    a weight W > 1 draws the expressions naming neither colour nor shape about W times as often,
    never one twice, and all of a clip's when it has no more than ``turns``."""
    from train.stages.grounding import draw_order

    texts = ["the red circle", "the square", "the object moving down", "object pushing another object",
             "the blue triangle", "the green object", "the small square", "the striped circle"]  # fmt: skip
    exprs = [(t, "single", [0], []) for t in texts]
    neither = {2, 3}
    assert draw_order(exprs, 3, np.random.default_rng(5)) == [
        int(e) for e in np.random.default_rng(5).permutation(len(exprs))[:3]
    ]
    counts = {1.0: 0, 4.0: 0}
    for w in counts:
        for seed in range(400):
            drawn = draw_order(exprs, 2, np.random.default_rng(seed), neither_weight=w)
            assert len(drawn) == len(set(drawn)) == 2
            counts[w] += len(neither & set(drawn))
    # of 800 draws, about 2/8 name neither at weight 1 and about 8/14 (first draw) at weight 4
    assert counts[1.0] < 260 and counts[4.0] > 2 * counts[1.0]
    assert sorted(draw_order(exprs, 20, np.random.default_rng(0), neither_weight=4.0)) == list(range(8))


def test_stage4_hands_its_dense_terms_to_the_grounding_phase():
    """`python -m train.stages.reviosa --grounding-steps N --motion W --roles W --role-query W` runs
    the grounding phase from stage 3's export with those weights, both role tokens and AML on the
    chosen heads, into OUT/grounding."""
    import argparse

    from train.stages import grounding, reviosa
    from train.stages.common import RECIPE

    args = argparse.Namespace(stage3="runs/s3", out="runs/s4", recipe=RECIPE, grounding_steps=7,
                              motion=1.0, roles=0.5, role_query=2.0, motion_query=3.0, vision_lr_scale=0.1,
                              neither_weight=4.0)  # fmt: skip
    parsed = grounding.parse(reviosa.grounding_argv(args, 2, [2, 0]))
    cfg = grounding.config_of(parsed)
    assert (cfg.motion, cfg.roles, cfg.role_query, cfg.motion_query, cfg.steps) == (1.0, 0.5, 2.0, 3.0, 7)
    assert (cfg.vision_lr_scale, cfg.neither_weight) == (0.1, 4.0)
    assert (cfg.two_tokens, cfg.aml, cfg.aml_layer, cfg.aml_heads) == (True, 1.0, 2, (2, 0))
    assert (parsed.init, parsed.pool_from) == ("runs/s3/model", "runs/s3/grounding")
    assert parsed.out == "runs/s4/grounding"


def test_grounding_stage_trains_the_language_side_resumes_and_exports(stage12, recipe, tmp_path):
    """Stage 3's grounding phase from the stage files: the projector, language model and prompt MLP
    train, the vision tower and SAM2 do not; a run stopped and resumed ends where an unbroken one
    does; the export loads strictly; stage 4's phase from it adds [SEG_TAR] and AML."""
    from reviosa.hub import from_pretrained
    from train.stages import grounding

    common = [
        "--recipe",
        recipe,
        "--pool",
        "3",
        "--val-clips",
        "1",
        "--clips",
        "2",
        "--turns",
        "3",
        "--every",
        "1",
        "--motion",
        "1",
        "--roles",
        "1",
        "--role-query",
        "1",
    ]
    stages = ["--stage1", str(stage12 / "s1"), "--stage2", str(stage12 / "s2d")]
    grounding.main([*stages, "--out", str(tmp_path / "a"), "--steps", "2", *common])
    records = json.loads((tmp_path / "a" / grounding.RECORDS).read_text())["records"]
    assert [r["step"] for r in records] == [0, 1, 2]
    terms = {"text", "choice", "distill", "grounding", "motion", "roles", "role_query"}
    assert set(records[-1]["train"]) == terms
    assert "motion" in records[-1] and "roles" in records[-1]  # their held-out values
    model = from_pretrained(str(tmp_path / "a" / "model"))  # strict
    exported = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    given = {
        **load_file(str(stage12 / "s1" / "mllm.safetensors")),
        **load_file(str(stage12 / "s2d" / "sam.safetensors")),
    }

    def same(prefix: str) -> bool:
        keys = [k for k in given if k.startswith(prefix) and given[k].is_floating_point()]
        return bool(keys) and all(torch.equal(exported[k], given[k].half()) for k in keys)

    assert same("mllm.model.vision_tower") and same("sam.")
    assert not same("mllm.model.multi_modal_projector") and not same("mllm.model.language_model")
    # stopped after one step, then resumed: the unbroken run's weights (the dense heads resumed too)
    args = [*stages, "--steps", "2", *common]
    parsed = grounding.parse([*args, "--out", str(tmp_path / "b")])
    grounding.train(grounding.build(parsed), grounding.config_of(parsed), tmp_path / "b", False, stop_after=1)
    grounding.main([*args, "--out", str(tmp_path / "b"), "--resume"])
    again = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert all(torch.equal(again[k], exported[k]) for k in exported)
    # stage 4's phase: two role tokens, AML on the chosen heads; here with the motion query term and
    # the vision tower trained as well
    grounding.main(["--init", str(tmp_path / "a" / "model"), "--two-tokens", "--aml", "1", "--aml-layer", "1",
                    "--aml-heads", "0", "1", "--out", str(tmp_path / "c"), "--steps", "1", *common,
                    "--motion-query", "1", "--vision-lr-scale", "0.5"])  # fmt: skip
    last = json.loads((tmp_path / "c" / grounding.RECORDS).read_text())["records"][-1]
    assert "aml" in last["train"] and "motion_query" in last["train"] and "target" in last["pick"]
    tower = load_file(str(tmp_path / "c" / "model" / "model.safetensors"))
    assert any(
        not torch.equal(tower[k], exported[k]) for k in exported if k.startswith("mllm.model.vision_tower")
    )
    assert from_pretrained(str(tmp_path / "c" / "model")).config.attention_supervision.heads == (0, 1)
    assert model.config.attention_supervision is not None
    # stage 3's loop fine-tunes the grounded model end to end, mask targets soft
    from train.stages import sa2va

    s3 = tmp_path / "s3"
    sa2va.main(["--grounded", str(tmp_path / "a" / "model"), "--out", str(s3), "--recipe", recipe, "--steps", "1",
                "--report", "", "--set", "eval.clips=1", "--set", "data.soft_masks=true"])  # fmt: skip
    saved = json.loads((s3 / "train_config.json").read_text())
    assert saved["model"]["kind"] == "pretrained" and saved["data"]["soft_masks"] is True
    started = load_file(str(s3 / "model" / "model.safetensors"))
    assert torch.equal(started["mllm.model.vision_tower.embeddings.patch_embeddings.projection.weight"],
                       exported["mllm.model.vision_tower.embeddings.patch_embeddings.projection.weight"])  # fmt: skip
