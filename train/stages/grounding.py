"""Grounding phase of stages 3 and 4: the role prompts taught to pick out their referents, with
SAM2's decoder out of the loop.

python -m train.stages.grounding --stage1 checkpoints/stage1 --stage2 checkpoints/stage2e \
    --out runs/stage3a [--steps 3000] [--resume]                               # one [SEG] (stage 3)
python -m train.stages.grounding --init runs/stage3/model --two-tokens --aml 1 --aml-layer 2 \
    --aml-heads 2 0 3 1 --motion 1 --roles 1 --role-query 1 --out runs/stage4a [--steps 4000] \
    [--resume]                                                                 # [SEG_ACT] / [SEG_TAR]

A stage-3 step of the loop decodes every role prompt and every example prompt with SAM2 on four
frames (2.2 of its 3 s on the 2 cores, against 0.44 s for the language model), and its only
signal that a prompt names the right object among the clip's others is the mask loss and a
contrast against the batch's other referents (mostly other clips' objects, easy to tell apart).
Here every clip's objects' example prompts (SAM2's frozen features pooled under each object on
the keyframes: what stage 2 taught the decoder to follow) are computed once, and a step asks each
role prompt to be nearest its own referent's among them: the hard negatives are the objects
beside it. A clip's expressions share one packed row (each turn attends the keyframes and itself,
at the positions it would have alone), so its vision tokens go through the language model once.

Terms (weights in `GroundingConfig`): the answer's text CE; ``choice``, a softmax of ``scale * cos``
of each role prompt over its clip's objects' example prompts (and the referent set's, for
several referents), CE on the referent; ``distill``, the relative squared error to the referent's
example prompt; ``grounding`` (the recipe's contrastive term: the role state nearest its
referent's vision tokens); ``aml``, the paper's attention mask loss on the supervised heads
(stage 4 only: Sa2VA has none); ``motion`` (off unless given), a linear head's read of each
object's move since the previous keyframe from the vision tokens after one LLM layer
(`motion_term`); ``roles`` (off unless given), another head's read, from the same tokens, of which
side of an interaction each object is on (`role_term`); ``role_query`` (off unless given), that
head's read of the same from each role token (`role_query_term`). With both, stage 4 tells "object
pushing another object" from "object being pushed by another object"; ``motion_query`` (off unless
given), the motion head's read of a named direction's move from ``[SEG_ACT]``
(`motion_query_term`; measured, no gain). The heads are never exported. The vision tower is
frozen, as in stages 3-4, unless ``vision_lr_scale`` > 0 (measured, no gain); the projector,
language model and prompt MLP train. The mask decoder is the next phase's (the loop's stage 3 or 4
from this export, ``model.kind: pretrained``).

Held-out figure: the share of role prompts whose nearest example prompt among their clip's
objects is the referent's (``pick``), by caption type and by what the expression names (a colour,
a shape only, neither), on the recipe's validation clips with uniform keyframes as inference
takes them. Writes OUT/model (a ``from_pretrained`` folder), OUT/state.pt (resume), OUT/records.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reviosa import sam as sam_ops
from reviosa.attention import AttentionCapture, vision_positions_from_ids
from reviosa.config import AttentionSupervision
from reviosa.data.synth import WorldConfig, make_clip
from reviosa.data.synth_language import VERBS, Description, SceneFacts
from reviosa.modeling import ReviosaModel
from reviosa.processor import keyframe_indices
from train import losses
from train.data import ACTOR_AND_TARGET, ACTOR_ONLY, coverage, grid_masks, sample_keyframes
from train.objective import vision_token_states
from train.probes.probe_words import DEFAULT_GROUPS, named
from train.stages.common import RECIPE, lr_at
from train.stages.packing import Packed, Turn, pack
from train.stages.sam_pretrain import jpeg_round_trip
from train.stages.vl_pretrain import prefix_ids

logger = logging.getLogger(__name__)

STATE, RECORDS, MODEL = "state.pt", "records.json", "model"


@dataclass
class GroundingConfig:
    steps: int = 3000
    clips: int = 8  # clips a step, one packed row each
    turns: int = 6  # expressions of a clip a step (at most)
    pool: int = 4000  # training clips: the recipe's world train split, clip 0 on (stage 3 trains on 0-999)
    keyframes: int = 4
    lr: float = 5e-4
    llm_lr_scale: float = 1.0  # the language model's layers (embeddings, lm_head at lr)
    # The MLLM's vision tower (0: frozen, as stages 3-4 keep it; > 0: trained at this scale of lr)
    vision_lr_scale: float = 0.0
    weight_decay: float = 0.05
    warmup: float = 0.05
    min_lr_ratio: float = 0.05
    two_tokens: bool = False
    aml_layer: int = -1  # the supervised layer and heads (stage 4; -1: none)
    aml_heads: tuple[int, ...] = ()
    text: float = 1.0
    choice: float = 1.0
    distill: float = 1.0
    grounding: float = 1.0
    aml: float = 0.0
    scale: float = 10.0
    val_clips: int = 40
    every: int = 250
    seed: int = 0
    world_seed: int = 0  # the recipe's data.synth seed and frame size: its train and val splits
    world_size: int = 128
    # training clips also get `attribute_singles` (validation clips never: they are the world's own)
    singles: bool = True
    # The motion term (weight; 0: off): a linear head reads, from each keyframe's vision tokens after
    # language-model layer ``dense_layer``, how far the object under them moved since the previous
    # keyframe (see `motion_term`).
    motion: float = 0.0
    # The role term (weight; 0: off): a linear head reads, from the same tokens of the later
    # keyframes, whether the object under them acts on another, is acted on, or takes part in a
    # mutual interaction (see `role_term`).
    roles: float = 0.0
    # The role query term (weight; 0: off): the role term's head reads from each role token's state,
    # after the same layer, which side of its interaction its referent is on (see `role_query_term`).
    role_query: float = 0.0
    # The motion query term (weight; 0: off): the motion term's head reads from the role token of an
    # expression naming a direction ("the object moving down") its referent's move (see
    # `motion_query_term`).
    motion_query: float = 0.0
    dense_layer: int = 1
    # Training turns that name neither colour nor shape ("object pushing another object", "the object
    # moving down") drawn this many times as likely as the others: 11 % of the pool's expressions
    # (the attribute singles are 63 %), 24 % of the validation split's.
    neither_weight: float = 1.0


# --- the clip pool -----------------------------------------------------------------------------------


@dataclass
class PoolClip:
    """A clip's keyframes and what the terms read of its objects.

    keyframes: their indices in the clip; frames uint8 (K, s, s, 3) JPEG round-tripped; grid float (N, K, g, g) each object's mask on the
    vision-token grid (nearest, the AML target); cover float (N, K, g, g) its covered share of each
    cell (the grounding target); example_sum float (N, C) SAM2's top-level features summed under
    each object's cover over the keyframes, example_area float (N,) the cover's sum (a set's
    example prompt is the ratio of their sums: objects never share a pixel); expressions: (text,
    caption type, actor object indices, target object indices)."""

    keyframes: list[int]
    frames: np.ndarray
    grid: torch.Tensor
    cover: torch.Tensor
    example_sum: torch.Tensor
    example_area: torch.Tensor
    expressions: list[tuple[str, str, list[int], list[int]]]

    def example(self, objects: list[int]) -> torch.Tensor:
        """The example prompt of a set of objects: float (C,) (zeros when none shows)."""
        area = self.example_area[objects].sum()
        return self.example_sum[objects].sum(0) / area.clamp_min(1e-6)


def pool_clip(model: ReviosaModel, cfg: GroundingConfig, split: str, index: int,
              rng: np.random.Generator | None) -> PoolClip:  # fmt: skip
    """Clip ``index`` of the world's ``split`` with its keyframes (uniform, as inference takes them,
    or drawn one per segment by ``rng`` as the loop draws them) and its objects' example prompts
    from the model's SAM2."""
    record, _ = make_clip(cfg.world_seed, split, index, WorldConfig(size=cfg.world_size))
    k = cfg.keyframes
    total = len(record.frames)
    idx = (
        keyframe_indices(total, k, "uniform") if rng is None else sample_keyframes(total, k, "segments", rng)
    )
    idx = (list(idx) * k)[:k] if len(idx) < k else list(idx)  # short clips repeat keyframes
    frames = np.stack([jpeg_round_trip(record.frames[i]) for i in idx])
    masks = np.stack([track.masks[idx] for track in record.objects])  # (N, K, s, s)
    g = model.config.grid
    with torch.no_grad():
        feats = sam_ops.encode_images(
            model.sam, sam_ops.preprocess(torch.from_numpy(frames), model.config.sam)
        )
    gy, gx = feats.feat_sizes[-1]
    top = feats.vision_feats[-1].float()  # (gy*gx, K, C)
    sam_cover = torch.stack([coverage(m, gy) for m in masks]).flatten(2)  # (N, K, gy*gx)
    example_sum = torch.einsum("nkp,pkc->nc", sam_cover, top)
    ids = {track.obj_id: n for n, track in enumerate(record.objects)}
    return PoolClip(
        keyframes=idx,
        frames=frames,
        grid=torch.stack([grid_masks(m, g) for m in masks]),
        cover=torch.stack([coverage(m, g) for m in masks]),
        example_sum=example_sum,
        example_area=sam_cover.sum((1, 2)),
        expressions=[
            (e.text, e.caption_type, [ids[o] for o in e.subject], [ids[o] for o in e.object])
            for e in record.expressions
        ],
    )


