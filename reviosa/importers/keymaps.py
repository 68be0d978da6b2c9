"""Explicit key maps between foreign checkpoint layouts and ReVIOSa's state dict, in both directions.

A `KeyMap` is an ordered list of `Rule` s; the first rule that matches a key wins. A rule pairs a
foreign template with a native one: ``{n}`` stands for a layer index, and a template ending in
``.`` is a prefix (the rest of the key, e.g. ``weight``, is carried over unchanged). A rule whose
native side is a triple splits a fused q/k/v tensor along dim 0 into three equal parts (and fuses
them back when exporting). The same tables serve import and export, so the tests can write a tiny
model out in each foreign layout and read it back.

Sources of the names (read, not copied):
- InternViT / projector / Qwen2 (remote-code InternVL2.5): transformers'
  ``src/transformers/models/internvl/convert_internvl_weights_to_hf.py`` (ORIGINAL_TO_CONVERTED_KEY_MAPPING_
  VISION / _MULTI: ``vision_model -> vision_tower``, ``layers -> layer``, ``class_embedding -> cls_token``,
  ``position_embedding -> position_embeddings``, ``patch_embedding -> patch_embeddings.projection``,
  ``ls1/ls2 -> lambda_1/lambda_2``, ``attn.proj -> attention.projection_layer``, ``norm1/norm2 ->
  layernorm_before/after``, ``mlp1.0/1/3 -> multi_modal_projector.layer_norm/linear_1/linear_2``;
  ``attn.qkv`` split as ``[:dim], [dim:2dim], [-dim:]``). The cls token (1, 1, C) and the position
  embeddings (1, 1 + patches, C) keep their shapes. The language model keeps the ``Qwen2ForCausalLM``
  names under ``language_model.``, which transformers' native class stores as ``model.language_model.*``
  and ``lm_head.weight``.
- SAM2 (Meta ``sam2_hiera_large.pt``): ``checkpoint["model"]`` is ``SAM2Base.state_dict()`` of the sam2
  package (its ``build_sam._load_checkpoint`` loads it strictly).
- Sa2VA / ReVIOSa reference HF (``modeling_sa2va_chat.py``, cvlab-kaist/InterRVOS
  ``ReVIOSa/model/hf/models/modeling_reviosa_chat.py``): ``vision_model``, ``mlp1``, ``language_model``
  (Qwen2ForCausalLM), ``grounding_encoder.sam2_model`` (vendored SAM2, ``sam2_hiera_l`` geometry) and
  ``text_hidden_fcs`` = Sequential(Linear, ReLU, Linear, Dropout). The vendored SAM2 renames the memory
  fuser's layer scale ``gamma`` to ``g_weight`` (FACTS.md: its 900 keys are otherwise the sam2 package's).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

Fused = tuple[str, str, str]


@dataclass(frozen=True)
class Rule:
    """One foreign template <-> one native template (or a q/k/v triple fused in the foreign layout)."""

    foreign: str
    native: str | Fused

    @property
    def fused(self) -> bool:
        return isinstance(self.native, tuple)


def _pattern(template: str) -> re.Pattern[str]:
    body = re.escape(template).replace(r"\{n\}", r"(\d+)")
    return re.compile(body + ("(.+)" if template.endswith(".") else ""))


def _render(template: str, groups: Iterable[str]) -> str:
    """Fill ``{n}`` slots in order, then append the prefix rest (the last group) for prefix templates."""
    groups = list(groups)
    out = template
    for _ in range(template.count("{n}")):
        out = out.replace("{n}", groups.pop(0), 1)
    return out + (groups.pop(0) if template.endswith(".") else "")


@dataclass(frozen=True)
class Mapped:
    """Result of mapping a foreign state dict: native tensors, where each came from, what matched nothing."""

    state: dict[str, torch.Tensor]
    source: dict[str, str]  # native key -> foreign key
    unknown: list[str]  # foreign keys no rule matches


@dataclass(frozen=True)
class KeyMap:
    """An ordered rule table for one foreign layout."""

    name: str
    rules: tuple[Rule, ...]
    _foreign: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _native: tuple[tuple[re.Pattern[str], ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_foreign", tuple(_pattern(r.foreign) for r in self.rules))
        natives = tuple(
            tuple(_pattern(t) for t in (r.native if r.fused else (r.native,))) for r in self.rules
        )
        object.__setattr__(self, "_native", natives)

    def __add__(self, other: KeyMap) -> KeyMap:
        return KeyMap(f"{self.name}+{other.name}", self.rules + other.rules)

    # --- single keys ---------------------------------------------------------------------------

    def native_keys(self, foreign_key: str) -> tuple[Rule, list[str]] | None:
        """The rule matching ``foreign_key`` and the native key(s) it becomes (three when fused)."""
        for rule, pattern in zip(self.rules, self._foreign, strict=True):
            m = pattern.fullmatch(foreign_key)
            if m:
                templates = rule.native if rule.fused else (rule.native,)
                return rule, [_render(t, m.groups()) for t in templates]
        return None

    def foreign_key(self, native_key: str) -> str | None:
        """The foreign key that holds ``native_key`` (for a fused part: the fused tensor's key)."""
        for rule, patterns in zip(self.rules, self._native, strict=True):
            for pattern in patterns:
                m = pattern.fullmatch(native_key)
                if m:
                    return _render(rule.foreign, m.groups())
        return None

    def matches(self, foreign_key: str) -> bool:
        return any(p.fullmatch(foreign_key) for p in self._foreign)

    # --- whole state dicts ---------------------------------------------------------------------

    def to_native(self, state: Mapping[str, torch.Tensor]) -> Mapped:
        """Rename (and split fused q/k/v) a foreign state dict. Unmatched keys are returned, not dropped."""
        out: dict[str, torch.Tensor] = {}
        source: dict[str, str] = {}
        unknown: list[str] = []
        for key, tensor in state.items():
            hit = self.native_keys(key)
            if hit is None:
                unknown.append(key)
                continue
            rule, names = hit
            parts = _split_qkv(key, tensor) if rule.fused else (tensor,)
            for name, part in zip(names, parts, strict=True):
                out[name] = part
                source[name] = key
        return Mapped(out, source, sorted(unknown))

    def to_foreign(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inverse: write native tensors in the foreign layout (fusing q/k/v). Native keys no rule
        covers are left out (e.g. SAM2 and the prompt MLP when writing an InternVL2.5 checkpoint)."""
        out: dict[str, torch.Tensor] = {}
        for key, tensor in state.items():
            for rule, patterns in zip(self.rules, self._native, strict=True):
                m = patterns[0].fullmatch(key)
                if m:
                    if rule.fused:
                        q, k, v = (_render(t, m.groups()) for t in rule.native)
                        tensor = torch.cat([state[q], state[k], state[v]], dim=0)
                    out[_render(rule.foreign, m.groups())] = tensor
                    break
        return out


def _split_qkv(key: str, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if tensor.shape[0] % 3:
        raise ValueError(f"{key}: fused q/k/v of {tuple(tensor.shape)} does not split in three along dim 0")
    return tuple(t.contiguous() for t in tensor.chunk(3, dim=0))


# --- tables ------------------------------------------------------------------------------------------

_V = "mllm.model.vision_tower."
_L = "vision_model.encoder.layers.{n}."
_NL = _V + "encoder.layer.{n}."

INTERNVIT = KeyMap(
    "internvit",
    (
        Rule("vision_model.embeddings.class_embedding", _V + "embeddings.cls_token"),
        Rule("vision_model.embeddings.position_embedding", _V + "embeddings.position_embeddings"),
        Rule("vision_model.embeddings.patch_embedding.", _V + "embeddings.patch_embeddings.projection."),
        Rule(_L + "ls1", _NL + "lambda_1"),
        Rule(_L + "ls2", _NL + "lambda_2"),
        Rule(
            _L + "attn.qkv.",
            (_NL + "attention.q_proj.", _NL + "attention.k_proj.", _NL + "attention.v_proj."),
        ),
        Rule(_L + "attn.proj.", _NL + "attention.projection_layer."),
        # Only InternViT-6B normalises q and k (qk_normalization); the 300M tower has no such keys.
        Rule(_L + "attn.q_norm.", _NL + "attention.q_norm."),
        Rule(_L + "attn.k_norm.", _NL + "attention.k_norm."),
        Rule(_L + "norm1.", _NL + "layernorm_before."),
        Rule(_L + "norm2.", _NL + "layernorm_after."),
        Rule(_L + "mlp.fc1.", _NL + "mlp.fc1."),
        Rule(_L + "mlp.fc2.", _NL + "mlp.fc2."),
    ),
)

# mlp1 = Sequential(LayerNorm, Linear, GELU, Linear): indices 0, 1, 3 hold parameters.
PROJECTOR = KeyMap(
    "mlp1",
    (
        Rule("mlp1.0.", "mllm.model.multi_modal_projector.layer_norm."),
        Rule("mlp1.1.", "mllm.model.multi_modal_projector.linear_1."),
        Rule("mlp1.3.", "mllm.model.multi_modal_projector.linear_2."),
    ),
)

QWEN2 = KeyMap(
    "qwen2",
    (
        Rule("language_model.model.", "mllm.model.language_model."),
        Rule("language_model.lm_head.weight", "mllm.lm_head.weight"),
    ),
)

# text_hidden_fcs = Sequential(Linear(D, D), ReLU, Linear(D, 256), Dropout(0)): our prompt_proj.
PROMPT_MLP = KeyMap(
    "text_hidden_fcs",
    (Rule("text_hidden_fcs.0.", "prompt_proj.0."), Rule("text_hidden_fcs.2.", "prompt_proj.2.")),
)

# SAM2Base's top-level submodules and parameters (sam2 1.1.0; the 2.1 ones only exist in 2.1 checkpoints).
SAM2_MODULES = (
    "image_encoder", "mask_downsample", "memory_attention", "memory_encoder", "sam_prompt_encoder",
    "sam_mask_decoder", "obj_ptr_proj", "obj_ptr_tpos_proj",
)  # fmt: skip
SAM2_PARAMS = ("maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "no_obj_ptr", "no_obj_embed_spatial")


def sam2_keymap(foreign_prefix: str, name: str, extra: tuple[Rule, ...] = ()) -> KeyMap:
    """SAM2Base keys under ``foreign_prefix`` <-> ``sam.*``; ``extra`` rules are tried first."""
    rules = [Rule(f"{foreign_prefix}{m}.", f"sam.{m}.") for m in SAM2_MODULES]
    rules += [Rule(f"{foreign_prefix}{p}", f"sam.{p}") for p in SAM2_PARAMS]
    return KeyMap(name, extra + tuple(rules))


SAM2_META = sam2_keymap("", "sam2")

_SA2VA_SAM = "grounding_encoder.sam2_model."
SAM2_SA2VA = sam2_keymap(
    _SA2VA_SAM,
    "sa2va-sam2",
    extra=(
        Rule(
            _SA2VA_SAM + "memory_encoder.fuser.layers.{n}.g_weight",
            "sam.memory_encoder.fuser.layers.{n}.gamma",
        ),
    ),
)

INTERNVL = INTERNVIT + PROJECTOR + QWEN2
SA2VA = INTERNVL + PROMPT_MLP + SAM2_SA2VA
