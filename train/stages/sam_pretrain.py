"""Stage 2: promptable SAM2 pretraining of the SAM2 stand-in, as SAM2 itself is trained.

python -m train.stages.sam_pretrain --recipe train/recipes/stages.yaml --out runs/stage2
    [--steps 3000] [--lr 3e-4] [--batch 4] [--frames 4] [--corrections 1] [--resume]
    [--init runs/stage2a/sam.safetensors] [--objects 3] [--frame-clicks] [--world] [--examples]

The recipe's micro SAM2 (image encoder, mask decoder, memory attention and encoder, object
pointers) trains alone, without any language model, on freshly rendered short clips of the
synthetic world (``train.stages.clips``): the first frame is prompted with one click inside the
object, its box, or its mask (SAM2's three prompt kinds, one kind per step), optionally followed by
correction clicks on the first frame's largest error (SAM2's interactive training; the previous
logits go back in as its mask input), and every later frame is segmented through the memory of
the frames before it. The loss is sigmoid CE x2 + Dice x0.5 on the low-res logits of every
decoded frame plus the object-presence BCE (the terms the ReVIOSa loop uses).

Trained so (one object a clip), the SAM2 falls into segmenting every object whatever the click:
moving the click to another object changed 1.7 % of the mask (``train.probes.sam_clicks``). The
second phase starts from those weights (``--init``) and breaks that: up to ``--objects`` objects of
each clip are prompted and tracked, each on its own (one image, several answers, as SAM2 trains
several masks an image), and ``--frame-clicks`` also decodes every later frame alone from a click.
The third starts from the second's and readies SAM2 for the role prompt: ``--world`` trains on the
RVOS world's own clips (the frames stages 3-5 and the test splits show, JPEG and all), and
``--examples`` also decodes every frame from the object's example prompt, the one extra sparse
token a role prompt will be, so that the decoder learns to select an object by its looks.

Gate (held-out clips drawn from another seed): from one click, mean IoU >= 0.9 on held-out frames;
from a first-frame mask, J&F >= 90 over held-out clips tracked through the memory. It writes
OUT/sam.safetensors (``sam.*`` of a ReviosaModel, float32) and OUT/state.pt (optimizer, step) every
``--every`` steps, OUT/records.json, and its section of the stages' report.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from reviosa import sam as sam_ops
from reviosa.config import ReviosaConfig
from reviosa.data.synth import make_clip
from reviosa.data.synth_render import COLOURS, SHAPES, SIZES, TEXTURES, Appearance
from reviosa.evaluation import f_measure, iou
from reviosa.hooks import this_thread_only
from train import report
from train.losses import dice, sigmoid_ce
from train.stages.clips import Backgrounds, Clip, full_area, random_clip
from train.stages.common import RECIPE, load_parts, lr_at, save_parts, stage_model_config

logger = logging.getLogger(__name__)

WEIGHTS, STATE, RECORDS = "sam.safetensors", "state.pt", "records.json"
PROMPTS = ("click", "box", "mask")


@dataclass
class SamPretrainConfig:
    steps: int = 3000
    batch: int = 4  # clips per step
    frames: int = 4  # frames per training clip: the first prompted, the rest through the memory
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup: float = 0.05  # fraction of the steps
    min_lr_ratio: float = 0.05  # cosine decays to lr * this
    prompt_mix: tuple[float, float, float] = (0.5, 0.25, 0.25)  # click, box, mask
    corrections: int = 1  # correction clicks on the first frame (click and box prompts)
    min_visible: float = 0.4  # the prompted object shows this share of its area on frame 0
    # Objects of a clip prompted and tracked, each on its own (SAM2 trains several masks an image):
    # with one, every image has one answer and "segment every object" is a stable minimum that
    # ignores the prompt (stage 2's first run: click IoU 0.46, masks on every shape).
    objects: int = 1
    # Every later frame also decoded alone from one click (no memory), as SAM2 prompts several
    # frames of a training clip: frame 0's one click a step is the only click supervision otherwise.
    frame_clicks: bool = False
    # Clips of the RVOS world itself (``reviosa.data.synth.make_clip``: rendered at its 128 px,
    # stored as JPEG, upsampled to SAM2's input), the frames stages 3-5 and the test splits show;
    # the stage-2b SAM2 drew 0.74 IoU from a click on its own renderer's frames and 0.56 on these.
    world: bool = False
    # Every frame of a tracked object also decoded alone from its example prompt (its own SAM2
    # features pooled under its masks, appended as the one extra sparse token the role prompt
    # takes later): a decoder trained on clicks only selects by where a prompt is, and stage 3's
    # role prompt can only say what the object looks like.
    examples: bool = False
    # Mask targets at the decoder's S/4 grid as each cell's covered share, not that share > 0.5:
    # trained on binary cells the logits can only place an outline on the cell grid, and their
    # upsampling to the frame caps IoU at 0.87 for this world's objects even with perfect cells
    # (0.98 with soft cells); the stage-2d decoder alone, 150 steps on example prompts, reached
    # IoU 0.704 at the frame's 128 px with soft targets against 0.641 with binary ones.
    soft_targets: bool = False
    # Weight of the attribute term: linear heads must read each tracked object's colour, shape, size
    # and texture from its example prompt (SAM2's top-level features pooled under its masks), the
    # gradient reaching the encoder. Trained without it, an object's example prompt sat at cosine
    # 0.98 to a same-coloured neighbour's (0.68 to other objects'), so neither a role prompt nor the
    # decoder could tell a red triangle from a red circle (train.stages.grounding, docs/training.md).
    attributes: float = 0.0
    val_clips: int = 48
    val_frames: int = 8
    every: int = 250  # steps between validations and checkpoints
    seed: int = 0


CLI_FIELDS = (
    "steps", "batch", "frames", "lr", "corrections", "objects", "attributes", "val_clips", "every", "seed",
)  # fmt: skip
CLI_FLAGS = ("frame_clicks", "world", "examples", "soft_targets")
WORLD_SEED = 7  # the RVOS world's training clips here; test splits use seeds 1 and 2, stage 3 seed 0


# --- data ------------------------------------------------------------------------------------------


@dataclass
class ClipBatch:
    """pixels float (C*T, 3, S, S) clip-major; masks float (N, T, S, S), one row per tracked object;
    clip_of long (N,): the clip each object is in; looks: each tracked object's appearance (for
    the attribute term), or None; same_colour: whether another object of its clip shares its colour
    (world clips: the held-out figure of the objects a colour does not single out)."""

    pixels: torch.Tensor
    masks: torch.Tensor
    clip_of: torch.Tensor
    looks: list[Appearance] | None = None
    same_colour: list[bool] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(tracked objects N, frames T)."""
        return self.masks.shape[0], self.masks.shape[1]