# Single-object phrases by one attribute or two, written where they pick out one object.
SINGLE_FORMS = (("shape",), ("colour",), ("size", "shape"), ("texture", "shape"), ("colour", "shape"))


def attribute_singles(facts: SceneFacts, written: set[str]) -> list[tuple[str, str, list[int], list[int]]]:
    """More one-object expressions for training: each object named by its shape alone, its colour
    alone ("the red object"), or its size or texture with its shape, wherever that names it alone
    (the world's own single expressions name colour and shape together, so a shape word meets a
    single referent almost only inside interaction expressions)."""
    out = []
    for i, look in enumerate(facts.looks):
        for form in SINGLE_FORMS:
            if "texture" in form and look.texture == "plain":
                continue
            desc = Description(**{attr: getattr(look, attr) for attr in form})
            text = f"the {desc.words()}"
            if facts.pick(desc) == {i} and text not in written:
                written.add(text)
                out.append((text, "single", [i], []))
    return out


def build_pool(
    model: ReviosaModel, cfg: GroundingConfig, split: str, count: int, cache: Path
) -> list[PoolClip]:
    """``count`` clips of ``split``, read from ``cache`` when it holds them (written there otherwise):
    training clips get keyframes drawn per segment (seeded by the clip), validation clips uniform
    keyframes, as inference takes them. Training clips also get `attribute_singles` (with
    ``cfg.singles``; cached beside, ``*_singles.pt``); validation clips keep the world's own."""
    pool = []
    if cache.is_file():
        # stored as dicts: a pickled class would be looked up in whichever module ran the stage
        pool = [
            PoolClip(**(c if isinstance(c, dict) else vars(c))) for c in torch.load(cache, weights_only=False)
        ]
    if len(pool) < count:
        pool, t0 = [], time.perf_counter()
        for i in range(count):
            rng = None if split == "val" else np.random.default_rng([cfg.seed, 3, i])
            pool.append(pool_clip(model, cfg, split, i, rng))
            if (i + 1) % 500 == 0:
                logger.info("%s pool: %d / %d clips (%.0f s)", split, i + 1, count, time.perf_counter() - t0)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save([vars(c) for c in pool], cache)
    pool = pool[:count]
    if cfg.singles and split != "val":
        extra_path = cache.with_name(cache.stem + "_singles.pt")
        extra = torch.load(extra_path) if extra_path.is_file() else []
        if len(extra) < count:
            extra = [
                attribute_singles(_facts(cfg, split, i), {e[0] for e in c.expressions})
                for i, c in enumerate(pool)
            ]
            torch.save(extra, extra_path)
        for clip, more in zip(pool, extra, strict=False):
            clip.expressions = clip.expressions + [tuple(e) for e in more]
    return pool


