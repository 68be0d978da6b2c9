"""Correct a prediction's mask tracks with clicks: SAM2 re-decodes each clicked frame and
re-propagates from it.

A `Click` is (frame, role, (x, y), positive or negative), in pixels of the frames the tracks cover.
For each role with clicks, from its first clicked frame to the end of the clip:

* a clicked frame is decoded by SAM2, as ``SamConfig.click_prompt`` says: "points", from all of
  that frame's clicks (its point prompt) plus the role's existing mask as SAM2's mask input, as
  SAM2's interactive predictor feeds its previous logits back with new clicks
  (``SAM2Base.track_step(..., prev_sam_mask_logits=...)``); "example" (a SAM2 trained by our
  stages on prompts; always for ``per_frame`` models), from an example prompt pooled from SAM2's
  features under the mask with the click disks applied (``ReviosaModel.example_prompts``, the
  prompt such models are trained on), the clicks acting only through it (see
  ``_decode_clicks_example``);
* the click itself is always honoured: where the decoder leaves a clicked pixel with the wrong
  label (an untrained or small SAM2 may ignore clicks), a disk of ``CorrectionConfig.click_radius``
  around it takes the click's label;
* later frames are re-segmented from the corrected frame: through SAM2's memory, the corrected
  frames being its conditioning frames (``sam.propagation == "memory"``), or, per frame, each
  decoded from the example prompt pooled under the corrected mask (``per_frame``).

Frames before a role's first click are never touched. The function is pure: the same tracks and
clicks give the same result, so an undo is a re-run with one click fewer.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from reviosa import sam as sam_ops
from reviosa.tokens import ROLES
from reviosa.video import FrameSource, MaskTrack

logger = logging.getLogger(__name__)

# SAM2's own logit scale for a binary mask used as a prediction (SAM2Base._use_mask_as_output).
MASK_LOGIT = 10.0


@dataclass(frozen=True)
class Click:
    """One click: ``x``, ``y`` in pixels of the frame (column, row), ``positive`` = "this is the role"."""

    frame: int
    role: str  # "actor" or "target"
    x: float
    y: float
    positive: bool = True


@dataclass(frozen=True)
class CorrectionConfig:
    # Radius of the disk set to a click's label when SAM2 leaves the clicked pixel wrong, as a
    # fraction of the frame's shorter side (5 px on the 128 px synthetic clips; at least 1 px).
    click_radius: float = 0.04


Tracks = Mapping[str, MaskTrack | np.ndarray | None]


def correct_tracks(
    model,
    video: FrameSource,
    tracks: Tracks,
    clicks: Sequence[Click],
    config: CorrectionConfig | None = None,
    progress: Callable[[float], None] | None = None,
) -> dict[str, MaskTrack | None]:
    """The tracks corrected by ``clicks``.

    model: a `reviosa.modeling.ReviosaModel` (its SAM2 and ``config.sam`` are used; no MLLM call).
    video: the frames the tracks cover, uint8 (T, H, W, 3) on demand.
    tracks: {"actor": bool (T, H, W) track, "target": track or None}; a role without a track starts
        from empty masks when it gets clicks (the user adds a target the model did not emit).
    Returns new tracks for both roles (inputs are not modified); a role without clicks is its input.
    Raises ValueError for clicks outside the clip or the frame, unknown roles, or mismatched tracks.
    """
    config = config or CorrectionConfig()
    size = tuple(video.size)
    checked = {role: _as_track(tracks.get(role), role, video.num_frames, size) for role in ROLES}
    _check_clicks(clicks, video.num_frames, size)
    out: dict[str, MaskTrack | None] = dict(checked)
    roles = [r for r in ROLES if any(c.role == r for c in clicks)]
    for n, role in enumerate(roles):
        base = checked[role] if checked[role] is not None else MaskTrack(video.num_frames, size)

        def report(frac: float, n=n) -> None:
            if progress is not None:
                progress((n + frac) / len(roles))

        out[role] = _correct_role(model, video, base, [c for c in clicks if c.role == role], config, report)
    return out


def _as_track(track, role: str, num_frames: int, size: tuple[int, int]) -> MaskTrack | None:
    if track is None:
        return None
    if not isinstance(track, MaskTrack):
        track = MaskTrack.from_array(np.asarray(track, dtype=bool))
    if track.shape != (num_frames, *size):
        raise ValueError(f"the {role} track is {track.shape}; the video is {(num_frames, *size)} (T, H, W)")
    return track


def _check_clicks(clicks: Sequence[Click], num_frames: int, size: tuple[int, int]) -> None:
    h, w = size
    for c in clicks:
        if c.role not in ROLES:
            raise ValueError(f"a click's role must be one of {', '.join(ROLES)}; got {c.role!r}")
        if not 0 <= c.frame < num_frames:
            raise ValueError(f"a click is on frame {c.frame}; the clip has frames 0..{num_frames - 1}")
        if not (0 <= c.x < w and 0 <= c.y < h):
            raise ValueError(f"a click at ({c.x:g}, {c.y:g}) is outside the {w}x{h} frame")


@torch.no_grad()
def _correct_role(model, video, track: MaskTrack, clicks: list[Click], config, report) -> MaskTrack:
    """One role: frames before the first click copied, the rest re-decoded (see the module doc)."""
    sam, cfg = model.sam, model.config.sam
    by_frame: dict[int, list[Click]] = {}
    for c in clicks:
        by_frame.setdefault(c.frame, []).append(c)
    start = min(by_frame)
    out = copy.deepcopy(track)
    memory = cfg.propagation == "memory"
    tracker = sam_ops.MemoryTracker(sam, video.num_frames) if memory else None
    example = None  # per_frame: (1, 1, P) prompt pooled under the latest corrected mask
    for t, frame in enumerate(video.iter_frames()):
        if t < start:
            continue
        pixels = sam_ops.preprocess(torch.from_numpy(frame[None]), cfg).to(model.device, model.dtype)
        feats = sam_ops.encode_images(sam, pixels)
        if t in by_frame:
            # The mask SAM2 gets with the clicks: the original one on the first clicked frame, the
            # re-propagated one on later clicked frames.
            current = track[t] if t == start else _propagated(model, tracker, example, feats, t, out[t])
            if memory and cfg.click_prompt == "points":
                mask, sam_out = _decode_clicks(sam, feats, by_frame[t], current, tracker, t, video.num_frames)
                mask = _honour_clicks(mask, by_frame[t], config.click_radius)
            else:
                mask, sam_out = _decode_clicks_example(
                    model, feats, by_frame[t], current, config.click_radius
                )
                example = None if memory else _example_prompt(model, feats, mask)
            if memory:
                tracker.output_dict["non_cond_frame_outputs"].pop(t, None)  # replaced by the corrected frame
                _store_condition(sam, tracker, feats, sam_out, mask, t)
        else:
            mask = _propagated(model, tracker, example, feats, t, out[t])
        out[t] = mask
        report((t - start + 1) / (video.num_frames - start))
    return out


def _propagated(model, tracker, example, feats, t: int, fallback: np.ndarray) -> np.ndarray:
    """Frame ``t`` segmented from the corrections so far (memory, or the example prompt)."""
    if tracker is not None:
        out = tracker.track(t, feats)
        return _to_frame(out["pred_masks"], fallback.shape)
    if example is None:  # per_frame after a correction that emptied the mask: nothing to prompt with
        return fallback
    out = sam_ops.decode_prompted(model.sam, feats, example.to(model.dtype))
    return _to_frame(out["pred_masks"], fallback.shape)


def _decode_clicks(sam, feats, clicks: list[Click], current: np.ndarray, tracker, t: int, num_frames: int):
    """SAM2's interactive decode of one frame (memory models): clicks as points, ``current`` as the
    mask input, and the memory of earlier corrected frames.

    Returns the bool (H, W) mask and SAM2's output dict (for the memory encoder).
    """
    h, w = current.shape
    coords, labels = _points(sam, clicks, (h, w), feats)
    points = {"point_coords": coords, "point_labels": labels}
    prev = _mask_logits(current, sam.image_size // 4, feats)  # (1, 1, S/4, S/4), SAM2's low-res size
    bank = tracker.output_dict
    # A first conditioning frame reads no memory (SAM2 adds its "no memory" embedding instead).
    first = not bank["cond_frame_outputs"]
    out = sam.track_step(
        frame_idx=t, is_init_cond_frame=first, current_vision_feats=feats.vision_feats,
        current_vision_pos_embeds=feats.vision_pos, feat_sizes=feats.feat_sizes, point_inputs=points,
        mask_inputs=None, output_dict=bank, num_frames=num_frames, run_mem_encoder=False,
        prev_sam_mask_logits=prev,
    )  # fmt: skip
    return _to_frame(out["pred_masks"], (h, w)), out


def _decode_clicks_example(model, feats, clicks: list[Click], current: np.ndarray, radius: float):
    """A clicked frame decoded from an example prompt of the clicked mask (``click_prompt``
    "example", and every per_frame model).

    Such a SAM2 was trained on prompts, never on mask inputs (the built-in model, from clicks and a
    mask input alone, covered a third of a 426x240 frame for one click). So the frame's current
    mask, edited by the clicks' disks, is pooled into an example prompt and decoded alone. The
    clicks are not given as points as well: on the built-in model of stage 2e, whose SAM2 reads
    points, a negative click in an object's middle then kept 0.57-0.91 of the rest of it and a
    negative click on a spilled-onto object kept 0.00-0.23 of the right one, against 0.97-1.00 and
    0.57-0.61 from the example alone; a positive click on an object grew to 0.67-0.99 of it, 0.81-1.00
    from the example alone (on examples/synth_push.mp4, frames 2, 5, 9, 14).

    Returns the bool (H, W) mask and SAM2's output dict (a memory model stores its object pointer
    with the corrected frame; the frame is decoded as a keyframe is, reading no memory).
    """
    seed = _honour_clicks(current, clicks, radius)
    example = _example_prompt(model, feats, seed)
    if example is None:
        # Every pixel removed: the role is not on this frame. A zero prompt's decode only supplies
        # the object pointer; the memory stores the empty mask with an absent object score.
        top = feats.vision_feats[-1]
        return seed, sam_ops.decode_prompted(model.sam, feats, top.new_zeros(1, 1, top.shape[-1]))
    out = sam_ops.decode_prompted(model.sam, feats, example.to(model.dtype))
    return _honour_clicks(_to_frame(out["pred_masks"], current.shape), clicks, radius), out


def _points(sam, clicks: list[Click], size: tuple[int, int], feats) -> tuple[torch.Tensor, torch.Tensor]:
    """Clicks as SAM2 points: (x, y) float (1, P, 2) in pixels of the S x S input, labels (1, P)."""
    h, w = size
    s = sam.image_size
    device = feats.vision_feats[-1].device
    # A click names a pixel, so its centre.
    coords = torch.tensor([[((c.x + 0.5) * s / w, (c.y + 0.5) * s / h) for c in clicks]], device=device)
    labels = torch.tensor([[1 if c.positive else 0 for c in clicks]], dtype=torch.int32, device=device)
    return coords, labels


def _mask_logits(mask: np.ndarray, side: int, feats) -> torch.Tensor:
    """bool (H, W) -> float (1, 1, side, side) logits at SAM2's scale (+-MASK_LOGIT)."""
    x = torch.from_numpy(mask.astype(np.float32))[None, None].to(feats.vision_feats[-1].device)
    x = F.interpolate(x, size=(side, side), mode="area")
    return (x * 2 - 1) * MASK_LOGIT


