"""Record Sa2VA's still-image path on the committed tiny Sa2VA: tests/fixtures/parity/image/.

Reference: magic-research/Sa2VA at d01bf3f, ``predict_forward(image=...)``
(``projects/llava_sam2/hf/models/modeling_sa2va_chat.py:642-667``: the image tiled by
``dynamic_preprocess`` into 1-12 tiles of 448 + a thumbnail, all in one ``<img>`` block; SAM2 gets
the one image). Not run in CI. It reuses ``record_sa2va.py``'s set-up (stand-ins for torchvision /
timm, the small vendored SAM2) and loads the weights of ``tests/fixtures/parity/sa2va/model`` into
the reference's own model, so no new checkpoint is written::

    /tmp/refenv/bin/python scripts/parity/record_image.py --models /tmp/sa2va/projects/llava_sam2/hf/models

Recorded (``goldens.npz``): the image, the prompt ids, the number of tiles, the vision features
after ``mlp1`` of the thumbnail, the ``[SEG]`` state and its prompt, SAM2's mask logits at the image
size and the final mask. The answer is forced to "Sure, [SEG]." as in the video sets.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record_sa2va as rs  # noqa: E402

FIXTURES = Path("tests/fixtures/parity")
EXPRESSION = "the red circle"
IMAGE_SIZE = (112, 80)  # W, H: aspect 1.4, a 4 x 3 grid of 448 tiles + the thumbnail


def still_image() -> np.ndarray:
    """uint8 (H, W, 3): textured background, a red disc and a blue square; integer maths only."""
    w, h = IMAGE_SIZE
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([60 + (x * 7 + y * 3) % 90, 80 + (x * y // 11) % 70, 70 + (x // 5 * 13 + y) % 80], -1)
    img[(x - 35) ** 2 + (y - 38) ** 2 < 15**2] = (220, 40, 40)
    img[(abs(x - 80) < 12) & (abs(y - 45) < 12)] = (40, 60, 220)
    return img.astype(np.uint8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, required=True, help="Sa2VA's hf/models folder at d01bf3f")
    p.add_argument("--out", type=Path, default=FIXTURES / "image")
    args = p.parse_args()
    rs.install_stubs()
    modeling, model_cls, config_cls = rs.load_reference(args.models.resolve(), "sa2va", True)
    from transformers import PreTrainedTokenizerFast

    source = FIXTURES / "sa2va" / "model"
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(source))
    model = model_cls(rs.tiny_config(config_cls, len(tokenizer)), use_flash_attn=False).eval()
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in load_file(str(source / "model.safetensors")).items()
    }
    model.load_state_dict(state, strict=True)
    model.preparing_for_generation(tokenizer=tokenizer, torch_dtype=torch.float32)
    model.extra_image_processor = modeling.DirectResize(target_length=rs.SAM_SIZE)
    sam = model.grounding_encoder.sam2_model
    init_state = sam.init_state

    def cpu_state(images):  # init_state names CUDA as the state's device
        state = init_state(images)
        state["device"] = state["storage_device"] = torch.device("cpu")
        return state

    sam.init_state = cpu_state
    answer_ids = tokenizer.encode(rs.ANSWERS["sa2va"]) + [tokenizer.eos_token_id]
    rec: dict[str, list] = {"ids": [], "vit": [], "states": [], "prompts": [], "sam": []}
    generate, lm_generate = model.generate, model.language_model.generate
    extract, fcs = model.extract_feature, model.text_hidden_fcs.forward
    inference = model.grounding_encoder.language_embd_inference

    def model_generate(**k):
        rec["ids"].append(k["input_ids"][0].clone())
        return generate(**k)

    def forced(*a, **k):
        k.update(logits_processor=[rs.ForceAnswer(answer_ids)])
        return lm_generate(*a, **k)

    def ext(pixel_values):
        feats = extract(pixel_values)
        rec["vit"].append(feats)
        return feats

    def proj(x):
        y = fcs(x)
        rec["states"].append(x)
        rec["prompts"].append(y)
        return y

    def infer(state, embd):
        masks = inference(state, embd)
        rec["sam"].append(masks)
        return masks

    model.generate, model.language_model.generate = model_generate, forced
    model.extract_feature, model.text_hidden_fcs.forward = ext, proj
    model.grounding_encoder.language_embd_inference = infer
    image = still_image()
    text = rs.SEG_TEMPLATE.format(EXPRESSION)
    with torch.no_grad():
        result = model.predict_forward(image=Image.fromarray(image), text=text, tokenizer=tokenizer)
    vit = rec["vit"][0]  # (N, 256, D): the tiles, then the thumbnail
    goldens = {
        "image": image, "ids": rec["ids"][0].numpy(), "thumbnail_features": vit[-1].numpy(),
        "seg_state": rec["states"][0].numpy(), "seg_prompt": rec["prompts"][0].numpy(),
        "sam_logits": rec["sam"][0].float().numpy(), "mask": np.asarray(result["prediction_masks"][0]),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "goldens.npz", **goldens)
    meta = {
        "reference": rs.COMMITS["sa2va"], "model": "tests/fixtures/parity/sa2va/model",
        "model_sha256": hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest(),
        "expression": EXPRESSION,
        "text": text, "answer": result["prediction"], "tiles": int(vit.shape[0]), "sam_size": rs.SAM_SIZE,
        "keys": {k: list(v.shape) for k, v in goldens.items()},
    }  # fmt: skip
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"image: {vit.shape[0]} tiles, {len(goldens['ids'])} ids, answer {result['prediction']!r}")


if __name__ == "__main__":
    main()
