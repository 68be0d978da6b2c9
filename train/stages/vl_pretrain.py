"""Stage 1: vision-language pretraining of the InternVL stand-in (vision tower, projector, LLM).

python -m train.stages.vl_pretrain --out runs/stage1 [--recipe train/recipes/stages.yaml]
    [--tower-steps 16000] [--qa-steps 1500] [--phase both|tower|qa]

Two phases, each resumable from what it wrote (a phase whose file is in OUT is not run again):

1. ``tower``: the vision tower and projector alone learn to tell each object's colour, shape, size
   and texture, through one linear head per attribute over its tokens pooled by coverage, on
   freshly rendered stills (``train.stages.vision_tower``; writes OUT/vision.safetensors). These
   heads are the gate's linear probes, scored on held-out scenes of another seed.
2. ``qa``: the language model (all of it: layers, embedding, lm_head) learns to answer questions
   about short clips through the frozen tower and projector: the colour, shape, size and place of
   an object it names by its other attributes, and how it moves ("how does the red square move?"
   -> "moving left", in the synthetic world's own motion phrases). The prompt is the ReVIOSa one
   (one image block per keyframe, 4 keyframes spread over the clip) with the question in place of
   the instruction; the loss is next-token CE on the answer. Writes OUT/mllm.safetensors (the whole
   ``mllm.*``) and OUT/tokenizer/, which stage 3 loads (``model.mllm_init``). ``--qa-vision-lr``
   trains the tower and projector too, at that rate; ``--init FOLDER`` starts the phase from
   another stage-1 folder's ``mllm.safetensors`` (tower included) instead of OUT's tower.

``--tower-position W`` adds a term to the tower phase: every token's own grid row and column,
read by two linear heads, at weight W (reported as "cell"; ``train.probes.token_position`` probes
it). With ``--phase tower``, ``--init FOLDER`` starts the tower from FOLDER's vision.safetensors.

Gate: the probes read colour, shape and size >= 95 % each on held-out objects; the LLM answers
held-out attribute and motion questions >= 90 % (exact answers, each kind on its own).
"""

from __future__ import annotations

import argparse
import contextlib
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

from reviosa import tokens
from reviosa.attention import AttentionCapture, vision_positions_from_ids
from reviosa.data.synth import expression_corpus
from reviosa.data.synth_language import MOTION_PHRASES
from reviosa.data.synth_motion import SINGLE_MOTIONS
from reviosa.data.synth_render import COLOURS, SHAPES, SIZES
from reviosa.modeling import ReviosaModel
from reviosa.tokenizer import build_tokenizer
from train import report
from train.data import coverage
from train.stages import vision_tower
from train.stages.clips import Backgrounds, Clip, full_area, random_clip
from train.stages.common import RECIPE, load_parts, save_parts, stage_model_config
from train.stages.packing import Turn, pack

logger = logging.getLogger(__name__)

MLLM, TOKENIZER, QA_RECORDS = "mllm.safetensors", "tokenizer", "qa.json"
KINDS = ("colour", "shape", "size", "position", "motion")
NAMED = {"colour": tuple(COLOURS), "shape": SHAPES}  # what the name term reads, in this order
QA_STRIDE = 9  # keyframes 0, 9, 18, 27 of a 32-frame path: odd, so "shaking" never looks still


@dataclass
class QAConfig:
    steps: int = 1500
    clips: int = 8  # clips per step
    questions: int = 3  # questions per clip, packed into its row (its vision tokens go through once)
    lr: float = 1e-3
    warmup: float = 0.05
    min_lr_ratio: float = 0.05
    min_visible: float = 0.5  # an object asked about shows this share of its area on frame 0
    val_clips: int = 200
    val_questions: int = 3  # per held-out clip: the same 600 questions whatever ``questions`` is
    every: int = 250
    seed: int = 0
    # Learning rate of the vision tower and projector (0: frozen, the recipe). 600 steps with the
    # tower at 3e-4 changed neither the position probe nor the position and motion answers, and a
    # tower taught each token's cell (probe 0.86) did not raise those answers either: the language
    # model is the limit (docs/training.md, "Seventh session", "Eighth and ninth sessions").
    vision_lr: float = 0.0
    # Weight of the binding term: the answer's query position, in ``attention_layer``'s
    # ``attention_heads``, must put its attention over the vision tokens on the object asked about
    # (-log of that share). 0: off (the committed stage 1).
    attention: float = 0.0
    attention_layer: int = -1
    attention_heads: tuple[int, ...] = (0, 1)
    # Weight of the name term: a linear head (trained here, never saved) must read, from each
    # turn's answer position after ``names_layer``, the colour and shape its question names. The
    # answer position of the packed stage 1 reads them at 0.50 (commonest 0.19 / 0.23), so its
    # last layer has no name to look the object up by (docs/training.md, "Fourteenth session").
    # 0: off.
    names: float = 0.0
    names_layer: int = 1


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    kind: str
    target: int  # the object asked about (its index in the clip)


