"""Evaluation protocol: hand-computed J / F cases, the fast path against the dense reference, and
whole-dataset scoring (ground truth against itself, a shifted copy, missing predictions)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from reviosa import rle
from reviosa.data import ExpressionSpec, InterRVOSDataset, ObjectTrack, VideoRecord, write_dataset
from reviosa.evaluation import (
    boundary_map,
    boundary_points,
    boundary_radius,
    disk,
    evaluate_results,
    f_measure,
    f_measure_dense,
    frame_scores,
    iou,
    score_track,
)


def _pixel(shape, y, x):
    mask = np.zeros(shape, dtype=bool)
    mask[y, x] = True
    return mask


def test_both_empty_scores_one():
    empty = np.zeros((20, 30), dtype=bool)
    assert iou(empty, empty) == 1.0
    assert f_measure(empty, empty) == 1.0
    assert frame_scores(empty, empty, 1) == (1.0, 1.0)


@pytest.mark.parametrize("gt_empty", [True, False])
def test_one_empty_scores_zero(gt_empty):
    empty, full = np.zeros((20, 30), dtype=bool), np.zeros((20, 30), dtype=bool)
    full[5:9, 4:12] = True
    gt, pred = (empty, full) if gt_empty else (full, empty)
    assert iou(gt, pred) == 0.0
    assert f_measure(gt, pred) == 0.0
    assert frame_scores(gt, pred, 1) == (0.0, 0.0)


def test_one_pixel_boundary_is_its_2x2_up_left_block():
    # A pixel differs from the background to its east/south/south-east: itself, and the pixels whose
    # east, south or south-east neighbour it is.
    got = np.argwhere(boundary_map(_pixel((20, 20), 5, 5))).tolist()
    assert got == [[4, 4], [4, 5], [5, 4], [5, 5]]


def test_one_pixel_objects():
    shape = (20, 20)  # radius ceil(0.008 * 28.3) = 1
    gt = _pixel(shape, 5, 5)
    assert frame_scores(gt, gt, boundary_radius(*shape)) == (1.0, 1.0)
    # One pixel to the right: no overlap, but every boundary pixel is within 1 of the other's.
    j, f = frame_scores(gt, _pixel(shape, 5, 6), 1)
    assert (j, f) == (0.0, 1.0)
    # Three to the right: nearest boundary pixels are 2 apart, beyond the radius.
    assert frame_scores(gt, _pixel(shape, 5, 8), 1) == (0.0, 0.0)


def test_radius_values():
    assert boundary_radius(480, 854) == 8  # ceil(7.84)
    assert boundary_radius(128, 128) == 2  # ceil(1.45)
    assert boundary_radius(100, 100) == 2  # ceil(1.13)
    assert disk(2).astype(int).tolist() == [
        [0, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 0, 0],
    ]


@pytest.mark.parametrize("shape", [(100, 100), (480, 854)])
def test_boundary_tolerance_at_the_exact_radius(shape):
    # gt pixel at column c has boundary columns {c-1, c}; a pred pixel d columns right has {c+d-1, c+d}.
    # d = r: every boundary pixel within r of the other's -> F = 1. d = r + 1: half of them -> F = 0.5.
    r = boundary_radius(*shape)
    gt = _pixel(shape, 50, 50)
    assert f_measure(gt, _pixel(shape, 50, 50 + r)) == 1.0
    assert f_measure(gt, _pixel(shape, 50, 50 + r + 1)) == pytest.approx(0.5)
    assert f_measure_dense(gt, _pixel(shape, 50, 50 + r + 1)) == pytest.approx(0.5)
    # The same vertically.
    assert f_measure(gt, _pixel(shape, 50 + r + 1, 50)) == pytest.approx(0.5)


def test_non_square_frame_boundary_follows_davis_edge_rules():
    seg = np.zeros((3, 5), dtype=bool)
    seg[1:, 1:4] = True  # touches the bottom edge
    expected = [
        [1, 1, 1, 1, 0],
        [1, 0, 0, 1, 0],
        [1, 0, 0, 1, 0],  # last row: only the east neighbour counts
    ]
    assert boundary_map(seg).astype(int).tolist() == expected
    assert boundary_points(seg).tolist() == np.argwhere(np.array(expected)).tolist()
    # A mask filling the frame has no boundary at all under these rules: F against itself is 1.
    full = np.ones((3, 5), dtype=bool)
    assert not boundary_map(full).any()
    assert frame_scores(full, full, 1) == (1.0, 1.0)


def test_iou_hand_computed():
    gt = np.zeros((4, 6), dtype=bool)
    pred = np.zeros((4, 6), dtype=bool)
    gt[0:2, 0:3] = True  # 6 pixels
    pred[1:3, 0:3] = True  # 6 pixels, 3 shared
    assert iou(gt, pred) == pytest.approx(3 / 9)
    assert frame_scores(gt, pred, 1)[0] == pytest.approx(3 / 9)


def test_fast_path_equals_dense_reference():
    rng = np.random.default_rng(0)
    for _ in range(400):
        h, w = rng.integers(3, 40, size=2)
        masks = []
        for _ in range(2):
            m = np.zeros((h, w), dtype=bool)
            kind = rng.integers(0, 4)
            if kind == 0:
                m = rng.random((h, w)) < 0.3
            elif kind == 1:
                y, x = rng.integers(0, h), rng.integers(0, w)
                m[y : y + rng.integers(1, h + 1), x : x + rng.integers(1, w + 1)] = True
            elif kind == 2:
                m[rng.integers(0, h), rng.integers(0, w)] = True
            masks.append(m)
        gt, pred = masks
        r = int(rng.integers(1, 5))
        assert boundary_points(gt).tolist() == np.argwhere(boundary_map(gt)).tolist()
        j, f = frame_scores(gt, pred, r)
        assert j == pytest.approx(float(iou(gt, pred)), abs=1e-12)
        assert f == pytest.approx(f_measure_dense(gt, pred, r), abs=1e-12)


def test_score_track_means_over_all_frames():
    gt = np.zeros((2, 10, 12), dtype=bool)
    gt[0, 2:5, 2:5] = True  # frame 1: both empty -> 1
    j, f = score_track(gt, np.zeros_like(gt))
    assert j.tolist() == [0.0, 1.0] and f.tolist() == [0.0, 1.0]


# --------------------------------------------------------------------------------------------- datasets


def _square(shape, y, x, side):
    m = np.zeros(shape, dtype=bool)
    m[y : y + side, x : x + side] = True
    return m


@pytest.fixture()
def tiny_dataset(tmp_path):
    """One 40x70 video (non-square), 2 frames, 3 objects; the target (object 2) shows in frame 0 only."""
    shape = (40, 70)
    a = np.stack([_square(shape, 5, 5, 8), _square(shape, 6, 8, 8)])
    b = np.stack([_square(shape, 20, 30, 6), _square(shape, 20, 34, 6)])
    c = np.stack([_square(shape, 25, 50, 5), np.zeros(shape, dtype=bool)])
    record = VideoRecord(
        "vid",
        np.zeros((2, *shape, 3), dtype=np.uint8),
        [ObjectTrack(0, a), ObjectTrack(1, b), ObjectTrack(2, c)],
        [
            ExpressionSpec("the a", "single", [0]),
            ExpressionSpec("a and b", "multi", [0, 1]),
            ExpressionSpec("a and b bumping", "bidirectional", [0, 1]),
            ExpressionSpec("b pushing c", "unidirectional", [1], [2]),
        ],
    )
    write_dataset(tmp_path / "val", [record])
    return InterRVOSDataset(tmp_path, split="val")


def _perfect(dataset, shift=0):
    def enc(m):
        return rle.encode_track(np.roll(m, shift, axis=2))

    videos = {}
    for s in dataset.samples():
        target = enc(s.target_masks()) if s.has_target else None
        videos.setdefault(s.video_id, {})[s.exp_id] = {"actor": enc(s.actor_masks()), "target": target}
    return {"videos": videos}


def test_ground_truth_against_itself_scores_100(tiny_dataset):
    scores = evaluate_results(tiny_dataset, _perfect(tiny_dataset), workers=1)
    for bench in (scores.actor, scores.target, scores.rvos):
        assert (bench.J, bench.F, bench.JF) == (100.0, 100.0, 100.0)
    assert (scores.actor.count, scores.target.count, scores.rvos.count) == (2, 1, 4)
    saved = scores.to_json()
    assert set(saved) >= {"actor", "target", "rvos"} and set(saved["actor"]) >= {"J", "F", "JF"}


def test_shifted_copy_scores_lower(tiny_dataset):
    scores = evaluate_results(tiny_dataset, _perfect(tiny_dataset, shift=3), workers=1)
    assert scores.rvos.JF < 100 and scores.actor.JF < 100 and scores.target.JF < 100
    # Square of side 8 shifted by 3: IoU = 40 / 88 on each frame of expression "the a".
    assert scores.per_expression[("vid", "0")]["rvos"][0] == pytest.approx(40 / 88)


def test_target_without_seg_tar_is_an_empty_prediction(tiny_dataset):
    results = _perfect(tiny_dataset)
    results["videos"]["vid"]["3"]["target"] = None
    scores = evaluate_results(tiny_dataset, results, workers=1)
    # Frame 0: target visible, nothing predicted -> 0; frame 1: both empty -> 1.
    assert (scores.target.J, scores.target.F) == (50.0, 50.0)
    assert scores.no_target == [("vid", "3")]
    assert scores.actor.JF == 100.0  # the actor side is untouched


def test_missing_prediction_counts_as_empty_and_warns(tiny_dataset, caplog):
    results = _perfect(tiny_dataset)
    del results["videos"]["vid"]["0"]
    with caplog.at_level(logging.WARNING, logger="reviosa.evaluation"):
        scores = evaluate_results(tiny_dataset, results, workers=1)
    assert scores.missing == [("vid", "0")]
    assert scores.per_expression[("vid", "0")]["rvos"] == (0.0, 0.0)
    assert abs(scores.rvos.JF - 75.0) < 1e-9
    assert "no prediction" in caplog.text


def test_wrong_prediction_length_names_video_and_expression(tiny_dataset):
    results = _perfect(tiny_dataset)
    results["videos"]["vid"]["1"]["actor"] = results["videos"]["vid"]["1"]["actor"][:1]
    with pytest.raises(ValueError, match="'vid'.*'1'.*actor"):
        evaluate_results(tiny_dataset, results, workers=1)


def test_workers_agree_with_serial(tmp_path):
    from reviosa.data.synth import generate_split

    generate_split(tmp_path, "val", clips=2, seed=1, size=96, frames=(16, 16))
    dataset = InterRVOSDataset(tmp_path / "val")
    results = _perfect(dataset, shift=2)
    serial = evaluate_results(dataset, results, workers=1)
    parallel = evaluate_results(dataset, results, workers=2)
    assert serial.to_json() == parallel.to_json()
    assert serial.rvos.JF < 100


def test_evaluate_cli(tiny_dataset, tmp_path, capsys):
    from reviosa.cli import main

    pred = tmp_path / "results.json"
    pred.write_text(json.dumps(_perfect(tiny_dataset)))
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--gt", str(tiny_dataset.root), "--pred", str(pred), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "InterRVOS-Actor" in printed and "100.0" in printed
    saved = json.loads(out.read_text())
    assert saved["rvos"]["JF"] == 100.0 and saved["target"]["J"] == 100.0