def _to_frame(low_res: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """SAM2 low-res logits (1, 1, h, w) -> bool (H, W) at frame size (as ReviosaModel does)."""
    logits = F.interpolate(low_res.float(), size=size, mode="bilinear", align_corners=False)
    return (logits[0, 0] > 0).cpu().numpy()


def _honour_clicks(mask: np.ndarray, clicks: list[Click], radius: float) -> np.ndarray:
    """Give every clicked pixel its click's label, painting a disk where SAM2 got it wrong.

    Clicks are applied in order, so a later click wins where two disks overlap.
    """
    mask = mask.copy()
    for c in clicks:
        if mask[int(c.y), int(c.x)] != c.positive:
            mask[click_disk(mask.shape, c, radius)] = c.positive
    return mask


def click_disk(shape: tuple[int, int], click: Click, radius: float) -> np.ndarray:
    """bool (H, W): the disk a click paints where SAM2 got its pixel wrong, ``radius`` times the
    frame's shorter side across (at least one pixel)."""
    h, w = shape
    r = max(1.0, radius * min(h, w))
    yy, xx = np.mgrid[:h, :w]
    return (yy - int(click.y)) ** 2 + (xx - int(click.x)) ** 2 <= r * r


def _store_condition(sam, tracker, feats, sam_out: dict, mask: np.ndarray, t: int) -> None:
    """Make the corrected frame a conditioning frame, its memory encoded from the final mask."""
    s = sam.image_size
    device = feats.vision_feats[-1].device
    high = torch.from_numpy(mask.astype(np.float32))[None, None].to(device)
    high = (F.interpolate(high, size=(s, s), mode="nearest") * 2 - 1) * MASK_LOGIT  # (1, 1, S, S)
    score = torch.full((1, 1), MASK_LOGIT if mask.any() else -MASK_LOGIT, device=device)
    out = {
        "point_inputs": sam_out["point_inputs"],
        "mask_inputs": None,
        "pred_masks": F.interpolate(high, size=(s // 4, s // 4), mode="area"),
        "obj_ptr": sam_out["obj_ptr"],
        "object_score_logits": score,
    }
    sam._encode_memory_in_output(
        feats.vision_feats, feats.feat_sizes, sam_out["point_inputs"], True, high, score, out
    )
    keep = ("maskmem_features", "maskmem_pos_enc", "obj_ptr", "pred_masks", "object_score_logits")
    tracker.output_dict["cond_frame_outputs"][t] = {k: out[k] for k in keep}


def _example_prompt(model, feats, mask: np.ndarray) -> torch.Tensor | None:
    """(1, 1, P) prompt pooled from SAM2's features under ``mask``, or None for an empty mask."""
    if not mask.any():
        return None
    s = model.sam.image_size
    m = torch.from_numpy(mask.astype(np.float32))[None, None].to(feats.vision_feats[-1].device)
    m = F.interpolate(m, size=(s, s), mode="nearest").reshape(1, 1, 1, s, s)  # (B, R, F, S, S)
    prompts, _valid = model.example_prompts(feats, m)  # (1, 1, P)
    return prompts