# --- questions --------------------------------------------------------------------------------


def _unique(clip: Clip, k: int, attrs: tuple[str, ...]) -> bool:
    """Object k is the only one of the clip with these attributes of its own."""
    want = [getattr(clip.looks[k], a) for a in attrs]
    return (
        sum(all(getattr(look, a) == w for a, w in zip(attrs, want, strict=True)) for look in clip.looks) == 1
    )


def _name(clip: Clip, k: int, attrs: tuple[str, ...]) -> str:
    look = clip.looks[k]
    words = [getattr(look, a) for a in ("size", "colour") if a in attrs]
    return "the " + " ".join([*words, look.shape if "shape" in attrs else "object"])


def questions_about(clip: Clip, k: int, size: int) -> list[Question]:
    """Every question about object k that its clip answers unambiguously."""
    look = clip.looks[k]
    out: list[Question] = []
    for attrs in (("shape",), ("size", "shape")):
        if _unique(clip, k, attrs):
            out.append(Question(f"what colour is {_name(clip, k, attrs)}?", look.colour, "colour", k))
            break
    for attrs in (("colour",), ("size", "colour")):
        if _unique(clip, k, attrs):
            out.append(Question(f"what shape is {_name(clip, k, attrs)}?", look.shape, "shape", k))
            break
    if _unique(clip, k, ("colour", "shape")):
        name = _name(clip, k, ("colour", "shape"))
        out.append(Question(f"is {name} big or small?", look.size, "size", k))
        x, y = clip.paths[k, 0]
        if min(abs(x - size / 2), abs(y - size / 2)) > look.radius:  # clearly in one quadrant
            place = f"{'top' if y < size / 2 else 'bottom'} {'left' if x < size / 2 else 'right'}"
            out.append(Question(f"where is {name}?", place, "position", k))
        if clip.motions[k] in SINGLE_MOTIONS:
            out.append(Question(f"how does {name} move?", MOTION_PHRASES[clip.motions[k]], "motion", k))
    return out


def clip_questions(rng: np.random.Generator, clip: Clip, count: int, min_visible: float) -> list[Question]:
    """Up to ``count`` questions of different kinds about well-seen objects of the clip."""
    size = clip.frames.shape[1]
    pool = [
        q
        for k, look in enumerate(clip.looks)
        if clip.masks(k)[0].sum() >= min_visible * full_area(look)
        for q in questions_about(clip, k, size)
    ]
    if not pool:
        return []
    picked = rng.permutation(len(pool))[:count]
    return [pool[int(i)] for i in picked]


def qa_corpus() -> list[str]:
    """Tokenizer corpus: the world's phrases plus every question and answer word."""
    words = ["what colour is the", "what shape is the", "is the big or small?", "where is the",
             "how does the move?", "top left", "top right", "bottom left", "bottom right", "object"]  # fmt: skip
    return [*expression_corpus(), *words, *COLOURS, *SHAPES, *SIZES, *MOTION_PHRASES.values()]


# --- batches --------------------------------------------------------------------------------------


