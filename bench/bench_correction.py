"""Click correction with the built-in model on a synthetic example clip, measured in one run.

1. A negative click at the centre of the actor's mask on one frame: IoU of the corrected frame, and
   of the frames after it (re-segmented from the correction), with the model's own masks.
2. A positive target click on the red cross (the answer's target), from an empty target track: IoU
   of the clicked frame and of the later frames with the cross's pixels (found by colour).
3. Time of the correction (re-segmenting the frames after the click) beside the time of the run.

Usage: python -m bench.bench_correction [--frame 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CLIP = ROOT / "examples" / "synth_push.mp4"
EXPRESSION = "white circle pushing the big red cross"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frame", type=int, default=5, help="the clicked frame")
    args = p.parse_args()
    import torch

    from reviosa.correction import Click, correct_tracks
    from reviosa.hub import from_pretrained
    from reviosa.video import VideoFile

    torch.set_num_threads(1)
    model = from_pretrained("builtin")
    video = VideoFile(CLIP)
    frames = video.read(list(range(video.num_frames)))
    started = time.perf_counter()
    (pred,) = model.segment(video, [EXPRESSION])
    run_s = time.perf_counter() - started
    t, later = args.frame, range(args.frame + 1, video.num_frames)
    print(f"{CLIP.name}: {video.num_frames} frames at {video.size[1]}x{video.size[0]}, "
          f"propagation {model.config.sam.propagation}; run {run_s:.2f} s")  # fmt: skip

    actor = pred.actor
    ys, xs = np.nonzero(actor[t])
    click = Click(t, "actor", float(np.median(xs)), float(np.median(ys)), positive=False)
    started = time.perf_counter()
    fixed = correct_tracks(model, video, {"actor": actor, "target": None}, [click])["actor"]
    fix_s = time.perf_counter() - started
    print(f"negative actor click at ({click.x:.0f}, {click.y:.0f}) on frame {t}: "
          f"IoU with the model's mask {iou(fixed[t], actor[t]):.3f} on that frame, "
          f"{np.mean([iou(fixed[k], actor[k]) for k in later]):.3f} on the {len(later)} frames after; "
          f"{fix_s:.2f} s")  # fmt: skip

    red = (frames[..., 0] > 150) & (frames[..., 1] < 80) & (frames[..., 2] < 80)  # (T, H, W) the cross
    ys, xs = np.nonzero(red[t])
    click = Click(t, "target", float(np.median(xs)), float(np.median(ys)), positive=True)
    started = time.perf_counter()
    target = correct_tracks(model, video, {"actor": actor, "target": None}, [click])["target"]
    fix_s = time.perf_counter() - started
    print(f"positive target click on the red cross, empty target track: IoU with the cross "
          f"{iou(target[t], red[t]):.3f} on frame {t}, "
          f"{np.mean([iou(target[k], red[k]) for k in later]):.3f} on the frames after; {fix_s:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
