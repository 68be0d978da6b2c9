"""Layer-head selection for the AML (paper, "Layer-head selection for AML"; Figure 6).

Over a sample set, the ``[SEG_ACT]`` query's attention mass on the vision tokens (the softmax row
summed over all vision keys) is averaged per layer and head; the layer with the highest
head-averaged mass is chosen, then its top-k heads (the paper: top-4, Table 3). The answer is
teacher-forced ("Sure, [SEG_ACT]." or "Sure, [SEG_ACT] and [SEG_TAR].") so that a base model that
never learned to emit the role tokens can be measured too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from reviosa.attention import AttentionCapture, role_positions, vision_positions_from_ids
from reviosa.modeling import ReviosaModel
from reviosa.processor import keyframe_indices
from train.data import answer_for

logger = logging.getLogger(__name__)


@dataclass
class Selection:
    """layer / heads: the choice; mass: float64 (NL, NH) mean vision mass of ``[SEG_ACT]`` per
    layer and head over ``samples`` expressions; layer_mass: (NL,) its mean over heads."""

    layer: int
    heads: list[int]
    mass: np.ndarray
    samples: int

    @property
    def layer_mass(self) -> np.ndarray:
        return self.mass.mean(axis=1)

    def to_json(self) -> dict:
        return {
            "layer": self.layer,
            "heads": self.heads,
            "samples": self.samples,
            "layer_mass": [round(float(v), 6) for v in self.layer_mass],
            "head_mass": [[round(float(v), 6) for v in row] for row in self.mass],
        }


def pick(mass: np.ndarray, top_k: int) -> tuple[int, list[int]]:
    """Top layer by head-averaged mass, then its ``top_k`` heads, highest first. mass: (NL, NH)."""
    layer = int(np.argmax(mass.mean(axis=1)))
    order = np.argsort(-mass[layer], kind="stable")
    return layer, [int(h) for h in order[:top_k]]


@torch.no_grad()
def measure(model: ReviosaModel, samples, batch: int = 4) -> np.ndarray:
    """Mean ``[SEG_ACT]`` vision mass per (layer, head) over the samples: float64 (NL, NH)."""
    proc, cfg = model.processor, model.config
    total, count = None, 0
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        ids, pixels = [], []
        for sample in chunk:
            keys = keyframe_indices(
                sample.num_frames, cfg.processor.num_keyframes, cfg.processor.keyframe_strategy
            )
            frames = sample.load_frames(keys)
            # Every row needs the same vision-token count: short clips repeat their last frame.
            keys_pixels = proc.mllm_pixels(frames)
            if len(keys) < cfg.processor.num_keyframes:
                pad = keys_pixels[-1:].expand(cfg.processor.num_keyframes - len(keys), -1, -1, -1)
                keys_pixels = torch.cat([keys_pixels, pad])
            pixels.append(keys_pixels)
            prompt = proc.prompt_ids(sample.expression, cfg.processor.num_keyframes)
            ids.append(prompt + proc.answer_ids(answer_for(sample, two_tokens=True)))
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), proc.ids.pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for b, row in enumerate(ids):
            input_ids[b, : len(row)] = torch.tensor(row)
            mask[b, : len(row)] = 1
        input_ids, mask = input_ids.to(model.device), mask.to(model.device)
        embeds = model.embed(input_ids, torch.cat(pixels).to(model.device))
        positions = role_positions(input_ids, [proc.ids.seg_act])  # (B, 1)
        vision = vision_positions_from_ids(input_ids, proc.ids.img_context, cfg.grid)
        with AttentionCapture(model.language_model, positions, vision, cfg.grid, keep_grad=False) as cap:
            model.hidden_states(embeds, mask)
        mass = cap.result().vision_mass[:, 0].double().sum(0).cpu().numpy()  # (NL, NH)
        total = mass if total is None else total + mass
        count += len(chunk)
    if total is None:
        raise ValueError("no samples to measure attention on")
    return total / count


def select_heads(model: ReviosaModel, samples, top_k: int = 4, batch: int = 4) -> Selection:
    mass = measure(model, samples, batch)
    layer, heads = pick(mass, top_k)
    logger.info("selected layer %d, heads %s (mass %.4f)", layer, heads, mass[layer].mean())
    return Selection(layer=layer, heads=heads, mass=mass, samples=len(samples))


def choose_samples(dataset, count: int, seed: int = 0) -> list:
    """``count`` expressions spread over the split (a seeded choice, in dataset order)."""
    samples = list(dataset.samples())
    if count >= len(samples):
        return samples
    keep = np.sort(np.random.default_rng(seed).choice(len(samples), size=count, replace=False))
    return [samples[i] for i in keep]


def save_figures(selection: Selection, out_dir) -> list:
    """The two charts of Figure 6: (a) mass per layer, (b) mass per head of the chosen layer."""
    from pathlib import Path

    from viz.attention import plot_head_vision_mass, plot_layer_vision_mass, save_figure_png

    out_dir = Path(out_dir)
    nl, nh = selection.mass.shape
    fig_a = plot_layer_vision_mass(selection.layer_mass, list(range(nl)), selection.layer)
    fig_b = plot_head_vision_mass(
        selection.mass[selection.layer], list(range(nh)), selection.heads, selection.layer
    )
    return [
        save_figure_png(fig_a, out_dir / "figure6a_layers.png"),
        save_figure_png(fig_b, out_dir / "figure6b_heads.png"),
    ]
