"""Training: losses by hand, AML reshape order, data items, resume, DDP, LoRA, export, select-heads."""

from __future__ import annotations

import json
import math
import os
import socket

import numpy as np
import pytest
import torch
from einops import rearrange

from train import losses
from train.config import TrainConfig, apply_overrides, load_config

# --- losses ----------------------------------------------------------------------------------------


def test_sigmoid_ce_by_hand():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 0.0]]])  # (1, 2, 2)
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731 (softplus)
    expected = (sp(-0.0) + sp(2.0) + sp(-1.0) + sp(-0.0)) / 4  # BCE(l, 1) = sp(-l), BCE(l, 0) = sp(l)
    assert losses.sigmoid_ce(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_dice_by_hand():
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    sure = (mask * 2 - 1) * 100  # logits whose sigmoid is the mask
    assert losses.dice(sure, mask).item() == pytest.approx(0.0, abs=1e-6)  # identical masks
    empty = torch.zeros(2, 2)
    assert losses.dice(torch.full((2, 2), -100.0), empty).item() == pytest.approx(0.0, abs=1e-6)
    # disjoint: p = [1, 0], t = [0, 1] -> 1 - (0 + 1) / (1 + 1 + 1)
    p, t = torch.tensor([[100.0, -100.0]]), torch.tensor([[0.0, 1.0]])
    assert losses.dice(p, t).item() == pytest.approx(2 / 3, rel=1e-6)
    # sigmoid(0) = 0.5 everywhere, t = [1, 0]: |pt| = 0.5, |p| = 1, |t| = 1 -> 1 - (1 + 1) / (2 + 1)
    assert losses.dice(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(1 / 3)


def test_seg_loss_target_term_only_where_weighted():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 3, 4, 4, requires_grad=True)  # (B, R, F, h, w)
    masks = (torch.rand(2, 2, 3, 4, 4) > 0.5).float()
    weight = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # row 1: no target (not unidirectional)
    seg = losses.seg_loss(logits, masks, weight)
    seg.total(2.0, 0.5).backward()
    assert logits.grad[1, 1].abs().sum() == 0  # the unsupervised target gets no gradient
    assert logits.grad[0, 1].abs().sum() > 0
    per = [
        losses.sigmoid_ce(logits[b, r], masks[b, r]).mean() for b, r in [(0, 0), (0, 1), (1, 0)]
    ]  # rows summed, roles summed, frames averaged
    assert seg.ce.item() == pytest.approx(sum(p.item() for p in per), rel=1e-6)


def test_text_ce_is_mean_per_row_summed():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    targets = torch.tensor([0, 0, 1])
    rows = torch.tensor([0, 0, 1])
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    expected = (ce[0] + ce[1]) / 2 + ce[2]
    assert losses.text_ce(logits, targets, rows, 2).item() == pytest.approx(expected.item(), rel=1e-6)
    labels = torch.tensor([[-100, -100, 5, 6], [-100, -100, -100, 7]])
    assert losses.supervised_rows(labels).tolist() == [0, 0, 1]


def test_object_and_grounding_losses_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [5.0, 5.0]]])  # (B=1, R=2, F=2)
    present = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    value = losses.object_loss(logits, present, torch.tensor([[1.0, 0.0]]))
    assert value.item() == pytest.approx(math.log(2), rel=1e-6)  # sigmoid(0) = 0.5 on both frames
    # grounding: a role state equal to the vision state inside the mask, orthogonal outside
    d = 4
    inside, outside = torch.eye(d)[0], torch.eye(d)[1]
    vision = torch.stack([inside, outside]).reshape(1, 1, 1, 2, d)  # (B, K, g=..., D): a 1x2 strip
    targets = torch.tensor([[[[[1.0, 0.0]]]]])  # (B, R=1, K=1, 1, 2)
    scale = 10.0
    got = losses.grounding_loss(inside.reshape(1, 1, d), vision, targets, torch.ones(1, 1), scale)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = (
        sp(-scale * 0.5) + sp(scale * -0.5)
    ) / 2  # cos 1 -> logit +5 (target 1); cos 0 -> -5 (target 0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def _aml_loop(flat_rows: torch.Tensor, targets: torch.Tensor, g: int) -> float:
    """AML by explicit loops; vision token n of frame k at (y, x) is n = k*g*g + y*g + x."""
    b_n, r_n, nl, nh, _ = flat_rows.shape
    k_n = targets.shape[2]
    total = 0.0
    for b in range(b_n):
        for r in range(r_n):
            heads = []
            for li in range(nl):
                for h in range(nh):
                    terms = []
                    for k in range(k_n):
                        for y in range(g):
                            for x in range(g):
                                p = flat_rows[b, r, li, h, k * g * g + y * g + x].item()
                                t = targets[b, r, k, y, x].item()
                                terms.append(-(t * math.log(p) + (1 - t) * math.log(1 - p)))
                    heads.append(sum(terms) / len(terms))
            total += sum(heads) / len(heads)
    return total


def test_hard_negative_loss_prices_the_other_objects_by_hand():
    # two rows of clip 0 naming objects A (row 0 actor) and B (row 1 actor), one row of clip 1
    masks = torch.zeros(3, 2, 1, 2, 2)
    masks[0, 0, 0, 0, 0] = 1.0  # A
    masks[1, 0, 0, 1, 1] = 1.0  # B
    masks[1, 1, 0, 0, 1] = 1.0  # C, row 1's target
    masks[2, 0, 0, 1, 0] = 1.0  # clip 1's only object
    clip_of = torch.tensor([0, 0, 1])
    others = losses.other_objects(masks, clip_of)
    assert others[0, 0, 0].tolist() == [[0.0, 1.0], [0.0, 1.0]]  # B and C, not A
    assert others[1, 1, 0].tolist() == [[1.0, 0.0], [0.0, 1.0]]  # A and B, not C
    assert others[2].sum() == 1.0  # clip 1's absent target: the actor's pixel (weight 0 below)
    logits = torch.zeros(3, 2, 1, 2, 2)
    logits[0, 0, 0, 0, 1] = 3.0  # row 0's actor marks C: priced
    logits[0, 0, 0, 0, 0] = 5.0  # ... and its own object: free
    weight = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    value = losses.hard_negative_loss(logits, masks, clip_of, weight)
    sp = torch.nn.functional.softplus
    expected = (sp(torch.tensor(3.0)) + sp(torch.tensor(0.0))) / 2  # mean over B and C's pixels
    assert torch.isclose(value, expected)


def test_prompt_contrast_loss_by_hand():
    """Rows 0 and 1 of clip 0 both name object A as actor (one object: both are positives); row 0's
    target is B; row 1 has no target (left out); clip 2's identical mask is another object."""
    masks = torch.zeros(3, 2, 1, 2, 2)
    masks[0, 0, 0, 0, 0] = masks[1, 0, 0, 0, 0] = masks[2, 0, 0, 0, 0] = 1.0  # A, A, clip 1's
    masks[0, 1, 0, 1, 1] = 1.0  # B
    clip_of = torch.tensor([0, 0, 1])
    same = losses.same_object(masks, clip_of)
    assert same[0].tolist() == [True, False, True, False, False, False]
    assert same[1].tolist() == [False, True, False, False, False, False]  # B is only itself
    assert not same[3].any()  # row 1's empty target matches nothing
    assert same[4].tolist() == [False] * 4 + [True, False]  # clip 1's object: another clip
    e1, e2, e3 = torch.eye(3)
    targets = torch.stack([torch.stack([e1, e2]), torch.stack([e1, e3]), torch.stack([e3, e3])])
    weight = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # clip 1 left out as a key too
    value = losses.prompt_contrast_loss(targets.clone(), targets, masks, clip_of, weight, scale=2.0)
    e = math.exp(-2.0)
    # actor prompts (x2): keys A, B, A -> -log(2 / (2 + e)); target: keys A, B, A -> -log(1 / (1 + 2e))
    expected = 2 * math.log(1 + e / 2) + math.log(1 + 2 * e)
    assert value.item() == pytest.approx(expected, rel=1e-4)
    swapped = targets.clone()
    swapped[0] = targets[0].flip(0)  # row 0's actor prompt is B's example and vice versa
    worse = losses.prompt_contrast_loss(swapped, targets, masks, clip_of, weight, scale=10.0)
    assert worse.item() > 10.0
    prompts = targets.clone().requires_grad_()
    losses.prompt_contrast_loss(prompts, targets, masks, clip_of, weight).backward()
    assert prompts.grad.isfinite().all()  # roles without a positive (absent ones) pass no NaN back


