"""Read and write the InterRVOS / MeViS layout, and read Ref-YouTube-VOS style annotations.

A split folder holds::

    meta_expressions.json   {"videos": {VIDEO: {"frames": [...], "expressions": {EXP: {...}}}}}
    mask_dict.json          {ANNO_ID: [COCO RLE or null, one per frame]}
    JPEGImages/VIDEO/FRAME.jpg

(the reference's evaluation names, ``new_meta_expressions.json`` / ``new_mask_dict.json``, are
accepted too). Ref-YouTube-VOS keeps masks as palette PNGs ``Annotations/VIDEO/FRAME.png`` whose pixel
value is the object id; each expression names one ``obj_id``.

Which ids give which ground truth (FACTS.md, "Dataset format"):

* actor  = union of ``subject/object.anno_id.subject`` for interaction expressions, else of ``anno_id``;
* target = union of ``subject/object.anno_id.object`` for unidirectional expressions, else none;
* RVOS   = union of the expression's ``anno_id``.

Frames and masks load lazily, only the frames asked for. Malformed data raises :class:`DatasetError`
naming the video, expression and field.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from reviosa import rle

logger = logging.getLogger(__name__)

CAPTION_TYPES = ("single", "multi", "bidirectional", "unidirectional")
INTERACTION_TYPES = ("bidirectional", "unidirectional")
META_NAMES = ("meta_expressions.json", "new_meta_expressions.json")
MASK_NAMES = ("mask_dict.json", "new_mask_dict.json")
SUBJECT_OBJECT = "subject/object"


class DatasetError(ValueError):
    """Malformed dataset content; the message names the video, expression and field."""


def _where(video_id: str, exp_id: str | None = None, field_name: str | None = None) -> str:
    parts = [f"video {video_id!r}"]
    if exp_id is not None:
        parts.append(f"expression {exp_id!r}")
    if field_name is not None:
        parts.append(f"field {field_name!r}")
    return ", ".join(parts)


def resolve_split_dir(root: str | Path, split: str | None = None) -> Path:
    """Find the split folder: ``root/split`` when ``split`` is given, else ``root`` itself when it holds a
    meta file, else the only split under ``root``. Raises FileNotFoundError / ValueError otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if split is not None:
        if _find(root / split, META_NAMES) is not None:
            return root / split
        if _find(root, META_NAMES) is not None and root.name == split:
            return root
        raise FileNotFoundError(f"no split {split!r} under {root} (expected {root / split / META_NAMES[0]})")
    if _find(root, META_NAMES) is not None:
        return root
    splits = sorted(p.name for p in root.iterdir() if p.is_dir() and _find(p, META_NAMES) is not None)
    if len(splits) == 1:
        return root / splits[0]
    if not splits:
        raise FileNotFoundError(f"{root} holds no {META_NAMES[0]} and no split folder with one")
    raise ValueError(f"{root} holds several splits ({', '.join(splits)}): choose one with --split")


