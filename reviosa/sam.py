"""SAM2 (Meta's ``sam2`` package) prompted with one embedding from the MLLM.

The projected ``[SEG_*]`` state is appended to SAM2's sparse prompt tokens (FACTS.md: "appended as
one extra sparse prompt token"). Keyframes are decoded with that prompt and become SAM2's
conditioning frames; every other frame is tracked from memory, streaming, so that only the memory
bank SAM2 reads stays on the device.

The sam2 package's predictors run under ``torch.inference_mode`` and read whole videos; we drive
``SAM2Base`` through its per-frame API instead (pinned sam2 1.1.0, see requirements).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reviosa.config import SamConfig
from reviosa.hooks import this_thread_only
from reviosa.processor import pil_resize

# What sam2 writes into the mask logits of frames it scores as object-free (sam2_base.NO_OBJ_SCORE).
NO_OBJ_SCORE = -1024.0


def build_sam(cfg: SamConfig, device: torch.device | str = "cpu") -> nn.Module:
    """Build a randomly initialised ``SAM2Base`` from the package's hydra config.

    Weights are loaded afterwards by the model's strict loader. Building under
    ``torch.device("meta")`` allocates nothing (used to count parameters of real presets).
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    overrides = [f"++model.image_size={cfg.image_size}", *cfg.overrides]
    # sam2's __init__ initialises hydra globally; re-initialise only when someone cleared it.
    if not GlobalHydra.instance().is_initialized():
        initialize_config_module("sam2", version_base="1.2")
    conf = compose(config_name=cfg.config_name, overrides=overrides)
    OmegaConf.resolve(conf)
    with torch.device(device):
        model = instantiate(conf.model, _recursive_=True)
    return model.eval()


@contextlib.contextmanager
def language_prompt(sam: nn.Module, embedding: torch.Tensor) -> Iterator[None]:
    """Append ``embedding`` (B, 1, C) to every sparse prompt SAM2's prompt encoder returns.

    A forward hook rather than a subclass keeps the module tree, and so the checkpoint keys, those
    of the sam2 package.
    """

    def hook(_module, _inputs, outputs):
        sparse, dense = outputs
        extra = embedding.to(dtype=sparse.dtype)
        if extra.shape[0] != sparse.shape[0]:
            raise ValueError(f"prompt batch {extra.shape[0]} != image batch {sparse.shape[0]}")
        return torch.cat([sparse, extra], dim=1), dense

    handle = sam.sam_prompt_encoder.register_forward_hook(this_thread_only(hook))
    try:
        yield
    finally:
        handle.remove()