def test_role_pair_loss_by_hand():
    """Row 0: actor A, target B (a pair); row 1: actor and target the same object (no pair); row 2:
    no target (no pair). Only row 0's two roles count."""
    masks = torch.zeros(3, 2, 1, 2, 2)
    masks[0, 0, 0, 0, 0] = masks[0, 1, 0, 1, 1] = 1.0
    masks[1, :, 0, 0, 0] = 1.0
    masks[2, 0, 0, 0, 0] = 1.0
    e1, e2 = torch.eye(2)
    targets = torch.stack([torch.stack([e1, e2])] * 3)
    weight = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    value = losses.role_pair_loss(targets.clone(), targets, masks, weight, scale=2.0)
    # each role: cos 1 with its own example, 0 with the other's -> -log(e^2 / (e^2 + 1)), twice
    assert value.item() == pytest.approx(2 * math.log1p(math.exp(-2.0)), rel=1e-5)
    swapped = targets.flip(1)  # row 0's prompts are the other role's examples
    assert losses.role_pair_loss(swapped, targets, masks, weight, scale=10.0).item() > 19.0
    prompts = targets.clone().requires_grad_()
    losses.role_pair_loss(prompts, targets, masks, weight).backward()
    assert prompts.grad[0].abs().sum() > 0 and prompts.grad[1:].abs().sum() == 0
    one = losses.role_pair_loss(targets[:, :1], targets[:, :1], masks[:, :1], weight[:, :1])
    assert one.item() == 0.0  # one [SEG]: nothing to tell apart


def test_region_words_loss_by_hand():
    """Vocabulary of three words, embedded as the axes. Row 0's actor covers two tokens along
    word 0 (their mean points at it); the expression says words 0 and 2. Row 0's target is on no
    keyframe and row 1 is unweighted: both are left out."""
    embedding = torch.eye(3)
    vision = torch.zeros(2, 1, 2, 2, 3)  # (B, K, g, g, D)
    vision[0, 0, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    vision[0, 0, 0, 1] = torch.tensor([3.0, 0.0, 0.0])
    vision[0, 0, 1, 1] = torch.tensor([0.0, 0.0, 5.0])  # not the referent's: must not count
    vision[1] = torch.randn(1, 2, 2, 3)
    targets = torch.zeros(2, 2, 1, 2, 2)  # (B, R, K, g, g)
    targets[0, 0, 0, 0, :] = 1.0
    targets[1, 0, 0, 1, 1] = 1.0
    words = torch.tensor([[0, 2, -1], [1, -1, -1]])
    weight = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    value = losses.region_words_loss(vision, targets, embedding, words, weight, scale=2.0)
    z = math.exp(2.0) + 2.0  # softmax over cos (1, 0, 0) x 2
    expected = (-math.log(math.exp(2.0) / z) - math.log(1.0 / z)) / 2
    assert value.item() == pytest.approx(expected, rel=1e-5)
    # a referent that points at both said words scores better than one that points at word 1
    both = vision.clone()
    both[0, 0, 0, :] = torch.tensor([1.0, 0.0, 1.0])
    wrong = vision.clone()
    wrong[0, 0, 0, :] = torch.tensor([0.0, 1.0, 0.0])
    scores = [
        losses.region_words_loss(v, targets, embedding, words, weight, 10.0) for v in (both, vision, wrong)
    ]
    assert scores[0] < 1.0 < scores[1] < scores[2]  # ~log 2, ~10 / 2, ~10
    inputs = vision.clone().requires_grad_()
    losses.region_words_loss(inputs, targets, embedding, words, weight).backward()
    assert inputs.grad.isfinite().all() and inputs.grad[1].abs().sum() == 0


def test_attention_mask_loss_reshape_order():
    """Rows are frame-major, then (y, x); targets expression-major. A frame-major stack of the masks
    reshaped as if expression-major (the reference's defect) must give another value."""
    torch.manual_seed(0)
    e, k, g = 2, 3, 2
    flat = torch.softmax(torch.randn(e, 1, 2, 2, k * g * g), -1) * 0.9  # (B, R, NL, NH, N)
    # Per expression, per frame: distinct masks, so any mix-up of axes changes the loss.
    truth = torch.zeros(e, k, g, g)
    truth[0, 0, 0, 0] = truth[0, 1, 0, 1] = truth[0, 2, 1, 0] = 1
    truth[1, 0, 1, 1] = truth[1, 1, :, 0] = truth[1, 2, 0, :] = 1
    frame_major = torch.stack([truth[:, kk] for kk in range(k)])  # (K, E, g, g): how masks arrive per frame
    right = rearrange(frame_major, "k e y x -> e k y x")[:, None]  # (E, R=1, K, g, g)
    wrong = frame_major.reshape(e, k, g, g)[:, None]
    weight = torch.ones(e, 1)
    expected = _aml_loop(flat, right, g)
    assert losses.attention_mask_loss(flat, right, weight).item() == pytest.approx(expected, rel=1e-5)
    rows7 = rearrange(flat, "b r nl nh (k y x) -> b r nl nh k y x", k=k, y=g)
    assert losses.attention_mask_loss(rows7, right, weight).item() == pytest.approx(expected, rel=1e-5)
    assert abs(losses.attention_mask_loss(flat, wrong, weight).item() - expected) > 1e-3
    # A transposed grid (x, y) is wrong too.
    swapped = rearrange(right, "b r k y x -> b r k x y")
    assert abs(losses.attention_mask_loss(flat, swapped, weight).item() - expected) > 1e-3


def test_attention_mask_loss_skips_unweighted_roles():
    rows = torch.full((1, 2, 1, 1, 1, 2, 2), 0.1)
    targets = torch.ones(1, 2, 1, 2, 2)
    only_actor = losses.attention_mask_loss(rows, targets, torch.tensor([[1.0, 0.0]]))
    assert only_actor.item() == pytest.approx(-math.log(0.1), rel=1e-6)


def test_grid_targets_nearest():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4, 4:] = True  # top-right quarter
    grid = losses.grid_targets(mask, 2)
    assert grid.tolist() == [[0.0, 1.0], [0.0, 0.0]]


# --- data ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from reviosa.data.synth import generate_split

    root = tmp_path_factory.mktemp("synth")
    generate_split(root, "train", 4, seed=0, size=64, frames=(6, 8))
    generate_split(root, "val", 1, seed=0, size=64, frames=(6, 8))
    return root


def tiny_cfg(root, *sets: str) -> TrainConfig:
    base = [f"data.root={root}", "data.split=train", "log.progress=false", "log.tensorboard=false"]
    return load_config("tiny", [*base, *sets])


@pytest.fixture(scope="module")
def tiny_parts(synth_root, tmp_path_factory):
    """A tiny model, its processor and the clip dataset (built once)."""
    from reviosa.data import InterRVOSDataset
    from train.data import ClipDataset
    from train.loop import _corpus
    from train.model import build_model

    cfg = tiny_cfg(synth_root)
    data = InterRVOSDataset(synth_root, "train")
    model = build_model(cfg, _corpus(data), tmp_path_factory.mktemp("run"))
    return cfg, model, ClipDataset(data, model.processor, model.config, cfg.data, cfg.seed)


