"""Record goldens for "InternVL2.5 + Meta SAM2 from parts": tests/fixtures/parity/parts/.

Not run in CI. Two steps, each run by the reference's own code on CPU with tiny random weights:

``mllm`` (a throwaway venv with the reference's transformers, as for record_sa2va.py:
torch 2.13 CPU, transformers 4.47.1, peft, einops; no timm / torchvision / flash-attn)::

    /tmp/refenv/bin/python scripts/parity/record_parts.py mllm --internvl /tmp/InternVL

  ``--internvl`` is OpenGVLab/InternVL at 2410d1d. Its ``InternVLChatModel`` (internvl_chat/internvl/
  model/internvl_chat/) is built small and written out by its own ``state_dict()`` /
  ``save_pretrained`` as ``internvl/`` (the remote-code HF layout of OpenGVLab/InternVL2_5-*), with
  a tiny byte-level BPE tokenizer holding InternVL's control tokens. Recorded (``mllm.npz``): the
  ids its ``chat()`` builds for a few questions about one still image (captured at its
  ``generate`` call), the image's tiles (its ``dynamic_preprocess``, 32 px tiles), the vision
  features after ``mlp1`` (``extract_feature``), and ``forward``'s logits and last hidden states.

``sam2`` (the project's venv: the pinned sam2 1.1.0 package *is* Meta's reference code)::

    .venv/bin/python scripts/parity/record_parts.py sam2

  SAM 2.1 Hiera-t built small with hydra overrides (the same ones the test's SamConfig passes),
  saved as Meta's ``{"model": state_dict}`` ``.pt`` (``sam2_micro.pt``). A fixed 1 x D embedding is
  appended to the sparse prompt (a forward hook on ``sam_prompt_encoder``, as a language prompt is
  fed) of frames 0-4, driven through ``SAM2Base.track_step`` as ``SAM2VideoPredictor`` does: frames
  0-4 are prompted (initial conditioning frames), frames 5-7 are tracked from memory, unprompted. Frames are loaded by
  sam2's own ``_load_img_as_tensor``. Recorded (``sam2.npz``): per frame the low-res mask logits,
  the predicted IoU of the mask kept, the object pointer and the object score.

What is changed around the reference, and why: timm's ``DropPath`` (rate 0, eval) is an identity
stand-in, flash-attn is off (``use_flash_attn=False``), torchvision's ToTensor + Normalize after
tiling is written out (float32 divide, subtract, divide) because torchvision cannot be installed
beside a CPU torch here. Random weights are rounded to float16 first, so a float16 file would
hold them exactly (the files are float32: they are small).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

OUT = Path("tests/fixtures/parity/parts")
INTERNVL_COMMIT = "OpenGVLab/InternVL@2410d1d"
SAM2_REFERENCE = "sam2==1.1.0 (facebookresearch/sam2 2b90b9f)"
SEED = 0
TILE = 32  # vision image_size of the tiny model (patch 4: 8 x 8 patches, 4 x 4 tokens per tile)
QUESTIONS = ["Please segment the red circle chasing the blue square.", "Please segment person walking a dog."]
IMAGE_SIZE = (88, 40)  # W, H of the still image: aspect 2.2, several tiles

# SAM2 small: SAM 2.1 Hiera-t narrowed (FACTS.md "micro"), prompt/hidden dim 64, input 128 px.
SAM_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SAM_SIZE = 128
SAM_D = 64
FRAMES, HEIGHT, WIDTH = 8, 60, 80
PROMPTED = 5


def sam_overrides() -> list[str]:
    """Hydra overrides of the small SAM2; the test builds our SamConfig from this same list."""
    feat = SAM_SIZE // 16
    return [
        f"++model.image_size={SAM_SIZE}",
        "++model.image_encoder.trunk.embed_dim=16",
        "++model.image_encoder.trunk.num_heads=1",
        "++model.image_encoder.trunk.stages=[1,1,2,1]",
        "++model.image_encoder.trunk.global_att_blocks=[3]",
        "++model.image_encoder.trunk.window_spec=[8,4,4,4]",
        "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
        f"++model.image_encoder.neck.d_model={SAM_D}",
        f"++model.image_encoder.neck.position_encoding.num_pos_feats={SAM_D}",
        "++model.memory_attention.num_layers=1",
        f"++model.memory_attention.d_model={SAM_D}",
        f"++model.memory_attention.layer.d_model={SAM_D}",
        "++model.memory_attention.layer.dim_feedforward=128",
        f"++model.memory_attention.layer.self_attention.embedding_dim={SAM_D}",
        f"++model.memory_attention.layer.cross_attention.embedding_dim={SAM_D}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{feat},{feat}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{feat},{feat}]",
        f"++model.memory_encoder.mask_downsampler.embed_dim={SAM_D}",
        f"++model.memory_encoder.fuser.layer.dim={SAM_D}",
        f"++model.memory_encoder.in_dim={SAM_D}",
        "++model.memory_encoder.fuser.num_layers=1",
    ]


def synthetic_frames() -> np.ndarray:
    """uint8 (FRAMES, HEIGHT, WIDTH, 3): a red disc moving right over a blue square, integer maths."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    frames = np.zeros((FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    for t in range(FRAMES):
        frame = frames[t]
        frame[...] = np.stack([40 + (x + y) % 23, 60 + y % 17, 50 + x % 19], axis=-1)
        frame[(y >= 30) & (y < 50) & (x >= 40) & (x < 62)] = (30, 50, 220)
        frame[(x - (12 + 5 * t)) ** 2 + (y - 22) ** 2 < 100] = (230, 40, 40)
    return frames


