"""Can SAM2 learn to follow its prompt from scratch? A SAM2-only training probe.

python -m train.probes.probe_sam --data ROOT [--model builtin] [--prompts example|clicks] [--steps 400]
    [--lr 7e-4] [--every 25] [--clips 6] [--config RECIPE]

It re-initialises the SAM2 part of MODEL (seeded) and trains it alone on the training split with
the seg loss, prompted without the language model: by example prompts (``example``, SAM2's own
features pooled under the referent's masks, ``ReviosaModel.example_prompts``) or by one click inside
the referent on each frame (``clicks``, the language prompt zeros). Every ``--every`` steps it
prints, on the first validation clips, the mean IoU with the truth and the IoU between the actor
and target masks of one expression: a decoder that follows its prompt gives two different masks
(the truth overlaps at 0), one that ignores it gives one mask twice (IoU 1). It tells whether a
curriculum that trains SAM2 first on such prompts (``stages[].loss_scale``) can work at a size,
and after how many steps.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from reviosa import sam as sam_ops
from reviosa.data import InterRVOSDataset
from reviosa.evaluation import iou
from reviosa.hub import from_pretrained
from reviosa.modeling import ReviosaModel
from train.config import load_config
from train.data import Batch, ClipDataset, collate
from train.losses import seg_loss


@dataclass(frozen=True)
class ProbeSettings:
    prompts: str = "example"  # example | clicks
    steps: int = 400
    lr: float = 7e-4
    batch_size: int = 4  # clips per step
    every: int = 25  # steps between validations
    clips: int = 6  # validation clips
    seed: int = 0
    example_grad: bool = False  # as loss.example_grad: the seg loss reaches the encoder through the prompts


def sample_clicks(masks: torch.Tensor, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per mask, uniformly inside it: masks float (B, R, F, h, w) -> coordinates
    (B, R, F, 1, 2) as (x, y) at pixel centres of the ``size`` x ``size`` SAM2 input, labels long
    (B, R, F, 1): 1, or -1 (SAM2's "no click") where the mask is empty."""
    *lead, h, w = masks.shape
    flat = masks.reshape(-1, h * w)
    has = flat.sum(1) > 0
    weights = torch.where(has[:, None], flat, torch.ones_like(flat))  # any pixel for an empty mask
    idx = torch.multinomial(weights, 1, generator=gen)[:, 0]
    x = (idx % w).float().add(0.5).mul(size / w)
    y = torch.div(idx, w, rounding_mode="floor").float().add(0.5).mul(size / h)
    coords = torch.stack([x, y], -1).reshape(*lead, 1, 2)
    labels = torch.where(has, 1, -1).reshape(*lead, 1)
    return coords, labels


def probe_logits(
    model: ReviosaModel, batch: Batch, prompts: str, gen: torch.Generator, example_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask logits (B, R, F, h, w) of SAM2 prompted without the language model, and the weight
    (B, R) of each role in the loss (0 where the role is absent or its masks are empty)."""
    feats = model.encode_frames(batch.sam_pixels)
    f = batch.sam_pixels.shape[1]
    pooled, valid = model.example_prompts(feats, batch.masks, batch.clip_of)
    weight = batch.role_weight * valid.to(batch.role_weight.dtype)
    if prompts == "example":
        given = pooled if example_grad else pooled.detach()
        logits, _ = model.decode_encoded(feats, f, given, batch.clip_of, valid)
    elif prompts == "clicks":
        clicks = sample_clicks(batch.masks, model.config.sam.image_size, gen)
        logits, _ = model.decode_encoded(feats, f, torch.zeros_like(pooled), batch.clip_of, valid, clicks)
    else:
        raise ValueError(f"prompts must be 'example' or 'clicks', not {prompts!r}")
    return logits, weight


def validate(model: ReviosaModel, clips: ClipDataset, settings: ProbeSettings) -> dict[str, float]:
    """Mean IoU with the truth and actor-vs-target IoU on the first ``settings.clips`` clips."""
    gen = torch.Generator().manual_seed(settings.seed)
    ious: list[float] = []
    overlap: list[float] = []
    model.eval()
    with torch.no_grad():
        for c in range(min(settings.clips, len(clips))):
            batch = collate([clips[(0, c)]], model.processor.ids.pad)
            logits, weight = probe_logits(model, batch, settings.prompts, gen)
            pred, gt = (logits > 0).numpy(), (batch.masks > 0.5).numpy()
            both = (weight[:, 1] > 0).numpy()
            ious += iou(pred, gt).mean(-1)[(weight > 0).numpy()].tolist()
            overlap += iou(pred[both, 0], pred[both, 1]).mean(-1).tolist()
    model.train()
    return {"iou": float(np.mean(ious)), "actor_vs_target_iou": float(np.mean(overlap)) if overlap else 0.0}


def probe(
    model: ReviosaModel, train: ClipDataset, val: ClipDataset, settings: ProbeSettings, report=print
) -> list[dict]:
    """Re-initialise ``model.sam``, train it alone for ``settings.steps``; returns the validations."""
    torch.manual_seed(settings.seed)
    model.sam = sam_ops.build_sam(model.config.sam).train()
    opt = torch.optim.AdamW(model.sam.parameters(), lr=settings.lr, weight_decay=0.05)
    rng = np.random.default_rng(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    records, start = [], time.perf_counter()
    for step in range(1, settings.steps + 1):
        items = [train[(0, int(i))] for i in rng.integers(0, len(train), settings.batch_size)]
        batch = collate(items, model.processor.ids.pad)
        logits, weight = probe_logits(model, batch, settings.prompts, gen, settings.example_grad)
        loss = seg_loss(logits, batch.masks, weight).total(2.0, 0.5) / batch.rows
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.sam.parameters(), 1.0)
        opt.step()
        if step % settings.every == 0 or step == settings.steps:
            record = {"step": step, "loss": float(loss.detach()), **validate(model, val, settings)}
            record["time_s"] = time.perf_counter() - start
            records.append(record)
            report(
                f"{settings.prompts} step {step:5d}  loss {record['loss']:.3f}  val IoU {record['iou']:.3f}"
                f"  actor-vs-target IoU {record['actor_vs_target_iou']:.3f}  {record['time_s']:.0f}s"
            )
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.probes.probe_sam", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", required=True, help="dataset root with train and val splits")
    parser.add_argument("--model", default="builtin", help="model whose SAM2 configuration is probed")
    parser.add_argument("--prompts", choices=("example", "clicks"), default="example")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=7e-4)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--clips", type=int, default=6, help="validation clips")
    parser.add_argument("--example-grad", action="store_true", help="as loss.example_grad")
    parser.add_argument("--config", default="train/recipes/builtin.yaml", help="clip sampling settings")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread trains fastest at this size (FACTS.md)
    model = from_pretrained(args.model)
    cfg = load_config(args.config, [])
    train, val = (
        ClipDataset(InterRVOSDataset(args.data, split), model.processor, model.config, cfg.data, cfg.seed)
        for split in ("train", "val")
    )
    settings = ProbeSettings(
        args.prompts, args.steps, args.lr, every=args.every, clips=args.clips, example_grad=args.example_grad
    )
    probe(model, train, val, settings)


if __name__ == "__main__":
    main()
