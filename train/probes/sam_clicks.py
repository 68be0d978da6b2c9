"""Does a stage-2 SAM2 follow its click, or segment every object whatever the click?

python -m train.probes.sam_clicks --sam checkpoints/stage2/sam.safetensors [--frames 48] [--seed 0]

On held-out frames of two or more objects (their own seed stream), each well-seen object is
clicked once, inside it. Per object it prints the mean of:
- ``iou``: the mask against the clicked object (what the stage-2 gate scores);
- ``iou_every``: the mask against the union of every object of the frame. A model that ignores the
  click scores this above ``iou``; one that follows the click scores it at about the clicked
  object's share of the union;
- ``moved``: the share of the mask's pixels that change when the click moves to another object
  of the same frame (0: the click does nothing).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import numpy as np
import torch

from reviosa import sam as sam_ops
from reviosa.evaluation import iou
from train.stages.clips import Backgrounds, full_area, random_clip
from train.stages.common import RECIPE, stage_model_config
from train.stages.sam_pretrain import (
    build_stage_sam,
    click_inside,
    load_sam,
    select_images,
    single_mask,
    step_frame,
)


@dataclass
class Frame:
    """pixels float (1, 3, S, S); masks bool (K, S, S) of its K >= 2 well-seen objects; every bool
    (S, S): all of its objects."""

    pixels: torch.Tensor
    masks: torch.Tensor
    every: torch.Tensor


def held_out_frames(count: int, sam_cfg, seed: int = 0, min_visible: float = 0.5) -> list[Frame]:
    """Frames of their own seed stream (stage 2 trains on [seed, 0, step], validates on [seed, 1])."""
    rng = np.random.default_rng([seed, 3])
    backgrounds = Backgrounds(rng, sam_cfg.image_size, count=16)
    out: list[Frame] = []
    while len(out) < count:
        clip = random_clip(rng, backgrounds, 1)
        seen = [
            k for k, look in enumerate(clip.looks) if clip.masks(k)[0].sum() >= min_visible * full_area(look)
        ]
        if len(seen) < 2:
            continue
        masks = torch.from_numpy(np.stack([clip.masks(k)[0] for k in seen]))
        pixels = sam_ops.preprocess(torch.from_numpy(clip.frames), sam_cfg)
        out.append(Frame(pixels, masks, torch.from_numpy(clip.labels[0] >= 0)))
    return out


@torch.no_grad()
def decode_clicks(sam, features: sam_ops.FrameFeatures, clicks: torch.Tensor) -> torch.Tensor:
    """One frame's features, repeated for each click: clicks float (K, 1, 2) -> masks bool (K, S, S)."""
    k = clicks.shape[0]
    repeated = select_images(features, torch.zeros(k, dtype=torch.long))
    labels = torch.ones(k, 1, dtype=torch.long)
    out = step_frame(sam, repeated, 0, 1, {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                     points=(clicks, labels), memory=False)  # fmt: skip
    return out["pred_masks_high_res"][:, 0] > 0


@torch.no_grad()
def probe(sam, frames: list[Frame], seed: int = 0) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    was = sam.training
    sam.eval()
    ious, everys, moved = [], [], []
    with single_mask(sam):
        for frame in frames:
            features = sam_ops.encode_images(sam, frame.pixels)
            pred = decode_clicks(sam, features, click_inside(frame.masks.float(), gen))
            gt, pr = frame.masks.numpy(), pred.numpy()
            ious += iou(gt, pr).tolist()
            everys += iou(np.broadcast_to(frame.every.numpy(), gt.shape), pr).tolist()
            # the same masks with each click moved to the next object of the frame
            shifted = pred.roll(1, 0)
            area = (pred | shifted).flatten(1).sum(1).clamp(min=1)
            moved += ((pred ^ shifted).flatten(1).sum(1) / area).tolist()
    sam.train(was)
    return {"iou": float(np.mean(ious)), "iou_every": float(np.mean(everys)), "moved": float(np.mean(moved)),
            "objects": float(len(ious))}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.probes.sam_clicks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sam", required=True, help="a stage-2 sam.safetensors")
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = stage_model_config(args.recipe)
    sam = build_stage_sam(config)
    load_sam(sam, args.sam)
    figures = probe(sam, held_out_frames(args.frames, config.sam, args.seed), args.seed)
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