def draw_objects(rng: np.random.Generator, clip: Clip, min_visible: float, count: int = 1) -> list[int]:
    """Up to ``count`` objects well seen on the first frame (a click or box on a sliver says little)."""
    seen = [k for k, look in enumerate(clip.looks) if clip.masks(k)[0].sum() >= min_visible * full_area(look)]
    return pick(rng, seen, count)


def pick(rng: np.random.Generator, seen: list[int], count: int) -> list[int]:
    """Up to ``count`` of the objects ``seen``, drawn without repeats (none when none is seen)."""
    if not seen:
        return []
    if count == 1:  # the draw of the first stage-2 run (and of the held-out clips), kept as it was
        return [int(rng.choice(seen))]
    return [int(k) for k in rng.permutation(seen)[:count]]


def draw_batch(
    rng: np.random.Generator,
    backgrounds: Backgrounds,
    count: int,
    frames: int,
    sam_cfg,
    min_visible: float,
    objects: int = 1,
) -> ClipBatch:
    """``count`` clips, up to ``objects`` tracked objects of each."""
    pixels, masks, clip_of, looks = [], [], [], []
    while len(pixels) < count:
        clip = random_clip(rng, backgrounds, frames)
        picked = draw_objects(rng, clip, min_visible, objects)
        if not picked:
            continue
        clip_of += [len(pixels)] * len(picked)
        pixels.append(sam_ops.preprocess(torch.from_numpy(clip.frames), sam_cfg))
        masks += [torch.from_numpy(clip.masks(k)).float() for k in picked]
        looks += [clip.looks[k] for k in picked]
    return ClipBatch(torch.cat(pixels), torch.stack(masks), torch.tensor(clip_of), looks)


