"""Overlay + H.264 export at 854x480 (DAVIS / MeViS frame size) against a bare ffmpeg, side by side.

Over the same N frames, in one run, interleaved ``--repeat`` times (the fastest of each kept):

- ``ours``: overlay + encode streamed as the app does it, a generator of ``overlay_frame`` results
  into ``write_mp4`` (raw frames piped to an ffmpeg process, imageio-ffmpeg's binary, the overlay
  computed in this process while ffmpeg encodes);
- ``reference``: the bare encoder, libx264 in a separate ffmpeg process fed through a pipe by
  imageio-ffmpeg, given the already overlaid frames (no overlay work at all), same preset and CRF;
- for the breakdown: the overlay alone, ``write_mp4`` alone on the overlaid frames, and ours through
  ``write_mp4``'s PyAV fallback (its encoder in a thread of this process; used without imageio-ffmpeg).

The ratio is ours over the reference's speed (frames per second). CPU time (this process's threads
and the finished ffmpeg child) is printed beside: on a machine whose cores are all busy, the wall
ratio tends to the CPU ratio. ``--load N`` repeats the side by
side comparison with N busy processes spinning on the machine (a shared machine's conditions).
Frames are smooth moving gradients with mild noise (pure noise would make x264 unrealistically
slow), masks two moving blobs with wavy edges that overlap for part of the clip.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_viz [--frames 300] [--preset veryfast] [--load 2]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from viz import video
from viz.overlay import overlay_frame
from viz.video import DEFAULT_CRF, DEFAULT_PRESET, write_mp4

HEIGHT, WIDTH = 480, 854
FPS = 30


def make_clip(count: int, seed: int = 0, height: int = HEIGHT, width: int = WIDTH):
    """Synthetic clip: frames uint8 (T, H, W, 3), actor and target bool (T, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    frames = np.empty((count, height, width, 3), np.uint8)
    actor = np.empty((count, height, width), bool)
    target = np.empty((count, height, width), bool)
    angle = np.arctan2(yy - height / 2, xx - width / 2)
    sx, sy = width / WIDTH, height / HEIGHT
    for t in range(count):
        phase = 2 * np.pi * t / count
        for c in range(3):
            wave = np.sin(xx / (60 + 20 * c) / sx + phase + c) + np.cos(yy / (45 + 15 * c) / sy - phase)
            frames[t, ..., c] = np.clip(128 + 50 * wave + rng.normal(0, 4, (height, width)), 0, 255)
        wobble = 1 + 0.12 * np.sin(5 * angle + 3 * phase)
        ax, ay = sx * (250 + 200 * np.sin(phase)), sy * (240 + 60 * np.cos(phase))
        actor[t] = ((xx - ax) / (140 * sx)) ** 2 + ((yy - ay) / (170 * sy)) ** 2 < wobble
        tx, ty = sx * (560 - 120 * np.sin(phase)), sy * 260
        target[t] = ((xx - tx) / (120 * sx)) ** 2 + ((yy - ty) / (90 * sy)) ** 2 < wobble
    return frames, actor, target


def reference_encode(path: Path, frames, fps: int, crf: int, preset: str) -> None:
    """libx264 in a separate ffmpeg process (imageio-ffmpeg's binary), frames piped as raw rgb24."""
    import imageio_ffmpeg

    height, width = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        quality=None,  # no -qscale: rate control is the CRF below, as ours
        macro_block_size=1,  # no resizing to a multiple of 16
        output_params=["-preset", preset, "-crf", str(crf), "-movflags", "+faststart"],
    )
    writer.send(None)  # start the process
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


@contextlib.contextmanager
def busy(processes: int):
    """``processes`` CPU-bound processes spinning for the duration of the block."""
    if processes <= 0:
        yield
        return
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    workers = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(processes)]
    for w in workers:
        w.start()
    try:
        yield
    finally:
        stop.set()
        for w in workers:
            w.join()


def _timed(fn) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of this process and its finished children (the ffmpeg)."""

    def cpu() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    start, start_cpu = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - start, cpu() - start_cpu


def side_by_side(frames, actor, target, overlaid, out: Path, args) -> dict[str, float]:
    """(wall, CPU) seconds of each variant, each the minimum over ``args.repeat`` interleaved rounds."""

    def overlays():
        return (overlay_frame(f, a, t) for f, a, t in zip(frames, actor, target, strict=True))

    variants = {
        "ours": lambda: write_mp4(out / "ours.mp4", overlays(), FPS, args.crf, args.preset),
        "reference": lambda: reference_encode(out / "ref.mp4", overlaid, FPS, args.crf, args.preset),
        "overlay alone": lambda: [None for _ in overlays()],
        "write_mp4 alone": lambda: write_mp4(out / "enc.mp4", iter(overlaid), FPS, args.crf, args.preset),
        # The encoder write_mp4 falls back to without imageio-ffmpeg (the one it used before).
        "ours, PyAV": lambda: video._write_mp4_pyav(
            out / "pyav.mp4", overlays(), video.to_fraction(FPS), args.crf, args.preset
        ),
    }
    best = dict.fromkeys(variants, (float("inf"), float("inf")))
    for _ in range(args.repeat):
        for name, fn in variants.items():
            wall, cpu = _timed(fn)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", default=f"{WIDTH}x{HEIGHT}", help="WxH")
    parser.add_argument("--preset", default=DEFAULT_PRESET)
    parser.add_argument("--crf", type=int, default=DEFAULT_CRF)
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds; the fastest of each kept")
    parser.add_argument("--load", type=int, default=0, help="also measure with this many busy processes")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))

    frames, actor, target = make_clip(args.frames, height=height, width=width)
    overlaid = [overlay_frame(f, a, t) for f, a, t in zip(frames, actor, target, strict=True)]
    overlap = (actor & target).any(axis=(1, 2)).mean()
    print(
        f"{args.frames} frames {width}x{height}, overlap in {overlap:.0%} of frames; x264 preset={args.preset} "
        f"crf={args.crf}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; write_mp4 encodes "
        f"with {'ffmpeg (imageio-ffmpeg)' if video._ffmpeg_exe() else 'PyAV (imageio-ffmpeg missing)'}"
    )
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for load in sorted({0, args.load}):
            with busy(load):
                seconds = side_by_side(frames, actor, target, overlaid, Path(tmp), args)
            ratio = seconds["reference"][0] / seconds["ours"][0]
            cpu_ratio = seconds["reference"][1] / seconds["ours"][1]
            report[load] = {
                "ratio": ratio,
                "cpu_ratio": cpu_ratio,
                "pyav_ratio": seconds["reference"][0] / seconds["ours, PyAV"][0],
                **{k: args.frames / wall for k, (wall, _) in seconds.items()},
            }
            title = "no added load" if load == 0 else f"under load: {load} more busy processes"
            title += f" (load average {os.getloadavg()[0]:.1f})"
            print(f"\n{title}")
            for name, (wall, cpu) in seconds.items():
                print(
                    f"  {name:>15}: {args.frames / wall:7.1f} frames/s  ({1e3 * wall / args.frames:6.2f} ms/frame, "
                    f"CPU {1e3 * cpu / args.frames:6.2f} ms/frame)"
                )
            print(f"  ours / reference speed: {ratio:.2f}x (CPU time: reference / ours {cpu_ratio:.2f}x)")
            pyav = seconds["reference"][0] / seconds["ours, PyAV"][0]
            print(f"  ours through PyAV / reference speed: {pyav:.2f}x")
    return report


if __name__ == "__main__":
    main()
