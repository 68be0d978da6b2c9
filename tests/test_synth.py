"""The synthetic interaction world: determinism, splits, the InterRVOS layout, roles visible over time,
unambiguous expressions."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from reviosa.data import CAPTION_TYPES, InterRVOSDataset
from reviosa.data.synth import WorldConfig, clip_rng, expression_corpus, generate_split, make_clip
from reviosa.data.synth_motion import interaction_paths

SMALL = WorldConfig(size=96, frames=(16, 20))


def test_clips_are_deterministic_and_splits_differ():
    a, _ = make_clip(7, "train", 3, SMALL)
    b, _ = make_clip(7, "train", 3, SMALL)
    c, _ = make_clip(7, "val", 3, SMALL)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert [e.text for e in a.expressions] == [e.text for e in b.expressions]
    assert a.video_id != c.video_id
    assert a.frames.shape != c.frames.shape or not np.array_equal(a.frames, c.frames)
    # Same --seed, different split: different random streams.
    assert clip_rng(0, "train", 0).integers(1 << 62) != clip_rng(0, "val", 0).integers(1 << 62)


def test_generated_splits_load(tmp_path):
    for split in ("train", "val", "test"):
        summary = generate_split(tmp_path, split, clips=2, seed=0, size=96, frames=(16, 16))
        assert summary["clips"] == 2 and summary["frames"]["total"] == 32
        saved = json.loads((tmp_path / split / "summary.json").read_text())
        assert saved == summary
        ds = InterRVOSDataset(tmp_path, split=split)
        ds.validate()
        assert len(ds) == summary["expressions"] and len(ds.video_ids) == 2
        assert sum(summary["expressions_per_caption_type"].values()) == len(ds)
        s = next(ds.samples())
        assert s.size == (96, 96) and s.load_frames([0]).shape == (1, 96, 96, 3)
    ids = [set(InterRVOSDataset(tmp_path, split=s).video_ids) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
    with pytest.raises(FileExistsError):
        generate_split(tmp_path, "train", clips=1, seed=0, size=96)


def test_expressions_are_unique_and_grounded():
    types = set()
    for index in range(12):
        record, _ = make_clip(1, "train", index, SMALL)
        texts = [e.text for e in record.expressions]
        assert len(texts) == len(set(texts))
        masks = {o.obj_id: o.masks for o in record.objects}
        for exp in record.expressions:
            types.add(exp.caption_type)
            assert not set(exp.subject) & set(exp.object)
            for obj in exp.subject + exp.object:
                visible = masks[obj].any(axis=(1, 2))
                assert visible.mean() >= 0.7, (exp.text, obj)
            if exp.caption_type == "unidirectional":
                assert len(exp.subject) == 1 and len(exp.object) == 1
            if exp.caption_type == "bidirectional":
                assert len(exp.subject) == 2 and not exp.object
            if exp.caption_type == "multi":
                assert len(exp.subject) >= 2
    assert types == set(CAPTION_TYPES)


def test_active_and_passive_swap_roles():
    for index in range(12):
        record, _ = make_clip(2, "train", index, SMALL)
        uni = [e for e in record.expressions if e.caption_type == "unidirectional"]
        for e in uni:
            if " by " in e.text:  # passive: the grammatical subject is the one acted upon
                active = [a for a in uni if " by " not in a.text and a.subject == e.object]
                assert all(a.object == e.subject for a in active)


@pytest.mark.parametrize("kind", ["push", "hit"])
def test_pusher_moves_first_and_target_moves_after_contact(kind):
    rng = np.random.default_rng(0)
    actor, target = interaction_paths(kind, rng, 32, 128, contact=20.0)
    actor_speed = np.linalg.norm(np.diff(actor, axis=0), axis=1)  # (T-1,)
    target_speed = np.linalg.norm(np.diff(target, axis=0), axis=1)
    first_target_move = int(np.argmax(target_speed > 1e-6))
    assert first_target_move > 0 and np.all(actor_speed[:first_target_move] > 0)
    distance = np.linalg.norm(actor - target, axis=1)
    assert distance[first_target_move] == pytest.approx(20.0)  # it moves once touched
    assert np.all(distance >= 20.0 - 1e-6)  # never passes through


def test_follower_retraces_the_leader():
    rng = np.random.default_rng(0)
    follower, leader = interaction_paths("follow", rng, 40, 128, contact=15.0)
    lag = next(k for k in range(1, 40) if np.allclose(follower[k:], leader[:-k]))
    assert np.linalg.norm(follower[0] - leader[0]) >= 15.0 and lag > 0


def test_chaser_moves_before_the_chased():
    rng = np.random.default_rng(3)
    chaser, chased = interaction_paths("chase", rng, 30, 128, contact=15.0)
    assert np.linalg.norm(chaser[1] - chaser[0]) > 0 and np.allclose(chased[1], chased[0])
    gap = np.linalg.norm(chaser - chased, axis=1)
    assert gap[-1] < gap[0] and gap.min() >= 15.0


def test_lookalikes_are_told_apart_by_motion():
    found = False
    for index in range(40):
        record, info = make_clip(4, "train", index, SMALL)
        if not info["lookalike"]:
            continue
        for e in record.expressions:
            if e.caption_type == "single" and re.search(r"moving|shaking|bouncing|still", e.text):
                found = True
    assert found


def test_corpus_is_deterministic_and_covers_the_words_used():
    corpus = expression_corpus()
    assert corpus == expression_corpus() and corpus == sorted(set(corpus))
    vocabulary = {w for phrase in corpus for w in phrase.split()}
    for index in range(10):
        record, _ = make_clip(5, "val", index, SMALL)
        for exp in record.expressions:
            assert set(exp.text.split()) <= vocabulary, exp.text


def test_synth_cli(tmp_path, capsys):
    from reviosa.cli import main

    code = main(
        [
            "synth",
            "--out",
            str(tmp_path),
            "--split",
            "val",
            "--clips",
            "2",
            "--seed",
            "3",
            "--min-frames",
            "16",
            "--max-frames",
            "16",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "expressions per caption type" in out
    assert (tmp_path / "val" / "summary.json").is_file() and len(InterRVOSDataset(tmp_path / "val")) > 0
