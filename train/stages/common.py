"""What the stages share: the recipe's model geometry, read the same way by every stage."""

from __future__ import annotations

import yaml

from reviosa.config import ReviosaConfig
from train.config import load_config
from train.model import model_config

RECIPE = "train/recipes/stages.yaml"


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
