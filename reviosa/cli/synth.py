"""``python -m reviosa synth``: write one split of the synthetic interaction world."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset root; the split goes to OUT/SPLIT/")
    parser.add_argument("--split", required=True, choices=["train", "val", "test"])
    parser.add_argument("--clips", type=int, required=True, help="number of clips")
    parser.add_argument("--seed", type=int, default=0, help="base seed (splits never share streams)")
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels (128-256)")
    parser.add_argument("--min-frames", type=int, default=16)
    parser.add_argument("--max-frames", type=int, default=48)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing split folder")


def run(args: argparse.Namespace) -> int:
    from reviosa.data.synth import format_summary, generate_split

    if not 128 <= args.size <= 256:
        raise ValueError(f"--size {args.size}: the world is drawn for 128-256 px frames")
    summary = generate_split(
        args.out,
        args.split,
        args.clips,
        seed=args.seed,
        size=args.size,
        frames=(args.min_frames, args.max_frames),
        overwrite=args.overwrite,
    )
    print(format_summary(summary))
    print(f"summary saved to {args.out}/{args.split}/summary.json")
    return 0