def _facts(cfg: GroundingConfig, split: str, index: int) -> SceneFacts:
    return make_clip(cfg.world_seed, split, index, WorldConfig(size=cfg.world_size))[1]["facts"]


# --- batches -----------------------------------------------------------------------------------------


@dataclass
class Chosen:
    """One turn: its clip's index in the step, text, caption type and the referents of each role
    (empty: the role is absent from the answer)."""

    clip: int
    text: str
    caption_type: str
    roles: tuple[list[int], list[int]]


def answer_of(caption_type: str, two_tokens: bool) -> str:
    return ACTOR_AND_TARGET if two_tokens and caption_type == "unidirectional" else ACTOR_ONLY


def draw_order(
    expressions: list[tuple[str, str, list[int], list[int]]], turns: int, rng: np.random.Generator,
    neither_weight: float = 1.0,
) -> list[int]:  # fmt: skip
    """Up to ``turns`` of a clip's expressions, drawn without repeats, those that name neither colour
    nor shape ``neither_weight`` times as likely as the others (1: a plain permutation's head)."""
    n = len(expressions)
    if neither_weight == 1.0:
        return [int(e) for e in rng.permutation(n)[:turns]]
    w = np.array([neither_weight if level_of(e[0]) == "neither" else 1.0 for e in expressions])
    return [int(e) for e in rng.choice(n, size=min(turns, n), replace=False, p=w / w.sum())]


def choose(
    clips: list[PoolClip], turns: int, two_tokens: bool, rng: np.random.Generator | None,
    neither_weight: float = 1.0,
) -> list[list[Chosen]]:  # fmt: skip
    """Up to ``turns`` expressions of each clip, drawn without repeats by `draw_order` (all, in
    order, without ``rng``)."""
    out = []
    for c, clip in enumerate(clips):
        order = (
            range(len(clip.expressions))
            if rng is None
            else draw_order(clip.expressions, turns, rng, neither_weight)
        )
        chosen = []
        for e in order:
            text, caption_type, actor, target = clip.expressions[int(e)]
            target = target if two_tokens and caption_type == "unidirectional" else []
            chosen.append(Chosen(c, text, caption_type, (actor, target)))
        out.append(chosen)
    return out


@dataclass
class GroundBatch:
    """The packed rows (one per clip), the keyframes' pixels float (C*K, 3, S, S), each turn's
    role-token positions long (Q, R) (-1: absent) and the turns, in the packed order."""

    packed: Packed
    pixels: torch.Tensor
    positions: torch.Tensor
    chosen: list[Chosen]


def make_batch(
    model: ReviosaModel, clips: list[PoolClip], chosen: list[list[Chosen]], two_tokens: bool
) -> GroundBatch:
    proc, k = model.processor, clips[0].frames.shape[0]
    prefix = prefix_ids(model, k)
    rows = []
    for turns in chosen:
        row = []
        for c in turns:
            prompt = proc.prompt_ids(c.text, k)
            if prompt[: len(prefix)] != prefix:
                raise ValueError("the processor's prompt does not open with the keyframes' blocks")
            row.append(Turn(prompt[len(prefix) :], proc.answer_ids(answer_of(c.caption_type, two_tokens))))
        rows.append(row)
    packed = pack(prefix, rows, pad=proc.ids.pad)
    flat = [c for turns in chosen for c in turns]
    positions = torch.full((len(flat), 2), -1, dtype=torch.long)
    for q, c in enumerate(flat):
        ids = packed.input_ids[c.clip]
        start = int(packed.answer_start[q])
        for r, tok in enumerate((proc.ids.seg_act, proc.ids.seg_tar)):
            hit = (ids[start:] == tok).nonzero()
            if len(hit) and c.roles[r]:
                positions[q, r] = start + int(hit[0, 0])
    pixels = proc.mllm_pixels(np.concatenate([c.frames for c in clips]))
    return GroundBatch(packed, pixels, positions, flat)


# --- the terms ---------------------------------------------------------------------------------------


@dataclass
class Forward:
    """hidden float (C, L, D) last-layer states; logits float (N, V) at the supervised positions,
    targets long (N,) and turn long (N,) of each; rows float (Q, R, 1, H, K, g, g) the supervised
    heads' attention of each role token over the vision tokens (None without AML); layer float
    (C, L, D) the states after language-model layer ``layer`` (None unless asked)."""

    hidden: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    turn: torch.Tensor
    rows: torch.Tensor | None
    layer: torch.Tensor | None = None