def _find(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _ids(value, where: str) -> tuple[str, ...]:
    """Normalise an id or list of ids (ints or strings) to a tuple of strings."""
    if value is None:
        return ()
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        raise DatasetError(f"{where}: expected a list of ids, got {value!r}")
    return tuple(str(v) for v in value)


# --------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Sample:
    """One (video, expression) pair. Frames and masks load lazily from disk.

    Masks are bool (T', H, W) with T' = len(indices) (all T frames when ``indices`` is None); frames
    are uint8 (T', H, W, 3).
    """

    video_id: str
    exp_id: str
    expression: str
    caption_type: str  # one of CAPTION_TYPES
    frame_names: list[str]
    frame_dir: Path
    actor_ids: tuple[str, ...]  # annotation ids whose union is the actor ground truth
    target_ids: tuple[str, ...]  # ... the target ground truth (empty: no target)
    rvos_ids: tuple[str, ...]  # ... the RVOS ground truth (the expression's anno_id)
    dataset: InterRVOSDataset = field(repr=False, compare=False)

    @property
    def frame_paths(self) -> list[Path]:
        return [self.frame_dir / f"{name}.jpg" for name in self.frame_names]

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the frames."""
        return self.dataset.frame_size(self.video_id)

    @property
    def has_target(self) -> bool:
        return bool(self.target_ids)

    @property
    def is_interaction(self) -> bool:
        return self.caption_type in INTERACTION_TYPES

    def _indices(self, indices: Sequence[int] | None) -> list[int]:
        if indices is None:
            return list(range(self.num_frames))
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < self.num_frames]
        if bad:
            raise IndexError(
                f"{_where(self.video_id, self.exp_id)}: frame indices {bad} outside 0..{self.num_frames - 1}"
            )
        return indices

    def load_frames(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Decode the asked frames: uint8 (T', H, W, 3)."""
        from PIL import Image

        frames = []
        for i in self._indices(indices):
            path = self.frame_dir / f"{self.frame_names[i]}.jpg"
            if not path.is_file():
                raise FileNotFoundError(f"{_where(self.video_id, field_name='frames')}: missing frame {path}")
            with Image.open(path) as image:
                frames.append(np.asarray(image.convert("RGB")))
        if not frames:
            return np.zeros((0, *self.size, 3), dtype=np.uint8)
        return np.stack(frames)  # (T', H, W, 3)

    def _union(self, ids: tuple[str, ...], field_name: str, indices) -> np.ndarray:
        return self.dataset.masks.union(self, ids, field_name, self._indices(indices))

    def actor_masks(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Actor ground truth, bool (T', H, W)."""
        return self._union(self.actor_ids, self.dataset.actor_field(self), indices)

    def target_masks(self, indices: Sequence[int] | None = None) -> np.ndarray | None:
        """Target ground truth, bool (T', H, W), or None for expressions without a target."""
        if not self.has_target:
            return None
        return self._union(self.target_ids, f"{SUBJECT_OBJECT}.anno_id.object", indices)

    def rvos_masks(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Standard RVOS ground truth (union of the expression's ``anno_id``), bool (T', H, W)."""
        return self._union(self.rvos_ids, self.dataset.rvos_field, indices)


class _RleMasks:
    """Masks from ``mask_dict.json`` (COCO RLE per frame); the JSON loads on first use."""

    def __init__(self, path: Path):
        self.path = path

    @cached_property
    def table(self) -> dict:
        logger.debug("loading %s", self.path)
        with open(self.path) as f:
            table = json.load(f)
        if not isinstance(table, dict):
            raise DatasetError(f"{self.path}: expected a dict {{anno_id: [RLE per frame]}}")
        return table

    def track(self, sample: Sample, anno_id: str, field_name: str) -> list:
        where = _where(sample.video_id, sample.exp_id, field_name)
        if anno_id not in self.table:
            raise DatasetError(f"{where}: unknown anno_id {anno_id} (not in {self.path.name})")
        track = self.table[anno_id]
        if not isinstance(track, list) or len(track) != sample.num_frames:
            got = len(track) if isinstance(track, list) else type(track).__name__
            raise DatasetError(f"{where}: anno_id {anno_id} has {got} masks for {sample.num_frames} frames")
        return track

    def union(self, sample: Sample, ids: tuple[str, ...], field_name: str, indices: list[int]) -> np.ndarray:
        size = sample.size
        out = np.zeros((len(indices), *size), dtype=bool)  # (T', H, W)
        for anno_id in ids:
            track = self.track(sample, anno_id, field_name)
            for k, i in enumerate(indices):
                if track[i] is None:
                    continue
                try:
                    out[k] |= rle.decode(track[i], size)
                except (ValueError, KeyError, TypeError) as err:
                    where = _where(sample.video_id, sample.exp_id, field_name)
                    raise DatasetError(f"{where}: anno_id {anno_id}, frame {i}: bad RLE ({err})") from err
        return out


class _PngMasks:
    """Ref-YouTube-VOS masks: palette PNGs ``Annotations/VIDEO/FRAME.png``, pixel value = object id."""

    def __init__(self, folder: Path):
        self.folder = folder

    def union(self, sample: Sample, ids: tuple[str, ...], field_name: str, indices: list[int]) -> np.ndarray:
        from PIL import Image

        wanted = np.array([int(i) for i in ids], dtype=np.int64)
        out = np.zeros((len(indices), *sample.size), dtype=bool)  # (T', H, W)
        for k, i in enumerate(indices):
            path = self.folder / sample.video_id / f"{sample.frame_names[i]}.png"
            if not path.is_file():
                # Ref-YouTube-VOS annotates a subset of frames; an absent PNG is an empty frame.
                continue
            with Image.open(path) as image:
                labels = np.asarray(image)
            if labels.shape[:2] != sample.size:
                where = _where(sample.video_id, sample.exp_id, field_name)
                raise DatasetError(f"{where}: {path.name} is {labels.shape[:2]}, frames are {sample.size}")
            out[k] = np.isin(labels, wanted)
        return out


class InterRVOSDataset:
    """An InterRVOS / MeViS / Ref-YouTube-VOS split, read lazily.

    Args:
        root: a split folder, or a dataset root holding split folders.
        split: the split under ``root`` (optional when ``root`` is a split folder or holds one split).
    """

    def __init__(self, root: str | Path, split: str | None = None):
        self.root = resolve_split_dir(root, split)
        meta_path = _find(self.root, META_NAMES)
        with open(meta_path) as f:
            meta = json.load(f)
        if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
            raise DatasetError(f"{meta_path}: expected {{'videos': {{VIDEO_ID: ...}}}}")
        self.meta_path = meta_path
        self.videos: dict[str, dict] = meta["videos"]
        mask_path = _find(self.root, MASK_NAMES)
        if mask_path is not None:
            self.masks = _RleMasks(mask_path)
        elif (self.root / "Annotations").is_dir():
            self.masks = _PngMasks(self.root / "Annotations")
        else:
            raise FileNotFoundError(f"{self.root} has neither {MASK_NAMES[0]} nor an Annotations/ folder")
        self._sizes: dict[str, tuple[int, int]] = {}
        self._samples = [self._parse(v, e) for v in self.video_ids for e in self._expressions(v)]
        self._index = {(s.video_id, s.exp_id): s for s in self._samples}
        logger.info("%s: %d videos, %d expressions", self.root, len(self.videos), len(self._samples))

    # ------------------------------------------------------------------ access

    @property
    def video_ids(self) -> list[str]:
        return list(self.videos)

    def __len__(self) -> int:
        return len(self._samples)

    def samples(self) -> Iterator[Sample]:
        return iter(self._samples)

    def sample(self, video_id: str, exp_id: str) -> Sample:
        try:
            return self._index[(str(video_id), str(exp_id))]
        except KeyError:
            raise KeyError(f"no expression {exp_id!r} in video {video_id!r} of {self.root}") from None

    def frame_names(self, video_id: str) -> list[str]:
        return [str(name) for name in self.videos[video_id]["frames"]]

    def frame_size(self, video_id: str) -> tuple[int, int]:
        """(H, W) of a video's frames, read from the first JPEG's header."""
        if video_id not in self._sizes:
            from PIL import Image

            names = self.frame_names(video_id)
            if not names:
                raise DatasetError(f"{_where(video_id, field_name='frames')}: the video has no frames")
            path = self.root / "JPEGImages" / video_id / f"{names[0]}.jpg"
            if not path.is_file():
                raise FileNotFoundError(f"{_where(video_id, field_name='frames')}: missing frame {path}")
            with Image.open(path) as image:
                width, height = image.size
            self._sizes[video_id] = (height, width)
        return self._sizes[video_id]

    @property
    def rvos_field(self) -> str:
        return "anno_id" if isinstance(self.masks, _RleMasks) else "obj_id"

    def actor_field(self, sample: Sample) -> str:
        if sample.is_interaction and sample.actor_ids != sample.rvos_ids:
            return f"{SUBJECT_OBJECT}.anno_id.subject"
        return self.rvos_field

    def gt_tracks(self, sample: Sample, ids: tuple[str, ...], role: str) -> list[list]:
        """Ground truth of a role ("actor", "target", "rvos") as one RLE track (T RLE-or-None) per id:
        what the evaluation ships to its worker processes instead of dense masks."""
        field_name = {
            "actor": self.actor_field(sample),
            "target": f"{SUBJECT_OBJECT}.anno_id.object",
            "rvos": self.rvos_field,
        }[role]
        if isinstance(self.masks, _RleMasks):
            return [self.masks.track(sample, i, field_name) for i in ids]
        every = list(range(sample.num_frames))
        return [rle.encode_track(self.masks.union(sample, (i,), field_name, every)) for i in ids]

    # ------------------------------------------------------------------ parsing

    def _expressions(self, video_id: str) -> list[str]:
        video = self.videos[video_id]
        if not isinstance(video, dict) or not isinstance(video.get("frames"), list):
            raise DatasetError(f"{_where(video_id, field_name='frames')}: expected a list of frame names")
        expressions = video.get("expressions")
        if not isinstance(expressions, dict):
            raise DatasetError(f"{_where(video_id, field_name='expressions')}: expected a dict")
        return [str(e) for e in expressions]

    def _parse(self, video_id: str, exp_id: str) -> Sample:
        entry = self.videos[video_id]["expressions"][exp_id]

        def where(name: str) -> str:
            return _where(video_id, exp_id, name)

        if not isinstance(entry, dict) or not isinstance(entry.get("exp"), str):
            raise DatasetError(f"{where('exp')}: expected the expression text")
        # MeViS / InterRVOS key the masks by anno_id; Ref-YouTube-VOS by the PNG's obj_id.
        id_field = "anno_id" if isinstance(self.masks, _RleMasks) else "obj_id"
        rvos_ids = _ids(entry.get(id_field), where(id_field))
        if not rvos_ids:
            raise DatasetError(f"{where(id_field)}: the expression refers to no object")
        roles = entry.get(SUBJECT_OBJECT) or {}
        role_ids = roles.get("anno_id", {}) if isinstance(roles, dict) else {}
        subject = _ids(role_ids.get("subject"), where(f"{SUBJECT_OBJECT}.anno_id.subject"))
        obj = _ids(role_ids.get("object"), where(f"{SUBJECT_OBJECT}.anno_id.object"))
        caption_type = entry.get("caption_type") or self._infer_type(rvos_ids, obj)
        if caption_type not in CAPTION_TYPES:
            raise DatasetError(f"{where('caption_type')}: {caption_type!r} is none of {CAPTION_TYPES}")
        if caption_type == "unidirectional" and not obj:
            raise DatasetError(
                f"{where(SUBJECT_OBJECT + '.anno_id.object')}: a unidirectional expression needs a target"
            )
        interaction = caption_type in INTERACTION_TYPES
        return Sample(
            video_id=video_id,
            exp_id=exp_id,
            expression=entry["exp"],
            caption_type=caption_type,
            frame_names=self.frame_names(video_id),
            frame_dir=self.root / "JPEGImages" / video_id,
            actor_ids=subject if interaction and subject else rvos_ids,
            target_ids=obj if caption_type == "unidirectional" else (),
            rvos_ids=rvos_ids,
            dataset=self,
        )

    @staticmethod
    def _infer_type(rvos_ids: tuple[str, ...], obj: tuple[str, ...]) -> str:
        """MeViS and Ref-YouTube-VOS carry no caption_type: infer it from the ids."""
        if obj:
            return "unidirectional"
        return "single" if len(rvos_ids) == 1 else "multi"

    # ------------------------------------------------------------------ checks

    def validate(self, check_frames: bool = True) -> None:
        """Check every expression's masks (ids, lengths, RLE sizes) and, optionally, that every frame
        file exists. Raises DatasetError / FileNotFoundError on the first problem."""
        for sample in self._samples:
            if check_frames:
                missing = [p for p in sample.frame_paths if not p.is_file()]
                if missing:
                    where = _where(sample.video_id, field_name="frames")
                    raise FileNotFoundError(f"{where}: {len(missing)} missing frame(s), first {missing[0]}")
            sample.actor_masks()
            sample.target_masks()
            sample.rvos_masks()


# --------------------------------------------------------------------------------------------- writing


@dataclass
class ObjectTrack:
    """One annotated object: ``masks`` bool (T, H, W), one per frame (an all-False frame: not visible)."""

    obj_id: int
    masks: np.ndarray


@dataclass
class ExpressionSpec:
    """One referring expression over a video's objects (ids are ``ObjectTrack.obj_id``).

    ``subject`` lists the referred objects (the actor side of an interaction, both participants of a
    bidirectional one); ``object`` the target side, only for ``unidirectional`` expressions.
    """

    text: str
    caption_type: str
    subject: list[int]
    object: list[int] = field(default_factory=list)


@dataclass
class VideoRecord:
    """A video to write: ``frames`` uint8 (T, H, W, 3) (an array or a sequence of (H, W, 3) arrays)."""

    video_id: str
    frames: np.ndarray | Sequence[np.ndarray]
    objects: list[ObjectTrack]
    expressions: list[ExpressionSpec]
    frame_names: list[str] | None = None  # default: 00000, 00001, ...


def _check_record(video: VideoRecord) -> tuple[int, int, int]:
    """Validate a record before anything is written; returns (T, H, W)."""
    frames = video.frames
    num_frames = len(frames)
    if num_frames == 0:
        raise ValueError(f"{_where(video.video_id, field_name='frames')}: no frames")
    first = np.asarray(frames[0])
    if first.ndim != 3 or first.shape[2] != 3 or first.dtype != np.uint8:
        raise ValueError(
            f"{_where(video.video_id, field_name='frames')}: expected uint8 (H, W, 3), got {first.dtype} {first.shape}"
        )
    height, width = first.shape[:2]
    if video.frame_names is not None and len(video.frame_names) != num_frames:
        raise ValueError(
            f"{_where(video.video_id, field_name='frames')}: {len(video.frame_names)} names for {num_frames} frames"
        )
    known = set()
    for obj in video.objects:
        if obj.masks.shape != (num_frames, height, width):
            raise ValueError(
                f"{_where(video.video_id, field_name='masks')}: object {obj.obj_id} masks {obj.masks.shape}, "
                f"frames ({num_frames}, {height}, {width})"
            )
        known.add(obj.obj_id)
    for k, exp in enumerate(video.expressions):
        where = _where(video.video_id, str(k))
        if exp.caption_type not in CAPTION_TYPES:
            raise ValueError(
                f"{where}, field 'caption_type': {exp.caption_type!r} is none of {CAPTION_TYPES}"
            )
        if not exp.subject:
            raise ValueError(f"{where}, field 'subject': refers to no object")
        if (exp.caption_type == "unidirectional") != bool(exp.object):
            raise ValueError(
                f"{where}, field 'object': a target is needed for, and only for, unidirectional expressions"
            )
        unknown = sorted((set(exp.subject) | set(exp.object)) - known)
        if unknown:
            raise ValueError(f"{where}: unknown object ids {unknown}")
    return num_frames, height, width


def write_dataset(split_dir: str | Path, videos: Iterable[VideoRecord], jpeg_quality: int = 95) -> dict:
    """Write videos into ``split_dir`` in the InterRVOS layout (JPEG frames, COCO RLE masks).

    Videos are consumed one at a time (a generator keeps memory flat). Annotation ids are assigned
    0, 1, ... over the split, one per (video, object). Returns ``{"videos": n, "expressions": m}``.
    """
    from PIL import Image

    split_dir = Path(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, dict] = {}
    mask_dict: dict[str, list] = {}
    num_expressions = 0
    for video in videos:
        if video.video_id in meta:
            raise ValueError(f"{_where(video.video_id)}: written twice")
        num_frames, _, _ = _check_record(video)
        names = video.frame_names or [f"{t:05d}" for t in range(num_frames)]
        frame_dir = split_dir / "JPEGImages" / video.video_id
        frame_dir.mkdir(parents=True, exist_ok=True)
        for name, frame in zip(names, video.frames, strict=True):
            Image.fromarray(np.asarray(frame)).save(frame_dir / f"{name}.jpg", quality=jpeg_quality)
        anno_of = {}
        for obj in video.objects:
            anno_of[obj.obj_id] = len(mask_dict)
            mask_dict[str(len(mask_dict))] = rle.encode_track(obj.masks)
        meta[video.video_id] = {"frames": names, "expressions": _expressions_meta(video.expressions, anno_of)}
        num_expressions += len(video.expressions)
    _write_json(split_dir / META_NAMES[0], {"videos": meta})
    _write_json(split_dir / MASK_NAMES[0], mask_dict)
    logger.info("wrote %d videos, %d expressions to %s", len(meta), num_expressions, split_dir)
    return {"videos": len(meta), "expressions": num_expressions}


def _expressions_meta(expressions: list[ExpressionSpec], anno_of: dict[int, int]) -> dict[str, dict]:
    out = {}
    for k, exp in enumerate(expressions):
        out[str(k)] = {
            "exp": exp.text,
            # anno_id lists the actor side: the reference's actor and RVOS evaluations read it.
            "obj_id": list(exp.subject),
            "anno_id": [anno_of[i] for i in exp.subject],
            "caption_type": exp.caption_type,
            SUBJECT_OBJECT: {
                "obj_id": {"subject": list(exp.subject), "object": list(exp.object)},
                "anno_id": {
                    "subject": [anno_of[i] for i in exp.subject],
                    "object": [anno_of[i] for i in exp.object],
                },
            },
        }
    return out


def _write_json(path: Path, data) -> None:
    # Write then rename, so an interrupted run never leaves a half-written file that looks valid.
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
    tmp.replace(path)