def still_image() -> np.ndarray:
    w, h = IMAGE_SIZE
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 7 + y * 3) % 256, (x * y // 5) % 256, (x // 4 * 50 + y * 9) % 256], -1).astype(
        np.uint8
    )


def round_to_half(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())


# --- step 1: the InternVL2.5 MLLM ------------------------------------------------------------------


def install_stubs() -> None:
    """timm's DropPath as an identity (drop_path_rate 0, eval); transformers loads first."""
    import transformers  # noqa: F401  (it probes installed packages when imported)

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")

    class DropPath(torch.nn.Identity):
        def __init__(self, *args, **kwargs):
            super().__init__()

    layers.DropPath = DropPath
    timm.models, models.layers = models, layers
    for name, module in (("timm", timm), ("timm.models", models), ("timm.models.layers", layers)):
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = module


def build_tokenizer():
    """Byte-level BPE with Qwen2's pre-tokenizer split and InternVL2.5's control tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    split = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
        r"\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    special = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<img>",
        "</img>",
        "<IMG_CONTEXT>",
        "<quad>",
        "</quad>",
    ]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )  # fmt: skip
    bpe.decoder = decoders.ByteLevel()
    corpus = [
        "Please segment the red circle chasing the blue square.",
        "person walking a dog, Sure.",
        "system user",
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )  # fmt: skip
    bpe.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in special if t not in ("<|im_end|>", "<|endoftext|>")],
    )  # fmt: skip


def normalise(tile) -> torch.Tensor:
    """torchvision ToTensor + Normalize (ImageNet), float32: (3, TILE, TILE)."""
    x = torch.from_numpy(np.asarray(tile, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    return x.sub(mean.view(3, 1, 1)).div(std.view(3, 1, 1))


def record_mllm(internvl: Path, out: Path) -> None:
    install_stubs()
    sys.path.insert(0, str(internvl / "internvl_chat"))
    chat = importlib.import_module("internvl.model.internvl_chat")
    dataset = _import_tiling(internvl)
    tokenizer = build_tokenizer()
    config = chat.InternVLChatConfig(
        vision_config={
            "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "image_size": TILE,
            "patch_size": 4, "qkv_bias": True, "qk_normalization": False, "norm_type": "layer_norm",
            "layer_norm_eps": 1e-6, "hidden_act": "gelu", "drop_path_rate": 0.0, "use_flash_attn": False,
        },
        llm_config={
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 128, "vocab_size": len(tokenizer), "rope_theta": 1_000_000.0,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "hidden_act": "silu",
            "tie_word_embeddings": False, "use_sliding_window": False,
            "rope_scaling": {"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"},
        },
        force_image_size=TILE, downsample_ratio=0.5, ps_version="v2", select_layer=-1, template="internvl2_5",
        dynamic_image_size=True, use_thumbnail=True, min_dynamic_patch=1, max_dynamic_patch=12,
    )  # fmt: skip
    torch.manual_seed(SEED)
    model = chat.InternVLChatModel(config, use_flash_attn=False).eval()
    round_to_half(model)
    model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")

    folder = out / "internvl"
    folder.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))

    image = Image.fromarray(still_image())
    tiles = dataset.dynamic_preprocess(image, min_num=1, max_num=12, image_size=TILE, use_thumbnail=True)
    pixels = torch.stack([normalise(t) for t in tiles])  # (N, 3, TILE, TILE)
    arrays: dict[str, np.ndarray] = {"image": still_image(), "pixel_values": pixels.numpy()}
    with torch.no_grad():
        arrays["vision_features"] = model.extract_feature(pixels).numpy()  # (N, 16, 64)
        for q, question in enumerate(QUESTIONS):
            ids = _chat_ids(model, tokenizer, pixels, question)
            out_ref = model(
                pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids),
                image_flags=torch.ones(len(pixels), 1, dtype=torch.long), output_hidden_states=True,
                return_dict=True,
            )  # fmt: skip
            arrays[f"ids_{q}"] = ids[0].numpy()
            # Logits of the text after the image block only (the image positions' would be 90 % of the file).
            text = int((ids[0] == model.img_context_token_id).nonzero().max()) + 1
            arrays[f"logits_{q}"] = out_ref.logits[0, text:].numpy()
            arrays[f"logits_from_{q}"] = np.array(text)
            arrays[f"last_hidden_{q}"] = out_ref.hidden_states[-1][0].numpy()
    np.savez_compressed(out / "mllm.npz", **arrays)
    meta = {
        "reference": INTERNVL_COMMIT, "questions": QUESTIONS, "tiles": len(tiles), "tile": TILE,
        "system_message": model.system_message, "template": config.template, "seed": SEED,
    }  # fmt: skip
    (out / "mllm.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    print(f"mllm: {len(tiles)} tiles, ids {[len(arrays[f'ids_{q}']) for q in range(len(QUESTIONS))]}")


def _import_tiling(internvl: Path):
    """internvl.train.dataset (dynamic_preprocess) with its unused data-pipeline imports stubbed."""
    from unittest import mock

    importlib.import_module("transformers.trainer_pt_utils")
    for name in ("cv2", "imageio", "decord", "torchvision", "torchvision.transforms",
                 "torchvision.transforms.functional", "petrel_client", "petrel_client.client",
                 "petrel_client.common", "petrel_client.common.config"):  # fmt: skip
        module = types.ModuleType(name)
        module.__getattr__ = lambda attr, _n=name: mock.MagicMock(name=f"{_n}.{attr}")
        sys.modules.setdefault(name, module)
    return importlib.import_module("internvl.train.dataset")


def _chat_ids(model, tokenizer, pixels: torch.Tensor, question: str) -> torch.Tensor:
    """The input ids the reference's ``chat()`` builds for ``question`` (caught at its generate)."""
    seen = {}

    def generate(pixel_values=None, input_ids=None, attention_mask=None, **kwargs):
        seen["ids"] = input_ids
        return torch.tensor([[tokenizer.convert_tokens_to_ids("<|im_end|>")]])

    model.generate = generate
    model.chat(tokenizer, pixels, question, {"max_new_tokens": 1, "do_sample": False})
    del model.generate
    return seen["ids"]