def forward(
    model: ReviosaModel, batch: GroundBatch, aml: AttentionSupervision | None, layer: int | None = None
) -> Forward:
    p = batch.packed
    embeds = model.embed(p.input_ids, batch.pixels)
    capture = None
    if aml is not None:
        g = model.config.grid
        vision = vision_positions_from_ids(p.input_ids, model.processor.ids.img_context, g)
        # AttentionCapture takes (rows, slots) queries: each row's turns' role tokens, -1 padded
        per_row = torch.bincount(p.row, minlength=len(p.input_ids))
        slot = torch.arange(len(p.row)) - (per_row.cumsum(0) - per_row)[p.row]  # the turn's place in its row
        queries = torch.full((len(p.input_ids), 2 * int(per_row.max())), -1, dtype=torch.long)
        queries[p.row[:, None], 2 * slot[:, None] + torch.arange(2)] = batch.positions
        capture = AttentionCapture(
            model.language_model, queries, vision, g, layers=[aml.layer], heads=list(aml.heads)
        )
    with capture if capture is not None else contextlib.nullcontext():
        out = model.language_model(
            inputs_embeds=embeds,
            attention_mask=p.attention_mask,
            position_ids=p.position_ids,
            use_cache=False,
            output_hidden_states=layer is not None,
        )
    hidden = out.last_hidden_state
    shift = p.labels[:, 1:]
    supervised = shift != -100
    rows = None
    if capture is not None:
        captured = capture.result().rows  # (C, slots, 1, H, K, g, g)
        rows = captured[p.row[:, None], 2 * slot[:, None] + torch.arange(2)]  # (Q, R, ...)
    # hidden_states[0] is the input embeddings: layer i's output is entry i + 1
    after = out.hidden_states[layer + 1] if layer is not None else None
    return Forward(hidden, model.mllm.lm_head(hidden[:, :-1][supervised]), shift[supervised],
                   p.turn[:, 1:][supervised], rows, after)  # fmt: skip


def role_states(hidden: torch.Tensor, batch: GroundBatch) -> torch.Tensor:
    """States at the role tokens: float (Q, R, D), zeros where a role is absent."""
    states = hidden[batch.packed.row[:, None], batch.positions.clamp_min(0)]
    return states * (batch.positions >= 0)[..., None].to(states.dtype)


def candidates(clip: PoolClip, referents: list[int]) -> tuple[torch.Tensor, int]:
    """The example prompts a role prompt chooses among, float (M, C): the clip's objects', then the
    referent set's own when it holds several; and the index of the right one."""
    each = clip.example_sum / clip.example_area.clamp_min(1e-6)[:, None]
    if len(referents) == 1:
        return each, referents[0]
    return torch.cat([each, clip.example(referents)[None]]), len(each)


def role_maps(batch: GroundBatch, clips: list[PoolClip], kind: str) -> torch.Tensor:
    """Each (turn, role)'s referents on the vision-token grid (``kind``: "grid" or "cover"),
    float (Q, R, K, g, g), zeros for an absent role."""
    out = []
    for c in batch.chosen:
        maps = getattr(clips[c.clip], kind)
        out.append(torch.stack([maps[objs].sum(0).clamp(max=1.0) if objs else torch.zeros_like(maps[0])
                                for objs in c.roles]))  # fmt: skip
    return torch.stack(out)


