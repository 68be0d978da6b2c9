"""Typed configuration of a ReVIOSa model: one dataclass per sub-module, nested in `ReviosaConfig`.

The config is saved as ``config.json`` beside the weights. Presets (``tiny``, ``1b``, ``4b``) are
small overrides of the dataclass defaults, never copies. Geometry of the real presets: FACTS.md
("ReVIOSa architecture"), InternVL2.5-1B / -4B and SAM2 Hiera-L.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reviosa.configio import from_dict

CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


@dataclass
class VisionConfig:
    """InternViT vision tower (defaults: InternViT-300M-448px)."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    image_size: int = 448  # frames are resized to image_size x image_size for the MLLM
    patch_size: int = 14
    attention_bias: bool = True  # InternViT-300M has qkv biases
    norm_type: Literal["layer_norm", "rms_norm"] = "layer_norm"
    use_qk_norm: bool = False
    layer_norm_eps: float = 1e-6
    layer_scale_init_value: float = 0.1


@dataclass
class TextConfig:
    """Qwen2 language model (defaults: Qwen2.5-0.5B-Instruct as used in InternVL2.5-1B)."""

    hidden_size: int = 896
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    intermediate_size: int = 4864
    # InternVL2.5 checkpoints carry 151674 embedding rows (the Qwen tokenizer plus InternVL's tokens);
    # the two role tokens are appended on top when a base checkpoint is converted.
    vocab_size: int = 151674
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False


@dataclass
class SamConfig:
    """SAM2 built from the sam2 package's hydra configs (defaults: Hiera-L at 1024 px, as in the paper)."""

    config_name: str = "configs/sam2/sam2_hiera_l.yaml"
    image_size: int = 1024
    # Extra hydra overrides (e.g. a narrower trunk for tiny models); applied after image_size.
    overrides: list[str] = field(default_factory=list)
    # ImageNet statistics, as SAM2 was trained with.
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # How frames after the keyframes are segmented. "memory": SAM2's memory tracks them from the
    # prompted keyframes (the paper's inference; needs SAM2's trained memory modules). "per_frame":
    # every frame is decoded from the prompt alone, exactly as training decodes frames; for models
    # whose SAM2 was trained from scratch by our loop, which never trains the memory modules.
    propagation: Literal["memory", "per_frame"] = "memory"
    # What a correction's clicks become on the clicked frame (reviosa.correction). "points": SAM2's
    # own clicks with the current mask as its mask input, as SAM2's interactive predictor does (real
    # SAM2 weights). "example": the current mask, edited by the clicks, pooled into an example
    # prompt and decoded alone, for a SAM2 trained by our stages on example prompts and never on
    # mask inputs (the built-in model kept 0.00-0.10 of an object outside a negative click's disk
    # from "points", 0.95-0.99 from "example").
    # per_frame models always use "example": their later frames are decoded from that prompt.
    click_prompt: Literal["points", "example"] = "points"
    # --- inference protocol (docs/checkpoints.md "Inference protocols"); defaults: ReVIOSa's own ---
    # Resize of a uint8 frame to image_size x image_size: "bilinear" (torch, no antialias) or
    # "pil_bicubic" (PIL's bicubic on uint8, as the Sa2VA / InterRVOS references do).
    resize: Literal["bilinear", "pil_bicubic"] = "bilinear"
    # Prompted (key)frames: decode SAM2's 3 candidate masks and keep the one with the best predicted
    # IoU, with the object pointer from that mask's token (the references), instead of one mask.
    multimask_prompted: bool = False
    # sam2 1.1.0 replaces the mask logits by -1024 where the object score is <= 0; the references
    # comment that line out. Applies to prompted and tracked frames.
    object_score_overwrite: bool = True
    # Low-res logits (S/4) to the frame: "direct" (one bilinear step to H x W) or "via_input"
    # (bilinear to S x S first, then to H x W, as the references do).
    mask_upsample: Literal["direct", "via_input"] = "direct"
    # dtype SAM2's memory features are stored in between frames: "model" (the model's dtype) or
    # "bfloat16" (the references cast them on every device, CPU included).
    memory_dtype: Literal["model", "bfloat16"] = "model"


