"""Videos and their object mask tracks, the input of the annotation pipeline.

Two sources:

* a dataset in the InterRVOS / MeViS / Ref-YouTube-VOS layout (``reviosa.data``): its frames and the
  mask track of every object its expressions refer to; its expressions are ignored;
* a folder of your own videos with masks (the layout is documented in ``docs/annotate.md``)::

      DIR/VIDEO.mp4                        a video file (mp4, webm, mov, avi, mkv), or
      DIR/VIDEO/frames/NAME.jpg            its frames (jpg or png, in name order)
      DIR/VIDEO/masks/OBJ_ID/FRAME.png     one binary PNG per object and frame (non-zero = object), or
      DIR/VIDEO/masks/FRAME.png            one indexed PNG per frame, pixel value = object id, 0 = none
      DIR/VIDEO/categories.json            optional {"OBJ_ID": "person", ...}

  ``FRAME`` is the frame's file stem for a frames folder and the frame index (``00000``, ``17``...)
  for a video file. A missing mask PNG means the object is not visible in that frame.

Masks are kept bit-packed (``reviosa.video.MaskTrack``) and frames are decoded on demand, so long
videos do not sit in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reviosa import rle
from reviosa.data.export import FrameSequence  # one frame in memory at a time; shared with the studio export
from reviosa.video import ArrayVideo, CallbackVideo, FrameSource, MaskTrack, VideoFile

logger = logging.getLogger(__name__)

__all__ = [
    "FrameSequence",
    "InputSet",
    "ObjectInput",
    "VideoInput",
    "array_input",
    "from_dataset",
    "from_folder",
    "open_input",
]

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v", ".gif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass
class ObjectInput:
    """One object's mask track, bool (T, H, W) bit-packed; ``category`` an optional class hint."""

    obj_id: int
    masks: MaskTrack
    category: str | None = None

    def visible_frames(self) -> np.ndarray:
        """Indices of the frames where the object has pixels, int (T',)."""
        return np.flatnonzero(self.masks.areas() > 0)


@dataclass
class VideoInput:
    """A video to annotate: frames on demand, objects sorted by id."""

    video_id: str
    frames: FrameSource
    objects: list[ObjectInput]
    frame_names: list[str] | None = None
    source: str = ""  # where it came from, for messages
    extra: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return self.frames.num_frames

    def fingerprint(self) -> str:
        """A hash of the frame count, size and every mask: the cache is reused only for the same masks."""
        digest = hashlib.sha1()
        digest.update(json.dumps([self.num_frames, list(self.frames.size)]).encode())
        for obj in self.objects:
            digest.update(f"obj {obj.obj_id} {obj.category}".encode())
            for mask in obj.masks:
                digest.update(np.packbits(mask).tobytes())
        return digest.hexdigest()[:16]


class InputSet:
    """The videos of an input: ids known up front (for the progress bar), each loaded when reached."""

    def __init__(self, video_ids: list[str], load: Callable[[str], VideoInput]):
        self.video_ids = video_ids
        self._load = load

    def __len__(self) -> int:
        return len(self.video_ids)

    def __iter__(self) -> Iterator[VideoInput]:
        for video_id in self.video_ids:
            yield self._load(video_id)


def _select(available: list[str], videos: Sequence[str] | None) -> list[str]:
    if videos is None:
        return available
    missing = sorted(set(videos) - set(available))
    if missing:
        raise ValueError(f"--videos names unknown videos: {', '.join(missing[:10])}")
    return [v for v in available if v in set(videos)]


# ------------------------------------------------------------------------------------ dataset input


def _int_ids(ids: list[str]) -> dict[str, int]:
    """Dataset annotation ids -> integer object ids (the ids themselves when they are integers)."""
    if all(i.isdigit() for i in ids):
        return {i: int(i) for i in ids}
    return {i: k for k, i in enumerate(sorted(ids))}


def from_dataset(root: str | Path, split: str | None = None, videos: Sequence[str] | None = None) -> InputSet:
    """Videos of an InterRVOS-layout dataset, with the mask track of every object its expressions name."""
    from reviosa.data import InterRVOSDataset

    dataset = InterRVOSDataset(root, split)
    by_video: dict[str, list] = {}
    for sample in dataset.samples():
        by_video.setdefault(sample.video_id, []).append(sample)
    empty = [v for v in dataset.video_ids if v not in by_video]
    if empty:
        logger.warning("%d video(s) without expressions, so without known objects, skipped", len(empty))

    def load(video_id: str) -> VideoInput:
        samples = by_video[video_id]
        sample = samples[0]
        ids = sorted({i for s in samples for i in (*s.rvos_ids, *s.actor_ids, *s.target_ids)})
        tracks = dataset.gt_tracks(sample, tuple(ids), "rvos")  # one RLE track per id
        size = dataset.frame_size(video_id)
        objects = []
        for obj_id, track_rle in zip(_int_ids(ids).values(), tracks, strict=True):
            track = MaskTrack(sample.num_frames, size)
            for t, encoded in enumerate(track_rle):
                if encoded is not None:
                    track[t] = rle.decode(encoded, size)
            objects.append(ObjectInput(obj_id, track))
        return VideoInput(
            video_id=video_id,
            frames=CallbackVideo(sample.load_frames, sample.num_frames, size),
            objects=sorted(objects, key=lambda o: o.obj_id),
            frame_names=list(sample.frame_names),
            source=str(dataset.root),
        )

    return InputSet(_select([v for v in dataset.video_ids if v in by_video], videos), load)


# ------------------------------------------------------------------------------------- folder input


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("1", "L", "P", "I", "I;16"):
            raise ValueError(
                f"{path}: mask PNGs must be single-channel (binary, grayscale or palette), got mode "
                f"{image.mode}; save masks as 8-bit grayscale or palette PNGs"
            )
        return np.asarray(image)