@dataclass
class QABatch:
    """One row per clip: its keyframes' prompt prefix, then each of its questions as its own
    user turn and answer. Every turn attends the prefix and itself only, at the positions it would
    have alone after the prefix, so a row equals one row per question while the clip's hundreds of
    vision tokens go through the LLM once (``tests/test_stages.py``).

    input_ids long (N, L) right-padded; attention_mask bool (N, 1, L, L), True where a query may
    attend a key; position_ids long (N, L); labels long (N, L) (-100 but on each answer and its
    closing token, shifted by the caller); question long (N, L): the question (0..Q-1, in
    ``kinds`` order) whose answer token a label is, -1 elsewhere; pixels float (C*K, 3, S, S);
    image_index long (C*K,); kinds: the kind of each question; asked long (N, Q): each turn's last
    prompt position (the one that predicts its answer), -1 past a row's turns; cover float (N, Q,
    K, g, g): the share of each vision token's cell the object asked about covers; named long
    (N, Q, 2): the asked object's colour and shape (indices into ``NAMED``) where its question names
    them, -100 elsewhere."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    question: torch.Tensor
    pixels: torch.Tensor
    image_index: torch.Tensor
    kinds: list[str]
    asked: torch.Tensor
    cover: torch.Tensor
    named: torch.Tensor


def named_targets(clip: Clip, q: Question) -> list[int]:
    """The asked object's colour and shape as indices into ``NAMED``'s lists, -100 for the one the
    question asks about: every question names its object by all but the attribute it asks."""
    look = clip.looks[q.target]
    return [values.index(getattr(look, attr)) if q.kind != attr else -100 for attr, values in NAMED.items()]


def prefix_ids(model: ReviosaModel, frames: int) -> list[int]:
    """The ReVIOSa user turn's opening: one image block per keyframe."""
    tok, ids, cfg = model.tokenizer, model.processor.ids, model.config
    out = tok.encode(f"{tokens.IM_START}user\n", add_special_tokens=False)
    block = [ids.img_start] + [ids.img_context] * cfg.tokens_per_frame + [ids.img_end]
    return out + (block + tok.encode("\n", add_special_tokens=False)) * frames


def turn_ids(model: ReviosaModel, question: str) -> list[int]:
    """``question`` as the user's text, closed, and the assistant's opening."""
    tok = model.tokenizer
    out = tok.encode(question, add_special_tokens=False, split_special_tokens=True)
    return out + tok.encode(f"{tokens.IM_END}\n{tokens.IM_START}assistant\n", add_special_tokens=False)


def question_ids(model: ReviosaModel, question: str, frames: int) -> list[int]:
    """The ReVIOSa prompt (one image block per keyframe) with ``question`` as the user's text."""
    return prefix_ids(model, frames) + turn_ids(model, question)


def make_batch(model: ReviosaModel, clips: list[Clip], questions: list[list[Question]]) -> QABatch:
    frames = clips[0].frames.shape[0]
    rows = [
        [Turn(turn_ids(model, q.text), model.processor.answer_ids(q.answer)) for q in qs] for qs in questions
    ]
    packed = pack(prefix_ids(model, frames), rows, pad=model.processor.ids.pad)
    most = max(len(qs) for qs in questions)
    asked = torch.full((len(questions), most), -1, dtype=torch.long)
    g = model.config.grid
    cover = torch.zeros(len(questions), most, frames, g, g)
    named = torch.full((len(questions), most, len(NAMED)), -100, dtype=torch.long)
    flat = [(c, t, q) for c, qs in enumerate(questions) for t, q in enumerate(qs)]
    for (c, t, q), last in zip(flat, packed.asked.tolist(), strict=True):
        asked[c, t] = last
        cover[c, t] = coverage(clips[c].masks(q.target), g)
        named[c, t] = torch.tensor(named_targets(clips[c], q))
    # each answer token's question, numbered over the batch in ``kinds`` order
    question = torch.where(packed.labels >= 0, packed.turn, -1)
    pixels = model.processor.mllm_pixels(np.concatenate([c.frames for c in clips]))
    index = torch.arange(len(clips) * frames)
    kinds = [q.kind for _, _, q in flat]
    return QABatch(packed.input_ids, packed.attention_mask, packed.position_ids, packed.labels, question, pixels,
                   index, kinds, asked, cover, named)  # fmt: skip