def test_clip_items_answers_masks_and_order(tiny_parts):
    from train.data import ACTOR_AND_TARGET, ACTOR_ONLY, collate, grid_masks

    cfg, model, ds = tiny_parts
    proc = model.processor
    items = [ds[(0, i)] for i in range(len(ds))]
    assert len(items) == len(ds) and sum(len(it.keys) for it in items) == len(ds.dataset)
    for item in items[:6]:
        assert item.mllm_pixels.shape[0] == model.config.processor.num_keyframes
        assert item.sam_pixels.shape[0] == cfg.data.sam_frames
        assert set(item.sam_frames) <= set(item.keyframes)  # keyframes first
        for e, (video, exp) in enumerate(item.keys):
            sample = ds.dataset.sample(video, exp)
            answer = ACTOR_AND_TARGET if sample.caption_type == "unidirectional" else ACTOR_ONLY
            labels = [t for t in item.labels[e] if t != -100]
            assert labels == proc.answer_ids(answer)
            words = proc.expression_ids(sample.expression)
            assert item.words[e] == words and words
            prompt = item.sequences[e][: len(item.sequences[e]) - len(labels)]
            assert any(prompt[i : i + len(words)] == words for i in range(len(prompt)))
            assert item.role_weight[e].tolist() == [1.0, float(sample.caption_type == "unidirectional")]
            # grids hold this expression's own masks on its keyframes (expression-major)
            expected = grid_masks(sample.actor_masks(item.keyframes), model.config.grid)
            assert torch.equal(item.grids[e, 0], expected)
            if sample.has_target:
                assert torch.equal(item.grids[e, 1], grid_masks(sample.target_masks(item.keyframes), 4))
    again = ds[(0, 3)]
    assert again.keyframes == items[3].keyframes and torch.equal(again.masks, items[3].masks)
    batch = collate(items[:2], proc.ids.pad)
    assert batch.rows == len(items[0].keys) + len(items[1].keys)
    last = items[1].words[-1]  # rows are right-padded with -1
    assert batch.words[-1, : len(last)].tolist() == last and (batch.words[-1, len(last) :] == -1).all()
    mllm, sam = batch.row_pixels()
    assert mllm.shape[0] == batch.rows * model.config.processor.num_keyframes
    assert torch.equal(sam[-1], items[1].sam_pixels)


