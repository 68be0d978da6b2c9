"""Inference protocols: the switches that make a checkpoint run as its reference runs it.

A protocol is a set of values of `ProcessorConfig` and `SamConfig` fields (frames, prompt text and
its tokenisation, resize filters, SAM2 decoding, mask upsampling, memory dtype), named in
``ReviosaConfig.protocol``. It is saved in the model's config.json, so it travels with the
checkpoint: importers write their reference's protocol, our own models keep ``reviosa``.

``reviosa``    ReVIOSa Studio's own inference (what the built-in model was trained and evaluated with)
``sa2va``      Sa2VA's HF ``predict_forward`` (magic-research/Sa2VA d01bf3f, projects/llava_sam2/hf)
``interrvos``  the InterRVOS reference (cvlab-kaist/InterRVOS 14c261e): Sa2VA's, plus the
               expression lowercased and stripped of '.' (its evaluation dataset does that)

Every switch is also a per-run option: `with_protocol` (Python), ``predict --protocol`` and the
per-switch flags (command line). `describe` is the one line the CLI and the studio show.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args, get_origin, get_type_hints

from reviosa.config import ProcessorConfig, ReviosaConfig, SamConfig

# Fields of each section that belong to the protocol (the rest is geometry or training).
PROCESSOR_FIELDS = (
    "num_keyframes", "keyframe_strategy", "instruction", "prompt_encoding", "expression_lowercase",
    "expression_remove", "resize", "max_new_tokens", "max_image_tiles",
)  # fmt: skip
SAM_FIELDS = (
    "resize", "multimask_prompted", "object_score_overwrite", "mask_upsample", "memory_dtype", "pixel_mean",
    "pixel_std",
)  # fmt: skip

# Ours: the defaults, except the keyframe count, which each of our models sets for itself.
_OURS_PROCESSOR = {f: getattr(ProcessorConfig(), f) for f in PROCESSOR_FIELDS if f != "num_keyframes"}
_OURS_SAM = {f: getattr(SamConfig(), f) for f in SAM_FIELDS}

# Sa2VA's predict_forward: frames 0-4 to the MLLM and prompted in SAM2 (modeling_sa2va_chat.py:631,
# :758), "<image>\nPlease segment {}." (evaluation refVOS.py:13) encoded in one piece (:702-713),
# PIL bicubic to 448 (:568) and to 1024 (:549), 2048 new tokens; its vendored sam2.py decodes
# multimask and keeps the best predicted IoU (:3321-3330), has the object-score overwrite commented
# out (:3306-3313), upsamples 256 -> 1024 -> H x W, and stores memory features in bf16 (:3535).
# Still images: dynamic tiling, 1 to 12 tiles of 448 + a thumbnail (:551-555, :655-657).
_REFERENCE_PROCESSOR = {
    "num_keyframes": 5, "keyframe_strategy": "first", "instruction": "Please segment {expression}.",
    "prompt_encoding": "whole", "expression_lowercase": False, "expression_remove": "",
    "resize": "pil_bicubic", "max_new_tokens": 2048, "max_image_tiles": 12,
}  # fmt: skip
# SAM2's ImageNet statistics as the references' preprocess_image builds them: bf16 tensors
# (sam2.py:366, default dtype=torch.bfloat16), so 0.485 becomes 0.484375 and so on.
_REFERENCE_SAM = {
    "resize": "pil_bicubic", "multimask_prompted": True, "object_score_overwrite": False,
    "mask_upsample": "via_input", "memory_dtype": "bfloat16",
    "pixel_mean": (0.484375, 0.455078125, 0.40625), "pixel_std": (0.228515625, 0.2236328125, 0.224609375),
}  # fmt: skip

PROTOCOLS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "reviosa": (_OURS_PROCESSOR, _OURS_SAM),
    "sa2va": (_REFERENCE_PROCESSOR, _REFERENCE_SAM),
    "interrvos": (
        {**_REFERENCE_PROCESSOR, "expression_lowercase": True, "expression_remove": "."},
        _REFERENCE_SAM,
    ),
}
# What "reference" means for a model whose protocol is not already a reference one: ReVIOSa's
# reference implementation is InterRVOS.
DEFAULT_REFERENCE = "interrvos"
# Which protocol each checkpoint format's reference uses (importers write it into the config).
FORMAT_PROTOCOLS = {"sa2va": "sa2va", "reviosa-ref": "interrvos", "internvl": "interrvos"}


def names() -> list[str]:
    """Protocol names a user may ask for: the presets, plus "ours" and "reference"."""
    return [*PROTOCOLS, "ours", "reference"]


def resolve(config: ReviosaConfig, name: str) -> str:
    """A preset name for ``name``: "ours" -> "reviosa"; "reference" -> the model's reference."""
    if name == "ours":
        return "reviosa"
    if name == "reference":
        return config.protocol if config.protocol in ("sa2va", "interrvos") else DEFAULT_REFERENCE
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {names()}")
    return name


