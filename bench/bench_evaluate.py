"""Benchmark ``reviosa.evaluation``: frames scored per second at 854x480.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_evaluate [--videos 8] [--frames 60] [--workers 2]

Writes a dataset of moving ellipses (3 objects, 4 expressions per video: one of each caption type)
to a temporary folder, predicts a shifted, slightly eroded copy of the ground truth, and times
``evaluate_results``. "Frames" counts expression-frames (each scored for all its benchmarks:
RVOS, plus Actor and Target where they apply).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from reviosa import rle
from reviosa.data import ExpressionSpec, InterRVOSDataset, ObjectTrack, VideoRecord, write_dataset
from reviosa.evaluation import evaluate_results

HEIGHT, WIDTH = 480, 854


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


def _predictions(dataset: InterRVOSDataset) -> dict:
    videos = {}
    for s in dataset.samples():
        shift = lambda m: np.roll(m, (4, -6), axis=(1, 2))  # noqa: E731
        target = rle.encode_track(shift(s.target_masks())) if s.has_target else None
        videos.setdefault(s.video_id, {})[s.exp_id] = {
            "actor": rle.encode_track(shift(s.actor_masks())),
            "target": target,
        }
    return {"videos": videos}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(tmp, (_video(i, args.frames, rng) for i in range(args.videos)))
        dataset = InterRVOSDataset(tmp)
        results = _predictions(dataset)
        for workers in sorted({1, args.workers}):
            start, cpu = time.perf_counter(), time.process_time()
            scores = evaluate_results(dataset, results, workers=workers)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            frames = len(dataset) * args.frames
            # CPU time only counts this process: meaningful for workers=1, where it shows the cost
            # free of other users' load on a shared machine.
            cpu_note = f", {frames / cpu:.0f} expression-frames per CPU-second" if workers == 1 else ""
            print(
                f"{WIDTH}x{HEIGHT}, {len(dataset)} expressions x {args.frames} frames, workers={workers}: "
                f"{seconds:.2f} s, {frames / seconds:.0f} expression-frames/s, "
                f"{scores.frames / seconds:.0f} benchmark-frames/s{cpu_note} (RVOS J&F {scores.rvos.JF:.1f})"
            )


if __name__ == "__main__":
    main()
