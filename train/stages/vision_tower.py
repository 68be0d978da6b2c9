"""Stage 1, phase 1: the vision tower and projector learn the synthetic world's object attributes.

python -m train.stages.vision_tower --config train/recipes/stages.yaml --out runs/stage1
    [--steps 2000] [--batch 16] [--lr 1e-3] [--val-scenes 256] [--resume]

Real ReVIOSa checkpoints start from a pretrained InternViT that already tells a triangle from a
square; a tower trained from scratch only through the segmentation losses never learned shape
(``python -m train.probes.probe_words probe``: shape read at chance from its tokens). This trains the
vision tower and projector of the config's from-scratch model, alone, on freshly rendered still
scenes (one to four objects, the world's backgrounds and occluders): a linear head per attribute
(colour, shape, size, texture) reads each object from its tokens pooled by coverage, the way a
referent's tokens are pooled elsewhere. Every step renders new scenes (seeded by the step, so a
resumed run draws what an unbroken one would), so the tower cannot memorise a fixed set of
referents. It writes OUT/vision.safetensors (``vision_tower.*`` and ``multi_modal_projector.*``),
which ``model.vision_init`` loads strictly into a from-scratch model, and OUT/vision.json with the
validation accuracies; every ``--every`` steps also OUT/vision_state.pt (heads, optimizer, step)
for ``--resume``. ``python -m train.stages.vl_pretrain`` runs it as stage 1's first phase.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reviosa.data.synth import random_look
from reviosa.data.synth_render import COLOURS, SHAPES, SIZES, TEXTURES, make_occluder, render_clip
from reviosa.modeling import ReviosaModel
from reviosa.tokenizer import build_tokenizer
from train.config import load_config
from train.data import coverage
from train.model import model_config
from train.stages.clips import Backgrounds, full_area
from train.stages.common import load_parts, save_parts

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "size": tuple(SIZES),
    "texture": TEXTURES,
}
PARTS = ("vision_tower", "multi_modal_projector")  # submodules of mllm.model that the file holds
WEIGHTS, REPORT, STATE = "vision.safetensors", "vision.json", "vision_state.pt"
CLI_FIELDS = ("steps", "batch", "lr", "val_scenes", "every", "seed", "position")  # of PretrainConfig


@dataclass
class PretrainConfig:
    steps: int = 2000
    batch: int = 16  # scenes per step
    lr: float = 1e-3
    max_objects: int = 4
    min_visible: float = 0.6  # objects showing less of their area than this are not labelled
    occluder_prob: float = 0.25
    val_scenes: int = 256
    every: int = 250  # steps between validation reports
    seed: int = 0
    # Weight of the position term (0: off, the first runs): every token's own grid row and column
    # read by two linear heads from its projected features. The attribute heads pool tokens, so
    # they never ask a token where it is; the LLM then cannot answer "where" or "which way"
    # (train.probes.token_position: a stage-1 token's cell read at 0.21, its quadrant at 0.39).
    # Measured at weight 1 (3000 steps from checkpoints/stage1): cell 0.86, yet the LLM's position
    # answers stayed at 0.27 and stage 3 on that tower lost 8 points of validation J&F, so the
    # recipe keeps it off (docs/training.md, "Eighth and ninth sessions").
    position: float = 0.0


@dataclass
class Scene:
    """One rendered still: frame uint8 (S, S, 3); masks bool (N, S, S) of its labelled objects;
    labels {attribute: long (N,)} indices into ATTRIBUTES."""

    frame: np.ndarray
    masks: np.ndarray
    labels: dict[str, torch.Tensor]


def random_scene(rng: np.random.Generator, backgrounds: Backgrounds, cfg: PretrainConfig) -> Scene:
    """A still of one to ``max_objects`` random objects at random places, back to front."""
    size = backgrounds.pool[0].shape[0]
    looks = [random_look(rng, size) for _ in range(int(rng.integers(1, cfg.max_objects + 1)))]
    centres = np.stack([rng.uniform(look.radius, size - look.radius, size=2) for look in looks])
    occluder = make_occluder(rng, size) if rng.random() < cfg.occluder_prob else None
    order = [int(k) for k in rng.permutation(len(looks))]
    frames, ids = render_clip(backgrounds.draw(rng), looks, centres[:, None], order, occluder)
    masks = ids[0][None] == np.arange(len(looks))[:, None, None]  # (N, S, S)
    # Only objects seen well enough to tell their shape: a cross cut by a bar is no longer a cross.
    keep = [k for k, look in enumerate(looks) if masks[k].sum() >= cfg.min_visible * full_area(look)]
    labels = {
        name: torch.tensor([words.index(getattr(looks[k], name)) for k in keep], dtype=torch.long)
        for name, words in ATTRIBUTES.items()
    }
    return Scene(frames[0], masks[keep], labels)


class AttributeHeads(nn.Module):
    """One linear classifier per attribute over a pooled token: (N, D) -> {attribute: (N, C)}."""

    def __init__(self, dim: int):
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(dim, len(words)) for name, words in ATTRIBUTES.items()})

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(pooled) for name, head in self.heads.items()}


class PositionHeads(nn.Module):
    """Two linear classifiers over each token: (..., D) -> (row logits, column logits), (..., g)."""

    def __init__(self, dim: int, grid: int):
        super().__init__()
        self.row, self.col = nn.Linear(dim, grid), nn.Linear(dim, grid)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.row(tokens), self.col(tokens)


def scene_tokens(model: ReviosaModel, scenes: list[Scene]) -> torch.Tensor:
    """The scenes' vision tokens (projector outputs), raster order: float (B, g*g, D)."""
    return model.vision_tokens(model.processor.mllm_pixels(np.stack([s.frame for s in scenes])))


