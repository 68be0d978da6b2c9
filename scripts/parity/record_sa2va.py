"""Record golden outputs of the Sa2VA / InterRVOS reference model code on tiny random weights.

Not run in CI. It imports the reference's own HF model code from the folder given (nothing of it is
copied here) and writes, under OUT/:

    model/        the tiny checkpoint in the reference's HF layout: config.json (the reference's
                  config class), model.safetensors (the reference model's own ``state_dict()``,
                  float16), tokenizer files
    goldens.npz   clip frames, prompts' token ids, vision features, logits, [SEG] / [SEG_OBJ]
                  states and prompts, SAM2 low-res mask logits / IoU scores / object pointers /
                  object scores per frame, SAM2-resolution logits, the final masks
    meta.json     what was recorded, with which reference commit and settings

References (fetched with the search tool's ``fetch``, checked out to a temporary folder):
    Sa2VA      magic-research/Sa2VA at d01bf3f, ``projects/llava_sam2/hf/models/``
               (modeling_sa2va_chat.py, sam2.py, configuration_sa2va_chat.py)
    InterRVOS  cvlab-kaist/InterRVOS at 14c261e, ``ReVIOSa/model/hf/models/``
               (modeling_reviosa_chat.py, configuration_reviosa_chat.py, sam2.py; the other files
               of that folder are Sa2VA's)
    InternVL   OpenGVLab/InternVL at 2410d1d (the InternViT / mlp1 code Sa2VA vendors)

Run (a throwaway venv with the reference's transformers, CPU torch, no torchvision / timm):
    python -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch==2.13.0 transformers==4.47.1 \
        peft==0.13.2 einops pillow safetensors numpy
    export OMP_NUM_THREADS=1  # one thread: the committed files come back bit for bit (2: within 3e-6)
    /tmp/refenv/bin/python scripts/parity/record_sa2va.py --reference sa2va \
        --models /tmp/sa2va/projects/llava_sam2/hf/models --out tests/fixtures/parity/sa2va
    /tmp/refenv/bin/python scripts/parity/record_sa2va.py --reference interrvos \
        --models /tmp/interrvos/models --out tests/fixtures/parity/reviosa_ref

What is changed around the reference, and why:
- torchvision and timm are not installable beside a CPU torch here; minimal stand-ins with the
  behaviour the reference uses (PIL resize, ToTensor, Normalize, identity DropPath at rate 0) are
  put into ``sys.modules`` before the import. ``Tensor.cuda`` is made a no-op (the reference calls
  it unconditionally); CUDA autocast is then inactive, as on any CPU run.
- Its SAM2 wrapper hard-codes Hiera-L at 1024 px; the vendored classes are built with small
  dimensions instead (small_sam_builders below) and SAM2's input size set to SAM_SIZE, everything else as
  the wrapper passes it. The same geometry is what our SamConfig overrides express.
- Random weights (and saved buffers) are rounded to float16 before the run, so the float16 file
  holds exactly what the reference ran with.
- The answer is forced ("Sure, [SEG]." / "Sure, [SEG] and [SEG_OBJ].") with a logits processor
  added to the reference's own generate call: random weights would answer anything.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

# Seeds of the committed sets, chosen so that what differs between the protocols shows: Sa2VA's
# (1) keeps mask 1 of 3 and scores every frame as object-free (the overwrite would empty them all);
# InterRVOS's (4) keeps mask 2 and scores every frame as an object (pointers from that mask's token).
SEEDS = {"sa2va": 1, "interrvos": 4}
CLIP_SEED = 1  # the clip's texture and noise, the same for every set
SAM_SIZE = 256  # SAM2 input size of the small model (feature map 16 x 16, low-res masks 64 x 64)
D = 32  # SAM2 hidden / prompt dim of the small model (Hiera-L: 256)
MEM = 8  # SAM2 memory dim (Hiera-L: 64); D // MEM = 4 tokens per object pointer, as in Hiera-L
HIERA = 16  # Hiera embed dim (Hiera-L: 144)
FRAMES, HEIGHT, WIDTH = 8, 72, 96
PROMPTS = [
    "the red circle chasing the blue square",
    "The Person walking a Dog.",  # uppercase and a trailing '.'
    "dog [SEG] near <|im_end|> x",  # typed control strings must stay text in ours
]
ANSWERS = {"sa2va": "Sure, [SEG].", "interrvos": "Sure, [SEG] and [SEG_OBJ]."}
SEG_TEMPLATE = "<image>\nPlease segment {}."
COMMITS = {"sa2va": "magic-research/Sa2VA@d01bf3f", "interrvos": "cvlab-kaist/InterRVOS@14c261e"}


# --- stand-ins for torchvision / timm ---------------------------------------------------------------


def install_stubs() -> None:
    """Minimal torchvision.transforms / timm.models.layers with the behaviour the reference uses.

    transformers is imported first: it probes which packages exist when it is imported.
    """
    import importlib.machinery

    import transformers  # noqa: F401

    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")
    fn = types.ModuleType("torchvision.transforms.functional")

    class InterpolationMode:
        BICUBIC = Image.BICUBIC

    class Compose:
        def __init__(self, steps):
            self.steps = steps

        def __call__(self, x):
            for step in self.steps:
                x = step(x)
            return x

    class Lambda:
        def __init__(self, f):
            self.f = f

        def __call__(self, x):
            return self.f(x)

    class Resize:  # torchvision on a PIL image: img.resize((w, h), filter)
        def __init__(self, size, interpolation):
            self.size, self.interpolation = size, interpolation

        def __call__(self, img):
            return img.resize((self.size[1], self.size[0]), self.interpolation)

    class ToTensor:  # uint8 HWC -> float CHW in [0, 1]
        def __call__(self, img):
            return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous().float().div(255)

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = torch.tensor(mean), torch.tensor(std)

        def __call__(self, x):
            return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def to_pil_image(array, mode=None):
        return Image.fromarray(np.asarray(array), mode=mode)

    tr.Compose, tr.Lambda, tr.Resize, tr.ToTensor, tr.Normalize = Compose, Lambda, Resize, ToTensor, Normalize
    tr.InterpolationMode = InterpolationMode
    fn.InterpolationMode, fn.to_pil_image, fn.resize = InterpolationMode, to_pil_image, None
    tv.transforms, tr.functional = tr, fn
    sys.modules.update(
        {"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn}
    )

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")

    class DropPath(torch.nn.Identity):  # drop_path_rate is 0 and the model is in eval mode
        def __init__(self, *args, **kwargs):
            super().__init__()

    layers.DropPath = DropPath
    timm.models, models.layers = models, layers
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})
    for name, module in list(sys.modules.items()):
        if name.startswith(("torchvision", "timm")) and module.__spec__ is None:
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    torch.Tensor.cuda = lambda self, *a, **k: self  # the reference moves tensors to CUDA unconditionally


# --- tiny tokenizer ------------------------------------------------------------------------------------

# Qwen2's pre-tokenizer split (tokenizer.json of Qwen2.5), then byte-level BPE.
QWEN_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def build_tokenizer(reference: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "[SEG]"]
    if reference == "interrvos":
        special.append("[SEG_OBJ]")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    corpus = [
        "Please segment the red circle chasing the blue square.",
        "Sure, it is the person walking a dog near the tree.",
        "user assistant system",
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=420, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    bpe.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in special if t not in ("<|im_end|>", "<|endoftext|>")],
    )  # fmt: skip


# --- the reference, built small ------------------------------------------------------------------------


def small_sam_builders(sam2_module):
    """build_image_encoder / build_memory_attention / build_memory_encoder with small dimensions,
    from the vendored classes (Hiera-L otherwise). Mirrored by SamConfig overrides in our tests."""
    m = sam2_module
    feat = SAM_SIZE // 16

    def image_encoder(self):
        trunk = m.Hiera(
            embed_dim=HIERA, num_heads=1, stages=[1, 1, 2, 1], global_att_blocks=[3],
            window_pos_embed_bkg_spatial_size=[7, 7], window_spec=[8, 4, 4, 4],
        )  # fmt: skip
        neck = m.FpnNeck(
            d_model=D,
            position_encoding=m.PositionEmbeddingSine(num_pos_feats=D, normalize=True, scale=None, temperature=10000),
            backbone_channel_list=[8 * HIERA, 4 * HIERA, 2 * HIERA, HIERA], fpn_top_down_levels=[2, 3], fpn_interp_model="nearest",
        )  # fmt: skip
        return m.ImageEncoder(scalp=1, trunk=trunk, neck=neck)

    def memory_attention(self):
        def rope(**extra):
            return m.RoPEAttention(
                rope_theta=10000.0, feat_sizes=[feat, feat], embedding_dim=D, num_heads=1, downsample_rate=1,
                dropout=0.1, **extra,
            )  # fmt: skip

        layer = m.MemoryAttentionLayer(
            activation="relu", dim_feedforward=256, dropout=0.1, pos_enc_at_attn=False, d_model=D,
            pos_enc_at_cross_attn_queries=False, pos_enc_at_cross_attn_keys=True,
            self_attention=rope(), cross_attention=rope(rope_k_repeat=True, kv_in_dim=MEM),
        )  # fmt: skip
        return m.MemoryAttention(d_model=D, pos_enc_at_input=True, num_layers=1, layer=layer)

    def memory_encoder(self):
        cx = m.CXBlock(dim=D, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True)
        return m.MemoryEncoder(
            out_dim=MEM,
            position_encoding=m.PositionEmbeddingSine(num_pos_feats=MEM, normalize=True, scale=None, temperature=10000),
            mask_downsampler=m.MaskDownSampler(embed_dim=D, kernel_size=3, stride=2, padding=1),
            fuser=m.Fuser(layer=cx, num_layers=1),
            in_dim=D,
        )  # fmt: skip

    return image_encoder, memory_attention, memory_encoder


def load_reference(models_dir: Path, reference: str):
    sys.path.insert(0, str(models_dir.parent))
    pkg = models_dir.name
    sam2_module = importlib.import_module(f"{pkg}.sam2")
    enc, attn, mem = small_sam_builders(sam2_module)
    sam2_module.SAM2.build_image_encoder = enc
    sam2_module.SAM2.build_memory_attention = attn
    sam2_module.SAM2.build_memory_encoder = mem
    predictor = sam2_module.SAM2VideoPredictor

    def small_predictor(**kwargs):  # the wrapper passes image_size=1024; everything else unchanged
        return predictor(**{**kwargs, "image_size": SAM_SIZE})

    sam2_module.SAM2VideoPredictor = small_predictor
    name = "sa2va_chat" if reference == "sa2va" else "reviosa_chat"
    modeling = importlib.import_module(f"{pkg}.modeling_{name}")
    configuration = importlib.import_module(f"{pkg}.configuration_{name}")
    model_cls = modeling.Sa2VAChatModel if reference == "sa2va" else modeling.ReVIOSaChatModel
    config_cls = configuration.Sa2VAChatConfig if reference == "sa2va" else configuration.ReVIOSaChatConfig
    return modeling, model_cls, config_cls


def tiny_config(config_cls, vocab: int):
    vision = dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=448,
        patch_size=14, qkv_bias=True, norm_type="layer_norm", qk_normalization=False, layer_norm_eps=1e-6,
        drop_path_rate=0.0, use_flash_attn=False, initializer_factor=1.0, hidden_act="gelu",
    )  # fmt: skip
    llm = dict(
        architectures=["Qwen2ForCausalLM"], hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, vocab_size=vocab, rope_theta=1000000.0,
        max_position_embeddings=32768, rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False,
        use_sliding_window=False, torch_dtype="float32",
    )  # fmt: skip
    return config_cls(
        vision_config=vision, llm_config=llm, template="qwen_chat", ps_version="v2", downsample_ratio=0.5,
        force_image_size=448, select_layer=-1, dynamic_image_size=True, use_thumbnail=True,
        min_dynamic_patch=1, max_dynamic_patch=12,
    )  # fmt: skip


def make_clip(rng: np.random.RandomState) -> np.ndarray:
    """uint8 (T, H, W, 3): a textured background and two shapes moving across it."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    base = (rng.rand(HEIGHT // 8, WIDTH // 8, 3) * 120 + 60).repeat(8, 0).repeat(8, 1)
    frames = []
    for t in range(FRAMES):
        img = base + rng.randn(HEIGHT, WIDTH, 3) * 12
        circle = (yy - 30 - 2 * t) ** 2 + (xx - 20 - 5 * t) ** 2 < 12**2
        square = (abs(yy - 45) < 10) & (abs(xx - 50 - 3 * t) < 10)
        img[circle] = (220, 40, 40)
        img[square] = (40, 60, 220)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames)