@dataclass
class ProcessorConfig:
    """Prompt building and frame selection."""

    # Keyframes the MLLM sees and whose SAM2 decoding the prompt conditions (the reference uses 5).
    num_keyframes: int = 5
    # "uniform" spreads keyframes over the clip (users asked for it); "first" takes frames 0..K-1
    # as the reference does. Frame 0 is always a keyframe so that propagation only runs forward.
    keyframe_strategy: Literal["uniform", "first"] = "uniform"
    system_prompt: str = ""
    instruction: str = "Please segment {expression}."
    max_new_tokens: int = 24
    # --- inference protocol (docs/checkpoints.md "Inference protocols"); defaults: ReVIOSa's own ---
    # "pieces": the instruction's text and the expression are tokenised separately (how the
    # built-in model was trained); "whole": the user text after the image blocks is tokenised in one
    # piece, as the references do. Either way special-token matching is off for user text.
    prompt_encoding: Literal["pieces", "whole"] = "pieces"
    # Expression normalisation before the template: lowercase it, and delete these characters
    # (the InterRVOS reference lowercases and deletes every ".").
    expression_lowercase: bool = False
    expression_remove: str = ""
    # Resize of a uint8 keyframe to vision.image_size: "torch_bicubic" (torch bicubic with
    # antialias) or "pil_bicubic" (PIL bicubic on uint8, as the references do).
    resize: Literal["torch_bicubic", "pil_bicubic"] = "torch_bicubic"
    # Still images only (videos are never tiled): at most this many vision.image_size tiles in the
    # grid nearest the image's aspect ratio, plus a thumbnail when there are several (InternVL's
    # dynamic preprocessing; the references use 12). 1: the image is one frame, as our models train.
    max_image_tiles: int = 1
    # Longest expression accepted, in characters; longer input is rejected with a clear error.
    max_expression_chars: int = 500
    # ImageNet statistics: InternViT normalises with them.
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class AttentionSupervision:
    """Layer and heads whose [SEG_*] attention rows the attention mask loss supervises (0-based)."""

    layer: int = 22
    heads: tuple[int, ...] = (5, 7, 10, 11)


@dataclass
class ReviosaConfig:
    """The whole model: MLLM (vision + projector + text), prompt MLP, SAM2, processor."""

    name: str = "reviosa-1b"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    # Selected by the layer-head protocol; None until selection has been run for this model.
    attention_supervision: AttentionSupervision | None = field(default_factory=AttentionSupervision)
    downsample_ratio: float = 0.5  # pixel shuffle 0.5: 32x32 patches -> 16x16 vision tokens per frame
    projector_hidden_act: str = "gelu"
    # Width of SAM2's prompt space; must equal the mask decoder's transformer dim (256 for SAM2).
    prompt_dim: int = 256
    # Name of the inference protocol the processor / SAM2 switches above spell out
    # (`reviosa.protocol`: "reviosa", "sa2va", "interrvos", or "custom" after a per-switch override).
    protocol: str = "reviosa"
    format_version: int = FORMAT_VERSION

    @property
    def grid(self) -> int:
        """Side g of the vision-token grid per frame (16 for 448 px, patch 14, ratio 0.5)."""
        patches = self.vision.image_size // self.vision.patch_size
        return int(patches * self.downsample_ratio)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid * self.grid

    def validate(self) -> None:
        """Raise ValueError on geometry that cannot build."""
        v = self.vision
        if v.image_size % v.patch_size:
            raise ValueError(f"vision.image_size {v.image_size} is not a multiple of patch {v.patch_size}")
        patches = v.image_size // v.patch_size
        if patches * self.downsample_ratio != self.grid or self.grid < 1:
            raise ValueError(f"{patches} patches per side do not pixel-shuffle by {self.downsample_ratio}")
        if self.sam.image_size % 32:
            raise ValueError(f"sam.image_size {self.sam.image_size} must be a multiple of 32")
        if self.processor.num_keyframes < 1:
            raise ValueError("processor.num_keyframes must be at least 1")
        if self.processor.max_image_tiles < 1:
            raise ValueError("processor.max_image_tiles must be at least 1")
        from reviosa.protocol import check  # the protocol module reads these classes

        check(self)
        sup = self.attention_supervision
        if sup is not None:
            if not 0 <= sup.layer < self.text.num_hidden_layers:
                raise ValueError(f"supervised layer {sup.layer} outside 0..{self.text.num_hidden_layers - 1}")
            bad = [h for h in sup.heads if not 0 <= h < self.text.num_attention_heads]
            if bad:
                raise ValueError(f"supervised heads {bad} outside 0..{self.text.num_attention_heads - 1}")

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReviosaConfig:
        """Build from a dict; unknown fields are an error (a typo must not be silently ignored)."""
        return from_dict(cls, data, path="config")

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ReviosaConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: not a ReVIOSa model folder")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(data)


