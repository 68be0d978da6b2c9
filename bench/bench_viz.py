"""Throughput of the role overlay and the H.264 export at 854x480 (DAVIS / MeViS frame size).

Times, once each over the same N frames: the overlay alone, the encoder alone, and overlay + encode
streamed as the app does it (a generator of overlays into ``write_mp4``). Frames are smooth moving
gradients with mild noise (pure noise would make x264 unrealistically slow), masks two moving blobs
with wavy edges that overlap for part of the clip.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_viz [--frames 120] [--preset veryfast]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from viz.overlay import overlay_frame
from viz.video import DEFAULT_CRF, DEFAULT_PRESET, write_mp4

HEIGHT, WIDTH = 480, 854
FPS = 30


def make_clip(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic clip: frames uint8 (T, H, W, 3), actor and target bool (T, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH].astype(np.float32)
    frames = np.empty((count, HEIGHT, WIDTH, 3), np.uint8)
    actor = np.empty((count, HEIGHT, WIDTH), bool)
    target = np.empty((count, HEIGHT, WIDTH), bool)
    angle = np.arctan2(yy - HEIGHT / 2, xx - WIDTH / 2)
    for t in range(count):
        phase = 2 * np.pi * t / count
        for c in range(3):
            wave = np.sin(xx / (60 + 20 * c) + phase + c) + np.cos(yy / (45 + 15 * c) - phase)
            frames[t, ..., c] = np.clip(128 + 50 * wave + rng.normal(0, 4, (HEIGHT, WIDTH)), 0, 255)
        wobble = 1 + 0.12 * np.sin(5 * angle + 3 * phase)
        ax, ay = 250 + 200 * np.sin(phase), 240 + 60 * np.cos(phase)
        actor[t] = ((xx - ax) / 140) ** 2 + ((yy - ay) / 170) ** 2 < wobble
        tx, ty = 560 - 120 * np.sin(phase), 260
        target[t] = ((xx - tx) / 120) ** 2 + ((yy - ty) / 90) ** 2 < wobble
    return frames, actor, target


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--preset", default=DEFAULT_PRESET)
    parser.add_argument("--crf", type=int, default=DEFAULT_CRF)
    args = parser.parse_args()

    frames, actor, target = make_clip(args.frames)
    overlap = (actor & target).any(axis=(1, 2)).mean()
    print(f"{args.frames} frames {WIDTH}x{HEIGHT}, overlap in {overlap:.0%} of frames; "
          f"x264 preset={args.preset} crf={args.crf}")  # fmt: skip

    def overlays():
        return (overlay_frame(f, a, t) for f, a, t in zip(frames, actor, target, strict=True))

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        seconds = {
            "overlay": timed(lambda: [None for _ in overlays()]),
            "encode": timed(lambda: write_mp4(out / "raw.mp4", iter(frames), FPS, args.crf, args.preset)),
            "overlay+encode": timed(
                lambda: write_mp4(out / "ov.mp4", overlays(), FPS, args.crf, args.preset)
            ),
        }
        size_mb = (out / "ov.mp4").stat().st_size / 1e6
    for name, s in seconds.items():
        print(f"{name:>15}: {args.frames / s:7.1f} frames/s  ({1e3 * s / args.frames:6.2f} ms/frame)")
    print(f"overlay+encode / encode time: {seconds['overlay+encode'] / seconds['encode']:.2f}x; "
          f"overlay share of overlay+encode: {seconds['overlay'] / seconds['overlay+encode']:.0%}; "
          f"overlay mp4 {size_mb:.1f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