def test_clip_shared_encoders_match_per_row_pixels(tiny_parts):
    from train.data import collate

    _, model, ds = tiny_parts
    batch = collate([ds[(0, 0)], ds[(0, 1)]], model.processor.ids.pad)
    args = (batch.input_ids, batch.attention_mask, batch.labels)
    capture = {"layers": [1], "heads": [0, 1]}
    with torch.no_grad():
        per_row = model.forward_train(*args, *batch.row_pixels(), capture=capture)
        shared = model.forward_train(
            *args, batch.mllm_pixels, batch.sam_pixels, capture=capture, clip_index=batch.clip_of
        )
    torch.testing.assert_close(shared.mask_logits, per_row.mask_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.answer_logits, per_row.answer_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.attention.rows, per_row.attention.rows, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        present_only = model.forward_train(
            *args, batch.mllm_pixels, batch.sam_pixels, clip_index=batch.clip_of, decode_absent=False
        )
    on = shared.role_present
    assert (~on).any() and on.any()
    torch.testing.assert_close(present_only.mask_logits[on], per_row.mask_logits[on], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        present_only.object_logits[on], per_row.object_logits[on], atol=1e-5, rtol=1e-5
    )
    assert present_only.mask_logits[~on].abs().sum() == 0


def test_extra_splits_keep_clips_apart(synth_root, tmp_path, tiny_parts):
    import shutil

    from train.data import ClipDataset, Splits
    from train.loop import train_splits

    _, model, single = tiny_parts
    copy_root = tmp_path / "copy"
    shutil.copytree(synth_root / "train", copy_root / "train")  # same video ids, another split
    cfg = tiny_cfg(synth_root, f"data.extra=[{{root: {copy_root}, split: train}}]")
    splits = train_splits(cfg, tmp_path)
    assert isinstance(splits, Splits) and len(splits) == 2 * len(single.dataset)
    both = ClipDataset(splits, model.processor, model.config, cfg.data, cfg.seed)
    assert len(both.videos) == 2 * len(single.videos) and len(both) == 2 * len(single)


def test_schedule_shards_global_batches():
    from train.data import Schedule

    one = Schedule(items_per_epoch=20, batch_size=4, accumulation=1, world=1, seed=0)
    two = Schedule(items_per_epoch=20, batch_size=2, accumulation=1, world=2, seed=0)
    for step in range(7):  # crosses an epoch boundary (5 steps per epoch)
        (whole,) = one.micro_batches(step, 0)
        halves = [next(iter(two.micro_batches(step, r))) for r in range(2)]
        assert whole == halves[0] + halves[1]


# --- optimisation ------------------------------------------------------------------------------------


def test_few_steps_decrease_loss_on_one_batch(tiny_parts):
    from train.data import collate
    from train.model import prepare_trainables
    from train.objective import TrainStep

    cfg, model, ds = tiny_parts
    torch.manual_seed(0)
    batch = collate([ds[(0, 0)], ds[(0, 1)]], model.processor.ids.pad)
    import copy

    prepared = prepare_trainables(copy.deepcopy(model), cfg)
    step = TrainStep(prepared.wrapper, cfg.loss, nominal_rows=4, bf16=False)
    opt = torch.optim.AdamW([p for p in prepared.wrapper.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(8):
        loss, _terms = step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.7 * history[0]


def _losses(run_dir) -> dict[int, float]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def test_resume_reproduces_losses(synth_root, tmp_path):
    from train.loop import Trainer, latest_checkpoint

    sets = ["optim.max_steps=6", "checkpoint.every=3", "checkpoint.keep=1"]
    straight = tmp_path / "straight"
    Trainer(tiny_cfg(synth_root, *sets), straight).fit(stop_after=6)

    killed = tmp_path / "killed"
    Trainer(tiny_cfg(synth_root, *sets), killed).fit(stop_after=4)  # checkpoint at 3, then "killed" at 4
    # A checkpoint the kill interrupted half-way is a temporary folder: it must be ignored.
    (killed / "checkpoints" / ".step_000006.tmp").mkdir()
    assert latest_checkpoint(killed).name == "step_000004"
    # Resume from step 3 (the periodic checkpoint), as a kill right after it would.
    (killed / "checkpoints" / "latest").write_text("step_000003")
    Trainer(tiny_cfg(synth_root, *sets), killed, resume=True).fit(stop_after=6)

    a, b = _losses(straight), _losses(killed)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]  # step 4's first record was dropped, then recomputed
    for s in range(1, 7):
        assert b[s] == pytest.approx(a[s], abs=1e-6, rel=1e-6)


def test_gradient_checkpointing_gives_the_same_losses(synth_root, tmp_path):
    from train.loop import Trainer

    runs = [
        Trainer(tiny_cfg(synth_root, f"optim.gradient_checkpointing={flag}"), tmp_path / str(flag)).fit(
            stop_after=2
        )
        for flag in ("false", "true")
    ]
    for a, b in zip(*runs, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["aml"] == pytest.approx(
            a["aml"], rel=1e-5
        )


def test_lr_schedule_warmup_and_cosine():
    from train.loop import lr_factor

    total = 100
    assert lr_factor(0, total, 0.05, "cosine", 0.0) == pytest.approx(0.2)
    assert lr_factor(4, total, 0.05, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(5, total, 0.05, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(99, total, 0.05, "cosine", 0.1) == pytest.approx(0.1, abs=1e-3)


def test_stages_scale_groups_from_their_start():
    from train.config import Stage
    from train.loop import stage_scale

    stages = [Stage(start=0.0, lr_scale={"lora": 0.0}), Stage(start=0.5, lr_scale={"sam_decoder": 0.1})]
    assert stage_scale(stages, "lora", 0.2) == 0.0 and stage_scale(stages, "sam_decoder", 0.2) == 1.0
    assert stage_scale(stages, "lora", 0.5) == 1.0 and stage_scale(stages, "sam_decoder", 0.7) == 0.1
    with pytest.raises(ValueError, match="unknown groups"):
        load_config("tiny", ["stages=[{start: 0.0, lr_scale: {sam: 0.0}}]"])


def test_stage_with_zero_scale_freezes_a_group(synth_root, tmp_path):
    from train.loop import Trainer

    cfg = tiny_cfg(synth_root, "optim.max_steps=2", "stages=[{start: 0.0, lr_scale: {sam_decoder: 0.0}}]")
    trainer = Trainer(cfg, tmp_path / "run")
    decoder = trainer.model.sam.sam_mask_decoder
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    prompt_before = trainer.model.prompt_proj[0].weight.clone()
    trainer.fit(stop_after=2)
    assert all(torch.equal(before[k], v) for k, v in decoder.state_dict().items())
    assert not torch.equal(prompt_before, trainer.model.prompt_proj[0].weight)


def test_stage_loss_scale_reweights_terms_from_its_start(synth_root, tmp_path):
    from train.config import LOSS_TERMS
    from train.loop import Trainer, stage_loss_scale

    stages = "stages=[{start: 0.0, loss_scale: {text: 0.0, mask_ce: 3.0}}, {start: 0.5}]"
    cfg = tiny_cfg(synth_root, "optim.max_steps=2", stages)
    assert stage_loss_scale(cfg.stages, 0.4) == {"text": 0.0, "mask_ce": 3.0}
    assert stage_loss_scale(cfg.stages, 0.5) == {}
    first, second = Trainer(cfg, tmp_path / "run").fit()
    for record, scale in ((first, {"text": 0.0, "mask_ce": 3.0}), (second, {})):
        terms = [name for name in LOSS_TERMS if name in record]
        expected = sum(getattr(cfg.loss, n) * scale.get(n, 1.0) * record[n] for n in terms)
        assert record["text"] > 0 and record["loss"] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="unknown terms"):
        load_config("tiny", ["stages=[{start: 0.0, loss_scale: {seg: 0.0}}]"])


# --- DDP --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str, run_dir: str, sets: list[str]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from train.loop import Trainer

    try:
        Trainer(tiny_cfg(root, *sets), run_dir).fit(stop_after=3)
    finally:
        torch.distributed.destroy_process_group()


def _final_state(run_dir) -> dict[str, torch.Tensor]:
    from train.loop import latest_checkpoint

    return torch.load(latest_checkpoint(run_dir) / "state.pt", weights_only=False)["model"]


@pytest.mark.slow
def test_ddp_two_processes_match_one(synth_root, tmp_path):
    import torch.multiprocessing as mp

    # lr 1e-4: Adam divides by sqrt(v), so float noise in near-zero gradients (a different
    # summation order with batch 1 vs 2) moves a parameter by up to ~lr/100; 1e-3 would sit at 1e-5.
    common = ["optim.max_steps=3", "checkpoint.every=3", "optim.lr=1e-4"]
    single = tmp_path / "single"
    Trainer = pytest.importorskip("train.loop").Trainer
    Trainer(tiny_cfg(synth_root, *common, "optim.batch_size=2"), single).fit(stop_after=3)
    ddp = tmp_path / "ddp"
    # fork: the children inherit the imported modules (spawning re-imports torch, transformers and
    # sam2 in each, several seconds on a shared CPU).
    mp.start_processes(
        _ddp_worker,
        args=(2, _free_port(), str(synth_root), str(ddp), [*common, "optim.batch_size=1"]),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    # Same global batch of 2 clips; the per-micro-batch normalisation uses batch_size x E, so one
    # process with batch 2 and two with batch 1 each compute the same averaged gradient.
    a, b = _final_state(single), _final_state(ddp)
    assert set(a) == set(b)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst < 1e-5
    la, lb = _losses(single), _losses(ddp)
    for s in la:
        assert lb[s] == pytest.approx(la[s], rel=1e-5, abs=1e-6)


# --- what trains, export ---------------------------------------------------------------------------


def test_lora_trains_only_what_it_should(tiny_parts):
    import copy

    from train.model import group_of, prepare_trainables

    cfg, model, _ = tiny_parts
    cfg = apply_overrides(cfg, ["trainables.train_all=false", "trainables.lora={r: 4, alpha: 8}"])
    prepared = prepare_trainables(copy.deepcopy(model), cfg)
    trained = {n for n, p in prepared.wrapper.named_parameters() if p.requires_grad}
    groups = {group_of(n) for n in trained}
    assert groups == {"lora", "embeddings", "lm_head", "prompt_mlp", "sam_decoder"}
    assert all("language_model" in n for n in trained if "lora_" in n)  # never the vision tower
    assert any("mlp.down_proj.lora_A" in n for n in trained)  # all LLM projections, as Sa2VA
    frozen = {n for n, p in prepared.wrapper.named_parameters() if not p.requires_grad}
    assert any("vision_tower" in n for n in frozen) and not any("vision_tower" in n for n in trained)
    assert any("sam.image_encoder" in n for n in frozen) and not any("image_encoder" in n for n in trained)
    # Only the role tokens' embedding rows train (peft's trainable tokens), not the whole table.
    (delta,) = [p for n, p in prepared.wrapper.named_parameters() if "trainable_tokens_delta" in n]
    assert delta.shape[0] == 2


def test_export_merges_lora_and_reloads(synth_root, tmp_path):
    from reviosa.hub import from_pretrained
    from train.data import collate
    from train.loop import Trainer, export_run, load_run

    sets = [
        "optim.max_steps=2",
        "trainables.train_all=false",
        "trainables.lora={r: 4, alpha: 8, dropout: 0.0}",
    ]
    sets += ["optim.lr=0.01"]
    run = tmp_path / "run"
    trainer = Trainer(tiny_cfg(synth_root, *sets), run)
    trainer.fit(stop_after=2)
    lora_b = [p for n, p in trainer.prepared.wrapper.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # LoRA moved away from its zero init

    prepared = load_run(run)  # unmerged, as trained
    out = export_run(run, tmp_path / "model")
    merged = from_pretrained(out)
    batch = collate([trainer.dataset[(0, 0)]], merged.processor.ids.pad)
    mllm, sam = batch.row_pixels()
    args = (batch.input_ids, batch.attention_mask, batch.labels, mllm, sam)
    prepared.model.eval()
    with torch.no_grad():
        a = prepared.model.forward_train(*args)
        b = merged.forward_train(*args)
    torch.testing.assert_close(b.answer_logits, a.answer_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.mask_logits, a.mask_logits, atol=1e-4, rtol=1e-4)
    assert not any("lora" in k for k in merged.state_dict())


# --- config ------------------------------------------------------------------------------------------


def test_config_file_preset_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "preset: synth-cpu\noptim:\n  lr: 0.002\nloss:\n  grounding: 0.5\n"
        "model:\n  overrides:\n    text.hidden_size: 192\n"
    )
    cfg = load_config(str(path), ["attention.heads=[1, 3]", "data.two_tokens=false", "optim.eps=1e-6"])
    assert cfg.optim.eps == 1e-6  # YAML 1.1 reads "1e-6" as a string; float fields convert it
    assert cfg.optim.lr == 0.002 and cfg.optim.batch_size == 4  # the rest from the preset
    # model.overrides adds to the preset's geometry rather than replacing it
    assert cfg.model.overrides["text.hidden_size"] == 192 and cfg.model.overrides["sam.image_size"] == 128
    assert cfg.loss.grounding == 0.5 and cfg.attention.heads == (1, 3) and cfg.data.two_tokens is False
    cfg.save(tmp_path / "saved.json")
    assert TrainConfig.from_dict(json.loads((tmp_path / "saved.json").read_text())) == cfg
    with pytest.raises(ValueError, match="lrr"):
        apply_overrides(cfg, ["optim.lrr=1"])


def test_paper_presets_match_reference():
    cfg = load_config("paper-1b")
    o = cfg.optim
    assert (o.lr, o.weight_decay, o.betas, o.warmup_ratio, o.grad_clip) == (
        4e-5,
        0.05,
        (0.9, 0.999),
        0.05,
        1.0,
    )
    assert (o.batch_size, o.accumulation, o.epochs) == (2, 4, 10.0)
    assert (cfg.loss.mask_ce, cfg.loss.mask_dice, cfg.loss.aml, cfg.loss.text) == (2.0, 0.5, 1.0, 1.0)
    assert (cfg.trainables.lora.r, cfg.trainables.lora.alpha, cfg.trainables.lora.dropout) == (128, 256, 0.05)
    assert cfg.attention.layer == 22 and cfg.attention.heads == (5, 7, 10, 11)
    assert load_config("paper-4b").attention.heads == (13, 12, 14, 6)
    assert np.isclose(cfg.data.expressions_per_clip, 5) and cfg.data.sam_frames == 4


# --- layer-head selection --------------------------------------------------------------------------


def test_pick_top_layer_then_heads():
    from train.select_heads import pick

    mass = np.array([[0.1, 0.2, 0.3, 0.1], [0.5, 0.1, 0.4, 0.3], [0.9, 0.0, 0.0, 0.0]])
    assert pick(mass, 2) == (1, [0, 2])  # layer 2 has the top head but not the top mean


def _craft_vision_head(model, layer: int, head: int, strength: float = 4.0) -> None:
    """Make one head of one layer attend to the vision tokens from every query.

    Every vision token's embedding becomes the same vector v (the projector outputs its bias); the
    head's key reads v's direction and its query is a constant, both on the lowest RoPE frequency
    so that position hardly rotates them: vision keys score high, text keys near zero.
    """
    proj = model.mllm.model.multi_modal_projector.linear_2
    attn = model.language_model.layers[layer].self_attn
    d, hd = model.config.text.hidden_size, attn.head_dim
    group = attn.q_proj.out_features // attn.k_proj.out_features
    slot = hd // 2 - 1  # rotate_half pairs slot with slot + hd/2: the lowest frequency
    with torch.no_grad():
        v = torch.randn(d)
        proj.weight.zero_()
        proj.bias.copy_(v)
        attn.k_proj.weight[(head // group) * hd + slot] = strength * v / v.norm()
        attn.q_proj.weight[head * hd + slot] = 0.0
        attn.q_proj.bias[head * hd + slot] = strength


def test_select_heads_command_finds_crafted_head(tiny_parts, synth_root, tmp_path):
    import copy

    from reviosa.hub import save_pretrained
    from train.__main__ import main

    _, model, _ = tiny_parts
    crafted = copy.deepcopy(model)
    _craft_vision_head(crafted, layer=0, head=3)
    model_dir = save_pretrained(crafted, tmp_path / "model")
    out = tmp_path / "sel"
    code = main(
        ["select-heads", "--model", str(model_dir), "--data", str(synth_root), "--split", "train",
         "--samples", "6", "--top-k", "2", "--config", "tiny", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    selection = json.loads((out / "selection.json").read_text())
    assert selection["layer"] == 0 and selection["heads"][0] == 3
    assert selection["head_mass"][0][3] > 0.9  # the crafted head looks almost only at the video
    cfg = load_config(str(out / "train_config.json"))
    assert cfg.attention.layer == 0 and cfg.attention.heads[0] == 3
    assert (out / "figure6a_layers.png").stat().st_size > 0 and (out / "figure6b_heads.png").is_file()


# --- command line ------------------------------------------------------------------------------------


def test_cli_fit_eval_export(synth_root, tmp_path):
    from reviosa.hub import from_pretrained
    from train.__main__ import main

    run = tmp_path / "run"
    sets = [f"data.root={synth_root}", "optim.max_steps=2", "eval.at_end=true", "eval.clips=1"]
    sets += ["log.progress=false"]
    assert main(["fit", "--config", "tiny", *sum((["--set", s] for s in sets), []), "--out", str(run)]) == 0
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    (evaluation,) = [r["eval"] for r in records if "eval" in r]
    assert {"actor_JF", "rvos_JF", "token_accuracy"} <= set(evaluation)
    assert any(p.name.startswith("events") for p in (run / "tb").iterdir())
    assert from_pretrained(run / "model").config.name == "reviosa-tiny"
    # A second fit into the same folder without --resume would mix two runs.
    assert main(["fit", "--config", "tiny", "--out", str(run)]) == 2
    assert main(["export", str(run), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "model.safetensors").is_file()


def test_contrastive_grounding_prefers_the_referent_and_skips_absent_ones():
    import torch

    from train.losses import grounding_loss

    d, k, g = 8, 2, 3
    vision = torch.randn(1, k, g, g, d)
    target = torch.zeros(1, 2, k, g, g)
    target[0, 0, 1, 2, 0] = 1.0  # actor: one token on keyframe 1; target role: absent everywhere
    weight = torch.ones(1, 2)
    on_referent = vision[0, 1, 2, 0].view(1, 1, d).expand(1, 2, d)
    elsewhere = vision[0, 0, 0, 1].view(1, 1, d).expand(1, 2, d)
    good = grounding_loss(on_referent, vision, target, weight, scale=10.0, mode="contrastive")
    bad = grounding_loss(elsewhere, vision, target, weight, scale=10.0, mode="contrastive")
    assert good < bad
    # By hand: -log softmax(10 * cos)[referent], the absent target role adds nothing.
    cos = torch.nn.functional.cosine_similarity(vision.view(-1, d), vision[0, 1, 2, 0].view(1, d), dim=-1)
    expected = -torch.log_softmax(10 * cos, 0)[1 * g * g + 2 * g + 0]
    assert torch.isclose(good, expected, atol=1e-5)


def test_example_prompts_pool_sam_features_under_the_masks(tiny_parts):
    """Each (row, role) prompt is the cover-weighted mean of its clip's top-level SAM2 features over
    the decoded frames; an empty mask gives an invalid, zero prompt."""
    from train.data import collate

    _, model, ds = tiny_parts
    batch = collate([ds[(0, 0)], ds[(0, 1)]], model.processor.ids.pad)
    with torch.no_grad():
        feats = model.encode_frames(batch.sam_pixels)
        prompts, valid = model.example_prompts(feats, batch.masks, batch.clip_of)
    gy, gx = feats.feat_sizes[-1]
    top = feats.vision_feats[-1]  # (gy*gx, C*F, D)
    f = batch.sam_pixels.shape[1]
    b, r = batch.masks.shape[:2]
    for row in range(b):
        for role in range(r):
            m = batch.masks[row, role]  # (F, h, w)
            if m.sum() == 0:
                assert not valid[row, role] and prompts[row, role].abs().sum() == 0
                continue
            # by hand: each feature cell weighted by the fraction of it the mask covers
            cells = m.reshape(f, gy, m.shape[-2] // gy, gx, m.shape[-1] // gx).mean((2, 4))
            frames = top[:, batch.clip_of[row] * f : (batch.clip_of[row] + 1) * f]  # (gy*gx, F, D)
            w = cells.reshape(f, gy * gx).T  # (gy*gx, F)
            expected = (w[..., None] * frames).sum((0, 1)) / w.sum()
            assert valid[row, role]
            torch.testing.assert_close(prompts[row, role], expected, atol=1e-5, rtol=1e-4)
    assert valid.any() and (~valid).any()  # rows without a target role exist in the tiny split


def test_example_decoding_and_distill_terms_train(tiny_parts):
    """With loss.example / loss.distill the step decodes from pooled prompts, reports both terms,
    and a few steps pull the role prompts toward the pooled ones."""
    import copy

    from train.data import collate
    from train.losses import distill_loss
    from train.model import prepare_trainables
    from train.objective import TrainStep

    cfg, model, ds = tiny_parts
    torch.manual_seed(0)
    batch = collate([ds[(0, 0)], ds[(0, 1)]], model.processor.ids.pad)
    loss_cfg = copy.deepcopy(cfg.loss)
    loss_cfg.example, loss_cfg.distill, loss_cfg.hard_negative, loss_cfg.contrast = 1.0, 5.0, 1.0, 1.0
    loss_cfg.words = loss_cfg.role_pair = 1.0
    prepared = prepare_trainables(copy.deepcopy(model), cfg)
    step = TrainStep(prepared.wrapper, loss_cfg, nominal_rows=4, bf16=False)
    opt = torch.optim.AdamW([p for p in prepared.wrapper.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(8):
        loss, terms = step(batch)
        assert {"example", "distill", "hard_negative", "contrast", "role_pair", "words"} <= set(terms)
        assert terms["contrast"] > 0 and terms["words"] > 0 and terms["role_pair"].isfinite()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(terms["distill"].item())
    assert history[-1] < 0.85 * history[0]  # the pooled targets move too (the encoder trains)
    # by hand: relative squared error, targets detached, unweighted roles left out
    p = torch.tensor([[[1.0, 0.0], [5.0, 5.0]]], requires_grad=True)
    t = torch.tensor([[[0.0, 2.0], [1.0, 1.0]]], requires_grad=True)
    value = distill_loss(p, t, torch.tensor([[1.0, 0.0]]))
    assert torch.isclose(value, torch.tensor(5.0 / 4.0))
    value.backward()
    assert t.grad is None or t.grad.abs().sum() == 0


def test_all_objects_baseline_predicts_the_union_and_scores(synth_root, tmp_path):
    """The model-free reference: every expression gets the union of the clip's objects for both
    roles, and ``reviosa evaluate`` scores it (single-object expressions in multi-object clips
    lose, so it is well below 100 and above 0)."""
    from reviosa import rle
    from reviosa.data import InterRVOSDataset
    from reviosa.evaluation import evaluate_results
    from reviosa.results import load
    from train.probes.baselines import main

    out = tmp_path / "all.json"
    main(["all-objects", "--data", str(synth_root), "--split", "train", "--out", str(out)])
    results = load(out)
    data = InterRVOSDataset(synth_root, "train")
    sample = next(data.samples())
    entry = results["videos"][sample.video_id][sample.exp_id]
    union = np.zeros_like(sample.actor_masks())
    for s in data.samples():
        if s.video_id == sample.video_id:
            union |= s.actor_masks()
            if s.has_target:
                union |= s.target_masks()
    got = np.stack([rle.decode(m) for m in entry["actor"]])
    assert np.array_equal(got, union) and entry["target"] == entry["actor"]
    scores = evaluate_results(data, results, workers=1).to_json()
    assert 0 < scores["rvos"]["JF"] < 100


def test_ablation_table_reads_the_scores(tmp_path):
    from train.ablation_table import table

    def score(jf):
        return {k: {"J": jf, "F": jf, "JF": jf, "count": 1} for k in ("actor", "target", "rvos")}

    (tmp_path / "single_seg.json").write_text(json.dumps(score(10.0)))
    (tmp_path / "two_tokens_aml.json").write_text(json.dumps(score(42.25)))
    rows = table(tmp_path).splitlines()
    assert rows[2] == "| (i) single_seg | no | no | 10.0 | - | 10.0 |"
    assert "not run" in rows[3] and "not run" in rows[4]
    assert rows[5] == "| (iv) two_tokens_aml | yes | yes | 42.2 | 42.2 | 42.2 |"


def test_diagnose_reports_prompt_following(tiny_parts):
    """The diagnostics run on a tiny model and report what they claim: the truth's actor and target
    never overlap in the tiny split, and a zero prompt moves an untrained decoder's logits."""
    from train.probes.diagnose import diagnose

    _, model, ds = tiny_parts
    stats = diagnose(model, ds, count=2)
    # the overlap is measured on real actor/target pairs, not an empty list
    keys = [k for c in range(2) for k in ds[(0, c)].keys]
    assert any(ds.dataset.sample(*k).caption_type == "unidirectional" for k in keys)
    assert stats["truth_actor_vs_target_iou"] == 0.0
    for key in (
        "llm_iou",
        "example_iou",
        "llm_actor_vs_target_iou",
        "zeros_flipped_fraction",
        "attention_on_referent",
        "prompt_nearer_own_example",
    ):
        assert 0.0 <= stats[key] <= 1.0
    assert stats["zeros_max_logit_change"] > 0.0


def test_link_stats_by_hand():
    """Attention all on the referent scores 1 beside its token share; prompts equal to their
    examples have no error and are nearer their own; swapped prompts are nearer the other's."""
    from train.probes.diagnose import link_stats

    grids = torch.zeros(1, 2, 1, 2, 2)
    grids[0, 0, 0, 0, 0] = 1.0  # actor: one token of four
    grids[0, 1, 0, 1, :] = 1.0  # target: two tokens
    rows = torch.zeros(1, 2, 1, 2, 1, 2, 2)
    rows[0, 0, 0, :, 0, 0, 0] = 0.6  # all of the actor heads' vision attention on the actor
    rows[0, 1, 0, 0, 0, 0, 0] = 0.3  # target head 0: on the actor only (share 0)
    rows[0, 1, 0, 1, 0, 1, :] = 0.2  # target head 1: on the target (share 1)
    examples = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    stats = link_stats(rows, grids, examples.clone(), examples, valid)
    assert stats["attention_on_referent"] == pytest.approx([1.0, 0.5])
    assert stats["referent_token_share"] == pytest.approx([0.25, 0.5])
    assert stats["distill_relative_error"] == pytest.approx([0.0, 0.0])
    assert stats["prompt_nearer_own_example"] == [1.0, 1.0]
    assert stats["example_actor_target_prompt_cos"] == pytest.approx([0.0])
    swapped = link_stats(None, grids, examples.flip(1), examples, valid)
    assert "attention_on_referent" not in swapped
    assert swapped["prompt_nearer_own_example"] == [0.0, 0.0]
    assert swapped["distill_relative_error"] == pytest.approx([5.0, 1.25])  # |(0,2)-(1,0)|^2/1, /4


def test_example_grad_switches_the_encoders_path_through_the_pooled_prompts(tiny_parts):
    """The example decoding reaches SAM2's encoder through the image path always, and through the
    pooled prompts only with example_grad: the prompts are the same, the encoder's gradient not."""
    from train.data import collate

    _, model, ds = tiny_parts
    b = collate([ds[(0, 0)]], model.processor.ids.pad)
    encoder = [p for p in model.sam.image_encoder.parameters() if p.requires_grad]
    grads, prompts = [], []
    for example_grad in (False, True):
        model.zero_grad(set_to_none=True)
        out = model.forward_train(
            b.input_ids, b.attention_mask, b.labels, b.mllm_pixels, b.sam_pixels,
            clip_index=b.clip_of, example_masks=b.masks, example_grad=example_grad,
        )  # fmt: skip
        out.example.mask_logits.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in encoder]))
        prompts.append(out.example.prompts.detach())
    model.zero_grad(set_to_none=True)
    assert torch.equal(prompts[0], prompts[1])
    assert grads[0].abs().sum() > 0 and not torch.allclose(grads[0], grads[1])


def test_sample_clicks_land_inside_their_masks():
    from train.probes.probe_sam import sample_clicks

    masks = torch.zeros(1, 2, 2, 8, 8)
    masks[0, 0, 0, 3, 5] = 1.0  # one pixel: the click must be its centre
    masks[0, 0, 1, 6:, :2] = 1.0
    masks[0, 1, 0] = 1.0  # role 1 frame 1 stays empty
    coords, labels = sample_clicks(masks, 32, torch.Generator().manual_seed(0))
    assert coords.shape == (1, 2, 2, 1, 2) and labels.shape == (1, 2, 2, 1)
    assert coords[0, 0, 0, 0].tolist() == [5.5 * 4, 3.5 * 4]
    x, y = coords[0, 0, 1, 0].tolist()
    assert masks[0, 0, 1, int(y // 4), int(x // 4)] == 1.0
    assert labels[..., 0].tolist() == [[[1, 1], [1, -1]]]


def test_clicks_steer_the_decoder_per_role_and_frame(tiny_parts):
    """Clicks reach the (row, role, frame) they belong to: moving one role's click on one frame
    changes that slot's logits and no other."""
    from train.data import collate

    _, model, ds = tiny_parts
    batch = collate([ds[(0, 0)]], model.processor.ids.pad)
    b, r, f = batch.masks.shape[:3]
    size = model.config.sam.image_size
    coords = torch.full((b, r, f, 1, 2), size / 4)
    labels = torch.ones(b, r, f, 1, dtype=torch.long)
    prompts = torch.zeros(b, r, model.config.prompt_dim)
    with torch.no_grad():
        feats = model.encode_frames(batch.sam_pixels)
        base, _ = model.decode_encoded(feats, f, prompts, batch.clip_of, points=(coords, labels))
        moved = coords.clone()
        moved[0, 1, f - 1] = size * 3 / 4
        out, _ = model.decode_encoded(feats, f, prompts, batch.clip_of, points=(moved, labels))
    changed = (out - base).abs().amax((-2, -1))  # (B, R, F)
    assert changed[0, 1, f - 1] > 1e-4
    changed[0, 1, f - 1] = 0
    assert torch.all(changed < 1e-6)


def test_probe_sam_trains_a_fresh_sam_alone(tiny_parts):
    from train.probes.probe_sam import ProbeSettings, probe

    _, model, ds = tiny_parts
    llm_before = model.prompt_proj[0].weight.clone()
    old_sam = model.sam
    try:
        for prompts in ("example", "clicks"):
            settings = ProbeSettings(prompts=prompts, steps=2, every=1, clips=1, batch_size=1)
            records = probe(model, ds, ds, settings, report=lambda _line: None)
            assert [r["step"] for r in records] == [1, 2]
            for r in records:
                assert np.isfinite(r["loss"]) and 0.0 <= r["iou"] <= 1.0
                assert 0.0 <= r["actor_vs_target_iou"] <= 1.0
        assert model.sam is not old_sam  # re-initialised, the shared fixture's SAM2 untouched
        assert torch.equal(llm_before, model.prompt_proj[0].weight)
    finally:
        model.sam = old_sam


def test_probe_words_named_and_fit():
    from reviosa.data.synth_render import COLOURS, SHAPES
    from train.probes.probe_words import fit_probe, named

    assert (
        named("the two crosses", SHAPES) == "cross"
        and named("Red square hitting a blue circle", COLOURS) == "red"
    )
    assert named("object chasing another object", SHAPES) is None
    gen = torch.Generator().manual_seed(0)
    y, y_val = torch.arange(60) % 3, torch.arange(30) % 3
    centres = 4 * torch.eye(3, 8)
    x = centres[y] + 0.5 * torch.randn(60, 8, generator=gen)
    x_val = centres[y_val] + 0.5 * torch.randn(30, 8, generator=gen)
    assert fit_probe(x, y, x_val, y_val, 3) == (1.0, 1.0)
    shuffled = y[torch.randperm(60, generator=gen)]
    _, val = fit_probe(torch.randn(60, 8, generator=gen), shuffled, x_val, y_val, 3)
    assert val < 0.7  # features that do not carry the label read near chance (1/3)


def test_probe_words_reads_the_referent_at_every_site(tiny_parts):
    """The probe's input features are the projector's outputs under the referent's grid cells; its
    example and prompt features are the model's example and [SEG_ACT] prompts for that row."""
    from train.data import collate
    from train.probes.probe_words import SITES, referent_features

    _, model, ds = tiny_parts
    rows = referent_features(model, ds, len(ds))
    g, expected = model.config.grid, []
    for c in range(len(ds)):
        batch = collate([ds[(0, c)]], model.processor.ids.pad)
        with torch.no_grad():
            embeds = model.embed(batch.input_ids[:1], batch.mllm_pixels)[0]  # (L, D)
            out = model.forward_train(
                batch.input_ids, batch.attention_mask, batch.labels, batch.mllm_pixels,
                batch.sam_pixels, clip_index=batch.clip_of, example_masks=batch.masks,
            )  # fmt: skip
        slots = batch.input_ids[0] == model.processor.ids.img_context
        tokens = embeds[slots].reshape(-1, g, g, embeds.shape[-1])  # (K, g, g, D)
        for e, (video, exp) in enumerate(batch.keys):
            cells = batch.grids[e, 0] > 0.5  # (K, g, g)
            if ds.dataset.sample(video, exp).caption_type == "single" and cells.any():
                expected.append((tokens[cells].mean(0), out.example.prompts[e, 0], out.role_prompts[e, 0]))
    assert len(rows) == len(expected) > 0
    for (_, features), (first, example, prompt) in zip(rows, expected, strict=True):
        assert set(features) == set(SITES)
        torch.testing.assert_close(features["input"], first)
        last = features["last"]
        assert last.shape == first.shape and not torch.allclose(last, first)
        torch.testing.assert_close(features["example"], example)
        torch.testing.assert_close(features["prompt"], prompt)
    # Referents of different masks pool different SAM2 features.
    assert not torch.allclose(rows[0][1]["example"], rows[-1][1]["example"])


def test_probe_groups_reads_each_site_on_its_own():
    """A site that carries the named word reads it on validation; one that does not reads near chance."""
    from reviosa.data.synth_render import SHAPES
    from train.probes.probe_words import SITES, probe_groups

    gen = torch.Generator().manual_seed(0)
    centres = 4 * torch.eye(len(SHAPES), 16)

    def rows(n):
        out = []
        for i in range(n):
            label = i % len(SHAPES)
            features = {site: torch.randn(16, generator=gen) for site in SITES}
            features["example"] = features["example"] + centres[label]
            out.append((f"the {SHAPES[label]} moving left", features))
        return out + [("object chasing another object", {site: torch.zeros(16) for site in SITES})]

    table = probe_groups(rows(100), rows(50), {"shape": SHAPES, "colour": ("red", "blue")})
    shape = table["shape"]
    assert (shape["train_n"], shape["val_n"], shape["chance"]) == (100, 50, 0.2)
    assert shape["example"][1] >= 0.9
    assert all(shape[site][1] < 0.5 for site in SITES if site != "example")
    assert "skipped" in table["colour"]  # no expression names a colour


def test_random_scene_labels_what_it_shows():
    """Each labelled object is drawn in its labelled colour, apart from the others, and shows at
    least min_visible of its area."""
    from reviosa.data.synth_render import COLOURS, TEXTURES
    from train.stages.clips import Backgrounds, full_area
    from train.stages.vision_tower import ATTRIBUTES, PretrainConfig, random_scene

    cfg, rng = PretrainConfig(), np.random.default_rng(3)
    backgrounds = Backgrounds(rng, 128, count=4)
    plain, seen = TEXTURES.index("plain"), 0
    for _ in range(20):
        scene = random_scene(rng, backgrounds, cfg)
        n = len(scene.masks)
        assert scene.frame.shape == (128, 128, 3) and scene.masks.shape == (n, 128, 128)
        assert all(len(labels) == n for labels in scene.labels.values())
        assert (scene.masks.sum(0) <= 1).all()  # one object per pixel
        for k in range(n):
            if scene.labels["texture"][k] == plain:
                colour = ATTRIBUTES["colour"][scene.labels["colour"][k]]
                pixels = scene.frame[scene.masks[k]].astype(int)
                assert np.abs(pixels - np.array(COLOURS[colour])).max() <= 1
                seen += 1
    assert seen > 5
    assert full_area(_look("circle", 10.0)) == pytest.approx(np.pi * 100, rel=0.05)
    assert full_area(_look("square", 10.0)) == pytest.approx(1.7**2 * 100, rel=0.1)


def _look(shape, radius):
    from reviosa.data.synth_render import Appearance

    return Appearance("red", shape, "big", "plain", radius)


def test_vision_tower_trains_the_tower_and_loads_strictly(tiny_parts, synth_root, tmp_path):
    import copy

    from safetensors.torch import load_file, save_file

    from reviosa.data import InterRVOSDataset
    from train.loop import _corpus
    from train.model import build_model
    from train.stages.vision_tower import ATTRIBUTES, PretrainConfig, pretrain, save_vision, vision_parts

    _, base, _ = tiny_parts
    model = copy.deepcopy(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = PretrainConfig(steps=60, batch=8, lr=1e-2, val_scenes=32, every=60)
    records = pretrain(model, cfg, report=lambda _line: None)
    assert [r["step"] for r in records] == [60]
    # Colour, the easiest attribute, is read far above chance (1/7) after 60 steps.
    assert records[0]["colour"] > 0.35 and all(0 <= records[0][a] <= 1 for a in ATTRIBUTES)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(
        k.startswith(("mllm.model.vision_tower", "mllm.model.multi_modal_projector")) for k in changed
    )
    # requires_grad as it was before (the tiny model trains everything)
    assert all(p.requires_grad for part in vision_parts(model).values() for p in part.parameters())

    path = tmp_path / "vision.safetensors"
    save_vision(model, path)
    data = InterRVOSDataset(synth_root, "train")
    loaded = build_model(tiny_cfg(synth_root, f"model.vision_init={path}"), _corpus(data), tmp_path / "run")
    for name, part in vision_parts(loaded).items():
        for key, value in part.state_dict().items():
            torch.testing.assert_close(value, vision_parts(model)[name].state_dict()[key])

    tensors = load_file(str(path))
    broken = {k: v for k, v in tensors.items() if not k.endswith("bias")}
    for bad, why in (
        (broken, "does not fit"),
        ({**tensors, "sam.extra": torch.zeros(1)}, "outside the vision tower"),
        ({k: torch.zeros(3, *v.shape[1:]) if v.ndim else v for k, v in tensors.items()}, "does not fit"),
    ):
        save_file(bad, str(tmp_path / "bad.safetensors"))
        with pytest.raises(ValueError, match=why):
            build_model(
                tiny_cfg(synth_root, f"model.vision_init={tmp_path / 'bad.safetensors'}"),
                _corpus(data),
                tmp_path / "r2",
            )
    with pytest.raises(FileNotFoundError, match="vision_tower"):
        build_model(
            tiny_cfg(synth_root, f"model.vision_init={tmp_path / 'none'}"), _corpus(data), tmp_path / "r3"
        )
    with pytest.raises(ValueError, match="from-scratch"):
        tiny_cfg(synth_root, "model.kind=pretrained", "model.path=x", f"model.vision_init={path}").validate()


def test_probe_words_breakdown_counts_every_expression(synth_root, tmp_path, capsys):
    from reviosa.data import InterRVOSDataset
    from reviosa.results import load
    from train.probes.baselines import main as baseline
    from train.probes.probe_words import DEFAULT_GROUPS, breakdown, main

    out = tmp_path / "all.json"
    baseline(["all-objects", "--data", str(synth_root), "--split", "train", "--out", str(out)])
    data = InterRVOSDataset(synth_root, "train")
    table = breakdown(data, load(out), DEFAULT_GROUPS)
    samples = list(data.samples())
    assert sum(n for (_, _, bench), (_, n) in table.items() if bench == "rvos") == len(samples)
    assert {level for _, level, _ in table} <= {"colour", "shape", "neither"}
    assert all(0 <= jf <= 100 for jf, _ in table.values())
    main(["breakdown", "--gt", str(synth_root), "--split", "train", "--pred", str(out)])
    assert "rvos" in capsys.readouterr().out


def test_probe_words_roles_tells_right_roles_from_swapped_ones(synth_root, tmp_path, capsys):
    """Ground-truth tracks put every role on its own referent; the same tracks swapped put none."""
    from reviosa.data import InterRVOSDataset
    from reviosa.results import save, track_entry
    from train.probes.probe_words import DEFAULT_GROUPS, main, role_choices

    data = InterRVOSDataset(synth_root, "train")
    right, swapped = {"videos": {}}, {"videos": {}}
    for sample in data.samples():
        actor, target = sample.actor_masks(), sample.target_masks()
        if target is None:
            continue
        right["videos"].setdefault(sample.video_id, {})[sample.exp_id] = track_entry(actor, target, "")
        swapped["videos"].setdefault(sample.video_id, {})[sample.exp_id] = track_entry(target, actor, "")
    good, bad = role_choices(data, right, DEFAULT_GROUPS), role_choices(data, swapped, DEFAULT_GROUPS)
    assert sum(c["n"] for c in good.values()) == sum(len(v) for v in right["videos"].values()) > 0
    assert all(c["actor"] == c["target"] == 1.0 and c["overlap"] < 0.2 for c in good.values())
    assert all(c["actor"] == c["target"] == 0.0 for c in bad.values())
    main(
        [
            "roles",
            "--gt",
            str(synth_root),
            "--split",
            "train",
            "--pred",
            str(save(right, tmp_path / "r.json")),
        ]
    )
    assert "actor on its own" in capsys.readouterr().out


def test_words_term_trains_the_vision_side_only(tiny_parts):
    """loss.words reaches the vision tower and the projector, never the embedding it scores against."""
    import copy

    from train.config import LossConfig
    from train.data import collate
    from train.model import prepare_trainables
    from train.objective import TrainStep

    cfg, model, ds = tiny_parts
    batch = collate([ds[(0, 0)], ds[(0, 1)]], model.processor.ids.pad)
    loss_cfg = LossConfig(mask_ce=0.0, mask_dice=0.0, aml=0.0, text=0.0, words=1.0)  # words alone
    prepared = prepare_trainables(copy.deepcopy(model), cfg)
    step = TrainStep(prepared.wrapper, loss_cfg, nominal_rows=4, bf16=False)
    loss, terms = step(batch)
    assert loss.item() == pytest.approx(terms["words"].item() / 4, rel=1e-5)
    loss.backward()
    inner = step.model
    embedding = inner.mllm.get_input_embeddings().weight
    assert embedding.grad is None or embedding.grad.abs().sum() == 0
    vision = [p.grad for p in inner.mllm.model.vision_tower.parameters() if p.requires_grad]
    assert vision and any(g is not None and g.abs().sum() > 0 for g in vision)


def test_vision_tower_position_term_teaches_tokens_their_cell(tiny_parts, tmp_path):
    """With ``position``, every token's own row and column are read from it (the "cell" score, far
    above chance after a few steps), and a resumed run reads the position heads back."""
    import copy

    from train.stages.vision_tower import STATE, PretrainConfig, pretrain

    _, base, _ = tiny_parts
    cfg = PretrainConfig(steps=120, batch=4, lr=1e-2, val_scenes=8, every=60, position=1.0)
    records = pretrain(copy.deepcopy(base), cfg, report=lambda _line: None, state_path=tmp_path / STATE)
    assert records[-1]["cell"] > 0.5, records  # chance 1 / g^2 = 0.06 here; 0.95 measured
    assert torch.load(tmp_path / STATE, weights_only=False)["places"]
    plain = pretrain(
        copy.deepcopy(base), PretrainConfig(steps=2, batch=4, val_scenes=4, every=2), report=lambda _l: None
    )
    assert "cell" not in plain[-1]
    longer = PretrainConfig(**{**cfg.__dict__, "steps": 121})
    resumed = pretrain(copy.deepcopy(base), longer, report=lambda _line: None, state_path=tmp_path / STATE)
    assert [r["step"] for r in resumed] == [60, 120, 121]


def test_probe_words_tower_trains_the_vision_side_alone(tiny_parts):
    import copy

    from train.data import coverage
    from train.probes.probe_words import DEFAULT_GROUPS, tower_examples, train_tower

    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, :2, :1] = True  # half of the top-left cell's 4 pixels
    mask[0, 2:, 2:] = True  # all of the bottom-right cell
    assert coverage(mask, 2).tolist() == [[[0.5, 0.0], [0.0, 1.0]]]
    _, model, ds = tiny_parts
    model = copy.deepcopy(model)
    words = DEFAULT_GROUPS["colour"]
    examples = tower_examples(model, ds, len(ds), words)
    assert examples, "the tiny split has single-object expressions that name a colour"
    for _, cover, labels in examples:
        assert cover.shape[0] == len(labels) and (cover.flatten(1).sum(1) > 0).all()
    tower = [p.detach().clone() for p in model.mllm.model.vision_tower.parameters()]
    llm = [p.detach().clone() for p in model.language_model.parameters()]
    records = train_tower(model, examples, examples, len(words), steps=3, clips_per_step=2, every=2)
    assert [r["step"] for r in records] == [2, 3]
    assert all(0.0 <= r["val_accuracy"] <= 1.0 and r["loss"] > 0 for r in records)
    after = list(model.mllm.model.vision_tower.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, tower, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(model.language_model.parameters(), llm, strict=True))
