"""Building the model to train and choosing what trains (LoRA via peft, or everything).

Axis letters as in ``reviosa.modeling``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from reviosa.config import AttentionSupervision, ReviosaConfig, preset
from reviosa.modeling import ReviosaModel
from train.config import GROUPS, TrainConfig

logger = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"


def model_config(cfg: TrainConfig) -> ReviosaConfig:
    """The ReviosaConfig of a from-scratch model: a reviosa preset plus dotted overrides."""
    data = preset(cfg.model.preset).to_dict()
    for key, value in cfg.model.overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"model.overrides: {key!r} does not name a model config field")
            node = node[part]
        if leaf not in node:
            raise ValueError(f"model.overrides: {key!r} does not name a model config field")
        node[leaf] = value
    _resize_memory_attention(data)
    config = ReviosaConfig.from_dict(data)
    _apply_attention(config, cfg)
    config.validate()
    return config


def _apply_attention(config: ReviosaConfig, cfg: TrainConfig) -> None:
    """The AML layer / heads of the training config go into the model config (and so the export)."""
    if cfg.attention is not None:
        config.attention_supervision = AttentionSupervision(cfg.attention.layer, tuple(cfg.attention.heads))


def _resize_memory_attention(data: dict) -> None:
    # SAM2's memory-attention RoPE tables are sized for the stride-16 feature map: when a preset's
    # image size is overridden, its feat_sizes overrides must follow (reviosa.config._micro_sam).
    feat = data["sam"]["image_size"] // 16
    data["sam"]["overrides"] = [
        re.sub(r"feat_sizes=\[\d+,\d+\]", f"feat_sizes=[{feat},{feat}]", o) for o in data["sam"]["overrides"]
    ]


def build_tokenizer_for(cfg: TrainConfig, corpus: list[str], run_dir: Path) -> PreTrainedTokenizerBase:
    """The run's tokenizer: read from the run directory when there, else trained on ``corpus`` and saved."""
    from reviosa.tokenizer import build_tokenizer

    folder = run_dir / TOKENIZER_DIR
    if (folder / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(folder))
    tokenizer = build_tokenizer(corpus, vocab_size=cfg.model.tokenizer_vocab)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def build_model(cfg: TrainConfig, corpus: list[str], run_dir: Path) -> ReviosaModel:
    """A fresh model as the config's source says (seeded: every rank builds the same weights)."""
    if cfg.model.kind in ("pretrained", "parts"):
        if cfg.model.kind == "parts":
            from reviosa.importers import build_from_parts

            model = build_from_parts(cfg.model.internvl, cfg.model.sam2, seed=cfg.seed)
        else:
            from reviosa.hub import from_pretrained

            model = from_pretrained(cfg.model.path)
        _apply_attention(model.config, cfg)
        return model.train()
    config = model_config(cfg)
    if cfg.model.mllm_init:
        _adopt_tokenizer(Path(cfg.model.mllm_init).parent / TOKENIZER_DIR, run_dir)
    tokenizer = build_tokenizer_for(cfg, corpus, run_dir)
    torch.manual_seed(cfg.seed)
    model = ReviosaModel(config, tokenizer)
    if cfg.model.vision_init:
        from train.stages.vision_tower import load_vision

        load_vision(model, cfg.model.vision_init)
    if cfg.model.mllm_init:
        from train.stages.vl_pretrain import load_mllm

        load_mllm(model, cfg.model.mllm_init)
    if cfg.model.sam_init:
        from train.stages.sam_pretrain import load_sam

        load_sam(model.sam, cfg.model.sam_init)
    return model.train()


def _adopt_tokenizer(source: Path, run_dir: Path) -> None:
    """The stage-1 tokenizer becomes the run's (its embedding rows were trained with it)."""
    import shutil

    if not (source / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"model.mllm_init: no tokenizer at {source} (stage 1 writes one there)")
    target = run_dir / TOKENIZER_DIR
    if not target.is_dir():
        shutil.copytree(source, target)


# --- what trains ----------------------------------------------------------------------------------


# Parameter-name prefixes of each group, most specific first (embeddings before the rest of the LLM).
_GROUP_PREFIXES = (
    ("mllm.model.language_model.embed_tokens", "embeddings"),
    ("mllm.model.language_model", "llm"),
    ("mllm.lm_head", "lm_head"),
    ("mllm.model.vision_tower", "vision"),
    ("mllm.model.multi_modal_projector", "projector"),
    ("prompt_proj", "prompt_mlp"),
    ("sam.sam_mask_decoder", "sam_decoder"),
    ("sam.image_encoder", "sam_encoder"),
    ("sam.", "sam_other"),
)


