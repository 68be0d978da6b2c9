"""Evaluation protocol: hand-computed J / F cases, every number against the DAVIS code's definitions
(written out below from FACTS.md, independently of ``reviosa.evaluation``), RLE decoding against
pycocotools, and whole-dataset scoring (ground truth against itself, a shifted copy, missing
predictions, the scores JSON at full precision)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from reviosa import rle
from reviosa.data import ExpressionSpec, InterRVOSDataset, ObjectTrack, VideoRecord, write_dataset
from reviosa.evaluation import (
    boundary_map,
    boundary_points,
    boundary_radius,
    disk,
    evaluate_results,
    f_measure,
    frame_scores,
    iou,
    score_track,
)

# pycocotools' decode (the independent reference for RLE) trips a numpy 2 deprecation on every call.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# --------------------------------------------------------------------------------------------- DAVIS
# The DAVIS 2017 evaluation code's definitions (db_eval_iou, db_eval_boundary with _seg2bmap, a
# skimage disk and cv2.dilate), in plain numpy: the slow, obvious way, full frame.


def _davis_seg2bmap(seg):
    seg = seg.astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def _davis_dilate(b, radius):
    """cv2.dilate with skimage.morphology.disk(radius): outside the frame never sets a pixel."""
    height, width = b.shape
    padded = np.pad(b, radius)
    out = np.zeros_like(b)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                out |= padded[radius + dy : radius + dy + height, radius + dx : radius + dx + width]
    return out


def _davis_j(annotation, segmentation):
    inters = np.sum(segmentation & annotation)
    union = np.sum(segmentation | annotation)
    return 1 if np.isclose(union, 0) else inters / union


def _davis_f(gt_mask, foreground_mask):
    bound_pix = int(np.ceil(0.008 * np.linalg.norm(foreground_mask.shape)))
    fg_boundary, gt_boundary = _davis_seg2bmap(foreground_mask), _davis_seg2bmap(gt_mask)
    fg_dil, gt_dil = _davis_dilate(fg_boundary, bound_pix), _davis_dilate(gt_boundary, bound_pix)
    gt_match, fg_match = gt_boundary * fg_dil, fg_boundary * gt_dil
    n_fg, n_gt = np.sum(fg_boundary), np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision, recall = np.sum(fg_match) / float(n_fg), np.sum(gt_match) / float(n_gt)
    return 0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _random_mask(rng, h, w):
    """An ellipse, a rectangle, noise, stray pixels, one pixel, empty or full; often with strays added."""
    kind = int(rng.integers(0, 7))
    m = np.zeros((h, w), dtype=bool)
    if kind == 0:
        yy, xx = np.mgrid[:h, :w]
        cy, cx, ay, ax = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, h), rng.uniform(1, w)
        m = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1
    elif kind == 1:
        y, x = rng.integers(0, h), rng.integers(0, w)
        m[y : y + rng.integers(1, h + 1), x : x + rng.integers(1, w + 1)] = True
    elif kind == 2:
        m = rng.random((h, w)) < rng.uniform(0.05, 0.95)
    elif kind == 3:
        m[rng.integers(0, h), rng.integers(0, w)] = True
    elif kind == 4:
        m[:] = True
    if kind in (0, 1, 5) and rng.random() < 0.6:  # scattered false positives (kind 5: strays only)
        count = int(rng.integers(1, 12))
        m[rng.integers(0, h, count), rng.integers(0, w, count)] = True
    return m


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
    assert _davis_f(gt, _pixel(shape, 50, 50 + r + 1)) == pytest.approx(0.5)
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


def test_scores_equal_the_davis_definitions_on_random_masks():
    # Exact equality: the same counts divided the same way give the same floats.
    rng = np.random.default_rng(0)
    for _ in range(600):
        h, w = (int(v) for v in rng.integers(1, 40, size=2))
        gt, pred = _random_mask(rng, h, w), _random_mask(rng, h, w)
        r = boundary_radius(h, w)
        want = (_davis_j(gt, pred), _davis_f(gt, pred))
        assert frame_scores(gt, pred, r) == want, (h, w)
        # Transposed (the column-major layout RLE decodes to) and Fortran-ordered inputs agree.
        assert frame_scores(gt.T, pred.T, r) == want, (h, w)
        assert frame_scores(np.asfortranarray(gt), pred, r) == want
        assert boundary_points(gt).tolist() == np.argwhere(_davis_seg2bmap(gt)).tolist()


@pytest.mark.parametrize("strays", [0, 80])
def test_scores_equal_davis_at_854x480_with_scattered_false_positives(strays):
    shape = (480, 854)
    rng = np.random.default_rng(strays)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for t in range(3):
        gt = ((xx - 300 - 40 * t) / 90) ** 2 + ((yy - 240) / 70) ** 2 <= 1
        gt[:, 840:] = True  # an object cut by the right edge
        pred = np.roll(gt, (3 + t, -5), axis=(0, 1))
        pred[rng.integers(0, shape[0], strays), rng.integers(0, shape[1], strays)] = True
        pred[-1, rng.integers(0, shape[1], 5)] = True  # strays on the last row, where DAVIS's rules change
        want = (_davis_j(gt, pred), _davis_f(gt, pred))
        assert 0 < want[1] < 1
        assert frame_scores(gt, pred, boundary_radius(*shape)) == want


def test_empty_and_full_frames_follow_davis():
    shape = (30, 50)
    empty, full = np.zeros(shape, dtype=bool), np.ones(shape, dtype=bool)
    blob = _square(shape, 5, 5, 10)
    r = boundary_radius(*shape)
    for gt, pred in [(empty, empty), (full, full), (empty, full), (full, empty), (full, blob), (blob, full)]:
        assert frame_scores(gt, pred, r) == (_davis_j(gt, pred), _davis_f(gt, pred))
    # A full frame has no boundary under DAVIS's edge rules: full vs full is F = 1, full vs blob F = 0.
    assert frame_scores(full, blob, r)[1] == 0.0


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


def test_scores_json_keeps_full_precision_equal_to_davis(tiny_dataset, tmp_path):
    """The saved numbers are the DAVIS code's means to 1e-9 (no rounding); the table rounds."""
    from reviosa.cli import main

    results = _perfect(tiny_dataset, shift=3)
    for entry in results["videos"]["vid"].values():  # make the numbers non-round: strays in one frame
        stray = np.zeros((40, 70), dtype=bool)
        stray[[2, 37, 11], [60, 3, 41]] = True
        frame0 = mask_utils.decode(_coco(entry["actor"][0])).astype(bool) | stray
        entry["actor"][0] = rle.encode(frame0)
    pred, out = tmp_path / "results.json", tmp_path / "scores.json"
    pred.write_text(json.dumps(results))
    args = ["evaluate", "--gt", str(tiny_dataset.root), "--pred", str(pred), "--json", str(out)]
    assert main([*args, "--per-expression", "--workers", "1"]) == 0
    saved = json.loads(out.read_text())

    per_expression = {}
    for s in tiny_dataset.samples():
        gt = s.rvos_masks()
        entry = results["videos"][s.video_id][s.exp_id]
        predicted = [
            mask_utils.decode(_coco(m)).astype(bool) if m else np.zeros((40, 70), bool)
            for m in entry["actor"]
        ]
        per_expression[s.exp_id] = (
            np.mean([_davis_j(g, p) for g, p in zip(gt, predicted, strict=True)]),
            np.mean([_davis_f(g, p) for g, p in zip(gt, predicted, strict=True)]),
        )
        got = saved["per_expression"][f"vid/{s.exp_id}"]["rvos"]
        assert abs(got["J"] - 100 * per_expression[s.exp_id][0]) < 1e-9
        assert abs(got["F"] - 100 * per_expression[s.exp_id][1]) < 1e-9
    want_j = 100 * np.mean([v[0] for v in per_expression.values()])
    want_f = 100 * np.mean([v[1] for v in per_expression.values()])
    assert abs(saved["rvos"]["J"] - want_j) < 1e-9 and abs(saved["rvos"]["F"] - want_f) < 1e-9
    assert abs(saved["rvos"]["JF"] - (want_j + want_f) / 2) < 1e-9
    assert round(saved["rvos"]["J"], 2) != saved["rvos"]["J"]  # really unrounded


