"""Training losses as pure functions (FACTS.md, "Attention mask loss"; paper Eq. 6-8).

Every loss returns a **sum over batch rows** of per-row values; the trainer divides by the nominal
number of rows of a micro-batch (batch size x expressions per clip). A sum over rows, rather than a
mean over whichever rows happen to be valid, makes a micro-batch's loss additive: gradient
accumulation and DDP (whose gradients are averaged over equal-sized shards) then give exactly the
gradient of one large batch.

Axis letters: B rows (one per expression), R roles (actor, target), F decoded frames, K keyframes,
h/w SAM2 low-res mask size (S/4), g vision-token grid side, NL / NH supervised layers / heads,
N supervised answer tokens, V vocabulary, D hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, reduce

DICE_SMOOTH = 1.0  # Sa2VA's DiceLoss adds 1 to numerator and denominator (no NaN on empty masks)


def sigmoid_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask binary cross-entropy on logits, averaged over pixels.

    logits, targets: float (..., h, w); targets in [0, 1]. Returns float (...).
    """
    ce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return reduce(ce, "... h w -> ...", "mean")


def dice(logits: torch.Tensor, targets: torch.Tensor, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Per-mask soft Dice loss 1 - (2|p t| + s) / (|p| + |t| + s), p = sigmoid(logits).

    logits, targets: float (..., h, w). Returns float (...): 0 for a perfect prediction (an empty
    target predicted empty included), close to 1 for disjoint masks.
    """
    p = torch.sigmoid(logits.float())
    t = targets.float()
    inter = reduce(p * t, "... h w -> ...", "sum")
    total = reduce(p, "... h w -> ...", "sum") + reduce(t, "... h w -> ...", "sum")
    return 1.0 - (2.0 * inter + smooth) / (total + smooth)


@dataclass
class SegLoss:
    """Segmentation loss terms, each a sum over rows of the per-row value (float scalars)."""

    ce: torch.Tensor
    dice: torch.Tensor

    def total(self, ce_weight: float, dice_weight: float) -> torch.Tensor:
        return ce_weight * self.ce + dice_weight * self.dice


def seg_loss(mask_logits: torch.Tensor, masks: torch.Tensor, role_weight: torch.Tensor) -> SegLoss:
    """Per-role sigmoid CE and Dice, summed over roles (paper Eq. 7), summed over rows.

    mask_logits: float (B, R, F, h, w) SAM2 low-res logits.
    masks: float (B, R, F, h, w) ground truth at the same size.
    role_weight: float (B, R), 1 where the role is supervised: the actor always, the target only
        for unidirectional expressions (bidirectional ones have no target, FACTS.md).
    Each (row, role) term is the mean over its F frames.
    """
    ce = reduce(sigmoid_ce(mask_logits, masks), "b r f -> b r", "mean")
    di = reduce(dice(mask_logits, masks), "b r f -> b r", "mean")
    return SegLoss(ce=(ce * role_weight).sum(), dice=(di * role_weight).sum())


def other_objects(masks: torch.Tensor, clip_of: torch.Tensor) -> torch.Tensor:
    """Pixels of the clip's other objects: float (B, R, F, h, w), 1 where any role of any row of the
    same clip is masked but this (row, role) is not. The objects a batch knows of are those its rows
    name, so a clip's objects that no sampled expression names are not among them."""
    known = masks.amax(1)  # (B, F, h, w)
    clips = int(clip_of.max()) + 1
    union = known.new_zeros(clips, *known.shape[1:]).index_add_(0, clip_of, known).clamp_(max=1.0)
    return (union[clip_of].unsqueeze(1) - masks).clamp(min=0.0)


def hard_negative_loss(
    mask_logits: torch.Tensor, masks: torch.Tensor, clip_of: torch.Tensor, role_weight: torch.Tensor
) -> torch.Tensor:
    """Sigmoid CE toward background on the other objects' pixels (``other_objects``), the mean over
    those pixels of each (row, role), summed over the weighted roles and rows (a float scalar).

    The plain CE spreads its weight over every pixel, so "segment every object" costs a decoder
    little; this term prices a mask on the wrong object by itself.
    mask_logits, masks: float (B, R, F, h, w); clip_of: long (B,); role_weight: float (B, R).
    """
    others = other_objects(masks, clip_of)
    bce = F.softplus(mask_logits.float())  # -log(1 - sigmoid(x)): CE with target 0
    per_role = (bce * others).sum((2, 3, 4)) / others.sum((2, 3, 4)).clamp_min(1.0)
    return (per_role * role_weight).sum()


def object_loss(
    object_logits: torch.Tensor, present: torch.Tensor, role_weight: torch.Tensor
) -> torch.Tensor:
    """Object-presence BCE on SAM2's object score logits, summed over roles and rows.

    SAM2 blanks every frame whose object logit is negative, so an untrained presence head erases
    masks at inference time (models trained from scratch need this term; SAM2 checkpoints already
    carry a trained head).

    object_logits: float (B, R, F); present: float (B, R, F), 1 where the role's mask is non-empty;
    role_weight: float (B, R). Each (row, role) term is the mean over frames.
    """
    bce = F.binary_cross_entropy_with_logits(object_logits.float(), present.float(), reduction="none")
    return (reduce(bce, "b r f -> b r", "mean") * role_weight).sum()


def grid_targets(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Masks nearest-resized to the vision-token grid, per frame (FACTS.md: nearest to 16x16).

    masks: bool or float (..., H, W) -> float (..., g, g).
    """
    lead = masks.shape[:-2]
    flat = masks.float().reshape(-1, 1, *masks.shape[-2:])
    small = F.interpolate(flat, size=(grid, grid), mode="nearest")
    return small.reshape(*lead, grid, grid)


def attention_mask_loss(rows: torch.Tensor, targets: torch.Tensor, role_weight: torch.Tensor) -> torch.Tensor:
    """AML (paper Eq. 6): BCE between attention rows and role masks on the token grid.

    Per (row, role, layer, head): the mean BCE over the K x g x g vision tokens of the raw softmax
    probabilities (not renormalised over vision tokens) against the binary grid mask; then averaged
    over the supervised layer-heads, summed over supervised roles, summed over rows.

    rows: float (B, R, NL, NH, K, g, g), as ``reviosa.attention.AttentionRows.rows``; or the flat
        (B, R, NL, NH, N) with N = K * g * g in InternVL's token order (frame-major, then row-major
        (y, x) within a frame), which is unflattened here with that order spelled out.
    targets: float (B, R, K, g, g): the role's mask on each keyframe, expression-major (row b holds
        its own expression's masks; see `grid_targets`).
    role_weight: float (B, R).
    """
    k, g = targets.shape[2], targets.shape[-1]
    if rows.dim() == 5:
        rows = rearrange(rows, "b r nl nh (k y x) -> b r nl nh k y x", k=k, y=g, x=g)
    if rows.shape[-3:] != targets.shape[-3:] or rows.shape[:2] != targets.shape[:2]:
        raise ValueError(f"attention rows {tuple(rows.shape)} do not match targets {tuple(targets.shape)}")
    # Probabilities can round to exactly 0 or 1 in low precision; BCE clamps its log at -100 anyway.
    probs = rows.float().clamp(0.0, 1.0)
    gt = rearrange(targets.float(), "b r k y x -> b r 1 1 k y x").expand_as(probs)
    bce = F.binary_cross_entropy(probs, gt, reduction="none")
    per_head = reduce(bce, "b r nl nh k y x -> b r nl nh", "mean")
    per_role = reduce(per_head, "b r nl nh -> b r", "mean")
    return (per_role * role_weight).sum()


def text_ce(logits: torch.Tensor, targets: torch.Tensor, row_of: torch.Tensor, rows: int) -> torch.Tensor:
    """Next-token cross-entropy on the answer: mean over each row's answer tokens, summed over rows.

    logits: float (N, V) at the supervised positions; targets: long (N,);
    row_of: long (N,) the batch row of each position; rows: B.
    Per-row means (rather than one mean over all tokens) keep the loss additive over rows.
    """
    ce = F.cross_entropy(logits.float(), targets, reduction="none")  # (N,)
    sums = torch.zeros(rows, device=ce.device).index_add(0, row_of, ce)
    counts = torch.zeros(rows, device=ce.device).index_add(0, row_of, torch.ones_like(ce))
    return (sums / counts.clamp_min(1.0)).sum()


def supervised_rows(labels: torch.Tensor) -> torch.Tensor:
    """Row index of each supervised next-token position, in the order ``forward_train`` gathers them.

    labels: long (B, L), -100 outside the answer. Returns long (N,).
    """
    return (labels[:, 1:] != -100).nonzero()[:, 0]


def grounding_loss(
    role_states: torch.Tensor,
    vision_states: torch.Tensor,
    targets: torch.Tensor,
    role_weight: torch.Tensor,
    scale: float = 10.0,
    mode: str = "bce",
) -> torch.Tensor:
    """Auxiliary grounding of the role-token state (switch ``loss.grounding``; not in the paper).

    The role state must single out its referent among the vision tokens, by the cosine similarity
    of the last-layer role state with each vision token's last-layer state. The feasibility run
    (FACTS.md) found the role state carrying too little about the referent; this term asks for
    exactly that, with no extra parameters.

    mode "bce": ``scale * (cos - 0.5)`` trained with a mean BCE against the grid masks. With a few
        positive tokens among K * g * g, "nothing matches" already scores low.
    mode "contrastive": a softmax of ``scale * cos`` over all the clip's vision tokens, whose
        cross-entropy against the mask (uniform over the referent's tokens) can only be lowered by
        making the referent's tokens the most similar ones. Rows whose referent is on no keyframe
        are skipped.

    role_states: float (B, R, D); vision_states: float (B, K, g, g, D); targets: float (B, R, K, g, g);
    role_weight: float (B, R). Returns the sum over rows and roles of the per-(row, role) loss.
    """
    s = F.normalize(role_states.float(), dim=-1)
    v = F.normalize(vision_states.float(), dim=-1)
    cos = torch.einsum("brd,bkyxd->brkyx", s, v)
    if mode == "bce":
        bce = F.binary_cross_entropy_with_logits(scale * (cos - 0.5), targets.float(), reduction="none")
        return (reduce(bce, "b r k y x -> b r", "mean") * role_weight).sum()
    if mode != "contrastive":
        raise ValueError(f"unknown grounding mode {mode!r}; use 'bce' or 'contrastive'")
    log_p = F.log_softmax(rearrange(scale * cos, "b r k y x -> b r (k y x)"), dim=-1)
    tgt = rearrange(targets.float(), "b r k y x -> b r (k y x)")
    area = tgt.sum(-1)  # (B, R)
    per_role = -(tgt * log_p).sum(-1) / area.clamp_min(1.0)
    return (per_role * role_weight * (area > 0)).sum()


def region_words_loss(
    vision_inputs: torch.Tensor,
    targets: torch.Tensor,
    embedding: torch.Tensor,
    words: torch.Tensor,
    role_weight: torch.Tensor,
    scale: float = 10.0,
) -> torch.Tensor:
    """The referent's vision tokens, as the language model receives them, must name the words of
    the expression (switch ``loss.words``; not in the paper).

    The mean of the vision-token inputs under the referent's grid mask is scored against every
    row of the input embedding (``scale * cos``, a softmax over the vocabulary); the loss is the
    mean of minus the log-probability of each of the expression's tokens. A linear probe of the
    built-in model's vision tokens read colour on 100 % of val referents and shape on 19 %
    (majority class 30 %; ``train.probes.probe_words``), and its masks failed the expressions that name
    no colour: the language path teaches the vision tower only what it already separates. This
    term asks the tokens to carry every word said of them, with no extra parameters. The other role's words are in the target too; they
    vary across clips, so what stays is what is always said of the referent.

    vision_inputs: float (B, K, g, g, D); targets: float (B, R, K, g, g); embedding: float (V, D);
    words: long (B, W) token ids, -1 padding; role_weight: float (B, R).
    Returns the sum over the weighted rows and roles whose referent is on a keyframe.
    """
    area = targets.flatten(2).sum(-1)  # (B, R)
    region = torch.einsum("brkyx,bkyxd->brd", targets.float(), vision_inputs.float())
    region = region / area.clamp_min(1.0)[..., None]
    cos = F.normalize(region, dim=-1) @ F.normalize(embedding.float(), dim=-1).T  # (B, R, V)
    log_p = F.log_softmax(scale * cos, dim=-1)
    said = words >= 0  # (B, W)
    index = words.clamp_min(0)[:, None, :].expand(-1, log_p.shape[1], -1)  # (B, R, W)
    picked = log_p.gather(-1, index) * said[:, None].to(log_p.dtype)
    per_role = -picked.sum(-1) / said.sum(-1, keepdim=True).clamp_min(1)
    return (per_role * role_weight * (area > 0)).sum()


def distill_loss(prompts: torch.Tensor, targets: torch.Tensor, role_weight: torch.Tensor) -> torch.Tensor:
    """Pull the role prompts toward target prompts (switch ``loss.distill``; not in the paper).

    Relative squared error ``|p - t|^2 / |t|^2`` per (row, role), so the term does not depend on
    the scale of SAM2's features; the targets are detached (only the prompt's side moves).

    prompts, targets: float (B, R, P); role_weight: float (B, R) (0 where a role has no target).
    Returns the sum over rows and roles.
    """
    t = targets.detach().float()
    err = (prompts.float() - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(1e-6)
    return (err * role_weight).sum()


def same_object(masks: torch.Tensor, clip_of: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Which (row, role) pairs name the same object: same clip and mask IoU over ``threshold``.

    masks: float (B, R, F, h, w) in [0, 1] on the same F frames for the rows of one clip;
    clip_of: long (B,). Returns bool (B*R, B*R) (empty masks match nothing, not even themselves).
    """
    m = (masks > 0.5).flatten(2).float()  # (B, R, N)
    m = m.reshape(-1, m.shape[-1])  # (B*R, N)
    inter = m @ m.T
    area = m.sum(-1)
    union = area[:, None] + area[None, :] - inter
    clip = clip_of.repeat_interleave(masks.shape[1])  # (B*R,) row-major like the reshape
    return (inter > threshold * union) & (union > 0) & (clip[:, None] == clip[None, :])


def prompt_contrast_loss(
    prompts: torch.Tensor,
    targets: torch.Tensor,
    masks: torch.Tensor,
    clip_of: torch.Tensor,
    role_weight: torch.Tensor,
    scale: float = 10.0,
) -> torch.Tensor:
    """Each role prompt must be nearer its referent's example prompt than any other object's
    (switch ``loss.contrast``; not in the paper).

    A softmax of ``scale * cos`` over the batch's example prompts (every valid row and role); the
    loss is minus the log of the mass on the examples of the same object (``same_object``). The
    relative error of ``distill_loss`` can be lowered by the examples' common part alone (a
    built-in model trained without this term ended with actor and target prompts at cosine 0.91
    with each other, near-chance at telling their examples apart); this term rewards only what
    tells objects apart. The prompts come from the role states that lm_head also reads, so the
    term competes with the answer tokens (docs/training.md).

    prompts, targets: float (B, R, P), targets detached; masks: float (B, R, F, h, w);
    clip_of: long (B,); role_weight: float (B, R), 0 where a role has no example.
    Returns the sum over the weighted rows and roles.
    """
    weight = role_weight.flatten()  # (B*R,)
    p = F.normalize(prompts.float().flatten(0, 1), dim=-1)
    t = F.normalize(targets.detach().float().flatten(0, 1), dim=-1)
    logits = scale * p @ t.T  # (B*R, B*R)
    keys = weight > 0
    logits = logits.masked_fill(~keys[None, :], float("-inf"))
    positive = same_object(masks, clip_of) & keys[None, :]
    log_all = torch.logsumexp(logits, dim=-1)
    log_pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=-1)
    per_role = (log_all - log_pos).masked_fill(~positive.any(-1), 0.0)
    return (per_role * weight).sum()


