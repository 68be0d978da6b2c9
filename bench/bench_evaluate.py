"""Evaluation speed against the DAVIS code, measured side by side in one run, at 854x480.

Writes a dataset of moving ellipses (3 objects, 4 expressions per video: one of each caption type)
to a temporary folder and predicts a shifted copy of the ground truth, twice: as is ("compact blob
masks") and with ``--strays`` false-positive pixels scattered over every predicted frame
("scattered"). For each kind it reports, as frames per second (one frame = one ground-truth /
prediction pair scored; the pairs are those ``evaluate_results`` scores):

- ``J + F in process``: ``reviosa.evaluation.frame_scores`` against the DAVIS 2017 code's
  ``db_eval_iou`` + ``db_eval_boundary`` (cv2.dilate with a disk, as theirs), on the same decoded
  masks, interleaved track by track;
- ``evaluate_results`` (RLE decoding included, 1 worker), against the same DAVIS figure (its RLE
  decoding not counted: the strict comparison) and against DAVIS plus pycocotools decoding;
- ``python -m reviosa evaluate --workers 1`` wall time (process start, JSON loading included).

It also checks that every expression's J and F equal the DAVIS code's (max |difference| printed).
Each round runs every measurement once (the load of a shared machine drifts, and each figure should
see the same drift); timings are the fastest of ``--repeat`` rounds. CPU-second figures (this
process only) are given beside them as they vary less when other jobs share the machine.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_evaluate [--videos 6] [--frames 50] [--strays 80]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from reviosa import rle
from reviosa.data import ExpressionSpec, InterRVOSDataset, ObjectTrack, VideoRecord, write_dataset
from reviosa.evaluation import boundary_radius, evaluate_results, frame_scores

HEIGHT, WIDTH = 480, 854
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- DAVIS
# The DAVIS 2017 evaluation code's metrics (davis2017/metrics.py), as MeViS and InterRVOS use them.


def davis_iou(annotation: np.ndarray, segmentation: np.ndarray) -> np.ndarray:
    """``db_eval_iou``: (T, H, W) bool -> (T,) J; union 0 -> 1."""
    annotation, segmentation = annotation.astype(bool), segmentation.astype(bool)
    inters = np.sum(segmentation & annotation, axis=(-2, -1))
    union = np.sum(segmentation | annotation, axis=(-2, -1))
    j = inters / np.where(union == 0, 1, union)
    j[np.isclose(union, 0)] = 1
    return j


def _seg2bmap(seg: np.ndarray) -> np.ndarray:
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


def _davis_f_frame(foreground_mask: np.ndarray, gt_mask: np.ndarray, bound_th: float = 0.008) -> float:
    import cv2

    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
    radius = int(bound_pix)
    axis = np.arange(-radius, radius + 1)
    disk = (axis[:, None] ** 2 + axis[None, :] ** 2 <= radius**2).astype(np.uint8)  # skimage disk
    fg_boundary, gt_boundary = _seg2bmap(foreground_mask), _seg2bmap(gt_mask)
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), disk)
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), disk)
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


def davis_boundary(annotation: np.ndarray, segmentation: np.ndarray) -> np.ndarray:
    """``db_eval_boundary``: (T, H, W) -> (T,) F, one frame at a time."""
    return np.array([_davis_f_frame(segmentation[t], annotation[t]) for t in range(len(annotation))])


# --------------------------------------------------------------------------------------------- data


def _video(index: int, num_frames: int, rng: np.random.Generator) -> VideoRecord:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    objects = []
    for k in range(3):
        start = rng.uniform([100, 100], [WIDTH - 100, HEIGHT - 100])
        velocity = rng.uniform(-3, 3, 2)
        axes = rng.uniform(30, 90, 2)
        masks = np.zeros((num_frames, HEIGHT, WIDTH), dtype=bool)
        for t in range(num_frames):
            cx, cy = start + velocity * t
            masks[t] = ((xx - cx) / axes[0]) ** 2 + ((yy - cy) / axes[1]) ** 2 <= 1
        objects.append(ObjectTrack(k, masks))
    expressions = [
        ExpressionSpec("a", "single", [0]),
        ExpressionSpec("b", "multi", [0, 1]),
        ExpressionSpec("c", "bidirectional", [1, 2]),
        ExpressionSpec("d", "unidirectional", [2], [0]),
    ]
    frames = np.zeros((num_frames, HEIGHT, WIDTH, 3), dtype=np.uint8)
    return VideoRecord(f"v{index:03d}", frames, objects, expressions)


def _predict(masks: np.ndarray, strays: int, rng: np.random.Generator) -> list:
    """A shifted copy of a (T, H, W) track with ``strays`` random pixels set per frame, as RLE."""
    pred = np.roll(masks, (4, -6), axis=(1, 2))
    for frame in pred:
        frame[rng.integers(0, HEIGHT, strays), rng.integers(0, WIDTH, strays)] = True
    return rle.encode_track(pred)


def _results(dataset: InterRVOSDataset, strays: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    videos = {}
    for s in dataset.samples():
        target = _predict(s.target_masks(), strays, rng) if s.has_target else None
        videos.setdefault(s.video_id, {})[s.exp_id] = {
            "actor": _predict(s.actor_masks(), strays, rng),
            "target": target,
        }
    return {"videos": videos}


def _pairs(dataset: InterRVOSDataset, results: dict):
    """(key, benchmark, gt RLE tracks, predicted RLE track): the pairs ``evaluate_results`` scores."""
    for s in dataset.samples():
        entry = results["videos"][s.video_id][s.exp_id]
        yield (s.video_id, s.exp_id), "rvos", dataset.gt_tracks(s, s.rvos_ids, "rvos"), entry["actor"]
        if s.is_interaction and s.actor_ids != s.rvos_ids:
            yield (s.video_id, s.exp_id), "actor", dataset.gt_tracks(s, s.actor_ids, "actor"), entry["actor"]
        if s.has_target:
            yield (
                (s.video_id, s.exp_id),
                "target",
                dataset.gt_tracks(s, s.target_ids, "target"),
                entry["target"],
            )


def _coco_decode_track(tracks: list[list], size: tuple[int, int]) -> np.ndarray:
    """pycocotools decoding, as the MeViS / InterRVOS evaluation scripts do it: bool (T, H, W)."""
    from pycocotools import mask as mask_utils

    out = np.zeros((len(tracks[0]), *size), dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for track in tracks:
            for t, m in enumerate(track):
                if m is not None:
                    out[t] |= mask_utils.decode({"size": m["size"], "counts": m["counts"].encode()}).astype(
                        bool
                    )
    return out


# --------------------------------------------------------------------------------------------- timing


class Clock:
    """Accumulates wall and process CPU seconds of the blocks timed with it."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall += time.perf_counter() - self._start[0]
        self.cpu += time.process_time() - self._start[1]