def preprocess(frames: torch.Tensor, cfg: SamConfig) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, S, S) normalised for SAM2 (S = cfg.image_size).

    ``cfg.resize``: "bilinear" (torch, float, no antialias) or "pil_bicubic" (PIL on uint8, as the
    references' ``DirectResize`` does before normalising).
    """
    if cfg.resize == "pil_bicubic":
        x = pil_resize(frames.cpu().numpy(), cfg.image_size).to(frames.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
    else:
        x = frames.permute(0, 3, 1, 2).float().div_(255.0)
        x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(cfg.pixel_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.pixel_std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclass
class FrameFeatures:
    """SAM2 backbone features of one batch of frames, flattened as SAM2Base expects."""

    vision_feats: list[torch.Tensor]  # per level (h*w, B, C)
    vision_pos: list[torch.Tensor]  # per level (h*w, B, C)
    feat_sizes: list[tuple[int, int]]

    def high_res(self) -> list[torch.Tensor] | None:
        """The finer levels as (B, C, h, w) maps for the mask decoder, or None if unused."""
        if len(self.vision_feats) == 1:
            return None
        return [
            x.permute(1, 2, 0).reshape(x.shape[1], x.shape[2], *s)
            for x, s in zip(self.vision_feats[:-1], self.feat_sizes[:-1], strict=True)
        ]


def encode_images(sam: nn.Module, images: torch.Tensor) -> FrameFeatures:
    """Run the SAM2 image encoder on preprocessed images (B, 3, S, S)."""
    backbone_out = sam.forward_image(images)
    _, feats, pos, sizes = sam._prepare_backbone_features(backbone_out)
    return FrameFeatures(feats, pos, sizes)


def pooled_under_masks(
    per_frame: torch.Tensor, masks: torch.Tensor, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each object's features averaged over its masks on all its frames, weighted by the mask's
    cover of each feature cell: the example prompts that teach SAM2's decoder (and the role
    prompts) to select an object by what it looks like.

    per_frame: (gy*gx, B, F, C) top-level features of each row's F frames (SAM2's sequence-first
    layout); masks: float (B, R, F, h, w), h and w multiples of the grid (gy, gx). Returns prompts
    (B, R, C) and valid bool (B, R) (False: empty masks, zero prompts).
    """
    b, r, f = masks.shape[:3]
    gy, gx = grid
    cover = F.adaptive_avg_pool2d(masks.flatten(0, 2).float(), (gy, gx)).reshape(b, r, f, gy * gx)
    area = cover.sum((2, 3))  # (B, R)
    summed = torch.einsum("brfn,nbfc->brc", cover.to(per_frame.dtype), per_frame)
    valid = area > 0
    prompts = summed / area.clamp_min(1e-6).unsqueeze(-1).to(summed.dtype)
    return prompts * valid.unsqueeze(-1).to(prompts.dtype), valid


def decode_prompted(
    sam: nn.Module,
    features: FrameFeatures,
    prompt: torch.Tensor,
    output_dict: dict | None = None,
    frame_idx: int = 0,
    num_frames: int = 1,
    points: tuple[torch.Tensor, torch.Tensor] | None = None,
    multimask: bool = False,
    overwrite: bool = True,
) -> dict[str, torch.Tensor]:
    """Decode frames as SAM2 conditioning frames prompted by ``prompt`` (B, 1, C) and, optionally,
    SAM2's own clicks ``points``: coordinates float (B, P, 2) as (x, y) in pixels of the S x S
    input, labels long (B, P) (1 object, 0 background, -1 padding: no click).

    Training and inference share this function with the "no memory" embedding SAM2 adds to
    initial conditioning frames. Training decodes one mask (``multimask`` False); the references'
    inference decodes SAM2's three and keeps the best predicted IoU (``multimask`` True).
    ``overwrite``: sam2's -1024 on frames it scores as object-free (the references skip it).

    Returns SAM2's per-frame output dict: ``pred_masks`` (B, 1, S/4, S/4) logits,
    ``pred_masks_high_res`` (B, 1, S, S), ``obj_ptr`` (B, C), ``object_score_logits`` (B, 1),
    ``iou`` (B,) the kept mask's predicted IoU, ``ious`` (B, M) all of them, and ``raw_masks``
    (B, 1, S/4, S/4): the kept mask's logits before any overwrite, which would cut the mask loss's
    gradient there.
    """
    output_dict = output_dict or {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    pix_feat = sam._prepare_memory_conditioned_features(
        frame_idx=frame_idx,
        is_init_cond_frame=True,
        current_vision_feats=features.vision_feats[-1:],
        current_vision_pos_embeds=features.vision_pos[-1:],
        feat_sizes=features.feat_sizes[-1:],
        output_dict=output_dict,
        num_frames=num_frames,
    )
    point_inputs = None
    if points is not None:
        point_inputs = {"point_coords": points[0], "point_labels": points[1]}
    with language_prompt(sam, prompt):
        out = forward_heads(sam, pix_feat, features.high_res(), point_inputs, multimask, overwrite)
    return {"point_inputs": point_inputs, "mask_inputs": None, **out}


def forward_heads(
    sam: nn.Module,
    pix_feat: torch.Tensor,
    high_res: list[torch.Tensor] | None,
    point_inputs: dict | None,
    multimask: bool,
    overwrite: bool,
) -> dict[str, torch.Tensor]:
    """SAM2's prompt encoder and mask decoder on memory-conditioned features (B, C, h, w).

    What ``SAM2Base._forward_sam_heads`` of sam2 1.1.0 computes without mask inputs, with its
    object-score overwrite made optional: with ``multimask`` the mask of the highest predicted IoU
    is kept and the object pointer comes from that mask's output token.
    """
    b, device = pix_feat.shape[0], pix_feat.device
    if point_inputs is None:  # no clicks: one padding point (label -1), as SAM2 does
        coords = torch.zeros(b, 1, 2, device=device)
        labels = -torch.ones(b, 1, dtype=torch.int32, device=device)
    else:
        coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
    sparse, dense = sam.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    low_multi, ious, tokens_out, object_score = sam.sam_mask_decoder(
        image_embeddings=pix_feat,
        image_pe=sam.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=False,
        high_res_features=high_res,
    )
    raw_multi = low_multi
    appearing = object_score > 0  # (B, 1)
    if sam.pred_obj_scores and overwrite:
        low_multi = torch.where(appearing[:, None, None], low_multi, NO_OBJ_SCORE)
    low_multi = low_multi.float()
    high_multi = F.interpolate(low_multi, size=(sam.image_size,) * 2, mode="bilinear", align_corners=False)
    token = tokens_out[:, 0]
    best = torch.zeros(b, dtype=torch.long, device=device)
    if multimask:
        best = torch.argmax(ious, dim=-1)
        if tokens_out.shape[1] > 1:
            token = tokens_out[torch.arange(b, device=device), best]
    rows = torch.arange(b, device=device)
    obj_ptr = sam.obj_ptr_proj(token)
    if sam.pred_obj_scores:
        weight = object_score.sigmoid() if sam.soft_no_obj_ptr else appearing.to(obj_ptr.dtype)
        if sam.fixed_no_obj_ptr:
            obj_ptr = weight * obj_ptr
        obj_ptr = obj_ptr + (1 - weight) * sam.no_obj_ptr
    return {
        "pred_masks": low_multi[rows, best].unsqueeze(1),
        "pred_masks_high_res": high_multi[rows, best].unsqueeze(1),
        "obj_ptr": obj_ptr,
        "object_score_logits": object_score,
        "iou": ious[rows, best],
        "ious": ious,
        "raw_masks": raw_multi[rows, best].unsqueeze(1).float(),
    }


class MemoryTracker:
    """Streams frames through SAM2's memory, holding only the outputs SAM2 can still read.

    Keyframe outputs (conditioning frames) are kept for the whole clip; of the tracked frames only
    the last ``max(num_maskmem, max_obj_ptrs_in_encoder)`` are kept, since SAM2 reads no older ones.
    Per-frame high-resolution logits are dropped from the bank as soon as the caller has them.
    ``cfg`` (the model's SamConfig) carries the protocol: multimask keyframes, the object-score
    overwrite, and the dtype memory features are stored in.
    """

    def __init__(self, sam: nn.Module, num_frames: int, cfg: SamConfig | None = None):
        self.sam = sam
        self.num_frames = num_frames
        self.cfg = cfg or SamConfig()
        self.output_dict: dict[str, dict[int, dict]] = {
            "cond_frame_outputs": {},
            "non_cond_frame_outputs": {},
        }
        self.window = max(sam.num_maskmem, getattr(sam, "max_obj_ptrs_in_encoder", 16))

    def condition(self, frame_idx: int, features: FrameFeatures, prompt: torch.Tensor) -> dict:
        """Decode a keyframe from the prompt and store it as a conditioning frame."""
        out = decode_prompted(
            self.sam, features, prompt, self.output_dict, frame_idx, self.num_frames,
            multimask=self.cfg.multimask_prompted, overwrite=self.cfg.object_score_overwrite,
        )  # fmt: skip
        self.sam._encode_memory_in_output(
            features.vision_feats, features.feat_sizes, None, True,
            out["pred_masks_high_res"], out["object_score_logits"], out,
        )  # fmt: skip
        self.output_dict["cond_frame_outputs"][frame_idx] = self._compact(out)
        return out

    def track(self, frame_idx: int, features: FrameFeatures) -> dict:
        """Segment a non-keyframe from memory (keyframes conditioned so far and recent frames).

        SAM2's ``track_step`` without clicks or mask inputs, its heads replaced by `forward_heads`
        so that the protocol's object-score overwrite applies here too.
        """
        sam = self.sam
        pix_feat = sam._prepare_memory_conditioned_features(
            frame_idx=frame_idx,
            is_init_cond_frame=False,
            current_vision_feats=features.vision_feats[-1:],
            current_vision_pos_embeds=features.vision_pos[-1:],
            feat_sizes=features.feat_sizes[-1:],
            output_dict=self.output_dict,
            num_frames=self.num_frames,
        )
        multimask = sam._use_multimask(False, None)  # SAM2's own rule for tracked frames
        out = forward_heads(
            sam, pix_feat, features.high_res(), None, multimask, self.cfg.object_score_overwrite
        )
        out.update(point_inputs=None, mask_inputs=None)
        sam._encode_memory_in_output(
            features.vision_feats, features.feat_sizes, None, True,
            out["pred_masks_high_res"], out["object_score_logits"], out,
        )  # fmt: skip
        bank = self.output_dict["non_cond_frame_outputs"]
        bank[frame_idx] = self._compact(out)
        for old in [t for t in bank if t <= frame_idx - self.window]:
            del bank[old]
        return out

    def _compact(self, out: dict) -> dict:
        # What _prepare_memory_conditioned_features reads; the high-res logits are the big item.
        keep = ("maskmem_features", "maskmem_pos_enc", "obj_ptr", "pred_masks", "object_score_logits")
        kept = {k: out[k] for k in keep if k in out}
        if self.cfg.memory_dtype == "bfloat16" and kept.get("maskmem_features") is not None:
            # The references store memory features in bf16 on every device (SAM2 reads them back
            # into the float32 memory it attends to).
            kept["maskmem_features"] = kept["maskmem_features"].to(torch.bfloat16)
        return kept