class ForceAnswer:
    """A logits processor that makes greedy decoding emit ``ids`` (then keeps emitting the last)."""

    def __init__(self, ids: list[int]):
        self.ids = ids
        self.start: int | None = None

    def __call__(self, input_ids, scores):
        step = 0 if self.start is None else input_ids.shape[1] - self.start
        if self.start is None:
            self.start = input_ids.shape[1]
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.ids[min(step, len(self.ids) - 1)]] = 0.0
        return forced


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", choices=["sa2va", "interrvos"], required=True)
    ap.add_argument("--models", type=Path, required=True, help="the reference's hf/models folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, help="seed of the random weights (default: the committed set's)")
    args = ap.parse_args()
    if args.seed is None:
        args.seed = SEEDS[args.reference]
    torch.manual_seed(args.seed)
    install_stubs()
    modeling, model_cls, config_cls = load_reference(args.models.resolve(), args.reference)

    tokenizer = build_tokenizer(args.reference)
    config = tiny_config(config_cls, len(tokenizer))
    model = model_cls(config, use_flash_attn=False).eval()
    with torch.no_grad():
        for p in model.parameters():  # random weights, scaled by fan-in
            if p.is_floating_point() and p.dim() > 1:
                p.copy_(torch.randn_like(p) * _scale(p))
        for t in model.state_dict(keep_vars=True).values():  # exactly representable in float16
            if t.is_floating_point():
                t.data.copy_(t.data.half().float())
    model.preparing_for_generation(tokenizer=tokenizer, torch_dtype=torch.float32)
    model.extra_image_processor = modeling.DirectResize(target_length=SAM_SIZE)  # SAM2 input size
    sam = model.grounding_encoder.sam2_model
    init_state = sam.init_state

    def cpu_state(images):  # init_state names CUDA as the state's device
        state = init_state(images)
        state["device"] = state["storage_device"] = torch.device("cpu")
        return state

    sam.init_state = cpu_state

    out = args.out
    (out / "model").mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}  # fmt: skip
    save_file(state, str(out / "model" / "model.safetensors"))
    # save_pretrained would build the config class with no arguments, which it does not allow
    config.to_json_file(str(out / "model" / "config.json"), use_diff=False)
    tokenizer.save_pretrained(str(out / "model"))

    frames = make_clip(np.random.RandomState(CLIP_SEED))
    video = [Image.fromarray(f) for f in frames]
    goldens: dict[str, np.ndarray] = {"frames": frames}
    answer_ids = tokenizer.encode(ANSWERS[args.reference]) + [tokenizer.eos_token_id]
    goldens["answer_ids"] = np.array(answer_ids)
    for i, prompt in enumerate(PROMPTS):
        record = run_reference(
            model, modeling, tokenizer, video, prompt, answer_ids, args.reference, full=i == 0
        )
        for k, v in record.items():
            goldens[f"p{i}_{k}"] = v
    np.savez_compressed(out / "goldens.npz", **goldens)
    meta = {
        "reference": COMMITS[args.reference], "internvl": "OpenGVLab/InternVL@2410d1d",
        "prompts": PROMPTS, "answer": ANSWERS[args.reference], "sam_size": SAM_SIZE, "sam_dim": D,
        "frames": [FRAMES, HEIGHT, WIDTH], "seed": args.seed, "torch": torch.__version__,
        "transformers": importlib.import_module("transformers").__version__,
        "keys": {k: list(goldens[k].shape) for k in sorted(goldens)},
    }  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out}: {sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.2f} MB")


