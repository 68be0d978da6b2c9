"""Mean J of a model on the studio's synthetic examples, against the world's own masks.

    python scripts/studio_examples_j.py [--model builtin]

Each example clip (`studio.examples.SYNTHETIC`) is read from its mp4 in examples/ (what the studio
segments, H.264 round trip included) and its masks are drawn again by `make_clip` from the clip's
seed, split and index. Prints, per expression, the mean J over frames of the actor (and target).
"""

from __future__ import annotations

import argparse

import numpy as np

from reviosa.data.synth import WorldConfig, make_clip
from reviosa.evaluation import iou
from reviosa.hub import from_pretrained
from reviosa.video import VideoFile
from studio.examples import EXAMPLES_DIR, SYNTHETIC


def truth(record, ids: list[int]) -> np.ndarray:
    """bool (T, H, W): the union of the objects ``ids``."""
    tracks = {o.obj_id: o.masks for o in record.objects}
    return np.any([tracks[i] for i in ids], axis=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin")
    args = p.parse_args()
    model = from_pretrained(args.model)
    for clip in SYNTHETIC:
        record, _ = make_clip(clip.seed, clip.split, clip.index, WorldConfig(size=128, frames=(24, 32)))
        specs = {e.text: e for e in record.expressions}
        video = VideoFile(EXAMPLES_DIR / clip.file)
        for text, pred in zip(clip.expressions, model.segment(video, list(clip.expressions)), strict=True):
            spec = specs[text]
            line = f"{clip.file:18s} {text!r}: actor J {iou(truth(record, spec.subject), np.asarray(pred.actor)).mean():.2f}"
            if spec.object and pred.target is not None:
                line += f", target J {iou(truth(record, spec.object), np.asarray(pred.target)).mean():.2f}"
            print(line)


if __name__ == "__main__":
    main()