def role_pair_loss(
    prompts: torch.Tensor,
    targets: torch.Tensor,
    masks: torch.Tensor,
    role_weight: torch.Tensor,
    scale: float = 10.0,
) -> torch.Tensor:
    """Each role prompt must be nearer its own referent's example prompt than the other role's of
    the same row (switch ``loss.role_pair``; not in the paper).

    ``prompt_contrast_loss`` spreads its weight over every example of the batch, most of them
    other clips' and easy to tell apart; the actor and target of one expression are the pair the
    installed model confuses (their role prompts at cosine 0.94, their masks at IoU 0.79 with each
    other: ``train.probes.diagnose``). This is the two-way softmax of ``scale * cos`` over just
    that pair, for rows with two valid roles on different objects.

    prompts, targets: float (B, 2, P), targets detached; masks: float (B, 2, F, h, w);
    role_weight: float (B, 2), 0 where a role has no example. Returns the sum over the weighted
    rows and roles (0 when no row has a pair).
    """
    if prompts.shape[1] < 2:  # one [SEG]: no pair
        return prompts.float().sum() * 0.0
    p = F.normalize(prompts.float(), dim=-1)
    t = F.normalize(targets.detach().float(), dim=-1)
    own = scale * (p * t).sum(-1)  # (B, 2)
    other = scale * (p * t.flip(1)).sum(-1)  # (B, 2): actor vs the target's example and back
    per_role = F.softplus(other - own)  # -log softmax over {own, other}
    m = (masks > 0.5).flatten(2).float()  # (B, 2, N)
    inter = (m[:, 0] * m[:, 1]).sum(-1)
    union = m.sum((1, 2)) - inter
    apart = inter <= 0.5 * union  # (B,): the same threshold as same_object
    paired = (role_weight > 0).all(-1) & apart
    return (per_role * role_weight * paired[:, None].to(per_role.dtype)).sum()