# --------------------------------------------------------------------------------------------- RLE


def _coco(encoded):
    return {"size": encoded["size"], "counts": encoded["counts"].encode("ascii")}


def test_rle_decode_equals_pycocotools_on_random_masks():
    rng = np.random.default_rng(3)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 60, size=2))
        mask = _random_mask(rng, h, w)
        encoded = rle.encode(mask)
        want = mask_utils.decode(_coco(encoded)).astype(bool)
        assert np.array_equal(want, mask)
        assert np.array_equal(rle.decode(encoded), mask)
        assert np.array_equal(rle.decode_columns([encoded], (h, w)), mask.T)
        # Uncompressed counts (a list), as some annotation tools write them.
        runs = rle.run_lengths(encoded).tolist()
        assert np.array_equal(rle.decode({"size": [h, w], "counts": runs}), mask)


def test_rle_long_runs_and_union():
    # Runs longer than one 5-bit chunk, and negative deltas, at 854x480.
    shape = (480, 854)
    a, b = _square(shape, 0, 0, 479), _square(shape, 200, 300, 50)
    b[0, 853] = True
    union = rle.decode_columns([rle.encode(a), None, rle.encode(b)], shape)
    assert union.shape == (854, 480) and union.flags.c_contiguous
    assert np.array_equal(union.T, a | b)
    assert not rle.decode_columns([None], shape).any()


def test_rle_decode_rejects_bad_input():
    good = rle.encode(_square((10, 12), 2, 2, 4))
    with pytest.raises(ValueError, match="size"):
        rle.decode(good, (12, 10))
    with pytest.raises(ValueError, match="pixels"):
        rle.decode({"size": [10, 13], "counts": good["counts"]})
    with pytest.raises(ValueError, match="alphabet"):
        rle.decode({"size": [10, 12], "counts": good["counts"] + " "})
    with pytest.raises(ValueError, match="ends inside"):
        rle.decode({"size": [10, 12], "counts": good["counts"] + "o"})
    with pytest.raises(ValueError, match="null"):
        rle.decode(None)
