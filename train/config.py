"""Typed training configuration: one dataclass per concern, nested in `TrainConfig`.

A run directory keeps the resolved config as ``train_config.json``. Presets (``tiny``,
``synth-cpu``, ``paper-1b``, ``paper-4b``) are small overrides of the dataclass defaults; a JSON or
YAML file holds a whole config or a partial one over a preset (``preset: NAME`` plus overrides),
and ``--set section.field=value`` overrides single fields from the command line.

Defaults follow the reference hyper-parameters (FACTS.md, "Attention mask loss"): AdamW lr 4e-5,
wd 0.05, betas (0.9, 0.999), 5 % linear warm-up then cosine, clip 1.0, batch 2 x 4 accumulation,
10 epochs, bf16, 4 frames and 5 expressions per clip; LoRA r=128, alpha=256, dropout 0.05.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from reviosa.config import AttentionSupervision
from reviosa.configio import from_dict

CONFIG_NAME = "train_config.json"

# Sa2VA (and InterRVOS, built on it) leave LoRA's target_modules unset; xtuner then targets every
# nn.Linear of the language model except lm_head: the attention and the MLP projections. The regex
# keeps LoRA off the vision tower, whose attention also has q/k/v projections (FACTS.md, peft note).
LORA_TARGET = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

# Loss terms, in the order they are logged (train.objective computes them).
LOSS_TERMS = (
    "mask_ce", "mask_dice", "aml", "text", "object", "grounding", "example", "distill", "hard_negative",
    "contrast", "role_pair", "words",
)  # fmt: skip
# Parameter groups, for learning-rate stages and for reporting what trains.
GROUPS = (
    "lora", "llm", "embeddings", "lm_head", "vision", "projector", "prompt_mlp",
    "sam_decoder", "sam_encoder", "sam_other",
)  # fmt: skip


@dataclass
class ModelSource:
    """Where the model comes from.

    scratch: ``ReviosaModel(config, tokenizer)`` at random init, ``preset`` one of reviosa's model
        presets or ``synth-cpu`` (below); the byte-level tokenizer is trained on the synthetic
        world's corpus plus the training expressions, and saved in the run directory.
    parts: ``reviosa.importers.build_from_parts(internvl, sam2)``: an InternVL2.5 folder and a Meta
        SAM2 ``.pt`` (the paper presets); the role tokens get mean-initialised rows.
    pretrained: ``reviosa.hub.from_pretrained(path)``: a ReVIOSa folder (e.g. written by
        ``python -m reviosa convert``, or a previous run's export) or a foreign layout it detects.
    """

    kind: Literal["scratch", "parts", "pretrained"] = "scratch"
    preset: str = "tiny"
    path: str | None = None
    internvl: str | None = None  # parts: InternVL2.5 checkpoint folder
    sam2: str | None = None  # parts: Meta SAM2 checkpoint, e.g. sam2_hiera_large.pt
    # Model-config overrides as dotted keys, e.g. {"text.hidden_size": 192} (scratch only).
    overrides: dict[str, Any] = field(default_factory=dict)
    # scratch only: vision tower + projector weights from python -m train.stages.vision_tower, loaded
    # strictly over the fresh ones (the stand-in for a pretrained InternViT).
    vision_init: str | None = None
    # scratch only, the stages (train/stages/): the whole MLLM from stage 1 (its mllm.safetensors;
    # the tokenizer/ folder beside it becomes the run's) and SAM2 from stage 2 (sam.safetensors).
    mllm_init: str | None = None
    sam_init: str | None = None
    tokenizer_vocab: int = 512


@dataclass
class OptimConfig:
    lr: float = 4e-5
    weight_decay: float = 0.05  # applied to every trained tensor, as the reference's AdamW
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_ratio: float = 0.05  # linear warm-up over this fraction of the optimizer steps
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    batch_size: int = 2  # clips per process per micro-batch
    accumulation: int = 4  # micro-batches per optimizer step
    epochs: float = 10.0
    max_steps: int | None = None  # optimizer steps; when set, overrides epochs
    bf16: bool = True  # bf16 autocast, on CUDA only (CPU runs stay float32)
    gradient_checkpointing: bool = False  # recompute the language model's layers in backward (memory)


@dataclass
class LossConfig:
    """Weights of the loss terms (FACTS.md: seg CE x2.0 + Dice x0.5, lambda_AML 1, lambda_text 1)."""

    mask_ce: float = 2.0
    mask_dice: float = 0.5
    aml: float = 1.0  # 0 turns the attention mask loss (and the attention capture) off
    text: float = 1.0
    # Not in the paper; switches for training from scratch (docs/training.md, "Tricks").
    object: float = 0.0  # presence BCE on SAM2's object logits
    grounding: float = 0.0  # role state vs last-layer vision states, BCE on the token grid
    grounding_scale: float = 10.0
    # bce: per-token BCE of scale * (cos - 0.5); contrastive: softmax over the clip's vision tokens
    # against the referent's tokens (docs/training.md, "Tricks")
    grounding_mode: Literal["bce", "contrastive"] = "bce"
    # Example prompts (docs/training.md, "Tricks"): SAM2 also decodes from its own features pooled
    # under the ground-truth masks (seg loss x example), and the role prompts are pulled toward
    # those pooled prompts (relative squared error x distill). Inference never sees them.
    example: float = 0.0
    example_grad: bool = False  # the example loss also trains the encoder through the pooled prompts
    # CE toward background on the other objects' pixels (losses.hard_negative_loss), language path;
    # with loss.example, the example path's term includes it at the same weight.
    hard_negative: float = 0.0
    distill: float = 0.0
    # Each role prompt nearest its own example prompt among the batch's (losses.prompt_contrast_loss).
    contrast: float = 0.0
    contrast_scale: float = 10.0
    # Each role prompt nearer its own example than the other role's of the row, at contrast_scale
    # (losses.role_pair_loss). Stage 4 at weight 5 did not part the role prompts on test clips
    # (cosine 0.939 against 0.942) and scored no higher on validation: off in the recipes.
    role_pair: float = 0.0
    # The referent's vision-token inputs must name the expression's words (losses.region_words_loss).
    words: float = 0.0
    words_scale: float = 10.0


@dataclass
class LoraSettings:
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target: str = LORA_TARGET


@dataclass
class TrainablesConfig:
    """What trains. Default (paper): LoRA on the language model, the new token rows of the
    embedding, lm_head, the prompt MLP and the SAM2 mask decoder; the vision encoder, the
    vision projector and the SAM2 image encoder stay frozen."""

    train_all: bool = False  # every parameter trains, no LoRA (models trained from scratch)
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    new_tokens: tuple[str, ...] = ("[SEG_ACT]", "[SEG_TAR]")  # embedding rows that train
    lm_head: bool = True
    prompt_mlp: bool = True
    sam_decoder: bool = True
    projector: bool = False  # InternVL's vision-to-text MLP


@dataclass
class SynthData:
    """Generate the synthetic world into the run directory when ``DataConfig.root`` is unset."""

    clips: int = 400
    val_clips: int = 40
    seed: int = 0
    size: int = 128
    frames: tuple[int, int] = (16, 48)


@dataclass
class SplitRef:
    root: str
    split: str | None = None


@dataclass
class DataConfig:
    root: str | None = None  # InterRVOS / MeViS layout; None: the synthetic world (``synth``)
    split: str | None = "train"
    extra: list[SplitRef] = field(default_factory=list)  # more training splits (e.g. MeViS), mixed in
    val_root: str | None = None  # defaults to root
    val_split: str | None = "val"
    synth: SynthData = field(default_factory=SynthData)
    expressions_per_clip: int = 5  # E: expressions of one clip trained together (reference: 5)
    sam_frames: int = 4  # F: frames decoded by SAM2 per clip (reference: 4)
    keyframes: int | None = None  # K: frames the MLLM sees; None: the model's processor setting
    # segments: one random frame from each of K equal segments (near inference's uniform choice);
    # random: K distinct random frames; first: frames 0..K-1 (the reference).
    keyframe_sampling: Literal["segments", "random", "first"] = "segments"
    # True: SAM2 decodes keyframes first (inference conditions SAM2 on keyframes); False: random frames.
    sam_frames_on_keyframes: bool = True
    two_tokens: bool = True  # False: the single-[SEG] baseline (actor token only, no target term)
    # Mask-loss targets at SAM2's S/4 logits as each cell's covered share instead of share > 0.5:
    # binary cells let the logits place an outline only on the cell grid, which caps the IoU of
    # their upsampling at 0.87 on the synthetic world (0.98 soft; train.stages.sam_pretrain).
    soft_masks: bool = False
    workers: int = 0  # DataLoader worker processes


@dataclass
class Stage:
    """From ``start`` (fraction of the optimizer steps) on, multiply each group's lr by ``lr_scale``
    (a group left out keeps 1.0; 0 freezes it without changing what DDP tracks) and each loss
    term's weight by ``loss_scale`` (a term left out keeps 1.0). Curricula are written this way,
    e.g. SAM2 first on example prompts: ``{start: 0, loss_scale: {mask_ce: 0, mask_dice: 0}}``."""

    start: float = 0.0
    lr_scale: dict[str, float] = field(default_factory=dict)
    loss_scale: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalConfig:
    every: int = 0  # optimizer steps between evaluations; 0: only at the end (if clips > 0)
    clips: int = 8  # validation clips evaluated (the first ones of the split)
    at_end: bool = True


@dataclass
class LogConfig:
    every: int = 1  # optimizer steps between JSONL / TensorBoard records
    tensorboard: bool = True
    progress: bool = True  # tqdm bar on rank 0


@dataclass
class CheckpointConfig:
    every: int = 500  # optimizer steps between checkpoints (one is always written at the end)
    keep: int = 2  # most recent checkpoints kept
    save_frozen: bool = False  # frozen weights too (else rebuilt from the model source on resume)


@dataclass
class TrainConfig:
    name: str = "reviosa"
    seed: int = 0
    device: str = "auto"  # auto: cuda:LOCAL_RANK when CUDA is there, else cpu
    model: ModelSource = field(default_factory=ModelSource)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # AML layer and heads; None uses the model config's own (reviosa.config.AttentionSupervision).
    attention: AttentionSupervision | None = None
    trainables: TrainablesConfig = field(default_factory=TrainablesConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stages: list[Stage] = field(default_factory=list)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self) -> None:
        o, d = self.optim, self.data
        if o.batch_size < 1 or o.accumulation < 1:
            raise ValueError("optim.batch_size and optim.accumulation must be >= 1")
        if d.expressions_per_clip < 1 or d.sam_frames < 1:
            raise ValueError("data.expressions_per_clip and data.sam_frames must be >= 1")
        if not 0.0 <= o.warmup_ratio < 1.0:
            raise ValueError("optim.warmup_ratio must be in [0, 1)")
        if self.model.kind == "pretrained" and not self.model.path:
            raise ValueError("model.kind 'pretrained' needs model.path (a model folder)")
        for name in ("vision_init", "mllm_init", "sam_init"):
            if getattr(self.model, name) and self.model.kind != "scratch":
                raise ValueError(f"model.{name} is for from-scratch models (model.kind: scratch)")
        if self.model.vision_init and self.model.mllm_init:
            raise ValueError("model.mllm_init holds the vision tower too: drop model.vision_init")
        if self.model.kind == "parts" and not (self.model.internvl and self.model.sam2):
            raise ValueError("model.kind 'parts' needs model.internvl (folder) and model.sam2 (.pt file)")
        for stage in self.stages:
            unknown = sorted(set(stage.lr_scale) - set(GROUPS))
            if unknown:
                raise ValueError(f"stage lr_scale names unknown groups {unknown}; groups: {list(GROUPS)}")
            unknown = sorted(set(stage.loss_scale) - set(LOSS_TERMS))
            if unknown:
                raise ValueError(f"stage loss_scale names unknown terms {unknown}; terms: {list(LOSS_TERMS)}")
        starts = [s.start for s in self.stages]
        if starts != sorted(starts):
            raise ValueError("stages must be listed in order of start")

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, data, "config")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        # Mappings merge key by key (model.overrides too: a recipe adds to its preset's geometry).
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(config: TrainConfig, assignments: list[str]) -> TrainConfig:
    """``["optim.lr=1e-3", "data.root=/data", "attention.heads=[0,1]"]`` -> a new config.

    Values are parsed as YAML scalars / lists (numbers, true/false, null, [a, b]); anything else
    stays a string. Unknown keys are an error.
    """
    data = config.to_dict()
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ValueError(f"--set {key}: {part!r} is not a section")
            node = node[part]
        node[parts[-1]] = value
    result = TrainConfig.from_dict(data)
    result.validate()
    return result


# --- presets ---------------------------------------------------------------------------------------


def tiny_preset() -> TrainConfig:
    """Tests: the tiny model from scratch on a few synthetic clips, seconds per step on CPU."""
    return TrainConfig(
        name="tiny",
        model=ModelSource(kind="scratch", preset="tiny"),
        optim=OptimConfig(lr=1e-3, batch_size=2, accumulation=1, max_steps=20, warmup_ratio=0.1),
        loss=LossConfig(object=1.0),
        trainables=TrainablesConfig(train_all=True, lora=None),
        data=DataConfig(
            synth=SynthData(clips=4, val_clips=2, size=64, frames=(6, 8)),
            expressions_per_clip=2,
            sam_frames=2,
        ),
        eval=EvalConfig(every=0, clips=1, at_end=False),
        checkpoint=CheckpointConfig(every=10),
    )


# Model geometry of the synth-cpu preset, after the feasibility run (FACTS.md): 128 px frames for
# the MLLM (patch 16 -> 16 vision tokens per frame after pixel shuffle), a 2-layer 96-wide vision
# tower, a 2-layer 128-wide Qwen2, 4 keyframes, the micro SAM2 at 128 px. A starting point to tune.
SYNTH_CPU_MODEL = {
    "vision.hidden_size": 96,
    "vision.num_hidden_layers": 2,
    "vision.num_attention_heads": 2,
    "vision.intermediate_size": 192,
    "vision.image_size": 128,
    "vision.patch_size": 16,
    "text.hidden_size": 128,
    "text.num_hidden_layers": 2,
    "text.num_attention_heads": 4,
    "text.num_key_value_heads": 2,
    "text.intermediate_size": 256,
    "sam.image_size": 128,
    "processor.num_keyframes": 4,
}


def synth_cpu_preset() -> TrainConfig:
    """The built-in model: from scratch on the synthetic world, on CPU (to be tuned)."""
    return TrainConfig(
        name="synth-cpu",
        model=ModelSource(kind="scratch", preset="tiny", overrides=dict(SYNTH_CPU_MODEL)),
        optim=OptimConfig(
            lr=5e-4, batch_size=4, accumulation=1, epochs=30, warmup_ratio=0.05, min_lr_ratio=0.05
        ),
        loss=LossConfig(object=1.0),
        attention=AttentionSupervision(layer=1, heads=(0, 1, 2, 3)),
        trainables=TrainablesConfig(train_all=True, lora=None),
        data=DataConfig(synth=SynthData(clips=400, val_clips=40, size=128, frames=(16, 48)), sam_frames=4),
        eval=EvalConfig(every=2000, clips=20),
        checkpoint=CheckpointConfig(every=500),
    )


def paper_1b_preset() -> TrainConfig:
    """ReVIOSa-1B as in the paper: InternVL2.5-1B + SAM2 Hiera-L, LoRA, 10 epochs."""
    return TrainConfig(
        name="paper-1b",
        model=ModelSource(kind="parts", internvl="models/InternVL2_5-1B", sam2="models/sam2_hiera_large.pt"),
        attention=AttentionSupervision(layer=22, heads=(5, 7, 10, 11)),
        data=DataConfig(root="data/InterRVOS-127K", split="train", val_split="valid", keyframes=4),
        eval=EvalConfig(every=0, clips=50),
        checkpoint=CheckpointConfig(every=1000),
    )


def paper_4b_preset() -> TrainConfig:
    """ReVIOSa-4B as in the paper: InternVL2.5-4B + SAM2 Hiera-L."""
    config = paper_1b_preset()
    config.name = "paper-4b"
    config.model.internvl = "models/InternVL2_5-4B"
    config.attention = AttentionSupervision(layer=33, heads=(13, 12, 14, 6))
    return config


PRESETS = {
    "tiny": tiny_preset,
    "synth-cpu": synth_cpu_preset,
    "paper-1b": paper_1b_preset,
    "paper-4b": paper_4b_preset,
}


def load_config(name_or_path: str, overrides: list[str] | None = None) -> TrainConfig:
    """A preset name, or a JSON / YAML file (a full config, or ``preset: NAME`` plus overrides)."""
    if name_or_path in PRESETS:
        config = PRESETS[name_or_path]()
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"{name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        base = data.pop("preset", None)
        if base is not None:
            if base not in PRESETS:
                raise ValueError(f"{path}: unknown preset {base!r}; choose one of {list(PRESETS)}")
            data = _merge(PRESETS[base]().to_dict(), data)
        config = TrainConfig.from_dict(data)
    config = apply_overrides(config, overrides or [])
    return config