def with_protocol(config: ReviosaConfig, name: str | None = None, **switches: Any) -> ReviosaConfig:
    """A copy of ``config`` running protocol ``name`` (None: keep the config's), then ``switches``.

    switches: protocol fields by name; a field both sections have (``resize``) is given as
    ``mllm_resize`` / ``sam_resize``. None values are ignored. Raises ValueError on an unknown
    switch or a value the field does not accept. Any switch that changes the result renames the
    protocol "custom".
    """
    processor, sam, label = config.processor, config.sam, config.protocol
    if name is not None:
        label = resolve(config, name)
        proc_values, sam_values = PROTOCOLS[label]
        processor = dataclasses.replace(processor, **proc_values)
        sam = dataclasses.replace(sam, **sam_values)
    proc_changes, sam_changes = _split(switches)
    new_processor = dataclasses.replace(processor, **proc_changes)
    new_sam = dataclasses.replace(sam, **sam_changes)
    if (new_processor, new_sam) != (processor, sam):
        label = "custom"
    out = dataclasses.replace(config, processor=new_processor, sam=new_sam, protocol=label)
    check(out)
    return out


def _split(switches: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    proc: dict[str, Any] = {}
    sam: dict[str, Any] = {}
    for key, value in switches.items():
        if value is None:
            continue
        if key == "mllm_resize":
            proc["resize"] = value
        elif key == "sam_resize":
            sam["resize"] = value
        elif key in PROCESSOR_FIELDS and key != "resize":
            proc[key] = value
        elif key in SAM_FIELDS and key != "resize":
            sam[key] = value
        else:
            known = sorted({*PROCESSOR_FIELDS, *SAM_FIELDS, "mllm_resize", "sam_resize"} - {"resize"})
            raise ValueError(f"unknown protocol switch {key!r}; known: {known}")
    return proc, sam


def check(config: ReviosaConfig) -> None:
    """Raise ValueError when a protocol field holds a value its type does not allow."""
    for section, fields in ((config.processor, PROCESSOR_FIELDS), (config.sam, SAM_FIELDS)):
        hints = get_type_hints(type(section))
        for name in fields:
            value = getattr(section, name)
            allowed = get_args(hints[name]) if get_origin(hints[name]) is Literal else ()
            if allowed and value not in allowed:
                raise ValueError(
                    f"{type(section).__name__}.{name} = {value!r}; choose one of {list(allowed)}"
                )
            if not allowed and isinstance(hints[name], type) and not isinstance(value, hints[name]):
                raise ValueError(
                    f"{type(section).__name__}.{name} = {value!r} is not a {hints[name].__name__}"
                )
    if "{expression}" not in config.processor.instruction:
        raise ValueError("processor.instruction must contain '{expression}'")


def describe(config: ReviosaConfig) -> str:
    """One line naming the protocol and what it does, e.g. for a run summary."""
    p, s = config.processor, config.sam
    norm = []
    if p.expression_lowercase:
        norm.append("lowercased")
    if p.expression_remove:
        norm.append(f"without {p.expression_remove!r}")
    parts = [
        f"{p.keyframe_strategy} {p.num_keyframes} keyframes",
        f"prompt {p.instruction!r} ({p.prompt_encoding}{', ' + ', '.join(norm) if norm else ''})",
        "multimask best-IoU" if s.multimask_prompted else "single-mask",
        "object-score overwrite" if s.object_score_overwrite else "no object-score overwrite",
        f"resize MLLM {p.resize} / SAM2 {s.resize}",
        f"masks {'via ' + str(s.image_size) if s.mask_upsample == 'via_input' else 'direct'}",
        f"memory {s.memory_dtype}",
        f"SAM2 stats {'bf16' if s.pixel_std != SamConfig().pixel_std else 'float'}",
        f"max {p.max_new_tokens} new tokens",
    ]
    return f"protocol {config.protocol}: " + ", ".join(parts)
