"""``python -m reviosa convert``: a foreign checkpoint -> a ReVIOSa folder (config.json, safetensors, tokenizer).

python -m reviosa convert SRC --out DIR                      Sa2VA or reference ReVIOSa folder (detected)
python -m reviosa convert SRC --sam2 sam2_hiera_large.pt --out DIR
    InternVL2.5 + Meta SAM2 -> an untrained ReVIOSa ready for training ("build from parts")
SRC is a local folder or a hub id (e.g. ByteDance/Sa2VA-1B). See docs/checkpoints.md.
"""

from __future__ import annotations

import argparse

FORMATS = ("auto", "internvl", "sa2va", "reviosa-ref")
DTYPES = ("bfloat16", "float16", "float32")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "src", help="checkpoint folder or hub id (InternVL2_5-1B/-4B, Sa2VA-1B/-4B, reference ReVIOSa)"
    )
    p.add_argument("--format", default="auto", choices=FORMATS, help="layout of SRC (default: detect it)")
    p.add_argument("--sam2", help="Meta SAM2 checkpoint (.pt) to pair with an InternVL2.5 checkpoint")
    p.add_argument("--out", required=True, help="output folder (created; must be empty or absent)")
    p.add_argument(
        "--dtype",
        default="bfloat16",
        choices=DTYPES,
        help="dtype of the saved weights (real checkpoints are bf16)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt MLP (InternVL2.5 only)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from reviosa import importers
    from reviosa.hub import resolve, save_pretrained

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: choose a new folder for the converted model")
    src = resolve(args.src)
    found = importers.detect_format(src) if args.format == "auto" else args.format
    if found == "reviosa":
        raise ValueError(f"{src} is already a ReVIOSa folder: nothing to convert")
    print(f"format: {found} ({importers.FORMATS[found].description})")
    model = importers.load_foreign(
        src, found, sam2=args.sam2, dtype=getattr(torch, args.dtype), seed=args.seed
    )
    save_pretrained(model, out)
    n = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {out}/ ({model.config.name}, {n / 1e6:.1f}M parameters, {args.dtype}, {len(model.tokenizer)} tokens)"
    )
    return 0
