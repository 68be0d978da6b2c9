"""Inference figures for the core model (issue 2), measured in one run.

1. Wall time of ``python -m reviosa predict`` (tiny random model) on a 64-frame 854x480 clip.
2. Peak memory (RSS) of ``ReviosaModel.segment`` on 100 vs 1000 frames at 854x480, each in a fresh
   process, minus the process's RSS right before the call. Frames are decoded lazily and masks stored
   bit-packed, so the 1000-frame run should need little more than the 100-frame one.

Usage: python bench/bench_predict.py [--frames 100 1000] [--cli-frames 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
H, W = 480, 854


def write_clip(path: Path, frames: int) -> None:
    """A moving square on a gradient, H.264, streamed (never all frames in memory)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = H, W + 2, "yuv420p"  # 856: even width
        base = np.tile(np.linspace(0, 200, W + 2, dtype=np.uint8)[None, :, None], (H, 1, 3))
        for t in range(frames):
            frame = base.copy()
            x = (7 * t) % (W - 100)
            frame[180:300, x : x + 100] = (230, 60, 60)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def make_model(directory: Path) -> None:
    import torch

    from reviosa.config import tiny_config
    from reviosa.hub import save_pretrained
    from reviosa.modeling import ReviosaModel
    from reviosa.tokenizer import build_tokenizer

    torch.manual_seed(0)
    save_pretrained(ReviosaModel(tiny_config(), build_tokenizer(["a red square"], 320)), directory)


def measure_segment(model_dir: str, video: str) -> dict:
    """Runs in a child process: peak RSS growth of one segment() call with both roles forced."""
    import torch

    from reviosa.generation import force_answers
    from reviosa.hub import from_pretrained
    from reviosa.video import VideoFile

    torch.set_num_threads(2)
    model = from_pretrained(model_dir)
    clip = VideoFile(video)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    current = _rss_kb()
    t0 = time.perf_counter()
    (pred,) = model.segment(
        clip, ["a red square"], logits_processor=force_answers(model, ["Sure, [SEG_ACT] and [SEG_TAR]."])
    )
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "frames": clip.num_frames,
        "seconds": seconds,
        "peak_growth_mb": (max(peak, before) - current) / 1024,
        "mask_storage_mb": (pred.actor.nbytes + pred.target.nbytes) / 2**20,
        "bool_masks_would_be_mb": 2 * clip.num_frames * H * (W + 2) / 2**20,
    }


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--cli-frames", type=int, default=64)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_segment(*args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_model(tmp / "model")
        clip = tmp / "cli.mp4"
        write_clip(clip, args.cli_frames)
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "reviosa", "predict", str(clip), "a red square", "--model", str(tmp / "model"),
             "--out", str(tmp / "out")],
            check=True, cwd=ROOT, env=env, capture_output=True,
        )  # fmt: skip
        cli = time.perf_counter() - t0
        print(
            f"CLI predict, tiny model, {args.cli_frames} frames {W + 2}x{H}: {cli:.1f} s wall (process start included)"
        )
        rows = []
        for n in args.frames:
            path = tmp / f"clip{n}.mp4"
            write_clip(path, n)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(tmp / "model"), str(path)],
                check=True, capture_output=True, text=True, env=env,
            )  # fmt: skip
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{'frames':>7} {'seconds':>8} {'peak MB':>8} {'masks MB':>9} {'as bool MB':>11}")
        for r in rows:
            print(
                f"{r['frames']:>7} {r['seconds']:>8.1f} {r['peak_growth_mb']:>8.1f} {r['mask_storage_mb']:>9.1f} "
                f"{r['bool_masks_would_be_mb']:>11.1f}"
            )
        if len(rows) >= 2:
            print(f"peak memory ratio {rows[-1]['frames']} / {rows[0]['frames']} frames: "
                  f"{rows[-1]['peak_growth_mb'] / max(rows[0]['peak_growth_mb'], 1e-6):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