def displacements(cover: torch.Tensor, min_area: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """How far each object moved since the previous keyframe, on the vision-token grid.

    cover: float (N, K, g, g) each object's covered share of each cell. Returns float (N, K, 2),
    (dy, dx) in cells between the cover's centroids on keyframes k - 1 and k (zeros on keyframe 0),
    and bool (N, K) where both keyframes show the object (at least ``min_area`` cells of cover).
    """
    g = cover.shape[-1]
    area = cover.sum((-2, -1))  # (N, K)
    axis = torch.arange(g, dtype=cover.dtype)
    y = (cover.sum(-1) * axis).sum(-1) / area.clamp_min(1e-6)
    x = (cover.sum(-2) * axis).sum(-1) / area.clamp_min(1e-6)
    centroid = torch.stack([y, x], -1)  # (N, K, 2)
    shown = area >= min_area
    moved = torch.zeros_like(centroid)
    moved[:, 1:] = centroid[:, 1:] - centroid[:, :-1]
    valid = torch.zeros_like(shown)
    valid[:, 1:] = shown[:, 1:] & shown[:, :-1]
    return moved, valid


def motion_term(head: torch.nn.Module, states: torch.Tensor, clips: list[PoolClip]) -> torch.Tensor:
    """The motion term: each keyframe's vision tokens, after a language-model layer, read how far
    the object under them moved since the previous keyframe.

    An example prompt says how an object looks on a frame, never how it moves, and stage 1's LLM
    answers motion questions at 0.24: the grounding phase picks the referent of an expression that
    names it by motion alone ("the object moving down", "object pushing another object") at
    0.13-0.42. A causal language model can compare an object across keyframes only at a later
    keyframe's tokens, which see the earlier ones; this term asks them to, densely: a linear
    ``head`` maps each vision token's state to (dy, dx), fitted to the displacement of the objects
    covering it (`displacements`), weighted by their cover. Relative squared error: 1 is what
    predicting no motion scores.

    states: float (C, K, g, g, D) the vision tokens' states of each clip's row.
    """
    err, norm = states.new_zeros(()), states.new_zeros(())
    for c, clip in enumerate(clips):
        moved, valid = displacements(clip.cover)  # (N, K, 2), (N, K)
        weight = clip.cover * valid[..., None, None]  # (N, K, g, g)
        pred = head(states[c].float())  # (K, g, g, 2)
        diff = pred[None] - moved[:, :, None, None, :]  # (N, K, g, g, 2)
        err = err + (weight * diff.pow(2).sum(-1)).sum()
        norm = norm + (weight * moved.pow(2).sum(-1)[..., None, None]).sum()
    return err / norm.clamp_min(1e-6)


def is_passive(text: str) -> bool:
    """A unidirectional expression written from the one acted on ("B chased by A")."""
    return any(passive in text for _, passive in VERBS.values())


def interaction_roles(clip: PoolClip) -> torch.Tensor:
    """float (N, 3): whether each object of the clip acts on another (column 0: it chases, pushes,
    follows, circles or hits), is acted on (1), or takes part in a mutual interaction (2), read from
    its expressions (a passive one names the one acted on first)."""
    roles = torch.zeros(clip.cover.shape[0], 3)
    for text, caption_type, first, second in clip.expressions:
        if caption_type == "unidirectional":
            actor, target = (second, first) if is_passive(text) else (first, second)
            roles[actor, 0], roles[target, 1] = 1.0, 1.0
        elif caption_type == "bidirectional":
            roles[first, 2] = 1.0
    return roles


def role_term(head: torch.nn.Module, states: torch.Tensor, clips: list[PoolClip]) -> torch.Tensor:
    """The role term: the later keyframes' vision tokens, after a language-model layer, read which
    side of an interaction the object under them is on.

    The role prompts find the pair of "object chasing another object" but pick its actor at chance
    (0.35-0.40 of such expressions): the motion term taught the tokens each object's own move, yet
    no query selected by it, since who acts on whom is a relation between two paths (the chaser is
    behind and faster, the pusher walks up to a still one). This term asks the tokens for that
    relation itself, as the name term asked them for colour words: a linear ``head`` maps each
    vision token's state to three logits (`interaction_roles`), binary cross-entropy weighted by
    each object's cover. Keyframe 0 is left out: a causal language model sees no path there.

    states: float (C, K, g, g, D) the vision tokens' states of each clip's row.
    """
    loss, norm = states.new_zeros(()), states.new_zeros(())
    for c, clip in enumerate(clips):
        labels = interaction_roles(clip)  # (N, 3)
        logits = head(states[c, 1:].float())  # (K-1, g, g, 3)
        n = len(labels)
        bce = F.binary_cross_entropy_with_logits(
            logits[None].expand(n, *logits.shape),
            labels[:, None, None, None, :].expand(n, *logits.shape),
            reduction="none",
        ).sum(-1)  # (N, K-1, g, g)
        weight = clip.cover[:, 1:]
        loss = loss + (weight * bce).sum()
        norm = norm + weight.sum()
    return loss / norm.clamp_min(1e-6)


@torch.no_grad()
def role_order(head: torch.nn.Module, states: torch.Tensor, clips: list[PoolClip]) -> list[float]:
    """For each unidirectional pair of the clips: 1.0 where the head's actor-minus-acted-on logit,
    averaged under each side's cover on the later keyframes, is higher on the one that acts."""
    out = []
    for c, clip in enumerate(clips):
        logits = head(states[c, 1:].float())  # (K-1, g, g, 3)
        score = logits[..., 0] - logits[..., 1]
        weight = clip.cover[:, 1:]  # (N, K-1, g, g)
        per_object = (weight * score[None]).sum((1, 2, 3)) / weight.sum((1, 2, 3)).clamp_min(1e-6)
        labels = interaction_roles(clip)
        for n in (labels[:, 0] > 0).nonzero()[:, 0].tolist():
            for m in (labels[:, 1] > 0).nonzero()[:, 0].tolist():
                if m != n:
                    out.append(float(per_object[n] > per_object[m]))
    return out


def query_roles(batch: GroundBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Which side of its interaction each unidirectional turn's role token refers to: float
    (Q, R, 3) targets in `interaction_roles`' columns and bool (Q, R) where a token has one."""
    labels = torch.zeros(len(batch.chosen), 2, 3)
    has = torch.zeros(len(batch.chosen), 2, dtype=torch.bool)
    for t, c in enumerate(batch.chosen):
        if c.caption_type != "unidirectional":
            continue
        first_acts = not is_passive(c.text)
        for r in range(2):
            if batch.positions[t, r] >= 0:
                labels[t, r, 0 if first_acts == (r == 0) else 1] = 1.0
                has[t, r] = True
    return labels, has


def role_query_term(head: torch.nn.Module, states: torch.Tensor, batch: GroundBatch) -> torch.Tensor:
    """The role query term: the role term's own head reads, from each role token's state after the
    same layer, whether its referent acts or is acted on.

    With the role term the vision tokens carry who acts (its head orders held-out pairs at 0.82),
    yet the supervised heads of [SEG_ACT] and [SEG_TAR] put the same mass on both sides of
    "object pushing another object", whichever token and voice: the query reads the noun phrase
    of its role, and "object" names nothing. Here the token's state must hold its referent's
    side (active voice: [SEG_ACT] the one acting; passive: the one acted on) in the very direction
    the vision tokens hold theirs, so the supervised heads can match the two as they match a colour
    word to a colour. Binary cross-entropy over the head's three logits, mean over the tokens.

    states: float (Q, R, D) the role tokens' states after the dense layer.
    """
    labels, has = query_roles(batch)
    if not has.any():
        return states.new_zeros(())
    logits = head(states[has].float())
    return F.binary_cross_entropy_with_logits(logits, labels[has], reduction="none").sum(-1).mean()


# "moving down" -> its direction as (dy, dx), the motion term's axes (image rows grow downwards)
DIRECTIONS = {"moving up": (-1.0, 0.0), "moving down": (1.0, 0.0), "moving left": (0.0, -1.0),
              "moving right": (0.0, 1.0)}  # fmt: skip


def query_motions(batch: GroundBatch, clips: list[PoolClip]) -> tuple[torch.Tensor, torch.Tensor]:
    """What the motion head should read from the ``[SEG_ACT]`` token of each turn naming a
    direction and no interaction: float (Q, 2) its referents' mean move per keyframe step (in
    cells, `displacements`), and bool (Q,) where a turn has one (a direction named, the referents
    shown on two keyframes in a row, and their mean move along the named direction)."""
    goals = torch.zeros(len(batch.chosen), 2)
    has = torch.zeros(len(batch.chosen), dtype=torch.bool)
    for t, c in enumerate(batch.chosen):
        named = [d for phrase, d in DIRECTIONS.items() if phrase in c.text]
        if c.caption_type not in ("single", "multi") or len(named) != 1 or not c.roles[0]:
            continue
        moved, valid = displacements(clips[c.clip].cover[c.roles[0]])  # (N, K, 2), (N, K)
        if not valid.any():
            continue
        mean = (moved * valid[..., None]).sum((0, 1)) / valid.sum()
        # the path can turn back (a bounce off the border): keep only moves the words describe
        if float((mean * torch.tensor(named[0])).sum()) > 0:
            goals[t], has[t] = mean, True
    return goals, has


def motion_query_term(
    head: torch.nn.Module, states: torch.Tensor, batch: GroundBatch, clips: list[PoolClip]
) -> torch.Tensor:
    """The motion query term: the motion term's own head reads, from the ``[SEG_ACT]`` state of an
    expression naming a direction ("the object moving down"), its referent's move.

    With the motion term the vision tokens carry each object's move (its head gives held-out
    directions right for 0.96 of moving objects), yet such expressions pick their referent at
    0.13-0.30: as the role query term did for sides, this puts the token's "moving down" in the
    direction the vision tokens hold their move, so the supervised heads can match the two.
    Relative squared error over the turns that name one (`query_motions`).

    states: float (Q, R, D) the role tokens' states after the dense layer.
    """
    goals, has = query_motions(batch, clips)
    if not has.any():
        return states.new_zeros(())
    pred = head(states[has, 0].float())  # (n, 2)
    return (pred - goals[has]).pow(2).sum() / goals[has].pow(2).sum().clamp_min(1e-6)


# The dense terms (each a `GroundingConfig` weight and a `--flag`) -> the head each reads through: a
# query term shares its term's head, so that role tokens and vision tokens meet in one direction.
DENSE_TERMS = {"motion": "motion", "roles": "roles", "role_query": "roles", "motion_query": "motion"}
HEAD_SIZES = {"motion": 2, "roles": 3}


def dense_heads(cfg: GroundingConfig, width: int) -> dict[str, torch.nn.Linear]:
    """The linear heads of the dense terms ``cfg`` turns on (trained with the phase, never
    exported: the model reads no such head)."""
    on = {head for term, head in DENSE_TERMS.items() if getattr(cfg, term) > 0}
    # seeded by the run's seed: the heads' start is part of what a run's seed reproduces
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return {name: torch.nn.Linear(width, size) for name, size in HEAD_SIZES.items() if name in on}


def terms_of(model: ReviosaModel, batch: GroundBatch, clips: list[PoolClip], cfg: GroundingConfig,
             aml: AttentionSupervision | None, heads: dict[str, torch.nn.Module] | None = None,
             order: list[float] | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:  # fmt: skip
    """Each term's mean over turns (text) or over present (turn, role) pairs; and the role prompts
    float (Q, R, P). ``heads``: the dense terms' heads (`dense_heads`); ``order``, when given with
    the role head, gets the batch's `role_order` from the same forward."""
    heads = heads or {}
    fwd = forward(model, batch, aml, cfg.dense_layer if heads else None)
    q = len(batch.chosen)
    ce = F.cross_entropy(fwd.logits.float(), fwd.targets, reduction="none")
    count = torch.zeros(q).index_add(0, fwd.turn, torch.ones_like(ce))
    terms = {"text": (torch.zeros(q).index_add(0, fwd.turn, ce) / count.clamp_min(1.0)).mean()}
    states = role_states(fwd.hidden, batch)  # (Q, R, D)
    prompts = model.prompt_proj(states)  # (Q, R, P)
    present = batch.positions >= 0
    choice, distill = [], []
    for t, c in enumerate(batch.chosen):
        for r in range(2):
            if present[t, r]:
                cand, right = candidates(clips[c.clip], c.roles[r])
                cos = F.cosine_similarity(prompts[t, r][None].float(), cand, dim=-1)
                choice.append(F.cross_entropy(cfg.scale * cos[None], torch.tensor([right])))
                goal = cand[right]
                distill.append(
                    (prompts[t, r].float() - goal).pow(2).sum() / goal.pow(2).sum().clamp_min(1e-6)
                )
    terms["choice"], terms["distill"] = torch.stack(choice).mean(), torch.stack(distill).mean()
    weight = present.float()
    if cfg.grounding:
        vstates = vision_token_states(fwd.hidden, batch.packed.input_ids, model)[batch.packed.row]
        cover = role_maps(batch, clips, "cover")
        terms["grounding"] = (
            losses.grounding_loss(states, vstates, cover, weight, cfg.scale, "contrastive") / weight.sum()
        )
    if fwd.rows is not None:
        terms["aml"] = (
            losses.attention_mask_loss(fwd.rows, role_maps(batch, clips, "grid"), weight) / weight.sum()
        )
    if heads:
        vstates = vision_token_states(fwd.layer, batch.packed.input_ids, model)  # (C, K, g, g, D)
        if cfg.motion > 0:
            terms["motion"] = motion_term(heads["motion"], vstates, clips)
        if cfg.roles > 0:
            terms["roles"] = role_term(heads["roles"], vstates, clips)
        tokens = role_states(fwd.layer, batch)  # (Q, R, D)
        if cfg.role_query > 0:
            terms["role_query"] = role_query_term(heads["roles"], tokens, batch)
        if cfg.motion_query > 0:
            terms["motion_query"] = motion_query_term(heads["motion"], tokens, batch, clips)
        if order is not None and "roles" in heads:
            order += role_order(heads["roles"], vstates, clips)
    return terms, prompts


def total_loss(terms: dict[str, torch.Tensor], cfg: GroundingConfig) -> torch.Tensor:
    return sum(getattr(cfg, name) * value for name, value in terms.items())


# --- the held-out figure -----------------------------------------------------------------------------


def level_of(text: str) -> str:
    """What an expression names its referent by first: "colour", "shape" or "neither"
    (``train.probes.probe_words``' breakdown groups)."""
    return next((g for g, words in DEFAULT_GROUPS.items() if named(text, words)), "neither")


@torch.no_grad()
def evaluate(model: ReviosaModel, val: list[PoolClip], cfg: GroundingConfig, aml, heads=None) -> dict:
    """``pick``: the share of (expression, role) whose prompt is nearest (cosine) its referent's
    example among its clip's objects (and the set's own), overall, per role, and per caption type
    / level / role; ``answer``: the share of expressions whose whole answer the model would
    predict (teacher-forced argmax); the mean of each term; with the role term, ``role_order``
    (`role_order` over the validation pairs)."""
    was = model.training
    model.eval()
    cells, sums, right_answers, answers = defaultdict(list), defaultdict(list), 0, 0
    order = []
    for c0 in range(0, len(val), cfg.clips):
        clips = val[c0 : c0 + cfg.clips]
        batch = make_batch(model, clips, choose(clips, 0, cfg.two_tokens, None), cfg.two_tokens)
        terms, prompts = terms_of(model, batch, clips, cfg, aml, heads, order)
        for k, v in terms.items():
            sums[k].append(float(v))
        fwd_ok = _answers_right(model, batch, aml)
        right_answers, answers = right_answers + int(fwd_ok.sum()), answers + len(fwd_ok)
        for t, c in enumerate(batch.chosen):
            for r, role in enumerate(("actor", "target")):
                if batch.positions[t, r] < 0:
                    continue
                cand, right = candidates(clips[c.clip], c.roles[r])
                hit = float(F.cosine_similarity(prompts[t, r][None].float(), cand, dim=-1).argmax() == right)
                for key in ("all", role, f"{c.caption_type}/{level_of(c.text)}/{role}"):
                    cells[key].append(hit)
    model.train(was)
    return {
        "pick": {k: [round(float(np.mean(v)), 4), len(v)] for k, v in sorted(cells.items())},
        "answer": right_answers / max(answers, 1),
        **{k: float(np.mean(v)) for k, v in sums.items()},
        **({"role_order": [float(np.mean(order)), len(order)]} if order else {}),
    }


def _answers_right(model: ReviosaModel, batch: GroundBatch, aml) -> torch.Tensor:
    """bool (Q,): every answer token of the turn is the argmax of the teacher-forced logits."""
    fwd = forward(model, batch, None)
    wrong = (fwd.logits.argmax(-1) != fwd.targets).long()
    return torch.zeros(len(batch.chosen), dtype=torch.long).index_add(0, fwd.turn, wrong) == 0


# --- training ----------------------------------------------------------------------------------------

TRAINED = ("mllm.model.multi_modal_projector", "mllm.model.language_model", "mllm.lm_head", "prompt_proj")
VISION = "mllm.model.vision_tower"


def param_groups(model: ReviosaModel, cfg: GroundingConfig) -> list[dict]:
    """The projector, language model, lm_head and prompt MLP train (SAM2 frozen, and the vision
    tower unless ``vision_lr_scale`` > 0, as stages 3-4 keep them); the language model's layers at
    ``llm_lr_scale``."""
    fast, slow, vision = [], [], []
    for name, p in model.named_parameters():
        is_vision = name.startswith(VISION)
        trains = name.startswith(TRAINED) or (is_vision and cfg.vision_lr_scale > 0)
        p.requires_grad_(trains)
        if trains:
            layers = name.startswith("mllm.model.language_model") and "embed_tokens" not in name
            (vision if is_vision else slow if layers else fast).append(p)
    groups = [{"params": fast, "lr_scale": 1.0}, {"params": slow, "lr_scale": cfg.llm_lr_scale}]
    return groups + ([{"params": vision, "lr_scale": cfg.vision_lr_scale}] if vision else [])


def supervision(cfg: GroundingConfig) -> AttentionSupervision | None:
    return (
        AttentionSupervision(cfg.aml_layer, tuple(cfg.aml_heads)) if cfg.aml and cfg.aml_layer >= 0 else None
    )


def train(
    model: ReviosaModel,
    cfg: GroundingConfig,
    out: Path,
    resume: bool,
    log=logger.info,
    stop_after: int | None = None,
) -> list[dict]:
    """Train in place (until ``stop_after`` when given); validations every ``cfg.every`` steps go to
    OUT/records.json beside a checkpoint (trained tensors, optimizer, step). Every draw is seeded by
    the step, so a resumed run trains as an unbroken one."""
    aml = supervision(cfg)
    if aml is not None:
        model.config.attention_supervision = aml
    groups = param_groups(model, cfg)
    heads = dense_heads(cfg, model.config.text.hidden_size)
    groups[0]["params"] = [*groups[0]["params"], *(p for h in heads.values() for p in h.parameters())]
    opt = torch.optim.AdamW([{"params": g["params"], "lr": cfg.lr * g["lr_scale"]} for g in groups],
                            weight_decay=cfg.weight_decay)  # fmt: skip
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg))
    start, records = 0, []
    if resume and (out / STATE).is_file():
        state = torch.load(out / STATE, weights_only=False)
        model.load_state_dict(state["model"], strict=False)
        for name, h in heads.items():
            h.load_state_dict(state[f"{name}_head"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, records = state["step"], json.loads((out / RECORDS).read_text())["records"]
        log(f"resumed at step {start}")
    pool = build_pool(model, cfg, "train", cfg.pool, out / "pool_train.pt")
    val = build_pool(model, cfg, "val", cfg.val_clips, out / "pool_val.pt")
    if not records:
        records.append({"step": 0, **evaluate(model, val, cfg, aml, heads), "seconds": 0.0})
        log(_line(records[-1]))
    model.train()
    sums, t0 = defaultdict(list), time.perf_counter()
    for step in range(start + 1, (stop_after or cfg.steps) + 1):
        rng = np.random.default_rng([cfg.seed, 4, step])
        clips = [pool[int(i)] for i in rng.choice(len(pool), size=cfg.clips, replace=False)]
        chosen = choose(clips, cfg.turns, cfg.two_tokens, rng, cfg.neither_weight)
        batch = make_batch(model, clips, chosen, cfg.two_tokens)
        terms, _ = terms_of(model, batch, clips, cfg, aml, heads)
        loss = total_loss(terms, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        sched.step()
        for k, v in terms.items():
            sums[k].append(float(v.detach()))
        if step % cfg.every == 0 or step == cfg.steps:
            record = {"step": step, "train": {k: float(np.mean(v)) for k, v in sums.items()},
                      **evaluate(model, val, cfg, aml, heads), "lr": float(sched.get_last_lr()[0])}  # fmt: skip
            record["seconds"] = time.perf_counter() - t0 + records[-1]["seconds"]
            t0, sums = time.perf_counter(), defaultdict(list)
            records.append(record)
            log(_line(record))
            _checkpoint(model, opt, sched, step, cfg, records, out, heads)
    return records


def _line(record: dict) -> str:
    pick = record["pick"]
    levels = " ".join(f"{k} {v[0]:.3f}" for k, v in pick.items()
                      if "/" in k and ("unidirectional" in k or "neither" in k))  # fmt: skip
    dense = "".join(f" {k} {record[k]:.3f}" for k in DENSE_TERMS if k in record)
    if "role_order" in record:
        dense += f" order {record['role_order'][0]:.3f}"
    return (f"step {record['step']} pick {pick.get('all', [0])[0]:.3f} actor {pick.get('actor', [0])[0]:.3f} "
            f"target {pick.get('target', [0])[0]:.3f} answer {record['answer']:.3f}{dense} | {levels}")  # fmt: skip


def _checkpoint(model, opt, sched, step, cfg, records, out: Path, heads=None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    state = {k: v for k, v in model.state_dict().items() if k in trained}
    tmp = out / (STATE + ".tmp")
    extra = {f"{name}_head": h.state_dict() for name, h in (heads or {}).items()}
    torch.save(
        {
            "model": state,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            **extra,
        },
        tmp,
    )
    tmp.replace(out / STATE)
    (out / RECORDS).write_text(json.dumps({"config": asdict(cfg), "records": records}, indent=2) + "\n")


# --- the command -------------------------------------------------------------------------------------


def build(args) -> ReviosaModel:
    """The model to ground: stage 1's MLLM and stage 2's SAM2 (a fresh prompt MLP), or a whole
    model folder (``--init``: stage 3's export for stage 4)."""
    if args.init:
        from reviosa.hub import from_pretrained

        return from_pretrained(args.init).float()
    from train.model import build_model
    from train.stages import finetune, sa2va

    cfg = finetune.stage_config(args.recipe, sa2va.sets(args.stage1, args.stage2, 1))
    return build_model(cfg, [], Path(args.out))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train.stages.grounding", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stage1", default="", help="stage-1 folder (mllm.safetensors, tokenizer/)")
    parser.add_argument("--stage2", default="", help="stage-2 folder (sam.safetensors)")
    parser.add_argument(
        "--init", default="", help="a model folder to start from instead (stage 4: stage 3's)"
    )
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--pool-from", default="", help="a grounding run whose clip pools to reuse (same SAM2)"
    )
    defaults = GroundingConfig()
    for name in ("steps", "clips", "turns", "pool", "lr", "llm_lr_scale", "vision_lr_scale", "text", "choice",
                 "distill", "grounding", "aml", "aml_layer", *DENSE_TERMS, "dense_layer", "neither_weight",
                 "val_clips", "every", "seed"):  # fmt: skip
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(defaults, name)),
                            default=getattr(defaults, name))  # fmt: skip
    parser.add_argument("--aml-heads", type=int, nargs="*", default=[])
    parser.add_argument("--two-tokens", action="store_true")
    args = parser.parse_args(argv)
    if not args.init and not (args.stage1 and args.stage2):
        parser.error("give --stage1 and --stage2, or --init")
    return args


def config_of(args: argparse.Namespace) -> GroundingConfig:
    """The run's config: the command's fields, the world's seed and frame size from the recipe."""
    from train.stages import finetune

    synth = finetune.stage_config(args.recipe, []).data.synth
    fields = {f for f in asdict(GroundingConfig()) if hasattr(args, f) and f != "aml_heads"}
    return GroundingConfig(**{f: getattr(args, f) for f in fields}, aml_heads=tuple(args.aml_heads),
                           world_seed=synth.seed, world_size=synth.size)  # fmt: skip


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows one (a train pool is 0.9 GB; pools are written
    only where none exists, so the shared file is never rewritten in place), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = config_of(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("pool_train.pt", "pool_val.pt"):  # the pools depend on SAM2's encoder and the clips only
        given = Path(args.pool_from) / name if args.pool_from else None
        if given is not None and given.is_file() and not (out / name).exists():
            _link_or_copy(given, out / name)
    model = build(args)
    if not (out / MODEL / "model.safetensors").is_file():
        train(model, cfg, out, args.resume)
        from reviosa.hub import save_pretrained

        save_pretrained(model.eval(), out / MODEL, dtype=torch.float16)
    print(f"grounded model: {out / MODEL}")


if __name__ == "__main__":
    main()