def in_process(dataset, results) -> dict:
    """J + F on decoded masks, ours vs DAVIS, track by track (interleaved); plus pycocotools decoding."""
    clocks = {name: Clock() for name in ("ours", "davis", "decode")}
    frames, want = 0, {}
    radius = boundary_radius(HEIGHT, WIDTH)
    for key, bench, gt_tracks, pred_track in _pairs(dataset, results):
        pred_tracks = [pred_track if pred_track is not None else [None] * len(gt_tracks[0])]
        with clocks["decode"]:
            gt = _coco_decode_track(gt_tracks, (HEIGHT, WIDTH))
            pred = _coco_decode_track(pred_tracks, (HEIGHT, WIDTH))
        with clocks["davis"]:
            j, f = davis_iou(gt, pred), davis_boundary(gt, pred)
        with clocks["ours"]:
            ours = np.array([frame_scores(g, p, radius) for g, p in zip(gt, pred, strict=True)])
        if not (np.array_equal(ours[:, 0], j) and np.array_equal(ours[:, 1], f)):
            raise AssertionError(f"{key} {bench}: per-frame J / F differ from the DAVIS code's")
        want[key, bench] = (float(j.mean()), float(f.mean()))
        frames += len(gt)
    return {"clocks": clocks, "frames": frames, "want": want}


