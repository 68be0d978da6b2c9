"""``python -m reviosa predict``: one video and one expression, or every expression of a dataset.

python -m reviosa predict VIDEO|IMAGE "expression" [--model M] [--out DIR]
    -> DIR/actor/00000.png ..., DIR/target/..., DIR/results.json (an image: one frame)
python -m reviosa predict --dataset DIR [--split S] --out RESULTS.json
    -> the results JSON of every expression (resumable: finished expressions are skipped)
torchrun --nproc_per_node N -m reviosa predict --dataset DIR --out RESULTS.json [--device cuda]
    -> the same file, the videos shared among N processes (GPU LOCAL_RANK each; `reviosa.distributed`)

A progress bar goes to stderr, and so do notices (a clip strided to the frame cap, frames downscaled,
the built-in model on a clip outside its synthetic world); results and the summary go to stdout.
The caps are the studio's (``reviosa.caps``); a single clip is capped, a dataset is not (evaluation
needs a mask for every frame at the annotation's size).
"""

from __future__ import annotations

import argparse
import sys

from reviosa.caps import MAX_EXPRESSION_CHARS, MAX_FRAMES, MAX_SIDE

HOW_TO_LOAD = (
    "Pass a real checkpoint with --model FOLDER_OR_HUB_ID (e.g. one made by `python -m reviosa convert` "
    "from Sa2VA or the reference ReVIOSa; docs/checkpoints.md)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "video", nargs="?", help="a video (mp4, webm, mov, avi, mkv, gif) or an image (jpg, png, webp)"
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
    p.add_argument(
        "--max-frames", type=int, default=MAX_FRAMES,
        help=f"stride longer clips down to at most this many frames (default {MAX_FRAMES}, as the studio; 0: no cap)",
    )  # fmt: skip
    p.add_argument("--stride", type=int, default=1, help="keep every n-th frame")
    p.add_argument(
        "--max-side", type=int, default=MAX_SIDE,
        help=f"downscale frames so the longer side is at most this (default {MAX_SIDE}, as the studio; 0: no cap)",
    )  # fmt: skip
    p.add_argument(
        "--max-expression-chars", type=int, default=MAX_EXPRESSION_CHARS,
        help=f"longest expression accepted (default {MAX_EXPRESSION_CHARS}, as the studio)",
    )  # fmt: skip
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
    if bool(args.dataset) == bool(args.video):
        raise ValueError("give either VIDEO and EXPRESSION, or --dataset DIR")
    if args.video and args.expression is None:
        raise ValueError('give the expression after the video, e.g. predict clip.mp4 "person walking a dog"')
    if args.dataset:
        return _predict_dataset(_load_model(args), args)
    from reviosa import distributed

    if distributed.world_from_env().distributed:
        raise ValueError(
            "torchrun shares the videos of --dataset among processes; run one video in one process"
        )
    from reviosa.processor import clean_expression

    # Input is checked before the model loads, so a bad clip or expression fails in a second.
    expression = clean_expression(args.expression, args.max_expression_chars)
    video = _open_video(args)
    return _predict_video(_load_model(args), video, expression, args)


def _load_model(args):
    import torch

    from reviosa.hub import from_pretrained
    from reviosa.protocol import describe

    model = from_pretrained(args.model, device=_rank_device(args), dtype=getattr(torch, args.dtype))
    model = model.with_protocol(args.protocol, **protocol_switches(args))
    print(describe(model.config))
    return model


def _rank_device(args) -> str:
    """This process's device: under torchrun a bare ``cuda`` is ``cuda:LOCAL_RANK``."""
    import torch

    from reviosa import distributed

    world = distributed.world_from_env()
    device = distributed.device_for(args.device, world)
    if device.startswith("cuda:"):
        if int(device.split(":")[1]) >= torch.cuda.device_count():
            raise ValueError(
                f"{device} does not exist here ({torch.cuda.device_count()} GPU(s) visible): "
                "start at most that many processes per node, or pass --device cuda:N"
            )
        torch.cuda.set_device(device)  # libraries that allocate on "the current device" use this rank's GPU
    return device


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _open_video(args):
    from reviosa.caps import reduction_notices
    from reviosa.image import open_media
    from reviosa.video import VideoLimits

    limits = VideoLimits(
        max_frames=args.max_frames or None, stride=args.stride, max_side=args.max_side or None
    )
    video = open_media(
        args.video, limits
    )  # a jpg / png / webp: a one-frame clip (tiled if the protocol says)
    for notice in reduction_notices(
        video,
        frames_hint="Use --max-frames N (0: every frame) or --stride S to choose, or trim the clip.",
        side_hint="The masks are at the reduced size; --max-side 0 keeps the full size.",
    ):
        _note(notice)
    return video


def _progress_bar(desc: str):
    """A tqdm bar on stderr driven by ``segment``'s progress(phase, fraction) callback."""
    from tqdm import tqdm

    bar = tqdm(
        total=100,
        desc=desc,
        unit="%",
        file=sys.stderr,
        bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}",
    )

    def report(phase: str, fraction: float) -> None:
        bar.set_description_str(f"{desc}: {phase}", refresh=False)
        bar.update(max(0, round(100 * fraction) - bar.n))

    return bar, report