def group_of(name: str) -> str:
    """The parameter group of a parameter name (of the model or its peft wrapper)."""
    name = name.removeprefix("base_model.model.")
    if "lora_" in name:
        return "lora"
    for prefix, group in _GROUP_PREFIXES:
        if name.startswith(prefix):
            return group
    raise ValueError(f"parameter {name} belongs to no known group")


@dataclass
class Prepared:
    """The module that trains (``wrapper``: the model or its peft wrapper) and the model inside it."""

    wrapper: nn.Module
    model: ReviosaModel
    lora: bool


def prepare_trainables(model: ReviosaModel, cfg: TrainConfig) -> Prepared:
    """Set requires_grad per the config; wrap the language model's projections with LoRA.

    train_all: every parameter. Otherwise (the paper): LoRA on the language model, the embedding
    rows of ``new_tokens`` (peft's trainable tokens), lm_head, the prompt MLP and the SAM2 mask
    decoder; the InternViT, its projector and the SAM2 image encoder stay frozen.
    """
    t = cfg.trainables
    if t.train_all:
        for p in model.parameters():
            p.requires_grad_(True)
        return Prepared(model, model, lora=False)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapper: nn.Module = model
    if t.lora is not None:
        from peft import LoraConfig, get_peft_model

        token_ids = [model.tokenizer.convert_tokens_to_ids(tok) for tok in t.new_tokens]
        lora = LoraConfig(
            r=t.lora.r,
            lora_alpha=t.lora.alpha,
            lora_dropout=t.lora.dropout,
            target_modules=t.lora.target,
            trainable_token_indices={"embed_tokens": token_ids} if token_ids else None,
        )
        wrapper = get_peft_model(model, lora)
    elif t.new_tokens:
        # Without LoRA the whole embedding trains (peft's token rows come with its wrapper).
        model.mllm.get_input_embeddings().weight.requires_grad_(True)
    switches = {
        "lm_head": t.lm_head, "prompt_mlp": t.prompt_mlp, "sam_decoder": t.sam_decoder, "projector": t.projector,
    }  # fmt: skip
    for name, p in model.named_parameters():
        if switches.get(group_of(name), False):
            p.requires_grad_(True)
    return Prepared(wrapper, model, lora=t.lora is not None)


def trainable_summary(wrapper: nn.Module) -> dict[str, int]:
    """Trained parameter count per group."""
    counts = dict.fromkeys(GROUPS, 0)
    for name, p in wrapper.named_parameters():
        if p.requires_grad:
            counts[group_of(name)] += p.numel()
    return {k: v for k, v in counts.items() if v}


def merged_model(prepared: Prepared) -> ReviosaModel:
    """The plain ReviosaModel with LoRA (and trainable token rows) merged into the base weights.

    Merging modifies the wrapped model in place: call it on a model that is no longer trained.
    """
    if not prepared.lora:
        return prepared.model
    merged = prepared.wrapper.merge_and_unload()
    assert isinstance(merged, ReviosaModel)
    return merged


def state_for_checkpoint(wrapper: nn.Module, save_frozen: bool) -> dict[str, torch.Tensor]:
    """Trained parameters and all buffers (or the whole state with ``save_frozen``)."""
    state = wrapper.state_dict()
    if save_frozen:
        return {k: v.detach().cpu().clone() for k, v in state.items()}
    trained = {n for n, p in wrapper.named_parameters() if p.requires_grad}
    params = {n for n, _ in wrapper.named_parameters()}
    return {k: v.detach().cpu().clone() for k, v in state.items() if k in trained or k not in params}


def load_checkpoint_state(wrapper: nn.Module, state: dict[str, Any]) -> None:
    """Load a `state_for_checkpoint` dict; every trained parameter must be in it."""
    trained = {n for n, p in wrapper.named_parameters() if p.requires_grad}
    missing = sorted(trained - set(state))
    if missing:
        raise RuntimeError(f"checkpoint lacks {len(missing)} trained tensors, e.g. {missing[:5]}")
    result = wrapper.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"checkpoint has unexpected tensors {result.unexpected_keys[:5]}")
