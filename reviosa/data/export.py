"""Write one video's actor / target mask tracks as training data, in two layouts (no model needed).

* `write_annotation_input`: the input layout of the annotation pipeline (``python -m
  train.annotate --input DIR``, see ``train/annotate/inputs.py``)::

      DIR/VIDEO/frames/00000.jpg         the frames the masks cover
      DIR/VIDEO/masks/OBJ_ID/00000.png   one binary PNG per object and frame (``per_object``), or
      DIR/VIDEO/masks/00000.png          one PNG per frame, pixel value = object id (``indexed``)
      DIR/VIDEO/categories.json          optional class hints {"1": "person"}

  An object absent from a frame has no PNG there. The actor is object 1, the target object 2.
* `write_interrvos_sample`: one expression over the tracks as an InterRVOS-layout split
  (``JPEGImages/``, ``mask_dict.json``, ``meta_expressions.json`` with the expression, its caption
  type and the subject / object roles), read back by `reviosa.data.InterRVOSDataset`.

Frames are read one at a time from a `reviosa.video.FrameSource`, so a long clip is never all in
memory; masks are `MaskTrack` (bit-packed) or bool arrays (T, H, W).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from reviosa.data.interrvos import CAPTION_TYPES, ExpressionSpec, ObjectTrack, VideoRecord, write_dataset
from reviosa.video import FrameSource, MaskTrack

ACTOR_ID, TARGET_ID = 1, 2
LAYOUTS = ("per_object", "indexed")
# The annotation pipeline's rule for video names (train/annotate/inputs.py).
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def safe_video_id(name: str) -> str:
    """A video id both layouts accept, from a file name: other characters become '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(name).stem).lstrip("._-")
    return cleaned or "video"


def role_objects(actor, target=None) -> dict[int, MaskTrack]:
    """{object id: track} for the roles: the actor as 1, the target (when given) as 2."""
    objects = {ACTOR_ID: _track(actor)}
    if target is not None:
        objects[TARGET_ID] = _track(target)
    return objects


def write_annotation_input(
    root: str | Path,
    video_id: str,
    frames: FrameSource,
    objects: Mapping[int, MaskTrack | np.ndarray],
    categories: Mapping[int, str] | None = None,
    layout: str = "per_object",
    jpeg_quality: int = 95,
) -> Path:
    """Write ``root/video_id/`` in the annotation pipeline's input layout; returns that folder.

    objects: {object id (1..255): bool (T, H, W) track}. ``indexed`` keeps one id per pixel, so
    where objects overlap (an actor and its target can) the higher id wins; ``per_object`` keeps
    every object's full mask. Raises ValueError for bad ids, sizes or names.
    """
    from PIL import Image

    _check_id(video_id)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    tracks = {int(i): _track(m) for i, m in objects.items()}
    _check_tracks(tracks, frames)
    folder = Path(root) / video_id
    (folder / "frames").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    for t, frame in enumerate(frames.iter_frames()):
        name = f"{t:05d}"
        Image.fromarray(frame).save(folder / "frames" / f"{name}.jpg", quality=jpeg_quality)
        if layout == "indexed":
            labels = np.zeros(frames.size, dtype=np.uint8)
            for obj_id in sorted(tracks):  # ascending: the higher id wins where objects overlap
                labels[tracks[obj_id][t]] = obj_id
            if labels.any():
                Image.fromarray(labels).save(folder / "masks" / f"{name}.png")
            continue
        for obj_id, track in tracks.items():
            (folder / "masks" / str(obj_id)).mkdir(exist_ok=True)
            mask = track[t]
            if mask.any():
                Image.fromarray(mask.astype(np.uint8) * 255).save(
                    folder / "masks" / str(obj_id) / f"{name}.png"
                )
    if categories:
        unknown = sorted(set(categories) - set(tracks))
        if unknown:
            raise ValueError(f"categories name objects {unknown} that have no track")
        (folder / "categories.json").write_text(json.dumps({str(k): v for k, v in categories.items()}))
    return folder


def write_interrvos_sample(
    split_dir: str | Path,
    video_id: str,
    frames: FrameSource,
    expression: str,
    actor,
    target=None,
    caption_type: str | None = None,
    jpeg_quality: int = 95,
) -> Path:
    """Write one (video, expression) sample as an InterRVOS-layout split in ``split_dir``.

    actor / target: bool (T, H, W) tracks; the actor is the expression's subject (``anno_id`` and
    ``subject/object.anno_id.subject``), the target its object (``.object``). caption_type defaults
    to ``unidirectional`` with a target and ``single`` without; only ``unidirectional`` takes a
    target (for ``multi`` and ``bidirectional`` the actor track is the union of the objects).
    Returns ``split_dir``. The split is written afresh (its meta and mask files are replaced).
    """
    _check_id(video_id)
    text = expression.strip() if isinstance(expression, str) else ""
    if not text:
        raise ValueError("the expression is empty: write who does what to whom")
    caption_type = caption_type or ("unidirectional" if target is not None else "single")
    if caption_type not in CAPTION_TYPES:
        raise ValueError(f"caption type must be one of {', '.join(CAPTION_TYPES)}; got {caption_type!r}")
    if (caption_type == "unidirectional") != (target is not None):
        raise ValueError(
            "a unidirectional expression needs a target track, and only it takes one: "
            f"got caption type {caption_type!r} with{'' if target is not None else 'out'} a target"
        )
    objects = role_objects(actor, target)
    _check_tracks(objects, frames)
    spec = ExpressionSpec(
        text, caption_type, subject=[ACTOR_ID], object=[TARGET_ID] if target is not None else []
    )
    record = VideoRecord(
        video_id=video_id,
        frames=FrameSequence(frames),
        objects=[ObjectTrack(i, track) for i, track in objects.items()],
        expressions=[spec],
    )
    write_dataset(split_dir, [record], jpeg_quality=jpeg_quality)
    return Path(split_dir)


def _track(masks) -> MaskTrack:
    if isinstance(masks, MaskTrack):
        return masks
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"a mask track must be (T, H, W); got shape {masks.shape}")
    return MaskTrack.from_array(masks.astype(bool))


def _check_id(video_id: str) -> None:
    if not _SAFE_ID.match(video_id or ""):
        raise ValueError(
            f"video id {video_id!r} may use letters, digits, '_', '-' and '.' only (see safe_video_id)"
        )


def _check_tracks(tracks: Mapping[int, MaskTrack], frames: FrameSource) -> None:
    expected = (frames.num_frames, *frames.size)
    for obj_id, track in tracks.items():
        if not 1 <= obj_id <= 255:
            raise ValueError(f"object ids must be 1..255 (an 8-bit PNG value); got {obj_id}")
        if track.shape != expected:
            raise ValueError(f"object {obj_id}'s track is {track.shape}; the frames are {expected} (T, H, W)")


class FrameSequence(Sequence):
    """A FrameSource seen as a sequence of uint8 (H, W, 3) frames, read one at a time (what
    ``write_dataset`` consumes), so writing a long video keeps one frame in memory."""

    def __init__(self, source: FrameSource):
        self.source = source

    def __len__(self) -> int:
        return self.source.num_frames

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self.source.read([index % len(self)])[0]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.source.iter_frames())
