"""The results JSON of ``predict`` (a contract: ``evaluate`` and users' scripts read it).

    {"videos": {VIDEO_ID: {EXP_ID: {"actor": [RLE or null per frame],
                                    "target": [RLE or null per frame] or null,
                                    "answer": "..."}}}}

RLE is COCO's compressed form; null marks an empty frame. Writes are atomic (temp file + rename) so
an interrupted batch run leaves a readable file to resume from.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path

import numpy as np
from PIL import Image

from reviosa import rle


def entry(prediction) -> dict:
    """One expression's entry from a `reviosa.modeling.Prediction`."""
    return track_entry(prediction.actor, prediction.target, prediction.answer)


def track_entry(actor, target, answer: str) -> dict:
    """One expression's entry from its mask tracks: each an iterable of bool (H, W), target or None."""
    return {
        "actor": rle.encode_track(actor),
        "target": rle.encode_track(target) if target is not None else None,
        "answer": answer,
    }


def predict_videos(model, samples, batch: int = 8, **segment_options) -> Iterator[tuple[str, dict]]:
    """Run ``model.segment`` over dataset samples, one video at a time.

    samples: `reviosa.data.Sample`s, each video's samples consecutive (as datasets list them).
    Expressions of one video run ``batch`` at a time on frames loaded lazily from the dataset.
    Yields ``(video_id, {exp_id: entry})`` after each video, so callers can save as they go.
    """
    from reviosa.video import CallbackVideo

    for video_id, group in groupby(samples, key=lambda s: s.video_id):
        group = list(group)
        first = group[0]
        video = CallbackVideo(first.load_frames, first.num_frames, first.size)
        entries = {}
        for start in range(0, len(group), max(1, batch)):
            chunk = group[start : start + batch]
            preds = model.segment(video, [s.expression for s in chunk], **segment_options)
            for sample, pred in zip(chunk, preds, strict=True):
                entries[sample.exp_id] = entry(pred)
        yield video_id, entries


def load(path: str | Path) -> dict:
    """Read a results file; a missing file is an empty result set."""
    path = Path(path)
    if not path.exists():
        return {"videos": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); move it away to start over") from err
    if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
        raise ValueError(f"{path} is not a ReVIOSa results file (no 'videos' object)")
    return data


def save(results: dict, path: str | Path) -> Path:
    """Write atomically: a crash mid-write never leaves a truncated file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(results, f)
    os.replace(tmp, path)
    return path


def write_png_masks(track, folder: str | Path, frame_names: list[str] | None = None) -> int:
    """Write a (T, H, W) bool track as one 8-bit PNG per frame (0 / 255). Returns frames written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for t, mask in enumerate(track):
        name = frame_names[t] if frame_names else f"{t:05d}"
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(folder / f"{name}.png")
        count += 1
    return count
