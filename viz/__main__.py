"""``python -m viz attention``: role-token attention of one clip, or of every expression of a dataset.

    python -m viz attention CLIP "EXPRESSION" --out DIR [--model M]
    python -m viz attention --dataset ROOT --split S --out DIR [--model M] [--limit N]

For one clip, DIR gets::

    summary.json                      expression, answer, keyframes, layers, heads, supervised heads
    head_scores.csv / .json           reviosa.head_scores with the predicted masks
    ROLE/heatmaps_k{k}.png            layers x heads grid of heatmaps on keyframe k (ROLE: actor, target)
    ROLE/head_scores.png              the layer x head tables (actor, target, elsewhere, vision), "mean"
    ROLE/figure6a_layers.png          Figure 6 (a): attention on the vision tokens per layer
    ROLE/figure6b_heads.png           Figure 6 (b): per head of the supervised (else the top) layer

For a dataset, each expression gets that layout under ``DIR/clips/VIDEO/EXP/`` (without the matplotlib
charts unless ``--clip-figures``: at 0.8-5 s a chart they would dominate the run), plus
``head_scores_gt.*`` (and ``ROLE/head_scores_gt.png``) computed with the dataset's ground-truth masks;
DIR itself gets the averages over all expressions: ``head_scores[_gt].csv / .json``,
``ROLE/head_scores[_gt].png`` and both Figure 6 charts.

This entry point sits above the model: it loads one through ``reviosa`` and hands numpy to the drawing
modules of ``viz``, which stay model-free (and ``reviosa`` imports no plotting).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from itertools import groupby
from pathlib import Path

import numpy as np

logger = logging.getLogger("viz.attention_cli")

ROLE_TOKENS = {"actor": "[SEG_ACT]", "target": "[SEG_TAR]"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m viz", description="Pictures of ReVIOSa's outputs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    text = "Attention heatmaps, head scores and Figure 6 charts for a clip or a whole dataset."
    p = sub.add_parser("attention", help=text, description=text)
    p.add_argument("video", nargs="?", help="a video file (mp4, webm, mov, avi, gif...)")
    p.add_argument("expression", nargs="?", help='what to segment, e.g. "person walking a dog"')
    p.add_argument("--dataset", help="a dataset in the InterRVOS / MeViS layout (instead of VIDEO)")
    p.add_argument("--split", help="split folder inside --dataset (e.g. valid, test)")
    p.add_argument("--limit", type=int, help="only the first N expressions of the dataset")
    p.add_argument("--clip-figures", action="store_true",
                   help="--dataset: also draw each expression's head-score and Figure 6 charts (slow: "
                        "matplotlib; by default each gets its heatmaps and CSV / JSON, the averages get all)")  # fmt: skip
    p.add_argument("--model", default="builtin", help="'builtin' (default), a model folder, or a hub id")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--keyframes", type=int, help="keyframes the MLLM sees (default: the model's)")
    p.add_argument("--keyframe-strategy", choices=["uniform", "first"], help="how keyframes are chosen")
    p.add_argument("--max-frames", type=int, help="stride long videos down to at most this many frames")
    p.add_argument("--stride", type=int, default=1, help="keep every n-th frame")
    p.add_argument("--max-side", type=int, help="downscale frames so the longer side is at most this")
    p.add_argument("--batch", type=int, default=8, help="expressions of one video run together (--dataset)")
    p.add_argument("--resize", default="coverage", choices=["coverage", "nearest"],
                   help="masks to the token grid: area coverage (default) or nearest, as the AML target")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return run_attention(args)
    except (ValueError, KeyError, FileNotFoundError, OSError) as err:
        # User-facing failures (bad video, bad path, bad checkpoint) end with one clear line, no trace.
        print(f"error: {err}", file=sys.stderr)
        return 2


def run_attention(args: argparse.Namespace) -> int:
    import torch

    from reviosa.hub import from_pretrained

    if bool(args.dataset) == bool(args.video):
        raise ValueError("give either VIDEO and EXPRESSION, or --dataset DIR")
    if args.video and not args.expression:
        raise ValueError(
            'give the expression after the video, e.g. attention clip.mp4 "person walking a dog"'
        )
    if args.dataset is None and (args.split or args.limit or args.clip_figures):
        raise ValueError("--split, --limit and --clip-figures go with --dataset")
    model = from_pretrained(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    if args.dataset:
        return _dataset(model, args)
    return _clip(model, args)


def _segment_options(args) -> dict:
    return {"num_keyframes": args.keyframes, "keyframe_strategy": args.keyframe_strategy}


def _clip(model, args) -> int:
    from reviosa.head_scores import head_scores_from_prediction
    from reviosa.video import VideoFile, VideoLimits

    video = VideoFile(
        args.video, VideoLimits(max_frames=args.max_frames, stride=args.stride, max_side=args.max_side)
    )
    (pred,) = model.segment(video, [args.expression], capture_attention=True, **_segment_options(args))
    out = Path(args.out)
    scores = head_scores_from_prediction(pred, resize=args.resize)
    write_clip(out, pred, video.read(pred.keyframes), model.config, scores)
    print(f"answer: {pred.answer}")
    if pred.status != "ok":
        print(f"note: {pred.reason}; no head scores without a role token")
    print(f"wrote {out}/ ({', '.join(_listing(out))})")
    return 0


def _dataset(model, args) -> int:
    from tqdm import tqdm

    from reviosa.data import InterRVOSDataset
    from reviosa.head_scores import average_head_scores, head_scores_from_prediction
    from reviosa.video import CallbackVideo

    dataset = InterRVOSDataset(args.dataset, split=args.split)
    samples = list(dataset.samples())[: args.limit]
    if not samples:
        raise ValueError(f"{dataset.root} holds no expressions")
    out = Path(args.out)
    predicted, truth = [], []
    bar = tqdm(total=len(samples), desc="expressions", unit="exp")
    for _video_id, group in groupby(samples, key=lambda s: s.video_id):
        group = list(group)
        first = group[0]
        video = CallbackVideo(first.load_frames, first.num_frames, first.size)
        for start in range(0, len(group), max(1, args.batch)):
            chunk = group[start : start + args.batch]
            preds = model.segment(
                video, [s.expression for s in chunk], capture_attention=True, **_segment_options(args)
            )
            for sample, pred in zip(chunk, preds, strict=True):
                scores = head_scores_from_prediction(pred, resize=args.resize)
                gt = head_scores_from_prediction(
                    pred, sample.actor_masks(pred.keyframes), sample.target_masks(pred.keyframes), args.resize
                )
                folder = out / "clips" / sample.video_id / sample.exp_id
                write_clip(
                    folder,
                    pred,
                    video.read(pred.keyframes),
                    model.config,
                    scores,
                    gt,
                    figures=args.clip_figures,
                )
                predicted += [scores] if scores.roles else []
                truth += [gt] if gt.roles else []
                bar.update()
    bar.close()
    if not predicted:
        print(f"note: no expression got a role token, so there is nothing to average; see {out}/clips/")
        return 0
    supervised = _supervised(model.config)
    write_scores(out, average_head_scores(predicted), supervised)
    if truth:
        write_scores(out, average_head_scores(truth), supervised, suffix="_gt", figure6=False)
    _write_json(out / "summary.json", {
        "dataset": str(dataset.root), "expressions": len(samples), "with_role_tokens": len(predicted),
        "layers": list(predicted[0].layers), "heads": list(predicted[0].heads), "resize": args.resize,
        "supervised": [list(p) for p in supervised],
    })  # fmt: skip
    print(f"{len(samples)} expressions, {len(predicted)} with role tokens; averages over them in {out}/")
    print(f"wrote {out}/ ({', '.join(_listing(out))})")
    return 0


def _supervised(config) -> list[tuple[int, int]]:
    sup = config.attention_supervision
    return [] if sup is None else [(sup.layer, h) for h in sup.heads]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def write_clip(
    out: Path, pred, keyframe_images: np.ndarray, config, scores, gt=None, figures: bool = True
) -> None:
    """One expression's files (layout in the module docstring).

    keyframe_images: uint8 (K, H, W, 3) the keyframes; scores / gt: HeadScores with the predicted /
    ground-truth masks (gt None: none); figures: also the matplotlib charts (head scores, Figure 6).
    """
    from viz.attention import head_grid

    supervised = _supervised(config)
    att = pred.attention
    _write_json(out / "summary.json", {
        "expression": pred.expression, "answer": pred.answer, "status": pred.status, "reason": pred.reason,
        "keyframes": list(pred.keyframes), "layers": list(att.layers), "heads": list(att.heads),
        "roles": list(scores.roles), "supervised": [list(p) for p in supervised],
    })  # fmt: skip
    rows = att.rows[0].float().cpu().numpy()  # (R, NL, NH, K, g, g)
    tiles = len(att.layers) * len(att.heads)
    tile = 128 if tiles <= 16 else 96 if tiles <= 64 else 56
    for role in scores.roles:
        r = ("actor", "target").index(role)
        for k in range(len(pred.keyframes)):
            grid = head_grid(
                rows[r], keyframe_images[k], keyframe=k, layers=att.layers, heads=att.heads,
                supervised=supervised, tile_width=tile,
            )  # fmt: skip
            _save_png(grid, out / role / f"heatmaps_k{k}.png")
    write_scores(out, scores, supervised, figures=figures)
    if gt is not None:
        write_scores(out, gt, supervised, suffix="_gt", figures=figures, figure6=False)


def write_scores(
    out: Path, scores, supervised, suffix: str = "", figures: bool = True, figure6: bool = True
) -> None:
    """head_scores{suffix}.csv / .json, and per role its tables' heatmap and (figure6) Figure 6 charts.

    The vision mass does not depend on the masks, so Figure 6 is drawn once, from the predicted run.
    """
    from viz.attention import plot_head_vision_mass, plot_layer_vision_mass, save_figure_png
    from viz.head_scores import plot_head_scores

    out.mkdir(parents=True, exist_ok=True)
    scores.to_csv(out / f"head_scores{suffix}.csv")
    scores.to_json(out / f"head_scores{suffix}.json")
    if not figures:
        return
    layers, heads = list(scores.layers), list(scores.heads)
    for role, clips in zip(scores.roles, scores.clips, strict=True):
        tables = {share: scores.table(role, share) for share in ("actor", "target", "elsewhere", "vision")}
        where = f"mean of {clips} expressions" if clips > 1 else "mean over the keyframes"
        title = f"{ROLE_TOKENS[role]}: share of vision attention, {scores.masks} masks ({where})"
        (out / role).mkdir(exist_ok=True)
        save_figure_png(
            plot_head_scores(tables, layers, heads, title, supervised),
            out / role / f"head_scores{suffix}.png",
        )
        if not figure6:
            continue
        mass = tables["vision"]  # (NL, NH): the row's mass on all vision tokens
        sup_layer = supervised[0][0] if supervised and supervised[0][0] in layers else None
        layer = sup_layer if sup_layer is not None else layers[int(np.nanargmax(mass.mean(axis=1)))]
        sup_heads = [h for lay, h in supervised if lay == layer and h in heads]
        save_figure_png(
            plot_layer_vision_mass(mass.mean(axis=1), layers, sup_layer), out / role / "figure6a_layers.png"
        )
        save_figure_png(
            plot_head_vision_mass(mass[layers.index(layer)], heads, sup_heads, layer),
            out / role / "figure6b_heads.png",
        )


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


if __name__ == "__main__":
    sys.exit(main())