# --- presets ---------------------------------------------------------------------------------------

# A SAM2 small enough to train on two CPU cores (FACTS.md, feasibility run): Hiera with one
# 32-wide stage per level, one memory-attention layer, narrow feed-forwards.
MICRO_SAM_OVERRIDES = [
    "++model.image_encoder.trunk.embed_dim=32",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_spec=[8,4,4,4]",
    "++model.image_encoder.neck.backbone_channel_list=[256,128,64,32]",
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.dim_feedforward=256",
    "++model.memory_encoder.fuser.num_layers=1",
]


def _micro_sam(image_size: int) -> SamConfig:
    feat = image_size // 16
    return SamConfig(
        config_name="configs/sam2.1/sam2.1_hiera_t.yaml",
        image_size=image_size,
        overrides=[
            *MICRO_SAM_OVERRIDES,
            # RoPE tables of memory attention are sized for the stride-16 feature map.
            f"++model.memory_attention.layer.self_attention.feat_sizes=[{feat},{feat}]",
            f"++model.memory_attention.layer.cross_attention.feat_sizes=[{feat},{feat}]",
        ],
    )


def tiny_config() -> ReviosaConfig:
    """Random-weight model that builds and runs in well under a second on CPU (tests)."""
    return ReviosaConfig(
        name="reviosa-tiny",
        vision=VisionConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            image_size=32, patch_size=4,
        ),
        text=TextConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=512, max_position_embeddings=4096, rope_theta=10000.0,
        ),
        sam=_micro_sam(64),
        processor=ProcessorConfig(num_keyframes=2, max_new_tokens=16),
        attention_supervision=AttentionSupervision(layer=1, heads=(0, 1)),
    )  # fmt: skip


def internvl_1b_config() -> ReviosaConfig:
    """InternVL2.5-1B (InternViT-300M + Qwen2.5-0.5B) + SAM2 Hiera-L: the paper's ReVIOSa-1B."""
    return ReviosaConfig(name="reviosa-1b")


def internvl_4b_config() -> ReviosaConfig:
    """InternVL2.5-4B (InternViT-300M + Qwen2.5-3B) + SAM2 Hiera-L: the paper's ReVIOSa-4B."""
    return ReviosaConfig(
        name="reviosa-4b",
        text=TextConfig(
            hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
            intermediate_size=11008,
        ),
        attention_supervision=AttentionSupervision(layer=33, heads=(13, 12, 14, 6)),
    )  # fmt: skip


PRESETS = {"tiny": tiny_config, "1b": internvl_1b_config, "4b": internvl_4b_config}


def preset(name: str) -> ReviosaConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
