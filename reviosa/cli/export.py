"""``python -m reviosa export``: segment a clip, correct the tracks with clicks, write training data.

python -m reviosa export VIDEO "expression" --out DIR [--clicks clicks.json] [--model M]
    -> DIR/annotate_input/VIDEO_ID/{frames,masks}/...   (python -m train.annotate --input DIR/annotate_input)
       DIR/interrvos/train/{meta_expressions.json, mask_dict.json, JPEGImages/}   (reviosa.data)

``clicks.json`` is a list of clicks in pixels of the frames the model saw (after the frame and
size caps, as the studio's Fix & export tab): ``[{"frame": 3, "role": "actor", "x": 40, "y": 22,
"positive": false}, ...]``. The caps are the studio's (``reviosa.caps``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reviosa.cli import predict

CAPTION_TYPES = ("single", "multi", "bidirectional", "unidirectional")


def add_arguments(p: argparse.ArgumentParser) -> None:
    predict.add_arguments(p)
    p.add_argument(
        "--clicks", help="a JSON list of clicks {frame, role, x, y, positive} to correct the tracks"
    )
    p.add_argument("--caption-type", choices=CAPTION_TYPES,
                   help="of the InterRVOS sample (default: unidirectional with a target, else single)")  # fmt: skip
    p.add_argument("--layout", choices=["per_object", "indexed"], default="per_object",
                   help="annotation-input masks: one PNG per object and frame, or one indexed PNG per frame")  # fmt: skip
    p.add_argument("--video-id", help="the video's id in both outputs (default: the file name, made safe)")


def read_clicks(path: str | None) -> list:
    """Clicks from a JSON file (see the module docstring); [] without one."""
    from reviosa.correction import Click

    if not path:
        return []
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of clicks")
    clicks = []
    for n, item in enumerate(data):
        try:
            clicks.append(Click(int(item["frame"]), str(item["role"]), float(item["x"]), float(item["y"]),
                                bool(item.get("positive", True))))  # fmt: skip
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: click {n} needs frame, role, x, y (and positive): {err}") from err
    return clicks


def run(args: argparse.Namespace) -> int:
    from reviosa.correction import correct_tracks
    from reviosa.data.export import (
        role_objects,
        safe_video_id,
        write_annotation_input,
        write_interrvos_sample,
    )
    from reviosa.processor import clean_expression

    if args.dataset or not args.video or args.expression is None:
        raise ValueError(
            'give a video and its expression, e.g. export clip.mp4 "person walking a dog" --out DIR'
        )
    if not args.out:
        raise ValueError("give --out DIR for the training data")
    expression = clean_expression(args.expression, args.max_expression_chars)
    clicks = read_clicks(args.clicks)
    video = predict._open_video(args)
    model = predict._load_model(args)
    bar, report = predict._progress_bar(Path(args.video).name)
    with bar:
        (pred,) = model.segment(video, [expression], progress=report)
    if pred.status != "ok":
        print(f"note: {pred.reason}; the actor starts empty")
    tracks = {"actor": pred.actor, "target": pred.target}
    if clicks:
        tracks = correct_tracks(model, video, tracks, clicks)
    target = tracks["target"]
    has_target = target is not None and int(target.areas().sum()) > 0
    kind = args.caption_type or ("unidirectional" if has_target else "single")
    video_id = args.video_id or safe_video_id(Path(args.video).name)
    out = Path(args.out)
    write_annotation_input(out / "annotate_input", video_id, video,
                           role_objects(tracks["actor"], target if has_target else None), layout=args.layout)  # fmt: skip
    write_interrvos_sample(out / "interrvos" / "train", video_id, video, expression, tracks["actor"],
                           target if kind == "unidirectional" else None, caption_type=kind)  # fmt: skip
    print(f"answer: {pred.answer}")
    print(f"{len(clicks)} click(s) applied; caption type {kind}; actor = object 1"
          + (", target = object 2" if has_target else ""))  # fmt: skip
    print(f"wrote {out / 'annotate_input' / video_id} and {out / 'interrvos' / 'train'}")
    return 0