def end_to_end(dataset, results) -> tuple[Clock, object]:
    clock = Clock()
    with clock:
        scores = evaluate_results(dataset, results, workers=1)
    return clock, scores


def cli_wall(root: Path, pred: Path) -> float:
    command = [sys.executable, "-m", "reviosa", "evaluate", "--gt", str(root), "--pred", str(pred)]
    command += ["--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - start


def _fastest(runs: list[Clock]) -> Clock:
    best = Clock()
    best.wall, best.cpu = min(r.wall for r in runs), min(r.cpu for r in runs)
    return best


def _max_difference(scores, want: dict) -> float:
    worst = 0.0
    for (key, bench), (j, f) in want.items():
        got = scores.per_expression[key][bench]
        worst = max(worst, abs(got[0] - j), abs(got[1] - f))
    return worst


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument(
        "--strays", type=int, default=80, help="false-positive pixels per frame (scattered kind)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs of each timing; the minimum is kept")
    parser.add_argument("--no-cli", action="store_true", help="skip the `python -m reviosa evaluate` timing")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    print(
        f"{args.videos} videos x {args.frames} frames, {WIDTH}x{HEIGHT}, 4 expressions per video; "
        f"load average {load:.1f} on {os.cpu_count()} cores"
    )
    report = {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(tmp, (_video(i, args.frames, rng) for i in range(args.videos)))
        dataset = InterRVOSDataset(tmp)
        for kind, strays in (
            ("compact blob masks", 0),
            (f"{args.strays} scattered false positives", args.strays),
        ):
            results = _results(dataset, strays)
            pred = Path(tmp) / "results.json"
            pred.write_text(json.dumps(results))
            # Every measurement once per round, rounds repeated, fastest of each kept: the machine's
            # load drifts, and each figure should see the same drift.
            runs: dict[str, list] = {"ours": [], "davis": [], "decode": [], "e2e": [], "cli": []}
            for _ in range(args.repeat):
                inproc = in_process(dataset, results)
                for name in ("ours", "davis", "decode"):
                    runs[name].append(inproc["clocks"][name])
                e2e_clock, scores = end_to_end(dataset, results)
                runs["e2e"].append(e2e_clock)
                if not args.no_cli:
                    runs["cli"].append(cli_wall(Path(tmp), pred))
            frames = inproc["frames"]
            c = {name: _fastest(runs[name]) for name in ("ours", "davis", "decode", "e2e")}
            diff = _max_difference(scores, inproc["want"])
            ratio = c["davis"].wall / c["ours"].wall
            ratio_cpu = c["davis"].cpu / c["ours"].cpu
            e2e_ratio = c["davis"].wall / c["e2e"].wall
            e2e_ratio_decode = (c["davis"].wall + c["decode"].wall) / c["e2e"].wall
            print(f"\n{kind} ({frames} frames scored; max |J, F - DAVIS| per expression {diff:.1e})")
            print(
                f"  J + F in process:  ours {frames / c['ours'].wall:7.0f} fps, DAVIS {frames / c['davis'].wall:6.0f} fps"
                f"  -> {ratio:.2f}x (CPU time {ratio_cpu:.2f}x)"
            )
            print(
                f"  evaluate_results, RLE decode included, 1 worker: {frames / c['e2e'].wall:6.0f} fps -> "
                f"{e2e_ratio:.2f}x DAVIS (CPU {c['davis'].cpu / c['e2e'].cpu:.2f}x); "
                f"{e2e_ratio_decode:.2f}x DAVIS + pycocotools decode"
            )
            entry = {"frames": frames, "in_process": ratio, "end_to_end": e2e_ratio, "max_difference": diff}
            if not args.no_cli:
                wall = min(runs["cli"])
                entry["cli"] = c["davis"].wall / wall
                print(
                    f"  python -m reviosa evaluate --workers 1: {wall:.2f} s wall, {frames / wall:6.0f} fps "
                    f"-> {entry['cli']:.2f}x DAVIS (process start and JSON loading included)"
                )
            report["compact" if strays == 0 else "scattered"] = entry
    return report


if __name__ == "__main__":
    main()
