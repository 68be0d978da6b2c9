"""What the stages share: the recipe's model geometry, read the same way by every stage."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from reviosa.config import ReviosaConfig
from train.config import load_config
from train.model import model_config

RECIPE = "train/recipes/stages.yaml"


class Schedule(Protocol):
    """The schedule fields of a stage's own config (stage 2's, the grounding phase's)."""

    steps: int
    warmup: float
    min_lr_ratio: float


def lr_at(step: int, cfg: Schedule) -> float:
    """Linear warm-up over ``cfg.warmup`` of the steps, then cosine to ``cfg.min_lr_ratio`` (a
    factor of the config's lr)."""
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def parse_model_sets(items: list[str]) -> dict:
    """``["sam.image_size=256"]`` -> ``{"sam.image_size": 256}`` (values parsed as YAML)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--model expects key=value (a model config field), got {item!r}")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw)
    return out


def stage_model_config(recipe: str = RECIPE, model_sets: list[str] | None = None) -> ReviosaConfig:
    """The from-scratch model config every stage builds its part of; ``model_sets`` change single
    model fields on top of the recipe's ``model.overrides`` (e.g. ``sam.image_size=256``)."""
    cfg = load_config(recipe, [])
    if cfg.model.kind != "scratch":
        raise ValueError(f"{recipe}: the stages build a from-scratch model (model.kind: scratch)")
    cfg.model.overrides = {**cfg.model.overrides, **parse_model_sets(model_sets or [])}
    return model_config(cfg)


def save_parts(parts: dict[str, nn.Module], path: Path, dtype: torch.dtype | None = None) -> None:
    """Each part's tensors under its name (``{name}.{key}``), floating ones stored as ``dtype`` when
    given: the stage files that ``load_parts`` (and model.*_init) read."""
    save_file(
        {f"{name}.{key}": (v.detach().to(dtype) if dtype and v.is_floating_point() else v.detach()).contiguous()
         for name, part in parts.items() for key, v in part.state_dict().items()},
        str(path),
    )  # fmt: skip


def load_parts(
    parts: dict[str, nn.Module], path: str | Path, what: str, writer: str, others: bool = False
) -> None:
    """Load a ``save_parts`` file strictly: every tensor of every part, nothing else, the same
    shapes; each tensor in its part's dtype. ``what`` names the parts in errors, ``writer`` the
    module that writes the file. ``others``: the file may hold other parts too (a whole model's
    ``model.safetensors``), which are left out."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} weights at {path} (write them with python -m {writer})")
    tensors = load_file(str(path))
    stray = [k for k in tensors if not k.startswith(tuple(f"{name}." for name in parts))]
    if stray and not others:
        raise ValueError(f"{path} holds tensors outside the {what}: {stray[:3]}")
    for name, part in parts.items():
        own = part.state_dict()
        mine = {k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.")}
        state = {k: v.to(own[k].dtype) if k in own else v for k, v in mine.items()}
        try:
            part.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"{path} does not fit this model's {what} (pretrain it with the same recipe): {err}"
            ) from err