def _scale(p: torch.Tensor) -> float:
    """Weights scaled by fan-in, so activations neither vanish nor blow up in the random model."""
    fan_in = p[0].numel()
    return 1.0 / max(fan_in, 1) ** 0.5


class _IdsOnly(Exception):
    """Raised from the reference's generate call once a prompt's token ids are recorded."""


def run_reference(model, modeling, tokenizer, video, prompt, answer_ids, reference, full: bool) -> dict:
    """One predict_forward of the reference, with its internals recorded along the way."""
    rec: dict[str, list] = {"ids": [], "vit": [], "states": [], "seg_prompts": [], "logits": []}
    sam = model.grounding_encoder.sam2_model
    frame_of_call: list[int] = []
    heads: list[dict] = []

    generate = model.language_model.generate
    extract = model.extract_feature
    fcs = model.text_hidden_fcs.forward
    track_step = sam.track_step
    sam_heads = sam._forward_sam_heads
    inference = model.grounding_encoder.language_embd_inference

    def gen(*a, **k):
        k.update(logits_processor=[ForceAnswer(answer_ids)], output_logits=True)
        out = generate(*a, **k)
        rec["logits"].append(torch.cat([x[:1] for x in out.logits], 0))
        return out

    def ext(pixel_values):
        feats = extract(pixel_values)
        rec["vit"].append(feats)
        return feats

    def proj(x):
        y = fcs(x)
        rec["states"].append(x)
        rec["seg_prompts"].append(y)
        return y

    def step(*a, **k):
        frame_of_call.append(k["frame_idx"])
        return track_step(*a, **k)

    def heads_hook(*a, **k):
        outs = sam_heads(*a, **k)
        _, _, ious, low, _, ptr, score = outs
        heads.append({"frame": frame_of_call[-1], "ious": ious, "low": low, "ptr": ptr, "score": score})
        return outs

    sam_res: list[torch.Tensor] = []

    def infer(state, embd):
        masks = inference(state, embd)
        sam_res.append(masks)
        return masks

    base_generate = model.generate

    def model_generate(**k):
        rec["ids"].append(k["input_ids"][0].clone())
        if not full:  # only the prompt's ids are wanted: stop before generating and SAM2
            raise _IdsOnly
        return base_generate(**k)

    model.language_model.generate = gen
    model.extract_feature = ext
    model.text_hidden_fcs.forward = proj
    sam.track_step = step
    sam._forward_sam_heads = heads_hook
    model.grounding_encoder.language_embd_inference = infer
    model.generate = model_generate
    try:
        if reference == "interrvos":  # its evaluation dataset (refVOS.py) normalises the expression
            text = SEG_TEMPLATE.format(prompt.replace(".", "").strip().lower())
        else:
            text = SEG_TEMPLATE.format(prompt)
        with torch.no_grad():
            result = model.predict_forward(video=video, text=text, tokenizer=tokenizer)
    except _IdsOnly:
        result = None
    finally:
        for obj, name in ((model.language_model, "generate"), (model, "extract_feature"),
                          (model.text_hidden_fcs, "forward"), (sam, "track_step"), (sam, "_forward_sam_heads"),
                          (model.grounding_encoder, "language_embd_inference"), (model, "generate")):  # fmt: skip
            obj.__dict__.pop(name, None)
    out = {"ids": rec["ids"][0].numpy(), "text": np.array(text)}
    if not full:
        return out
    roles = 2 if reference == "interrvos" else 1
    n = len(video)
    out["vit"] = rec["vit"][0].numpy()
    out["logits"] = rec["logits"][0].numpy()
    out["states"] = torch.cat(rec["states"], 0).numpy()  # (roles, D)
    out["seg_prompts"] = torch.cat(rec["seg_prompts"], 0).numpy()  # (roles, 256)
    # heads: per role, 5 prompted calls then the tracked frames (in propagation order)
    per_role = len(heads) // roles
    for key in ("ious", "low", "ptr", "score"):
        vals = [
            torch.stack([h[key][0] for h in heads[r * per_role : (r + 1) * per_role]]) for r in range(roles)
        ]
        out[f"sam_{key}"] = torch.stack(vals).numpy()
    out["sam_frames"] = np.array([h["frame"] for h in heads[:per_role]])
    masks = [result["prediction_masks" if reference == "sa2va" else "prediction_masks_act"][0]]
    if reference == "interrvos":
        masks.append(result["prediction_masks_tar"][0])
    out["masks"] = np.stack(masks)  # (roles, T, H, W) bool
    out["answer"] = np.array(result["prediction"])
    assert all(m.shape[0] == n for m in sam_res)
    return out


if __name__ == "__main__":
    main()
