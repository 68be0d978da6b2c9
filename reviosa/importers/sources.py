"""Reading foreign checkpoints (safetensors folders, SAM2 ``.pt``) and deriving a `ReviosaConfig` from them.

Nothing is unpickled: HF folders are read with safetensors only, Meta's SAM2 ``.pt`` with
``torch.load(weights_only=True)``, which refuses any pickled object that is not a tensor or a
plain container.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from reviosa.config import ReviosaConfig, SamConfig, TextConfig, VisionConfig, preset
from reviosa.hub import CheckpointError, load_state

logger = logging.getLogger(__name__)

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


# --- HF folders --------------------------------------------------------------------------------------


def weight_files(directory: Path) -> list[Path]:
    """The safetensors file(s) of a HF folder: ``model.safetensors`` or the shards its index names."""
    if (directory / INDEX).is_file():
        try:
            weight_map = json.loads((directory / INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{directory / INDEX} is not a safetensors index ({err})") from err
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{directory}: shards named in {INDEX} are missing: {missing}")
        return files
    if (directory / SINGLE).is_file():
        return [directory / SINGLE]
    raise FileNotFoundError(f"no {SINGLE} or {INDEX} in {directory}")


def read_shapes(files: Iterable[Path]) -> dict[str, tuple[int, ...]]:
    """Key -> shape from the safetensors headers only (no tensor is read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err
    return shapes


def read_tensors(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in files:
        part = load_state(path)
        clash = sorted(set(part) & set(state))
        if clash:
            raise CheckpointError(f"{path} repeats keys of another shard: {clash[:20]}")
        state.update(part)
    return state


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


# --- Meta's SAM2 .pt ---------------------------------------------------------------------------------


def read_sam2_pt(path: str | Path) -> dict[str, torch.Tensor]:
    """``checkpoint["model"]`` of a Meta SAM2 file, tensors only (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SAM2 checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        # weights_only refuses arbitrary pickled objects: such a file is not a released SAM2 checkpoint.
        raise CheckpointError(
            f"{path} is not a plain-tensor SAM2 checkpoint (weights_only load failed: {err})"
        ) from err
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(f"{path}: expected a dict with a 'model' entry (Meta's SAM2 .pt layout)")
    state = checkpoint["model"]
    bad = (
        [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if isinstance(state, dict)
        else ["model"]
    )
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:20]}")
    return state


# --- SAM2 geometry -----------------------------------------------------------------------------------

# Hiera blocks per size (sum of `stages` in the sam2 package's configs: t [1,2,7,2], s [1,2,11,2],
# b+ default [2,3,16,3], l [2,6,36,4]).
HIERA_SIZES = {12: "t", 16: "s", 24: "b+", 48: "l"}
# Keys only SAM 2.1 has (sam2.1_hiera_*.yaml: no_obj_embed_spatial, add_tpos_enc_to_obj_ptrs).
SAM21_KEYS = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight")


def sam_config_from_keys(keys: Iterable[str], prefix: str = "") -> SamConfig:
    """SAM2 vs SAM 2.1 and the Hiera size, from a SAM2 state dict's key names (``prefix`` stripped)."""
    names = {k[len(prefix) :] for k in keys if k.startswith(prefix)}
    blocks = {
        int(m.group(1)) for k in names for m in [re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k)] if m
    }
    size = HIERA_SIZES.get(len(blocks))
    if size is None:
        raise CheckpointError(
            f"SAM2 image encoder with {len(blocks)} Hiera blocks matches no released size "
            f"({sorted(HIERA_SIZES)}); pass sam_config= explicitly"
        )
    v21 = all(k in names for k in SAM21_KEYS)
    config_name = (
        f"configs/sam2.1/sam2.1_hiera_{size}.yaml" if v21 else f"configs/sam2/sam2_hiera_{size}.yaml"
    )
    return SamConfig(config_name=config_name)


# --- MLLM geometry from a remote-code InternVL / Sa2VA config.json ----------------------------------


@dataclass(frozen=True)
class ForeignConfig:
    """The fields of an InternVL-style ``config.json`` (``internvl_chat``, ``sa2va_chat``, ``reviosa_chat``)."""

    raw: dict[str, Any]

    @property
    def vision(self) -> dict[str, Any]:
        return self.raw.get("vision_config") or {}

    @property
    def llm(self) -> dict[str, Any]:
        return self.raw.get("llm_config") or {}

    @property
    def model_type(self) -> str:
        return str(self.raw.get("model_type", ""))


def _need(section: dict[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise CheckpointError(f"config.json: {where}.{key} is missing")
    return section[key]


def _or_default(section: dict[str, Any], key: str, where: str, default: Any) -> Any:
    """``section[key]``, or the default the reference's config class gives it when absent.

    transformers leaves fields equal to a config class's defaults out of a re-saved config.json, so
    an absent field means the reference class's default, which is not always ours (InternViT:
    ``qkv_bias`` False, ``qk_normalization`` True, ``norm_type`` "rms_norm"). Logged, never silent.
    """
    if key in section:
        return section[key]
    logger.info("config.json: %s.%s absent; using the reference's default %r", where, key, default)
    return default


# Defaults of the reference's config classes for the fields we derive (InternVL 2410d1d
# configuration_intern_vit.py / configuration_internvl_chat.py, identical in Sa2VA d01bf3f; Qwen2Config
# of transformers 4.x, which those checkpoints were saved with). Geometry and rope_theta have none
# here: they are required, since a guess would build a different model.
INTERN_VIT_DEFAULTS = {"qkv_bias": False, "qk_normalization": True, "norm_type": "rms_norm",
                       "layer_norm_eps": 1e-6, "hidden_act": "gelu"}  # fmt: skip
QWEN2_DEFAULTS = {"rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "hidden_act": "silu",
                  "use_sliding_window": False, "tie_word_embeddings": False}  # fmt: skip
CHAT_DEFAULTS = {"downsample_ratio": 0.5, "select_layer": -1, "ps_version": "v1"}


def rope_theta(llm: dict[str, Any]) -> float:
    """RoPE base of ``llm_config``: ``rope_theta``, or ``rope_parameters.rope_theta`` (transformers 5
    moves it there when it re-saves a config). Neither is an error: the two defaults in use
    (10000 in Qwen2Config, 1e6 in Qwen2.5) give different logits."""
    params = llm.get("rope_parameters") or {}
    found = {v for v in (llm.get("rope_theta"), params.get("rope_theta")) if v is not None}
    if len(found) > 1:
        raise CheckpointError(
            f"config.json: llm_config.rope_theta and rope_parameters.rope_theta differ: {found}"
        )
    if not found:
        raise CheckpointError(
            "config.json: llm_config has neither rope_theta nor rope_parameters.rope_theta; "
            "add the language model's RoPE base (1000000.0 for InternVL2.5's Qwen2.5)"
        )
    return float(found.pop())


def rope_kind(llm: dict[str, Any]) -> tuple[str, str]:
    """RoPE type, and where it was read: ``rope_scaling`` (transformers 4) or ``rope_parameters``
    (transformers 5)."""
    for key in ("rope_scaling", "rope_parameters"):
        section = llm.get(key)
        if section:
            kind = section.get("rope_type", section.get("type"))
            if kind is not None:
                return str(kind), f"llm_config.{key} {section}"
    return "default", "llm_config"


def tied_embeddings(cfg: ForeignConfig) -> bool:
    """Whether the reference ties the LLM's lm_head to its input embedding.

    InternVLChatConfig sets ``llm_config.tie_word_embeddings = False`` whatever the file says, so an
    ``internvl_chat`` checkpoint is never tied; Sa2VAChatConfig only sets the top-level flag, and its
    language model follows ``llm_config`` (Qwen2Config default: False).
    """
    top = bool(cfg.raw.get("tie_word_embeddings", False))
    llm = bool(
        _or_default(cfg.llm, "tie_word_embeddings", "llm_config", QWEN2_DEFAULTS["tie_word_embeddings"])
    )
    if cfg.model_type == "internvl_chat":
        if top or llm:
            logger.info("config.json asks for tied embeddings; InternVLChatConfig unties them, and so do we")
        return False
    return llm


def _check_supported(cfg: ForeignConfig) -> None:
    """Refuse what the native InternVL classes would compute differently (errors say what differs)."""
    arch = (_need(cfg.llm, "architectures", "llm_config") or ["?"])[0]
    if arch != "Qwen2ForCausalLM":
        raise CheckpointError(
            f"language model {arch} is not supported: only the Qwen2-based InternVL2.5 (1B, 4B, ...) load"
        )
    ps_version = _or_default(cfg.raw, "ps_version", "config", CHAT_DEFAULTS["ps_version"])
    if ps_version != "v2":
        # v1 pixel shuffle leaves the grid transposed; transformers' InternVL implements v2 only.
        raise CheckpointError(
            f"ps_version {ps_version!r} (absent means the reference's default 'v1'): "
            "only 'v2' matches the native InternVL"
        )
    select_layer = _or_default(cfg.raw, "select_layer", "config", CHAT_DEFAULTS["select_layer"])
    if select_layer != -1:
        raise CheckpointError(f"select_layer {select_layer}: only -1 (last layer) is supported")
    if _or_default(cfg.llm, "use_sliding_window", "llm_config", QWEN2_DEFAULTS["use_sliding_window"]):
        raise CheckpointError("llm_config.use_sliding_window is true: not supported")
    for where, section, defaults, act in (
        ("vision_config", cfg.vision, INTERN_VIT_DEFAULTS, "gelu"),
        ("llm_config", cfg.llm, QWEN2_DEFAULTS, "silu"),
    ):
        found = _or_default(section, "hidden_act", where, defaults["hidden_act"])
        if found != act:
            raise CheckpointError(f"{where}.hidden_act {found!r}: expected {act!r}")
    if tied_embeddings(cfg):
        raise CheckpointError(
            "llm_config.tie_word_embeddings is true: the reference ties lm_head to the embedding, "
            "ReVIOSa needs them separate"
        )
    kind, scaling = rope_kind(cfg.llm)
    if kind not in ("default", "dynamic"):
        raise CheckpointError(f"{scaling}: RoPE type {kind!r}, only none or 'dynamic' is supported")
    if kind == "dynamic":
        # Dynamic NTK scaling only changes RoPE beyond max_position_embeddings (32768 for InternVL2.5);
        # our prompts (5 frames x 258 tokens + text) stay far below it, so plain RoPE is identical.
        logger.debug("ignoring dynamic rope_scaling %s (inactive below max_position_embeddings)", scaling)


def vision_config(cfg: ForeignConfig) -> VisionConfig:
    v = cfg.vision
    image_size = cfg.raw.get("force_image_size") or _need(v, "image_size", "vision_config")

    def ref(key: str) -> Any:
        return _or_default(v, key, "vision_config", INTERN_VIT_DEFAULTS[key])

    return VisionConfig(
        hidden_size=_need(v, "hidden_size", "vision_config"),
        num_hidden_layers=_need(v, "num_hidden_layers", "vision_config"),
        num_attention_heads=_need(v, "num_attention_heads", "vision_config"),
        intermediate_size=_need(v, "intermediate_size", "vision_config"),
        image_size=int(image_size),
        patch_size=_need(v, "patch_size", "vision_config"),
        attention_bias=bool(ref("qkv_bias")),
        norm_type=ref("norm_type"),
        use_qk_norm=bool(ref("qk_normalization")),
        layer_norm_eps=float(ref("layer_norm_eps")),
    )


def text_config(cfg: ForeignConfig, vocab_rows: int) -> TextConfig:
    """Qwen2 geometry; the vocabulary is the embedding's row count (the checkpoint is the truth).

    ``num_key_value_heads`` is required: Qwen2Config's default (32) is a placeholder, not a value
    any InternVL2.5 uses, and the head count alone does not imply it.
    """
    t = cfg.llm
    declared = t.get("vocab_size")
    if declared is not None and declared != vocab_rows:
        logger.info("llm_config.vocab_size %s != %d embedding rows; using the rows", declared, vocab_rows)

    def ref(key: str) -> Any:
        return _or_default(t, key, "llm_config", QWEN2_DEFAULTS[key])

    return TextConfig(
        hidden_size=_need(t, "hidden_size", "llm_config"),
        num_hidden_layers=_need(t, "num_hidden_layers", "llm_config"),
        num_attention_heads=_need(t, "num_attention_heads", "llm_config"),
        num_key_value_heads=_need(t, "num_key_value_heads", "llm_config"),
        intermediate_size=_need(t, "intermediate_size", "llm_config"),
        vocab_size=vocab_rows,
        rope_theta=rope_theta(t),
        max_position_embeddings=int(ref("max_position_embeddings")),
        rms_norm_eps=float(ref("rms_norm_eps")),
        tie_word_embeddings=False,  # tied checkpoints are refused in _check_supported
    )


# A SAM2 tensor whose width is the prompt dim (the mask decoder's transformer dim), in our key names.
SAM_PROMPT_KEY = "sam.sam_prompt_encoder.no_mask_embed.weight"


def sam_prompt_dim(state: dict[str, torch.Tensor]) -> int:
    """Width of SAM2's prompt space, read from the SAM2 weights (256 for released SAM2; smaller in
    reduced test models): the prompt MLP must end there."""
    if SAM_PROMPT_KEY not in state:
        raise CheckpointError(f"SAM2 weights lack {SAM_PROMPT_KEY}: cannot tell SAM2's prompt width")
    return int(state[SAM_PROMPT_KEY].shape[-1])


def derive_config(
    cfg: ForeignConfig,
    vocab_rows: int,
    sam: SamConfig,
    family: str,
    fallback_name: str,
    prompt_dim: int = 256,
) -> ReviosaConfig:
    """A ReviosaConfig for a foreign MLLM + the given SAM2 (``prompt_dim``: from `sam_prompt_dim`).

    Geometry equal to the 1b / 4b preset takes that preset's name suffix and attention-supervision
    layer and heads (selected for InternVL2.5-1B / -4B); any other geometry gets none (run the
    selection protocol first).
    """
    _check_supported(cfg)
    vision, text = vision_config(cfg), text_config(cfg, vocab_rows)
    name, supervision = f"{family}-{fallback_name}", None
    for size in ("1b", "4b"):
        ref = preset(size)
        if _same_geometry(ref, vision, text):
            name, supervision = f"{family}-{size}", ref.attention_supervision
    config = ReviosaConfig(
        name=name,
        vision=vision,
        text=text,
        sam=sam,
        attention_supervision=supervision,
        downsample_ratio=float(
            _or_default(cfg.raw, "downsample_ratio", "config", CHAT_DEFAULTS["downsample_ratio"])
        ),
        projector_hidden_act="gelu",  # mlp1 = LayerNorm, Linear, nn.GELU(), Linear
        prompt_dim=prompt_dim,
    )
    config.validate()
    return config


def _same_geometry(ref: ReviosaConfig, vision: VisionConfig, text: TextConfig) -> bool:
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads")
    return all(getattr(ref.text, k) == getattr(text, k) for k in keys) and all(
        getattr(ref.vision, k) == getattr(vision, k) for k in keys
    )
