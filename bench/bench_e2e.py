"""End to end on one clip: decode, MLLM, SAM2 encode, propagation, render; time per stage, peak memory.

Given a CUDA device (default ``--geometry 1b``: InternVL2.5-1B + SAM2 Hiera-L at 1024 px, random
weights, bf16) it runs a ``--seconds`` 10 s 854x480 clip through ``ReviosaModel.segment`` with one
interaction expression (the answer is forced to "Sure, [SEG_ACT] and [SEG_TAR]." so that both roles
are tracked: random weights would rarely emit the tokens), then renders the overlay mp4 as the studio
does (``viz.overlay_frame`` into ``viz.write_mp4``). Without CUDA it runs the ``tiny`` preset on a
short clip (``--seconds 2``), so the script stays tested; CPU figures say nothing about a GPU.

Stages (seconds, wall; CUDA synchronised at each boundary):

- ``decode``:      video decoding (keyframes and the propagation pass), timed inside the frame source;
- ``MLLM``:        keyframe encoding, answer generation and the [SEG] states (``timings["mllm"]``);
- ``SAM2 encode``: SAM2's image encoder on every frame (``reviosa.sam.encode_images``);
- ``propagation``: the rest of the propagation pass (memory attention, mask decoding, upsampling);
- ``render``:      the two-role overlay and the H.264 export.

Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the process's peak RSS.

    .venv/bin/python -m bench.bench_e2e                       # CUDA: 1b, bf16, 10 s; else tiny, 2 s
    .venv/bin/python -m bench.bench_e2e --geometry tiny --seconds 0.5 --size 320x180
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

EXPRESSION = "person walking a dog"
ANSWER = "Sure, [SEG_ACT] and [SEG_TAR]."


class _Stopwatch:
    """Named wall-clock totals; ``sync`` (CUDA's synchronize) runs at each start and stop."""

    def __init__(self, sync) -> None:
        self.sync = sync
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def time(self, name: str):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start


class TimedSource:
    """A FrameSource wrapper that adds the time spent decoding to ``watch``: "decode keyframes"
    (``read``, before the MLLM) and "decode frames" (``iter_frames``, the propagation pass)."""

    def __init__(self, source, watch: _Stopwatch) -> None:
        self.source, self.watch = source, watch
        self.num_frames, self.size, self.fps = source.num_frames, source.size, source.fps

    def iter_frames(self) -> Iterator[np.ndarray]:
        frames = self.source.iter_frames()
        while True:
            with self.watch.time("decode frames"):
                frame = next(frames, None)
            if frame is None:
                return
            yield frame

    def read(self, indices: Sequence[int]) -> np.ndarray:
        with self.watch.time("decode keyframes"):
            return self.source.read(indices)


def write_clip(path: Path, seconds: float, size: tuple[int, int], fps: int = 24) -> int:
    """Two coloured discs crossing a gradient, H.264; returns the number of frames."""
    from viz.video import write_mp4

    width, height = size
    count = max(2, round(seconds * fps))
    yy, xx = np.mgrid[:height, :width]
    base = np.stack([xx * 200 // max(width - 1, 1), yy * 200 // max(height - 1, 1), 60 + 0 * xx], -1)

    def frames():
        for t in range(count):
            frame = base.astype(np.uint8)
            for k, color in enumerate(((230, 60, 60), (60, 60, 230))):
                cx = width * (0.2 + 0.6 * ((t / count + 0.5 * k) % 1.0))
                frame[(xx - cx) ** 2 + (yy - height / 2) ** 2 < (height / 6) ** 2] = color
            yield frame

    write_mp4(path, frames(), fps)
    return count


def _build(geometry: str, device, dtype):
    import torch

    from reviosa.config import preset
    from reviosa.modeling import ReviosaModel
    from reviosa.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer([EXPRESSION, "a red disc and a blue disc"], vocab_size=320)
    return ReviosaModel(preset(geometry), tokenizer).to(device=device, dtype=dtype).eval()


def run(args: argparse.Namespace) -> dict:
    import torch

    import reviosa.sam as sam_ops
    from reviosa.generation import force_answers
    from reviosa.video import VideoFile
    from viz.overlay import overlay_frame
    from viz.video import write_mp4

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch (use --device cpu, or auto)")
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    geometry = args.geometry or ("1b" if cuda else "tiny")
    seconds = args.seconds if args.seconds is not None else (10.0 if cuda else 2.0)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if cuda else "fp32")]
    width, height = (int(v) for v in args.size.split("x"))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    watch = _Stopwatch(sync)

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        frames = write_clip(clip, seconds, (width, height))
        build_start = time.perf_counter()
        model = _build(geometry, device, dtype)
        build_s = time.perf_counter() - build_start
        # SAM2's image encoder, timed where the model calls it (a module attribute, looked up per call).
        real_encode = sam_ops.encode_images

        def timed_encode(sam, images):
            with watch.time("SAM2 encode"):
                return real_encode(sam, images)

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sam_ops.encode_images = timed_encode
        try:
            video = TimedSource(VideoFile(clip), watch)
            start = time.perf_counter()
            with torch.inference_mode():
                (prediction,) = model.segment(
                    video, [EXPRESSION], logits_processor=force_answers(model, [ANSWER])
                )
            sync()
            segment_s = time.perf_counter() - start
        finally:
            sam_ops.encode_images = real_encode
        with watch.time("render"):
            actor, target = prediction.actor, prediction.target
            overlays = (
                overlay_frame(f, actor[t], None if target is None else target[t])
                for t, f in enumerate(VideoFile(clip).iter_frames())
            )
            write_mp4(Path(tmp) / "overlay.mp4", overlays, video.fps)
        # The render pass decodes the clip once more, outside `video`: that time is part of "render".

    timings, totals = prediction.timings, watch.totals
    encode_s, frames_s = totals.get("SAM2 encode", 0.0), totals.get("decode frames", 0.0)
    stages = {
        "decode": totals.get("decode keyframes", 0.0) + frames_s,
        "MLLM": timings["mllm"],
        "SAM2 encode": encode_s,
        # The propagation pass decodes and encodes every frame: those parts are reported above.
        "propagation": timings["propagate"] - encode_s - frames_s,
        "render": totals["render"],
    }
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        peak_kind = "CUDA max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_kind = "peak RSS of the process"
    total = segment_s + stages["render"]
    print(
        f"{'CUDA ' + torch.cuda.get_device_name() if cuda else 'CPU (no CUDA device)'}; geometry {geometry}, "
        f"{str(dtype).removeprefix('torch.')}; clip {frames} frames {width}x{height} ({seconds:g} s); "
        f"model built in {build_s:.1f} s"
    )
    for name, s in stages.items():
        print(f"  {name:>12}: {s:8.3f} s")
    print(f"  {'total':>12}: {total:8.3f} s (segment {segment_s:.3f} s + render)")
    print(f"  peak memory: {peak:.0f} MiB ({peak_kind})")
    report = {
        "device": "cuda" if cuda else "cpu",
        "geometry": geometry,
        "frames": frames,
        "stages": stages,
        "total_s": total,
        "peak_mib": peak,
        "tracked_roles": 1 + (prediction.target is not None),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", help="preset (default: 1b on CUDA, tiny on CPU)")
    parser.add_argument("--seconds", type=float, help="clip length (default: 10 on CUDA, 2 on CPU)")
    parser.add_argument("--size", default="854x480", help="WxH of the clip")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument(
        "--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: CUDA if present"
    )
    parser.add_argument("--json", help="also save the figures here")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