def answer_logits(
    model: ReviosaModel, batch: QABatch, capture: dict | None = None, state_layer: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Next-token logits (N, L, V) of the whole rows; when ``capture`` (AttentionCapture's
    ``layers`` / ``heads``) is given, the asked positions' attention rows (N, Q, NL, NH, K, g, g);
    when ``state_layer`` is, the asked positions' states after that layer (N, Q, D)."""
    input_ids = batch.input_ids.to(model.device)
    embeds = model.embed(input_ids, batch.pixels, batch.image_index)
    cap = None
    if capture:
        vision = vision_positions_from_ids(input_ids, model.processor.ids.img_context, model.config.grid)
        cap = AttentionCapture(
            model.language_model, batch.asked.to(model.device), vision, model.config.grid, **capture
        )
    with cap if cap else contextlib.nullcontext():
        out = model.language_model(
            inputs_embeds=embeds,
            attention_mask=batch.attention_mask.to(model.device),
            position_ids=batch.position_ids.to(model.device),
            use_cache=False,
            output_hidden_states=state_layer is not None,
        )
    states = None
    if state_layer is not None:
        inner = out.hidden_states[state_layer % model.config.text.num_hidden_layers + 1]  # 0: embeddings
        rows_of = torch.arange(len(inner), device=inner.device)[:, None]
        states = inner[rows_of, batch.asked.clamp_min(0).to(inner.device)]
    logits = model.mllm.lm_head(out.last_hidden_state)
    return logits, cap.result().rows if cap else None, states


class NameHead(torch.nn.Module):
    """The name term's reader: one linear map per attribute of ``NAMED`` from a state (..., D)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, len(v)) for v in NAMED.values())

    def loss(self, states: torch.Tensor, named: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Mean CE over the named attributes of the asked positions, and the share read right.

        states: float (N, Q, D); named: long (N, Q, A) from ``QABatch``."""
        named = named.to(states.device)
        terms, right, total = [], 0, 0
        for a, head in enumerate(self.heads):
            keep = named[..., a] >= 0
            logits = head(states[keep].float())
            terms.append(F.cross_entropy(logits, named[..., a][keep], reduction="sum"))
            right += int((logits.argmax(-1) == named[..., a][keep]).sum())
            total += int(keep.sum())
        return torch.stack(terms).sum() / max(1, total), right / max(1, total)


def binding_loss(rows: torch.Tensor, batch: QABatch) -> tuple[torch.Tensor, torch.Tensor]:
    """-log of the share of each asked position's vision attention that lands on the object asked
    about, mean over questions and heads; and that share (Q', NL, NH) for the records.

    rows: float (N, Q, NL, NH, K, g, g) from ``answer_logits``."""
    cover = batch.cover.to(rows)[:, :, None, None]  # (N, Q, 1, 1, K, g, g)
    on = (rows * cover).flatten(-3).sum(-1)
    share = on / rows.flatten(-3).sum(-1).clamp_min(1e-8)  # (N, Q, NL, NH)
    asked = (batch.asked >= 0) & (batch.cover.flatten(2).sum(-1) > 0)
    share = share[asked.to(share.device)]
    return -(share + 1e-6).log().mean(), share.detach()


def qa_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE over the answer tokens of the batch."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device))


def answers_right(logits: torch.Tensor, batch: QABatch) -> torch.Tensor:
    """bool (Q,): every answer token of a question is the argmax given the true prefix (greedy
    decoding would write the answer exactly)."""
    target = batch.labels[:, 1:].to(logits.device)
    question = batch.question[:, 1:].to(logits.device)
    miss = (logits[:, :-1].argmax(-1) != target) & (question >= 0)
    wrong = torch.zeros(len(batch.kinds), dtype=torch.long, device=logits.device)
    wrong.index_add_(0, question[miss], torch.ones_like(question[miss]))
    return wrong == 0


def draw(
    rng, backgrounds, cfg: QAConfig, count: int, per_clip: int | None = None
) -> tuple[list[Clip], list[list[Question]]]:
    clips, questions = [], []
    while len(clips) < count:
        clip = random_clip(rng, backgrounds, 4, max_stride=QA_STRIDE, stride=QA_STRIDE)
        qs = clip_questions(rng, clip, per_clip or cfg.questions, cfg.min_visible)
        if qs:
            clips.append(clip)
            questions.append(qs)
    return clips, questions


def capture_of(model: ReviosaModel, cfg: QAConfig) -> dict:
    """AttentionCapture's arguments for the binding term's layer and heads."""
    layers = model.config.text.num_hidden_layers
    return {"layers": [cfg.attention_layer % layers], "heads": list(cfg.attention_heads)}


@torch.no_grad()
def scored_chunks(
    model: ReviosaModel, clips: list[Clip], questions: list[list[Question]], capture: dict, chunk: int
):
    """Per chunk of clips: its clips, its questions, which answers are right (bool (Q,)), the
    asked positions' attention rows (``answer_logits``) and its batch."""
    for i in range(0, len(clips), chunk):
        part_clips, part_questions = clips[i : i + chunk], questions[i : i + chunk]
        batch = make_batch(model, part_clips, part_questions)
        logits, rows, _ = answer_logits(model, batch, capture)
        yield part_clips, part_questions, answers_right(logits, batch), rows, batch


def qa_accuracy(
    model: ReviosaModel, val: tuple[list[Clip], list[list[Question]]], cfg: QAConfig, chunk: int = 16
) -> dict:
    """Per question kind, the share of held-out questions answered exactly; and ``qa_binding``: the
    mean share of the binding term's heads' vision attention on the object asked about."""
    right = dict.fromkeys(KINDS, 0)
    total = dict.fromkeys(KINDS, 0)
    shares = []
    was = model.training
    model.eval()
    for _clips, part, ok, rows, batch in scored_chunks(model, *val, capture_of(model, cfg), chunk):
        shares.append(binding_loss(rows, batch)[1].flatten())
        for q, good in zip((q for qs in part for q in qs), ok.tolist(), strict=True):
            right[q.kind] += int(good)
            total[q.kind] += 1
    model.train(was)
    return (
        {f"qa_{k}": right[k] / total[k] for k in KINDS if total[k]}
        | {f"qa_{k}_n": float(total[k]) for k in KINDS}
        | {"qa_binding": float(torch.cat(shares).mean())}
    )


def qa_param_groups(model: ReviosaModel, lr: float, vision_lr: float) -> list[dict]:
    """AdamW's groups: the language side (layers, embedding, lm_head) at ``lr`` and, when
    ``vision_lr`` > 0, the vision tower and projector at it; everything else (and a frozen vision
    side) gets no gradient."""
    language, vision = [], []
    for name, p in model.mllm.named_parameters():
        is_vision = name.startswith(("model.vision_tower", "model.multi_modal_projector"))
        p.requires_grad_(not is_vision or vision_lr > 0)
        (vision if is_vision else language).append(p)
    for p in [*model.prompt_proj.parameters(), *model.sam.parameters()]:
        p.requires_grad_(False)
    groups = [{"params": language, "lr": lr}]
    if vision_lr > 0:
        groups.append({"params": vision, "lr": vision_lr})
    return groups


def train_qa(model: ReviosaModel, cfg: QAConfig, log=logger.info) -> list[dict]:
    """Phase 2 in place; validation records every ``cfg.every`` steps and at the end."""
    torch.manual_seed(cfg.seed)
    size = model.config.vision.image_size
    val_rng = np.random.default_rng([cfg.seed, 1])
    val = draw(val_rng, Backgrounds(val_rng, size, 16), cfg, cfg.val_clips, cfg.val_questions)
    rng = np.random.default_rng([cfg.seed, 0])
    backgrounds = Backgrounds(rng, size)
    groups = qa_param_groups(model, cfg.lr, cfg.vision_lr)
    reader = NameHead(model.config.text.hidden_size).to(model.device) if cfg.names else None
    if reader is not None:
        groups.append({"params": list(reader.parameters()), "lr": cfg.lr})
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    warm = max(1, int(cfg.warmup * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warm)
            * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + np.cos(np.pi * s / cfg.steps)))
        ),
    )
    model.train()
    records, losses, shares, read, t0 = [], [], [], [], time.perf_counter()
    for step in range(1, cfg.steps + 1):
        batch = make_batch(model, *draw(rng, backgrounds, cfg, cfg.clips))
        logits, rows, states = answer_logits(
            model,
            batch,
            capture_of(model, cfg) if cfg.attention else None,
            cfg.names_layer if reader is not None else None,
        )
        loss = qa_loss(logits, batch.labels)
        if rows is not None:
            bind, share = binding_loss(rows, batch)
            loss = loss + cfg.attention * bind
            shares.append(float(share.mean()))
        if reader is not None:
            name_loss, name_right = reader.loss(states, batch.named)
            loss = loss + cfg.names * name_loss
            read.append(name_right)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % cfg.every == 0 or step == cfg.steps:
            record = {"step": step, "loss": float(np.mean(losses)), **qa_accuracy(model, val, cfg)}
            if shares:
                record["binding_train"] = float(np.mean(shares))
            if read:
                record["names_train"] = float(np.mean(read))
            record["seconds"] = time.perf_counter() - t0
            records.append(record)
            losses, shares, read = [], [], []
            log(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
    return records


# --- files ----------------------------------------------------------------------------------------


def save_mllm(model: ReviosaModel, folder: Path, dtype: torch.dtype | None = None) -> None:
    """``mllm.*`` tensors and the tokenizer: what ``load_mllm`` (model.mllm_init) reads."""
    save_parts({"mllm": model.mllm}, folder / MLLM, dtype)
    model.tokenizer.save_pretrained(str(folder / TOKENIZER))


def load_mllm(model: ReviosaModel, path: str | Path) -> None:
    """Load ``mllm.safetensors`` strictly (every tensor, same shapes) in the model's dtype."""
    load_parts({"mllm": model.mllm}, path, "MLLM", "train.stages.vl_pretrain")


def build(recipe: str, model_sets: list[str], tokenizer=None, seed: int = 0) -> ReviosaModel:
    torch.manual_seed(seed)
    return ReviosaModel(stage_model_config(recipe, model_sets), tokenizer or build_tokenizer(qa_corpus()))


def gates(tower: dict, qa: dict) -> list[report.Gate]:
    """The stage's gate figures that the records hold (a phase not run yet has none)."""
    out = [
        report.Gate(f"probe reads {a} (held-out objects)", tower[a], 0.95)
        for a in ("colour", "shape", "size")
        if a in tower
    ]
    out += [
        report.Gate(f"LLM answers {k} questions (held-out clips)", qa[f"qa_{k}"], 0.9)
        for k in KINDS
        if f"qa_{k}" in qa
    ]
    return out


def stage_records(out: Path) -> tuple[dict, dict, str]:
    """The newest tower and QA validation records in the stage folder, and what state it is in."""
    tower, qa, state = {}, {}, []
    if (out / vision_tower.REPORT).is_file():
        tower = json.loads((out / vision_tower.REPORT).read_text())["records"][-1]
        state.append(f"tower done ({tower['step']} steps)")
    elif (out / vision_tower.STATE).is_file():
        records = torch.load(out / vision_tower.STATE, weights_only=False)["records"]
        tower = records[-1] if records else {}
        state.append(
            f"tower under way (step {tower.get('step', 0)}; resumes from `{out / vision_tower.STATE}`)"
        )
    if (out / QA_RECORDS).is_file():
        qa = json.loads((out / QA_RECORDS).read_text())["records"][-1]
        state.append(f"QA done ({qa['step']} steps, {int(sum(v for k, v in qa.items() if k.endswith('_n')))} "
                     "held-out questions)")  # fmt: skip
    else:
        state.append("QA not run yet")
    return tower, qa, "; ".join(state)


def write_report(out: Path, command: str, folder: Path) -> None:
    """Stage 1's section of the report, from what the stage folder holds."""
    tower, qa, state = stage_records(out)
    figures = {f"probe_{a}": tower[a] for a in vision_tower.ATTRIBUTES if a in tower}
    figures |= {k: v for k, v in qa.items() if k.startswith("qa_") and not k.endswith("_n")}
    wall = tower.get("seconds", 0.0) + qa.get("seconds", 0.0)
    report.write_section("vl_pretrain", "Stage 1: vision-language pretraining", command, wall,
                         gates(tower, qa), figures, f"State: {state}. Folder: `{out}`.", folder)  # fmt: skip
    report.assemble(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.stages.vl_pretrain", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True, help="stage folder (vision.*, mllm.safetensors, tokenizer/)")
    parser.add_argument("--recipe", default=RECIPE, help="the stages' recipe (model geometry)")
    parser.add_argument(
        "--model", action="append", default=[], metavar="KEY=VALUE", help="a model config field"
    )
    parser.add_argument(
        "--phase",
        choices=("both", "tower", "qa", "report"),
        default="both",
        help="report: only write the section from what OUT holds",
    )
    parser.add_argument("--tower-steps", type=int, default=12000)
    parser.add_argument("--tower-lr", type=float, default=1e-3)
    parser.add_argument(
        "--tower-position", type=float, default=0.0, help="weight of the tower's token-position term"
    )
    parser.add_argument("--qa-steps", type=int, default=QAConfig.steps)
    parser.add_argument("--qa-lr", type=float, default=QAConfig.lr)
    parser.add_argument("--qa-val-clips", type=int, default=QAConfig.val_clips)
    parser.add_argument("--qa-clips", type=int, default=QAConfig.clips, help="clips per QA step")
    parser.add_argument(
        "--qa-questions", type=int, default=QAConfig.questions, help="questions per clip (one row a clip)"
    )
    parser.add_argument(
        "--qa-vision-lr",
        type=float,
        default=QAConfig.vision_lr,
        help="train the tower and projector in QA too",
    )
    parser.add_argument(
        "--qa-attention",
        type=float,
        default=QAConfig.attention,
        help="weight of the binding term (answer attention on the object asked about)",
    )
    parser.add_argument("--qa-attention-layer", type=int, default=QAConfig.attention_layer)
    parser.add_argument("--qa-attention-heads", type=int, nargs="+", default=list(QAConfig.attention_heads))
    parser.add_argument(
        "--qa-names",
        type=float,
        default=QAConfig.names,
        help="weight of the name term (the answer position reads the colour and shape its question names)",
    )
    parser.add_argument("--qa-names-layer", type=int, default=QAConfig.names_layer)
    parser.add_argument(
        "--init",
        help="phase qa: start from this stage-1 folder's mllm.safetensors (tower included) instead of "
        "OUT's vision.safetensors; phase tower: start the tower from its vision.safetensors",
    )
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--val-scenes", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", default=str(report.REPORT_DIR), help="stages' report folder ('': none)")
    args = parser.parse_args(argv)
    if args.init and args.phase not in ("qa", "tower"):
        parser.error("--init starts one phase from another stage-1 folder: give --phase qa or --phase tower")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m train.stages.vl_pretrain " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.phase != "report":
        train_phases(args, out)
    if args.report:
        write_report(out, command, Path(args.report))


def train_phases(args, out: Path) -> None:
    model = build(args.recipe, args.model, seed=args.seed)
    tower_file = out / vision_tower.WEIGHTS
    if args.phase in ("both", "tower") and not tower_file.is_file():
        tcfg = vision_tower.PretrainConfig(
            steps=args.tower_steps,
            lr=args.tower_lr,
            every=args.every,
            val_scenes=args.val_scenes,
            seed=args.seed,
            position=args.tower_position,
        )
        if args.init:
            vision_tower.load_vision(model, Path(args.init) / vision_tower.WEIGHTS)
        records = vision_tower.pretrain(model, tcfg, logger.info, out / vision_tower.STATE)
        vision_tower.save_vision(model, tower_file)
        (out / vision_tower.REPORT).write_text(
            json.dumps({"config": asdict(tcfg), "records": records}, indent=2) + "\n"
        )
    if args.phase == "tower" or (out / MLLM).is_file():
        return
    if args.init:
        load_mllm(model, Path(args.init) / MLLM)
    else:
        vision_tower.load_vision(model, tower_file)
    qcfg = QAConfig(
        steps=args.qa_steps,
        lr=args.qa_lr,
        val_clips=args.qa_val_clips,
        clips=args.qa_clips,
        questions=args.qa_questions,
        every=args.every,
        seed=args.seed,
        vision_lr=args.qa_vision_lr,
        attention=args.qa_attention,
        attention_layer=args.qa_attention_layer,
        attention_heads=tuple(args.qa_attention_heads),
        names=args.qa_names,
        names_layer=args.qa_names_layer,
    )
    qa_records = train_qa(model, qcfg)
    save_mllm(model, out)
    (out / QA_RECORDS).write_text(
        json.dumps({"config": asdict(qcfg), "records": qa_records}, indent=2) + "\n"
    )
    logger.info("wrote %s", out / MLLM)


if __name__ == "__main__":
    main()