def world_clip(
    rng: np.random.Generator, index: int, frames: int, split: str = "train", seed: int = WORLD_SEED
):
    """``frames`` frames of world clip ``index`` at a random stride, JPEG round-tripped as a dataset
    stores them: uint8 (T, s, s, 3), each object's masks bool (K, T, s, s) (s: the world's 128) and
    each object's appearance."""
    record, info = make_clip(seed, split, index)
    total = len(record.frames)
    stride = int(rng.integers(1, max(1, (total - 1) // max(frames - 1, 1)) + 1)) if frames > 1 else 1
    start = int(rng.integers(0, total - (frames - 1) * stride))
    idx = start + stride * np.arange(frames)
    pixels = np.stack([jpeg_round_trip(record.frames[i]) for i in idx])
    return pixels, np.stack([track.masks[idx] for track in record.objects]), info["facts"].looks


def jpeg_round_trip(frame: np.ndarray, quality: int = 95) -> np.ndarray:
    """uint8 (H, W, 3) as ``write_dataset`` stores it and a dataset reads it back."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def draw_world_batch(
    rng: np.random.Generator, first_index: int, count: int, frames: int, sam_cfg, min_visible: float,
    objects: int = 1, split: str = "train", seed: int = WORLD_SEED,
) -> ClipBatch:  # fmt: skip
    """``count`` world clips from clip ``first_index`` on (one index a draw, skipped when no object
    shows well on the first frame: at least ``min_visible`` of its largest area in the clip)."""
    pixels, masks, clip_of, looks, same = [], [], [], [], []
    index = first_index
    while len(pixels) < count:
        frames_u8, tracks, clip_looks = world_clip(rng, index, frames, split, seed)
        index += 1
        areas = tracks.reshape(len(tracks), frames, -1).sum(-1)  # (K, T)
        seen = [
            k for k in range(len(tracks)) if areas[k, 0] > 0 and areas[k, 0] >= min_visible * areas[k].max()
        ]
        picked = pick(rng, seen, objects)
        if not picked:
            continue
        clip_of += [len(pixels)] * len(picked)
        pixels.append(sam_ops.preprocess(torch.from_numpy(frames_u8), sam_cfg))
        up = torch.from_numpy(tracks[picked]).float()  # (k, T, s, s) -> SAM2's input size, nearest
        masks.append(F.interpolate(up, size=(sam_cfg.image_size,) * 2, mode="nearest"))
        looks += [clip_looks[k] for k in picked]
        colours = [look.colour for look in clip_looks]
        same += [colours.count(clip_looks[k].colour) > 1 for k in picked]
    return ClipBatch(torch.cat(pixels), torch.cat(masks), torch.tensor(clip_of), looks, same)


# --- prompts ---------------------------------------------------------------------------------------


def click_inside(masks: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One pixel centre uniformly inside each mask: masks float (B, S, S) -> float (B, 1, 2) as (x, y);
    anywhere for an empty mask."""
    b, h, w = masks.shape
    flat = masks.reshape(b, h * w)
    weights = torch.where(flat.sum(1, keepdim=True) > 0, flat, torch.ones_like(flat))
    idx = torch.multinomial(weights, 1, generator=gen)[:, 0]
    return torch.stack([(idx % w).float() + 0.5, torch.div(idx, w, rounding_mode="floor").float() + 0.5], -1)[
        :, None
    ]


def box_of(masks: torch.Tensor, gen: torch.Generator, jitter: float = 0.1) -> torch.Tensor:
    """Each mask's bounding box, corners moved by up to ``jitter`` of its side (SAM2 trains with
    noisy boxes): float (B, 2, 2) as (x0, y0), (x1, y1)."""
    boxes = []
    for m in masks:
        ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
        x0, x1, y0, y1 = xs.min().float(), xs.max().float() + 1, ys.min().float(), ys.max().float() + 1
        side = torch.stack([x1 - x0, y1 - y0, x1 - x0, y1 - y0])
        noise = (torch.rand(4, generator=gen) * 2 - 1) * jitter * side
        boxes.append((torch.stack([x0, y0, x1, y1]) + noise).clamp(0, m.shape[-1]).reshape(2, 2))
    return torch.stack(boxes)


def correction_click(
    pred: torch.Tensor, masks: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM2's correction click: inside the larger error region of each prediction, positive on
    missed object pixels, negative on false ones. pred, masks bool / float (B, S, S) ->
    coordinates float (B, 1, 2), labels long (B, 1)."""
    missed = (masks > 0.5) & ~pred
    false = pred & (masks <= 0.5)
    positive = missed.flatten(1).sum(1) >= false.flatten(1).sum(1)
    region = torch.where(positive[:, None, None], missed, false).float()
    return click_inside(region, gen), positive.long()[:, None]


# --- SAM2 through its own track_step ------------------------------------------------------------


def select_images(features: sam_ops.FrameFeatures, idx: torch.Tensor) -> sam_ops.FrameFeatures:
    """The features of images ``idx`` (long (N,), repeats allowed) of a batch of encoded images."""
    return sam_ops.FrameFeatures(
        [f[:, idx] for f in features.vision_feats],
        [p[:, idx] for p in features.vision_pos],
        features.feat_sizes,
    )


def frame_features(
    features: sam_ops.FrameFeatures, clips: int | torch.Tensor, frames: int, t: int
) -> sam_ops.FrameFeatures:
    """Frame t of every clip from features of (C*T) clip-major images; ``clips``: their number C,
    or the clip of each tracked object, long (N,) (a clip's features repeat for its objects)."""
    return select_images(features, (torch.arange(clips) if isinstance(clips, int) else clips) * frames + t)


@contextlib.contextmanager
def raw_logits(sam: nn.Module):
    """Collect the mask decoder's (mask logits (B, 1, h, w), object-score logits (B, 1)) of each
    call: the logits before SAM2 overwrites frames it scores object-free with -1024, which would cut
    the loss's gradient there; ``track_step`` returns no object scores while training."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = sam.sam_mask_decoder.register_forward_hook(
        this_thread_only(lambda _m, _i, out: calls.append((out[0], out[3])))
    )
    try:
        yield calls
    finally:
        handle.remove()


def step_frame(sam, feats, t, frames, output_dict, points=None, mask=None, prev=None, memory=True) -> dict:
    """``SAM2Base.track_step`` for frame t: an initial conditioning frame when prompted (points
    (coords (B, P, 2), labels (B, P)) or a mask (B, 1, S, S)), else tracked from ``output_dict``."""
    prompted = points is not None or mask is not None
    return sam.track_step(
        frame_idx=t,
        is_init_cond_frame=prompted,
        current_vision_feats=feats.vision_feats,
        current_vision_pos_embeds=feats.vision_pos,
        feat_sizes=feats.feat_sizes,
        point_inputs=None if points is None else {"point_coords": points[0], "point_labels": points[1]},
        mask_inputs=mask,
        output_dict=output_dict,
        num_frames=frames,
        run_mem_encoder=memory,
        prev_sam_mask_logits=prev,
    )


def low_res(masks: torch.Tensor, size: int, soft: bool = False) -> torch.Tensor:
    """Masks (..., S, S) at the decoder's (S/4)^2 by area average, then > 0.5 (as train.data), or
    the average itself with ``soft`` (each cell's covered share)."""
    lead = masks.shape[:-2]
    small = F.adaptive_avg_pool2d(masks.reshape(-1, 1, *masks.shape[-2:]), size)
    return (small if soft else (small > 0.5).float()).reshape(*lead, size, size)


def frame_loss(
    logits: torch.Tensor, object_logits: torch.Tensor, masks: torch.Tensor, soft: bool = False
) -> torch.Tensor:
    """CE x2 + Dice x0.5 + presence BCE, mean over the batch: logits (B, 1, h, w), object_logits
    (B, 1), masks (B, S, S); ``soft``: targets are the cells' covered shares (`low_res`)."""
    target = low_res(masks, logits.shape[-1], soft)
    seg = 2.0 * sigmoid_ce(logits[:, 0], target) + 0.5 * dice(logits[:, 0], target)
    present = (masks.flatten(1).sum(1) > 0).float()
    presence = F.binary_cross_entropy_with_logits(object_logits[:, 0].float(), present, reduction="none")
    return (seg + presence).mean()


def clip_loss(
    sam: nn.Module,
    batch: ClipBatch,
    prompt: str,
    corrections: int,
    gen: torch.Generator,
    frame_clicks: bool = False,
    examples: bool = False,
    soft: bool = False,
    heads: tuple[AttributeHeads, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Prompt frame 0, track the rest through the memory (and with ``frame_clicks`` decode each later
    frame alone from one click too, with ``examples`` every frame alone from its example prompt);
    the mean of every decoded frame's loss."""
    clips, frames = batch.shape
    feats = sam_ops.encode_images(sam, batch.pixels)
    out_dict: dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    first = frame_features(feats, batch.clip_of, frames, 0)
    terms: list[torch.Tensor] = []
    with raw_logits(sam) as calls:
        if prompt == "mask":
            out = step_frame(sam, first, 0, frames, out_dict, mask=batch.masks[:, :1])
        else:
            if prompt == "click":
                points = (click_inside(batch.masks[:, 0], gen), torch.ones(clips, 1, dtype=torch.long))
            else:
                points = (box_of(batch.masks[:, 0], gen), torch.tensor([[2, 3]]).repeat(clips, 1))
            prev = None
            for round_ in range(corrections + 1):
                last = round_ == corrections
                out = step_frame(sam, first, 0, frames, out_dict, points=points, prev=prev, memory=last)
                terms.append(frame_loss(*calls[-1], batch.masks[:, 0], soft))
                if not last:
                    pred = out["pred_masks_high_res"][:, 0].detach() > 0
                    xy, lab = correction_click(pred, batch.masks[:, 0], gen)
                    points = (torch.cat([points[0], xy], 1), torch.cat([points[1], lab], 1))
                    prev = out["pred_masks"].detach()
        out_dict["cond_frame_outputs"][0] = out
        for t in range(1, frames):
            out = step_frame(sam, frame_features(feats, batch.clip_of, frames, t), t, frames, out_dict)
            out_dict["non_cond_frame_outputs"][t] = out
            terms.append(frame_loss(*calls[-1], batch.masks[:, t], soft))
        if frame_clicks and frames > 1:
            terms.append(later_clicks_loss(sam, feats, batch, calls, gen, soft))
    info = {}
    if examples:
        terms.append(example_loss(sam, feats, batch, soft))
        info["example"] = float(terms[-1].detach())
    loss = torch.stack(terms).mean()
    if heads is not None:  # beside the mean of the decoded frames, by its own weight
        attributes = attribute_loss(heads[0], feats, batch)
        loss = loss + heads[1] * attributes
        info["attributes"] = float(attributes.detach())
    return loss, {"loss": float(loss.detach()), **info}


def example_decoding(sam, feats, batch: ClipBatch) -> dict[str, torch.Tensor]:
    """Every frame of every tracked object decoded alone (no memory) from the object's example
    prompt, detached as stage 3 gives it (the encoder learns from the decoding, not from shaping
    its features to suit the prompt): ``decode_prompted``'s outputs for (N*T) images, object-major."""
    objects, frames = batch.shape
    idx = (batch.clip_of[:, None] * frames + torch.arange(frames)).reshape(-1)
    alone = select_images(feats, idx)
    gy, gx = feats.feat_sizes[-1]
    per_frame = alone.vision_feats[-1].reshape(gy * gx, objects, frames, -1)
    prompts, _ = sam_ops.pooled_under_masks(per_frame, batch.masks[:, None], (gy, gx))  # (N, 1, C)
    prompt = prompts.detach().repeat_interleave(frames, 0)  # (N*T, 1, C)
    return sam_ops.decode_prompted(sam, alone, prompt, overwrite=False)


def example_loss(sam, feats, batch: ClipBatch, soft: bool = False) -> torch.Tensor:
    """``frame_loss`` of ``example_decoding`` on every frame, the object's absent ones included (they
    teach the presence score that the object is not there)."""
    out = example_decoding(sam, feats, batch)
    masks = batch.masks.reshape(-1, *batch.masks.shape[-2:])
    return frame_loss(out["raw_masks"], out["object_score_logits"], masks, soft)


def later_clicks_loss(
    sam, feats, batch: ClipBatch, calls: list, gen: torch.Generator, soft: bool = False
) -> torch.Tensor:
    """Frames 1..T-1 of every tracked object decoded at once, each from one click of its own inside
    the object and without memory; frames where it does not show are left out."""
    objects, frames = batch.shape
    idx = (batch.clip_of[:, None] * frames + torch.arange(1, frames)).reshape(-1)
    alone = select_images(feats, idx)
    masks = batch.masks[:, 1:].reshape(-1, *batch.masks.shape[-2:])
    points = (click_inside(masks, gen), torch.ones(len(masks), 1, dtype=torch.long))
    step_frame(sam, alone, 0, 1, {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}, points=points,
               memory=False)  # fmt: skip
    shows = masks.flatten(1).sum(1) > 0
    logits, object_logits = calls[-1]
    return frame_loss(logits[shows], object_logits[shows], masks[shows], soft)


ATTRIBUTES = {"colour": tuple(COLOURS), "shape": SHAPES, "size": tuple(SIZES), "texture": TEXTURES}


class AttributeHeads(nn.Module):
    """One linear head per attribute over an object's example prompt (never saved with SAM2)."""

    def __init__(self, width: int):
        super().__init__()
        self.heads = nn.ModuleDict(
            {name: nn.Linear(width, len(values)) for name, values in ATTRIBUTES.items()}
        )

    def logits(self, examples: torch.Tensor) -> dict[str, torch.Tensor]:
        """examples float (N, C) -> per attribute float (N, classes)."""
        return {name: head(examples) for name, head in self.heads.items()}

    @staticmethod
    def labels(looks: list[Appearance]) -> dict[str, torch.Tensor]:
        return {name: torch.tensor([values.index(getattr(look, name)) for look in looks])
                for name, values in ATTRIBUTES.items()}  # fmt: skip


def object_examples(feats: sam_ops.FrameFeatures, batch: ClipBatch) -> torch.Tensor:
    """Each tracked object's example prompt over its clip's frames, with the encoder's gradient:
    float (N, C) (zeros for an object on no frame)."""
    objects, frames = batch.shape
    idx = (batch.clip_of[:, None] * frames + torch.arange(frames)).reshape(-1)
    gy, gx = feats.feat_sizes[-1]
    per_frame = feats.vision_feats[-1].index_select(1, idx).reshape(gy * gx, objects, frames, -1)
    prompts, _ = sam_ops.pooled_under_masks(per_frame, batch.masks[:, None], (gy, gx))
    return prompts[:, 0]


def attribute_loss(heads: AttributeHeads, feats: sam_ops.FrameFeatures, batch: ClipBatch) -> torch.Tensor:
    """Mean over the attributes of the heads' CE on the tracked objects' example prompts."""
    logits = heads.logits(object_examples(feats, batch))
    labels = AttributeHeads.labels(batch.looks)
    return torch.stack([F.cross_entropy(logits[k], labels[k]) for k in logits]).mean()


@contextlib.contextmanager
def single_mask(sam: nn.Module):
    """Single-mask output for every prompt while this stage runs, whatever the config says: one
    click on a flat shape of this world is not ambiguous, and ReVIOSa decodes single masks."""
    saved = sam.multimask_output_in_sam, sam.multimask_output_for_tracking
    sam.multimask_output_in_sam = sam.multimask_output_for_tracking = False
    try:
        yield
    finally:
        sam.multimask_output_in_sam, sam.multimask_output_for_tracking = saved


# --- the gate ---------------------------------------------------------------------------------


@dataclass
class HeldOut:
    clips: list[tuple[torch.Tensor, torch.Tensor]]  # per clip: pixels (T, 3, S, S), masks (T, S, S)
    looks: list[Appearance] | None = None  # the object of each clip
    same_colour: list[bool] | None = None  # world clips: another object of the clip shares its colour


def held_out(cfg: SamPretrainConfig, sam_cfg) -> HeldOut:
    """Validation clips from their own seed stream: no training draw can repeat them."""
    rng = np.random.default_rng([cfg.seed, 1])
    if cfg.world:  # the world's validation split of seed 0: stage 3's own validation clips
        batch = draw_world_batch(
            rng, 0, cfg.val_clips, cfg.val_frames, sam_cfg, cfg.min_visible, split="val", seed=0
        )
    else:
        backgrounds = Backgrounds(rng, sam_cfg.image_size, count=16)
        batch = draw_batch(rng, backgrounds, cfg.val_clips, cfg.val_frames, sam_cfg, cfg.min_visible)
    t = cfg.val_frames
    clips = [(batch.pixels[c * t : (c + 1) * t], batch.masks[c]) for c in range(cfg.val_clips)]
    return HeldOut(clips, batch.looks, batch.same_colour)


@torch.no_grad()
def evaluate(
    sam: nn.Module, data: HeldOut, seed: int = 0, chunk: int = 8, heads: AttributeHeads | None = None
) -> dict[str, float]:
    """``click_iou``: mean IoU from one random click inside the object, on every held-out frame
    where it shows (no memory); ``jf`` / ``j`` / ``f`` (0-100): first-frame mask, then tracked
    through the memory, scored on frames 1..T-1 (DAVIS leaves the given frame out); ``example_iou``:
    mean IoU of every frame where the object shows, decoded alone from its example prompt
    (``example_iou_same_colour``: of the objects whose clip holds another of their colour, world
    clips only); with ``heads``, ``read_<attribute>``: their accuracy on the objects' examples."""
    gen = torch.Generator().manual_seed(seed)
    was = sam.training
    sam.eval()
    click_ious, js, fs, example_ious, same_ious = [], [], [], [], []
    reads: dict[str, list[bool]] = {name: [] for name in ATTRIBUTES}
    with single_mask(sam):
        for c0 in range(0, len(data.clips), chunk):
            part = data.clips[c0 : c0 + chunk]
            pixels = torch.cat([p for p, _ in part])
            masks = torch.stack([m for _, m in part])  # (C, T, S, S)
            clips, frames = masks.shape[:2]
            feats = sam_ops.encode_images(sam, pixels)
            example = example_decoding(sam, feats, ClipBatch(pixels, masks, torch.arange(clips)))
            pred = (example["pred_masks_high_res"][:, 0] > 0).numpy()
            gt = (masks.flatten(0, 1) > 0.5).numpy()
            shows = gt.reshape(len(gt), -1).any(1)
            example_ious += iou(gt[shows], pred[shows]).tolist()
            if data.same_colour is not None:
                same = np.repeat(np.asarray(data.same_colour[c0 : c0 + chunk]), frames)  # per (clip, frame)
                same_ious += iou(gt[shows & same], pred[shows & same]).tolist()
            if heads is not None and data.looks is not None:
                looks = data.looks[c0 : c0 + chunk]
                logits = heads.logits(
                    object_examples(feats, ClipBatch(pixels, masks, torch.arange(clips), looks))
                )
                for name, labels in AttributeHeads.labels(looks).items():
                    reads[name] += (logits[name].argmax(-1) == labels).tolist()
            for t in range(frames):  # one click, each frame on its own
                f_t = frame_features(feats, clips, frames, t)
                points = (click_inside(masks[:, t], gen), torch.ones(clips, 1, dtype=torch.long))
                out = step_frame(sam, f_t, 0, 1, {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                                 points=points, memory=False)  # fmt: skip
                pred = (out["pred_masks_high_res"][:, 0] > 0).numpy()
                gt = (masks[:, t] > 0.5).numpy()
                shows = gt.reshape(clips, -1).any(1)
                click_ious += iou(gt[shows], pred[shows]).tolist()
            out_dict: dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
            first = frame_features(feats, clips, frames, 0)
            out_dict["cond_frame_outputs"][0] = step_frame(sam, first, 0, frames, out_dict, mask=masks[:, :1])
            for t in range(1, frames):
                out = step_frame(sam, frame_features(feats, clips, frames, t), t, frames, out_dict)
                out_dict["non_cond_frame_outputs"][t] = out
                pred = (out["pred_masks_high_res"][:, 0] > 0).numpy()
                gt = (masks[:, t] > 0.5).numpy()
                js += iou(gt, pred).tolist()
                fs += [f_measure(g, p) for g, p in zip(gt, pred, strict=True)]
    sam.train(was)
    j, f = 100 * float(np.mean(js)), 100 * float(np.mean(fs))
    out = {
        "click_iou": float(np.mean(click_ious)), "j": j, "f": f, "jf": (j + f) / 2,
        "example_iou": float(np.mean(example_ious)),
    }  # fmt: skip
    if same_ious:
        out["example_iou_same_colour"] = float(np.mean(same_ious))
    out.update({f"read_{name}": float(np.mean(v)) for name, v in reads.items() if v})
    return out


def gates(figures: dict[str, float]) -> list[report.Gate]:
    return [
        report.Gate("IoU from one click (held-out frames)", figures["click_iou"], 0.9),
        report.Gate("J&F from a first-frame mask, through the memory (held-out clips)", figures["jf"], 90.0),
    ]


# --- training -------------------------------------------------------------------------------------


def save_sam(sam: nn.Module, path: Path, dtype: torch.dtype | None = None) -> None:
    """``sam.*`` tensors of a ReviosaModel (what ``load_sam`` and model.sam_init read)."""
    save_parts({"sam": sam}, path, dtype)


def load_sam(sam: nn.Module, path: str | Path) -> None:
    """Load a ``save_sam`` file strictly (every tensor, same shapes), in the module's dtype."""
    load_parts({"sam": sam}, path, "SAM2", "train.stages.sam_pretrain")


def pretrain(
    sam: nn.Module,
    cfg: SamPretrainConfig,
    out: Path,
    resume: bool = False,
    log=logger.info,
    stop_after: int | None = None,
    evaluate_first: bool = False,
) -> list[dict]:
    """Train ``sam`` in place (until ``stop_after`` when given) from the weights it has (fresh, or
    an earlier run's loaded by the caller); validations every ``cfg.every`` steps (and at the end)
    are returned and written to OUT/records.json beside a checkpoint (weights + optimizer + step).
    Every random draw is seeded by the step, so a resumed run trains exactly as an unbroken one.
    ``evaluate_first``: also validate the weights it starts from (step 0; a run from ``--init``)."""
    sam_cfg = _sam_cfg_of(sam)
    heads = AttributeHeads(sam.sam_prompt_embed_dim) if cfg.attributes else None
    groups = [{"params": list(sam.parameters())}]
    if heads is not None:  # fresh heads at 10x the rate, so they read what the features hold early on
        groups.append({"params": list(heads.parameters()), "lr": 10 * cfg.lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg))
    start, records = 0, []
    if resume and (out / STATE).is_file():
        load_sam(sam, out / WEIGHTS)
        state = torch.load(out / STATE, weights_only=False)
        if heads is not None:
            heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, records = state["step"], json.loads((out / RECORDS).read_text())["records"]
        log(f"resumed at step {start}")
    val = held_out(cfg, sam_cfg)
    if evaluate_first and not records:  # where a run from earlier weights starts, on its own held-out
        records.append({"step": 0, **evaluate(sam, val, cfg.seed, heads=heads), "seconds": 0.0})
        log(_line(records[-1]))
    # Each step draws from its own seed, so a resumed run draws what an unbroken one would.
    backgrounds = Backgrounds(np.random.default_rng([cfg.seed, 2]), sam_cfg.image_size)
    sam.train()
    losses, t0 = [], time.perf_counter()
    with single_mask(sam):
        for step in range(start + 1, (stop_after or cfg.steps) + 1):
            rng = np.random.default_rng([cfg.seed, 0, step])
            torch.manual_seed(int(rng.integers(2**31)))  # dropout in the memory attention
            gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
            prompt = PROMPTS[int(rng.choice(3, p=np.asarray(cfg.prompt_mix) / sum(cfg.prompt_mix)))]
            if cfg.world:  # clip indices of their own per step (a retry takes the next index up)
                batch = draw_world_batch(rng, step * cfg.batch * 4, cfg.batch, cfg.frames, sam_cfg,
                                         cfg.min_visible, cfg.objects)  # fmt: skip
            else:
                batch = draw_batch(
                    rng, backgrounds, cfg.batch, cfg.frames, sam_cfg, cfg.min_visible, cfg.objects
                )
            loss, _ = clip_loss(
                sam, batch, prompt, cfg.corrections, gen, cfg.frame_clicks, cfg.examples, cfg.soft_targets,
                (heads, cfg.attributes) if heads is not None else None,
            )  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if step % cfg.every == 0 or step == cfg.steps:
                record = {
                    "step": step,
                    "loss": float(np.mean(losses)),
                    **evaluate(sam, val, cfg.seed, heads=heads),
                }
                record["lr"] = float(sched.get_last_lr()[0])
                record["seconds"] = time.perf_counter() - t0 + (records[-1]["seconds"] if records else 0.0)
                t0 = time.perf_counter()
                records.append(record)
                losses = []
                log(_line(record))
                _checkpoint(sam, opt, sched, step, cfg, records, out, heads)
    return records


def _line(record: dict) -> str:
    """A validation record as one log line."""
    return " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())


def _checkpoint(sam, opt, sched, step, cfg, records, out: Path, heads: AttributeHeads | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: a copy (or a commit) never reads a half-written file.
    save_sam(sam, out / (WEIGHTS + ".tmp"))
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step}
    if heads is not None:
        state["heads"] = heads.state_dict()
    torch.save(state, out / (STATE + ".tmp"))
    (out / (WEIGHTS + ".tmp")).replace(out / WEIGHTS)
    (out / (STATE + ".tmp")).replace(out / STATE)
    (out / RECORDS).write_text(json.dumps({"config": asdict(cfg), "records": records}, indent=2) + "\n")


def _sam_cfg_of(sam: nn.Module):
    cfg = getattr(sam, "reviosa_config", None)
    if cfg is None:
        raise ValueError("build the SAM2 with build_stage_sam (it records its config)")
    return cfg


def build_stage_sam(config: ReviosaConfig, seed: int = 0) -> nn.Module:
    """A freshly initialised SAM2 of the model config, seeded, remembering its SamConfig."""
    torch.manual_seed(seed)
    sam = sam_ops.build_sam(config.sam).train()
    sam.reviosa_config = config.sam
    return sam


def report_section(cfg: SamPretrainConfig, init: str | None) -> tuple[str, str]:
    """The report section (file stem, title) a run writes: each phase has its own, so that a later
    phase never replaces an earlier one's. A world run from a world run's weights (its folder's
    records.json says so) continues the third phase."""
    if not (cfg.world or cfg.examples):
        if init:
            return "sam_pretrain_objects", "Stage 2, second phase: several objects, every frame clicked"
        return "sam_pretrain", "Stage 2: promptable SAM2 pretraining"
    if cfg.attributes:
        return "sam_pretrain_attributes", "Stage 2, fourth phase: example prompts that read an object's looks"
    if cfg.soft_targets:
        return "sam_pretrain_soft", "Stage 2, fourth phase: soft mask targets"
    records = Path(init).parent / RECORDS if init else None
    if records is not None and records.is_file() and json.loads(records.read_text())["config"].get("world"):
        return "sam_pretrain_world_more", "Stage 2, third phase continued: fresh prompt draws"
    return "sam_pretrain_world", "Stage 2, third phase: the RVOS world's frames, example prompts"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.stages.sam_pretrain", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--recipe", default=RECIPE, help="the stages' recipe (model geometry)")
    parser.add_argument("--out", required=True, help="folder for sam.safetensors, state.pt, records.json")
    parser.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    parser.add_argument("--init", default="", help="start from this sam.safetensors (an earlier stage-2 run)")
    parser.add_argument("--report", default=str(report.REPORT_DIR), help="stages' report folder ('' : none)")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model config field over the recipe, e.g. sam.image_size=256",
    )
    defaults = SamPretrainConfig()
    for name in CLI_FIELDS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(defaults, name)),
                            default=getattr(defaults, name))  # fmt: skip
    for name in CLI_FLAGS:
        parser.add_argument(f"--{name.replace('_', '-')}", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = SamPretrainConfig(**{k: getattr(args, k) for k in (*CLI_FIELDS, *CLI_FLAGS)})
    config = stage_model_config(args.recipe, args.model)
    sam = build_stage_sam(config, cfg.seed)
    if args.init:
        load_sam(sam, args.init)
    out = Path(args.out)
    t0 = time.perf_counter()
    records = pretrain(sam, cfg, out, resume=args.resume, evaluate_first=bool(args.init))
    figures = {
        k: v
        for k, v in records[-1].items()
        if k in ("click_iou", "j", "f", "jf", "example_iou", "loss", "example_iou_same_colour")
        or k.startswith("read_")
    }
    if args.report:
        command = "python -m train.stages.sam_pretrain " + shlex.join(sys.argv[1:] if argv is None else argv)
        notes = (f"{cfg.steps} steps of {cfg.batch} {'world ' if cfg.world else ''}clips x {cfg.frames} "
                 f"frames, up to {cfg.objects} objects each{', every frame also clicked' if cfg.frame_clicks else ''}"
                 f"{', every frame also from its example prompt' if cfg.examples else ''}; SAM2 input "
                 f"{config.sam.image_size} px{f'; from `{args.init}`' if args.init else ''}; weights in "
                 f"`{out / WEIGHTS}`.")  # fmt: skip
        section, title = report_section(cfg, args.init)
        report.write_section(section, title, command,
                             records[-1]["seconds"] if records else time.perf_counter() - t0,
                             gates(figures), figures, notes, Path(args.report))  # fmt: skip
        report.assemble(Path(args.report))
    print(f"wrote {out / WEIGHTS}")


if __name__ == "__main__":
    main()
