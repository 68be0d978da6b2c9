"""Command line: annotate a folder of videos with masks into an InterRVOS-layout split.

python -m train.annotate --input DIR [--input-split S] --out DATASET_DIR --split NAME
    (--base-url URL --model NAME [--api-key KEY] [--text-model NAME] | --local-model PATH [--device D])
    [--frames 4] [--retries 2] [--max-side 768] [--work-dir DIR] [--videos A,B] [--retry-failed]

The endpoint may also come from the environment: REVIOSA_ANNOTATE_BASE_URL (or OPENAI_BASE_URL),
REVIOSA_ANNOTATE_MODEL, REVIOSA_ANNOTATE_KEY (or OPENAI_API_KEY). See docs/annotate.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("train.annotate")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.annotate",
        description="Annotate videos with object masks into InterRVOS training data (four-stage pipeline).",
    )
    io = p.add_argument_group("data")
    io.add_argument(
        "--input", required=True, help="a folder of videos with masks, or an InterRVOS-layout dataset"
    )
    io.add_argument("--input-split", help="split folder inside --input, when it is a dataset")
    io.add_argument("--out", required=True, help="dataset root to write")
    io.add_argument("--split", required=True, help="split folder written under --out (e.g. train)")
    io.add_argument("--videos", help="comma-separated video ids to annotate (default: all)")
    io.add_argument("--work-dir", help="answer cache (default: OUT/.annotate/SPLIT)")

    model = p.add_argument_group("model")
    model.add_argument("--base-url", help="OpenAI-compatible API root, e.g. http://localhost:8000/v1")
    model.add_argument(
        "--model", help="model name for stages 1 and 3 (vision), and 2 and 4 unless --text-model"
    )
    model.add_argument("--text-model", help="model name for the text-only stages 2 and 4 (same endpoint)")
    model.add_argument("--api-key", help="API key (default: $REVIOSA_ANNOTATE_KEY or $OPENAI_API_KEY)")
    model.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    model.add_argument("--json-mode", action="store_true", help="send response_format json_object")
    model.add_argument(
        "--local-model", help="a local transformers vision-language model instead of an endpoint"
    )
    model.add_argument("--device", default="cpu", help="device of --local-model")

    run = p.add_argument_group("pipeline")
    run.add_argument("--frames", type=int, default=4, help="frames sampled per vision prompt")
    run.add_argument("--retries", type=int, default=2, help="extra attempts after a rejected answer")
    run.add_argument("--max-side", type=int, default=768, help="longest side of the frames sent")
    run.add_argument("--retry-failed", action="store_true", help="ask again for units that failed before")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def build_clients(args) -> tuple[object, object]:
    """(vision client, text client) from the flags and the environment."""
    from train.annotate.client import OpenAIChatClient, TransformersChatClient

    if args.local_model:
        if args.base_url:
            raise ValueError("choose one of --base-url and --local-model")
        client = TransformersChatClient(args.local_model, device=args.device)
        return client, client
    env = os.environ
    base_url = args.base_url or env.get("REVIOSA_ANNOTATE_BASE_URL") or env.get("OPENAI_BASE_URL")
    model = args.model or env.get("REVIOSA_ANNOTATE_MODEL")
    if not base_url or not model:
        raise ValueError(
            "no model: pass --base-url URL --model NAME (or set REVIOSA_ANNOTATE_BASE_URL and "
            "REVIOSA_ANNOTATE_MODEL), or --local-model PATH"
        )
    key = args.api_key or env.get("REVIOSA_ANNOTATE_KEY") or env.get("OPENAI_API_KEY")
    options = {"api_key": key, "timeout": args.timeout, "json_mode": args.json_mode}
    vision = OpenAIChatClient(base_url, model, **options)
    text = OpenAIChatClient(base_url, args.text_model, **options) if args.text_model else vision
    return vision, text


def run(args) -> dict:
    from reviosa.data import resolve_split_dir
    from train.annotate.inputs import open_input
    from train.annotate.pipeline import AnnotateConfig, Annotator

    config = AnnotateConfig(
        frames=args.frames,
        retries=args.retries,
        max_side=args.max_side,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
    )
    vision, text = build_clients(args)
    videos = [v.strip() for v in args.videos.split(",") if v.strip()] if args.videos else None
    inputs = open_input(args.input, args.input_split, videos)
    split_dir = Path(args.out) / args.split
    try:
        source = resolve_split_dir(args.input, args.input_split).resolve()
    except (FileNotFoundError, ValueError):
        source = None
    if source is not None and source == split_dir.resolve():
        raise ValueError(f"--out/--split {split_dir} is the input dataset itself; write elsewhere")
    work_dir = Path(args.work_dir) if args.work_dir else Path(args.out) / ".annotate" / args.split
    logger.info("annotating %d videos from %s with %r; cache %s", len(inputs), args.input, vision, work_dir)
    return Annotator(vision, work_dir, config, text_client=text).run(inputs, split_dir)


def _report(summary: dict) -> str:
    exp = summary["expressions"]
    kinds = ", ".join(f"{k} {v}" for k, v in exp.items() if k != "total") or "none"
    lines = [
        f"videos: {summary['videos']['annotated']} annotated, {summary['videos']['written']} written to {summary['output']}",
        f"expressions: {exp['total']} ({kinds})",
        f"units: {summary['units']['asked']} asked, {summary['units']['from_cache']} from cache, "
        f"{summary['units']['failed']} failed; {summary['requests']} requests",
    ]
    for failure in summary["failures"][:10]:
        lines.append(
            f"  failed: {failure['video']} stage {failure['stage']} {failure['unit']}: {failure['error'][:160]}"
        )
    if len(summary["failures"]) > 10:
        lines.append(f"  ... {len(summary['failures']) - 10} more")
    lines.append(f"summary: {Path(summary['work_dir']) / 'summary.json'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        summary = run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(_report(summary))
    logger.debug("summary: %s", json.dumps(summary))
    return 0 if summary["expressions"]["total"] else 1


if __name__ == "__main__":
    sys.exit(main())