def _predict_video(model, video, expression: str, args) -> int:
    from pathlib import Path

    from reviosa import results
    from reviosa.caps import expression_limit, plural
    from reviosa.domain import builtin_warning, is_builtin, outside_world
    from reviosa.processor import clean_expression

    expression = clean_expression(expression, expression_limit(model, args.max_expression_chars))
    bar, report = _progress_bar(Path(args.video).name)
    with bar:
        (pred,) = model.segment(video, [expression], progress=report)
    out = Path(args.out or f"{Path(args.video).stem}_masks")
    results.write_png_masks(pred.actor, out / "actor")
    if pred.target is not None:
        results.write_png_masks(pred.target, out / "target")
    data = {"videos": {Path(args.video).stem: {"0": results.entry(pred)}}}
    results.save(data, out / "results.json")
    reason = outside_world(video.read(sorted(pred.keyframes))) if is_builtin(model) else None
    if reason:
        print(f"warning: {builtin_warning(reason, HOW_TO_LOAD)}", file=sys.stderr)
    print(f"answer: {pred.answer}")
    if pred.status != "ok":
        print(f"note: {pred.reason}")
    n = video.num_frames
    target = "none" if pred.target is None else f"{int((pred.target.areas() > 0).sum())}/{n}"
    caveat = " (not meaningful: see the warning)" if reason else ""
    print(
        f"actor: {int((pred.actor.areas() > 0).sum())}/{plural(n, 'frame')} with a mask; target: {target}{caveat}"
    )
    print(f"wrote {out}/ (actor/, {'target/, ' if pred.target is not None else ''}results.json)")
    return 0


def _predict_dataset(model, args) -> int:
    """Every expression of a dataset; under torchrun, this rank's videos (`reviosa.distributed`)."""
    from tqdm import tqdm

    from reviosa import distributed, results
    from reviosa.data import InterRVOSDataset
    from reviosa.domain import builtin_warning, is_builtin, outside_world

    if not args.out:
        raise ValueError("--dataset needs --out RESULTS.json")
    world = distributed.world_from_env()
    dataset = InterRVOSDataset(args.dataset, split=args.split)
    samples = list(dataset.samples())
    if world.is_main and is_builtin(model) and samples:
        reason = outside_world(samples[0].load_frames([0]))
        if reason:
            print(
                f"warning: {builtin_warning(reason, HOW_TO_LOAD)} (checked on {samples[0].video_id})",
                file=sys.stderr,
            )
    # What any earlier run finished, whatever its world size: OUT and every part file left beside it.
    done = distributed.merge_results(
        [results.load(args.out), *map(results.load, distributed.existing_parts(args.out))]
    )
    mine = distributed.my_samples(samples, world)
    todo = [s for s in mine if s.exp_id not in done["videos"].get(s.video_id, {})]
    # One process saves into OUT itself; a rank into its own part file, merged by rank 0 at the end.
    own_path = distributed.part_path(args.out, world) if world.distributed else args.out
    own = done if not world.distributed else results.load(own_path)
    desc = f"rank {world.rank}/{world.size}" if world.distributed else "expressions"
    bar = tqdm(
        total=len(mine),
        initial=len(mine) - len(todo),
        desc=desc,
        unit="exp",
        position=world.local_rank,
        file=sys.stderr,
    )
    with distributed.process_group(world):
        for video_id, entries in results.predict_videos(model, todo, args.batch):
            own["videos"].setdefault(video_id, {}).update(entries)
            results.save(own, own_path)  # after each video: an interrupted run resumes from here
            bar.update(len(entries))
        bar.close()
        if world.distributed:
            results.save(own, own_path)  # also when this rank had nothing to do: rank 0 counts the parts
        skipped = distributed.gather(len(mine) - len(todo), world)
        distributed.barrier(world)
        if not world.is_main:
            return 0
        merged = distributed.collect_parts(args.out, world, results.load) if world.distributed else own
        results.save(distributed.ordered_results(merged, samples), args.out)
        distributed.remove_parts(args.out)
    print(f"wrote {args.out}: {len(dataset)} expressions ({sum(skipped)} already done)")
    return 0
