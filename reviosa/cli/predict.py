"""``python -m reviosa predict``: one video and one expression, or every expression of a dataset.

python -m reviosa predict VIDEO "expression" [--model M] [--out DIR]
    -> DIR/actor/00000.png ..., DIR/target/..., DIR/results.json
python -m reviosa predict --dataset DIR [--split S] --out RESULTS.json
    -> the results JSON of every expression (resumable: finished expressions are skipped)
torchrun --nproc_per_node N -m reviosa predict --dataset DIR --out RESULTS.json [--device cuda]
    -> the same file, the videos shared among N processes (GPU LOCAL_RANK each; `reviosa.distributed`)
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", nargs="?", help="a video file (mp4, webm, mov, avi, gif...)")
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


def run(args: argparse.Namespace) -> int:
    import torch

    from reviosa.hub import from_pretrained

    if bool(args.dataset) == bool(args.video):
        raise ValueError("give either VIDEO and EXPRESSION, or --dataset DIR")
    if args.video and not args.expression:
        raise ValueError('give the expression after the video, e.g. predict clip.mp4 "person walking a dog"')
    device = _rank_device(args)
    model = from_pretrained(args.model, device=device, dtype=getattr(torch, args.dtype))
    if args.dataset:
        return _predict_dataset(model, args)
    return _predict_video(model, args)


def _rank_device(args) -> str:
    """This process's device: under torchrun a bare ``cuda`` is ``cuda:LOCAL_RANK``."""
    import torch

    from reviosa import distributed

    world = distributed.world_from_env()
    if world.distributed and not args.dataset:
        raise ValueError(
            "torchrun shares the videos of --dataset among processes; run one video in one process"
        )
    device = distributed.device_for(args.device, world)
    if device.startswith("cuda:"):
        if int(device.split(":")[1]) >= torch.cuda.device_count():
            raise ValueError(
                f"{device} does not exist here ({torch.cuda.device_count()} GPU(s) visible): "
                "start at most that many processes per node, or pass --device cuda:N"
            )
        torch.cuda.set_device(device)  # libraries that allocate on "the current device" use this rank's GPU
    return device


def _keyframe_options(args) -> dict:
    return {"num_keyframes": args.keyframes, "keyframe_strategy": args.keyframe_strategy}


def _predict_video(model, args) -> int:
    from pathlib import Path

    from reviosa import results
    from reviosa.video import VideoFile, VideoLimits

    video = VideoFile(
        args.video, VideoLimits(max_frames=args.max_frames, stride=args.stride, max_side=args.max_side)
    )
    (pred,) = model.segment(video, [args.expression], **_keyframe_options(args))
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
    """Every expression of a dataset; under torchrun, this rank's videos (`reviosa.distributed`)."""
    from tqdm import tqdm

    from reviosa import distributed, results
    from reviosa.data import InterRVOSDataset

    if not args.out:
        raise ValueError("--dataset needs --out RESULTS.json")
    world = distributed.world_from_env()
    dataset = InterRVOSDataset(args.dataset, split=args.split)
    samples = list(dataset.samples())
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
        total=len(mine), initial=len(mine) - len(todo), desc=desc, unit="exp", position=world.local_rank
    )
    with distributed.process_group(world):
        for video_id, entries in results.predict_videos(model, todo, args.batch, **_keyframe_options(args)):
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