def _frame_index(stem: str, names: dict[str, int] | None, num_frames: int, path: Path) -> int:
    """The frame a mask file belongs to: by stem for a frames folder, by number for a video file."""
    if names is not None:
        if stem not in names:
            raise ValueError(f"{path}: no frame named {stem!r} in the frames folder")
        return names[stem]
    if not stem.isdigit() or int(stem) >= num_frames:
        raise ValueError(f"{path}: mask names must be frame indices 0..{num_frames - 1} (e.g. 00000.png)")
    return int(stem)


def _load_masks(mask_dir: Path, num_frames: int, size, names: dict[str, int] | None) -> dict[int, MaskTrack]:
    """Read ``masks/OBJ_ID/FRAME.png`` (binary per object) or ``masks/FRAME.png`` (indexed)."""
    tracks: dict[int, MaskTrack] = {}

    def put(obj_id: int, t: int, mask: np.ndarray, path: Path) -> None:
        if mask.shape != tuple(size):
            raise ValueError(f"{path}: mask is {mask.shape}, frames are {tuple(size)} (H, W)")
        if obj_id not in tracks:
            tracks[obj_id] = MaskTrack(num_frames, tuple(size))
        tracks[obj_id][t] = mask

    subdirs = sorted(p for p in mask_dir.iterdir() if p.is_dir())
    if subdirs:
        for obj_dir in subdirs:
            if not obj_dir.name.isdigit():
                raise ValueError(f"{obj_dir}: object folders must be named by integer object id")
            obj_id = int(obj_dir.name)
            tracks.setdefault(obj_id, MaskTrack(num_frames, tuple(size)))
            for path in sorted(obj_dir.glob("*.png")):
                put(obj_id, _frame_index(path.stem, names, num_frames, path), _read_png(path) > 0, path)
        return tracks
    for path in sorted(mask_dir.glob("*.png")):
        labels = _read_png(path)
        t = _frame_index(path.stem, names, num_frames, path)
        for value in np.unique(labels):
            if value != 0:
                put(int(value), t, labels == value, path)
    return tracks


def _frames_folder(folder: Path) -> tuple[FrameSource, list[str]]:
    from PIL import Image

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise ValueError(f"{folder} holds no jpg / png frames")

    def load(indices: list[int]) -> np.ndarray:
        frames = []
        for i in indices:
            with Image.open(paths[i]) as image:
                frames.append(np.asarray(image.convert("RGB")))
        return np.stack(frames)

    first = load([0])[0]
    return CallbackVideo(load, len(paths), first.shape[:2]), [p.stem for p in paths]


def _categories(path: Path) -> dict[int, str]:
    if not path.is_file():
        return {}
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f'{path}: expected {{"OBJ_ID": "class name", ...}}')
    return {int(k): v for k, v in data.items()}


def _open_video(folder: Path) -> tuple[FrameSource, list[str] | None]:
    if (folder / "frames").is_dir():
        return _frames_folder(folder / "frames")
    for ext in VIDEO_EXTENSIONS:
        for candidate in (folder.parent / f"{folder.name}{ext}", folder / f"video{ext}"):
            if candidate.is_file():
                return VideoFile(candidate), None
    raise FileNotFoundError(
        f"{folder}: no frames/ folder and no {folder.name}.mp4 (or .webm, .mov...) beside it"
    )


def from_folder(root: str | Path, videos: Sequence[str] | None = None) -> InputSet:
    """Videos of a user folder (layout in the module docstring); each ``VIDEO/`` needs a ``masks/``."""
    root = Path(root)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "masks").is_dir())
    unmasked = sorted(
        p.name for p in root.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.stem not in folders
    )
    if unmasked:
        logger.warning(
            "skipping %d video(s) without a masks/ folder: %s", len(unmasked), ", ".join(unmasked[:5])
        )
    if not folders:
        raise FileNotFoundError(f"{root} holds no VIDEO/masks/ folder (see docs/annotate.md for the layout)")
    bad = [name for name in folders if not _SAFE_ID.match(name)]
    if bad:
        raise ValueError(f"video names may use letters, digits, '_', '-' and '.' only: {bad[:5]}")

    def load(name: str) -> VideoInput:
        folder = root / name
        frames, names = _open_video(folder)
        index = {stem: t for t, stem in enumerate(names)} if names is not None else None
        tracks = _load_masks(folder / "masks", frames.num_frames, frames.size, index)
        categories = _categories(folder / "categories.json")
        objects = [ObjectInput(i, tracks[i], categories.get(i)) for i in sorted(tracks)]
        return VideoInput(name, frames, objects, frame_names=names, source=str(folder))

    return InputSet(_select(folders, videos), load)


def open_input(path: str | Path, split: str | None = None, videos: Sequence[str] | None = None) -> InputSet:
    """A dataset (when ``path`` holds ``meta_expressions.json`` or a split with one) or a user folder."""
    from reviosa.data import resolve_split_dir

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"input folder {path} does not exist")
    try:
        resolve_split_dir(path, split)
    except (FileNotFoundError, ValueError) as err:
        if split is not None or "several splits" in str(err):
            raise
        return from_folder(path, videos)
    return from_dataset(path, split, videos)


def array_input(video_id: str, frames: np.ndarray, masks: dict[int, np.ndarray]) -> VideoInput:
    """A VideoInput from arrays: frames uint8 (T, H, W, 3), masks ``{obj_id: bool (T, H, W)}``."""
    objects = [ObjectInput(i, MaskTrack.from_array(np.asarray(masks[i], bool))) for i in sorted(masks)]
    return VideoInput(video_id, ArrayVideo(frames), objects)