# --- step 2: Meta's SAM2 ---------------------------------------------------------------------------


def record_sam2(out: Path) -> None:
    from sam2.build_sam import build_sam2

    torch.manual_seed(SEED)
    sam = build_sam2(SAM_CONFIG, None, device="cpu", hydra_overrides_extra=sam_overrides())
    sam.eval()
    round_to_half(sam)
    assert sam.sam_prompt_embed_dim == SAM_D
    frames = synthetic_frames()
    # Two tracks in SAM2's object batch, one language prompt each (seeds 0 and 3, x3: far apart in
    # object score on these weights, so that one track is kept and one overwritten on every frame).
    prompt = torch.cat(
        [torch.randn(1, 1, SAM_D, generator=torch.Generator().manual_seed(s)) * 3 for s in (0, 3)]
    )
    images = [_sam_input(frames[t], out, t).expand(2, -1, -1, -1) for t in range(FRAMES)]
    _spread_object_scores(sam, images, prompt)
    # float16 holds the rounded weights exactly and halves the file; the importer reads any dtype.
    torch.save({"model": {k: v.half() if v.is_floating_point() else v for k, v in sam.state_dict().items()}},
               out / "sam2_micro.pt")  # fmt: skip

    output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    rows: dict[str, list[np.ndarray]] = {"mask_logits": [], "iou": [], "obj_ptr": [], "object_score": []}

    ious: list[torch.Tensor] = []
    handle = sam.sam_prompt_encoder.register_forward_hook(_appender(prompt))
    iou_hook = sam.sam_mask_decoder.register_forward_hook(lambda _m, _i, o: ious.append(o[1]))
    with torch.inference_mode():
        for t in range(FRAMES):
            backbone = sam.forward_image(images[t])
            _, feats, pos, sizes = sam._prepare_backbone_features(backbone)
            prompted = t < PROMPTED
            if t == PROMPTED:  # tracked frames get no prompt: memory alone, as in propagation
                handle.remove()
            step = sam.track_step(
                frame_idx=t, is_init_cond_frame=prompted, current_vision_feats=feats,
                current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=None, mask_inputs=None,
                output_dict=output_dict, num_frames=FRAMES, track_in_reverse=False, run_mem_encoder=True,
                prev_sam_mask_logits=None,
            )  # fmt: skip
            output_dict["cond_frame_outputs" if prompted else "non_cond_frame_outputs"][t] = step
            best = ious[-1].max(dim=1).values if ious[-1].shape[1] > 1 else ious[-1][:, 0]  # (2,)
            rows["mask_logits"].append(step["pred_masks"][:, 0].numpy())  # (2, S/4, S/4)
            rows["iou"].append(best.numpy())
            rows["obj_ptr"].append(step["obj_ptr"].numpy())  # (2, D)
            rows["object_score"].append(step["object_score_logits"][:, 0].numpy())  # (2,)
    iou_hook.remove()
    arrays = {k: np.stack(v) for k, v in rows.items()}
    np.savez_compressed(out / "sam2.npz", frames=frames, prompt=prompt.numpy(), **arrays)
    meta = {
        "reference": SAM2_REFERENCE, "config": SAM_CONFIG, "overrides": sam_overrides(), "seed": SEED,
        "prompted_frames": list(range(PROMPTED)), "tracked_frames": list(range(PROMPTED, FRAMES)),
        "multimask_on_prompted": bool(sam.multimask_output_in_sam), "object_score_overwrite": True,
    }  # fmt: skip
    (out / "sam2.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"sam2: {FRAMES} frames, object scores {arrays['object_score'].round(2).tolist()}")


def _appender(prompt: torch.Tensor):
    """Forward hook on sam_prompt_encoder: the embedding becomes one more sparse prompt token."""

    def hook(_module, _inputs, outputs):
        sparse, dense = outputs
        return torch.cat([sparse, prompt.to(sparse.dtype).expand(sparse.shape[0], -1, -1)], 1), dense

    return hook


def _sam_input(frame: np.ndarray, out: Path, t: int) -> torch.Tensor:
    """(1, 3, S, S) as SAM2VideoPredictor loads a frame: sam2's _load_img_as_tensor (PIL resize,
    / 255 in float64), stored as float32, then ImageNet-normalised (load_video_frames)."""
    from sam2.utils.misc import _load_img_as_tensor

    path = out / f"_frame{t}.png"
    Image.fromarray(frame).save(path)
    try:
        img, _h, _w = _load_img_as_tensor(str(path), SAM_SIZE)
    finally:
        path.unlink()
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    return ((img.float() - mean) / std)[None]


def _spread_object_scores(sam, images: list[torch.Tensor], prompt: torch.Tensor) -> None:
    """Random weights score every frame and prompt alike (about -0.25): scale the object-score
    head's output layer and shift its bias so that on prompted frames one track is overwritten
    (score -0.3) and the other kept (+2.6); unprompted tracked frames then score about +0.5, kept."""
    head = sam.sam_mask_decoder.pred_obj_score_head.layers[-1]
    with torch.no_grad():
        head.weight.mul_(40.0)
        head.bias.zero_()
    handle = sam.sam_prompt_encoder.register_forward_hook(_appender(prompt))
    with torch.inference_mode():
        _, feats, pos, sizes = sam._prepare_backbone_features(sam.forward_image(images[0]))
        step = sam.track_step(
            frame_idx=0, is_init_cond_frame=True, current_vision_feats=feats, current_vision_pos_embeds=pos,
            feat_sizes=sizes, point_inputs=None, mask_inputs=None,
            output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}, num_frames=1,
            run_mem_encoder=False,
        )  # fmt: skip
    handle.remove()
    scores = step["object_score_logits"][:, 0].tolist()
    with torch.no_grad():  # the lower track lands at -0.3 (overwritten), the other at about +2.6
        head.bias.fill_(-min(scores) - 0.3)
    round_to_half(sam)
    print(f"object scores on frame 0 before the shift: {np.round(scores, 3).tolist()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["mllm", "sam2"])
    p.add_argument("--internvl", type=Path, help="OpenGVLab/InternVL checkout at 2410d1d (step mllm)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "mllm":
        if args.internvl is None:
            p.error("step mllm needs --internvl")
        record_mllm(args.internvl, args.out)
    else:
        record_sam2(args.out)


if __name__ == "__main__":
    main()