def token_cells(grid: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of each token in raster order: two long (g*g,)."""
    cell = torch.arange(grid * grid, device=device)
    return cell // grid, cell % grid


def position_loss(heads: PositionHeads, feats: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of every token's row plus that of its column (a scalar).
    feats: float (B, g*g, D)."""
    row, col = token_cells(heads.row.out_features, feats.device)
    row_logits, col_logits = heads(feats)  # (B, g*g, g) each
    ce = F.cross_entropy
    return ce(row_logits.flatten(0, 1), row.repeat(len(feats))) + ce(
        col_logits.flatten(0, 1), col.repeat(len(feats))
    )


def pooled_objects(
    model: ReviosaModel, scenes: list[Scene], feats: torch.Tensor | None = None
) -> torch.Tensor:
    """Each labelled object's vision tokens (projector outputs; ``feats`` when given, (B, g*g, D)),
    mean-weighted by the fraction of each grid cell it covers: float (sum N, D), scene-major."""
    feats = scene_tokens(model, scenes) if feats is None else feats
    g = model.config.grid
    rows = []
    for scene, tokens in zip(scenes, feats, strict=True):
        if len(scene.masks):
            cover = coverage(scene.masks, g).flatten(1).to(tokens)  # (N, g*g)
            rows.append(cover @ tokens / cover.sum(1, keepdim=True).clamp_min(1e-6))
    return torch.cat(rows) if rows else feats.new_zeros(0, feats.shape[-1])


def attribute_loss(heads: AttributeHeads, pooled: torch.Tensor, scenes: list[Scene]) -> torch.Tensor:
    """Sum over attributes of the mean cross-entropy of the objects' labels (a scalar)."""
    logits = heads(pooled)
    return sum(
        F.cross_entropy(logits[name], torch.cat([s.labels[name] for s in scenes]).to(pooled.device))
        for name in ATTRIBUTES
    )


@torch.no_grad()
def accuracy(
    model: ReviosaModel,
    heads: AttributeHeads,
    scenes: list[Scene],
    batch: int,
    places: PositionHeads | None = None,
) -> dict[str, float]:
    """Per attribute, the fraction of the scenes' objects its head reads right; with ``places``,
    also "cell": the fraction of the scenes' tokens whose row and column both read right."""
    right = dict.fromkeys(ATTRIBUTES, 0)
    total = cells = 0
    for i in range(0, len(scenes), batch):
        chunk = scenes[i : i + batch]
        feats = scene_tokens(model, chunk)
        logits = heads(pooled_objects(model, chunk, feats))
        for name in ATTRIBUTES:
            truth = torch.cat([s.labels[name] for s in chunk])
            right[name] += int((logits[name].argmax(1).cpu() == truth).sum())
        total += sum(len(s.masks) for s in chunk)
        if places is not None:
            row, col = token_cells(places.row.out_features, feats.device)
            row_logits, col_logits = places(feats)
            cells += int(((row_logits.argmax(-1) == row) & (col_logits.argmax(-1) == col)).sum())
    scores = {name: right[name] / max(total, 1) for name in ATTRIBUTES}
    if places is not None:
        scores["cell"] = cells / max(len(scenes) * model.config.grid**2, 1)
    return scores


def vision_parts(model: ReviosaModel) -> dict[str, nn.Module]:
    return {name: getattr(model.mllm.model, name) for name in PARTS}


def pretrain(
    model: ReviosaModel, cfg: PretrainConfig, report=print, state_path: Path | None = None
) -> list[dict]:
    """Train the vision tower and the projector in place on fresh scenes; validation records
    ({"step", "loss", attribute: accuracy}) every ``cfg.every`` steps and at the end. With
    ``state_path``, a checkpoint is written there at each validation, and read first if present."""
    torch.manual_seed(cfg.seed)
    size = model.config.vision.image_size
    val_rng = np.random.default_rng([cfg.seed, 1])
    val_bg = Backgrounds(val_rng, size, count=16)
    val = [random_scene(val_rng, val_bg, cfg) for _ in range(cfg.val_scenes)]
    backgrounds = Backgrounds(np.random.default_rng([cfg.seed, 2]), size)
    heads = AttributeHeads(model.config.text.hidden_size).to(model.device)
    places = (
        PositionHeads(model.config.text.hidden_size, model.config.grid).to(model.device)
        if cfg.position
        else None
    )
    params = [p for part in vision_parts(model).values() for p in part.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    head_params = [*heads.parameters(), *(places.parameters() if places is not None else ())]
    opt = torch.optim.AdamW([*params, *head_params], lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * s / cfg.steps))
    )
    start, records = 0, []
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        for name, part in vision_parts(model).items():
            part.load_state_dict(state["parts"][name])
        heads.load_state_dict(state["heads"])
        if places is not None:
            places.load_state_dict(state["places"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, records = state["step"], state["records"]
        report(f"resumed at step {start}")
    model.eval()  # no dropout; the parts still train
    losses, t0 = [], time.perf_counter()
    for step in range(start + 1, cfg.steps + 1):
        rng = np.random.default_rng([cfg.seed, 0, step])
        scenes = [random_scene(rng, backgrounds, cfg) for _ in range(cfg.batch)]
        feats = scene_tokens(model, scenes)
        loss = attribute_loss(heads, pooled_objects(model, scenes, feats), scenes)
        if places is not None:
            loss = loss + cfg.position * position_loss(places, feats)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % cfg.every == 0 or step == cfg.steps:
            record = {
                "step": step,
                "loss": sum(losses) / len(losses),
                **accuracy(model, heads, val, cfg.batch, places),
            }
            record["seconds"] = time.perf_counter() - t0 + (records[-1]["seconds"] if records else 0.0)
            t0 = time.perf_counter()
            records.append(record)
            report(
                " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
            )
            losses = []
            if state_path is not None:
                parts = {name: part.state_dict() for name, part in vision_parts(model).items()}
                # Written aside and renamed: a copy (or a commit) never reads a half-written file.
                torch.save(
                    {"parts": parts, "heads": heads.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "step": step, "records": records,
                     **({"places": places.state_dict()} if places is not None else {})},
                    state_path.with_suffix(".tmp"),
                )  # fmt: skip
                state_path.with_suffix(".tmp").replace(state_path)
    for p, flag in zip(params, flags, strict=True):
        p.requires_grad_(flag)
    return records


def save_vision(model: ReviosaModel, path: Path) -> None:
    save_parts(vision_parts(model), path)


def load_vision(model: ReviosaModel, path: str | Path) -> None:
    """Load a ``vision_tower`` file into the model's vision tower and projector, strictly: every
    tensor of both parts, nothing else, with the same shapes."""
    load_parts(vision_parts(model), path, "vision tower and projector", "train.stages.vision_tower")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.stages.vision_tower", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, help="training config of a from-scratch model")
    parser.add_argument("--out", required=True, help="folder for vision.safetensors and vision.json")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/vision_state.pt")
    defaults = PretrainConfig()
    for field_name in CLI_FIELDS:
        value = getattr(defaults, field_name)
        parser.add_argument(f"--{field_name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    train_cfg = load_config(args.config, [])
    if train_cfg.model.kind != "scratch":
        raise SystemExit("vision_tower builds the config's from-scratch model (model.kind: scratch)")
    cfg = PretrainConfig(**{k: getattr(args, k) for k in CLI_FIELDS})
    torch.manual_seed(cfg.seed)
    # The tokenizer is never used here; the model needs one to be built.
    model = ReviosaModel(model_config(train_cfg), build_tokenizer())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.resume and (out / STATE).is_file():
        raise SystemExit(f"{out / STATE} exists: pass --resume, or choose another --out")
    records = pretrain(model, cfg, lambda line: print(line, flush=True), out / STATE)
    save_vision(model, out / WEIGHTS)
    (out / REPORT).write_text(json.dumps({"config": asdict(cfg), "records": records}, indent=2) + "\n")
    print(f"wrote {out / WEIGHTS}")


if __name__ == "__main__":
    main()
