"""``python -m reviosa predict``: one video and one expression, or every expression of a dataset.

python -m reviosa predict VIDEO|IMAGE "expression" [--model M] [--out DIR]
    -> DIR/actor/00000.png ..., DIR/target/..., DIR/results.json (an image: one frame)
python -m reviosa predict --dataset DIR [--split S] --out RESULTS.json
    -> the results JSON of every expression (resumable: finished expressions are skipped)
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "video", nargs="?", help="a video (mp4, webm, mov, avi, gif...) or an image (jpg, png, webp)"
    )
    p.add_argument("expression", nargs="?", help='what to segment, e.g. "person walking a dog"')
    p.add_argument("--dataset", help="a dataset in the InterRVOS / MeViS layout (instead of VIDEO)")
    p.add_argument("--split", help="split folder inside --dataset (e.g. valid, test)")
    p.add_argument("--model", default="builtin", help="'builtin' (default), a model folder, or a hub id")
    p.add_argument("--out", help="output folder (one video) or results JSON path (--dataset)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--keyframes", type=int, help="keyframes the MLLM sees (default: the model's)")
    p.add_argument("--keyframe-strategy", choices=["uniform", "first"], help="how keyframes are chosen")
    p.add_argument("--max-frames", type=int, help="stride long videos down to at most this many frames")
    p.add_argument("--stride", type=int, default=1, help="keep every n-th frame")
    p.add_argument("--max-side", type=int, help="downscale frames so the longer side is at most this")
    p.add_argument("--batch", type=int, default=8, help="expressions of one video run together (--dataset)")
    add_protocol_arguments(p)


def add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    """--protocol and one flag per switch (docs/checkpoints.md "Inference protocols")."""
    g = p.add_argument_group("inference protocol (default: the one saved with the model)")
    g.add_argument(
        "--protocol", choices=["ours", "reference", "reviosa", "sa2va", "interrvos"],
        help="'ours' = ReVIOSa Studio's, 'reference' = the model's reference (Sa2VA or InterRVOS), or a preset",
    )  # fmt: skip
    g.add_argument(
        "--prompt-encoding", choices=["pieces", "whole"], help="tokenise the user text in pieces or whole"
    )
    g.add_argument("--lowercase", action=argparse.BooleanOptionalAction, help="lowercase the expression")
    g.add_argument("--strip-chars", metavar="CHARS", help="characters deleted from the expression, e.g. '.'")
    g.add_argument(
        "--multimask", action=argparse.BooleanOptionalAction,
        help="keyframes: SAM2's 3 masks, keep the best predicted IoU (--no-multimask: one mask)",
    )  # fmt: skip
    g.add_argument(
        "--object-score-overwrite", action=argparse.BooleanOptionalAction,
        help="empty the mask where SAM2 scores no object (sam2's -1024; the references do not)",
    )  # fmt: skip
    g.add_argument("--mllm-resize", choices=["torch_bicubic", "pil_bicubic"], help="keyframe resize filter")
    g.add_argument("--sam-resize", choices=["bilinear", "pil_bicubic"], help="SAM2 input resize filter")
    g.add_argument("--mask-upsample", choices=["direct", "via_input"], help="low-res masks to the frame")
    g.add_argument("--memory-dtype", choices=["model", "bfloat16"], help="dtype SAM2's memory is stored in")
    g.add_argument("--max-new-tokens", type=int, help="longest answer generated")
    g.add_argument(
        "--max-image-tiles", type=int, metavar="N",
        help="still images: at most N tiles for the MLLM, plus a thumbnail (1: no tiling; the references: 12)",
    )  # fmt: skip


def protocol_switches(args: argparse.Namespace) -> dict:
    """The per-switch flags given, as `ReviosaModel.with_protocol` keywords (None: not given)."""
    return {
        "num_keyframes": args.keyframes, "keyframe_strategy": args.keyframe_strategy,
        "prompt_encoding": args.prompt_encoding, "expression_lowercase": args.lowercase,
        "expression_remove": args.strip_chars, "multimask_prompted": args.multimask,
        "object_score_overwrite": args.object_score_overwrite, "mllm_resize": args.mllm_resize,
        "sam_resize": args.sam_resize, "mask_upsample": args.mask_upsample, "memory_dtype": args.memory_dtype,
        "max_new_tokens": args.max_new_tokens, "max_image_tiles": args.max_image_tiles,
    }  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import torch

    from reviosa.hub import from_pretrained
    from reviosa.protocol import describe

    if bool(args.dataset) == bool(args.video):
        raise ValueError("give either VIDEO and EXPRESSION, or --dataset DIR")
    if args.video and not args.expression:
        raise ValueError('give the expression after the video, e.g. predict clip.mp4 "person walking a dog"')
    model = from_pretrained(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    model = model.with_protocol(args.protocol, **protocol_switches(args))
    print(describe(model.config))
    if args.dataset:
        return _predict_dataset(model, args)
    return _predict_video(model, args)


def _predict_video(model, args) -> int:
    from pathlib import Path

    from reviosa import results
    from reviosa.image import open_media
    from reviosa.video import VideoLimits

    # A jpg / png / webp is a one-frame clip (tiled for the MLLM if the model's protocol says so).
    video = open_media(
        args.video, VideoLimits(max_frames=args.max_frames, stride=args.stride, max_side=args.max_side)
    )
    (pred,) = model.segment(video, [args.expression])
    out = Path(args.out or f"{Path(args.video).stem}_masks")
    results.write_png_masks(pred.actor, out / "actor")
    if pred.target is not None:
        results.write_png_masks(pred.target, out / "target")
    data = {"videos": {Path(args.video).stem: {"0": results.entry(pred)}}}
    results.save(data, out / "results.json")
    print(f"answer: {pred.answer}")
    if pred.status != "ok":
        print(f"note: {pred.reason}")
    print(
        f"actor: {int((pred.actor.areas() > 0).sum())}/{video.num_frames} frames with a mask; "
        f"target: {'none' if pred.target is None else f'{int((pred.target.areas() > 0).sum())}/{video.num_frames}'}"
    )
    print(f"wrote {out}/ (actor/, {'target/, ' if pred.target is not None else ''}results.json)")
    return 0


def _predict_dataset(model, args) -> int:
    from tqdm import tqdm

    from reviosa import results
    from reviosa.data import InterRVOSDataset

    if not args.out:
        raise ValueError("--dataset needs --out RESULTS.json")
    dataset = InterRVOSDataset(args.dataset, split=args.split)
    done = results.load(args.out)
    todo = [s for s in dataset.samples() if s.exp_id not in done["videos"].get(s.video_id, {})]
    skipped = len(dataset) - len(todo)
    bar = tqdm(total=len(dataset), initial=skipped, desc="expressions", unit="exp")
    for video_id, entries in results.predict_videos(model, todo, args.batch):
        done["videos"].setdefault(video_id, {}).update(entries)
        results.save(done, args.out)  # after each video: an interrupted run resumes from here
        bar.update(len(entries))
    bar.close()
    print(f"wrote {args.out}: {len(dataset)} expressions ({skipped} already done)")
    return 0
