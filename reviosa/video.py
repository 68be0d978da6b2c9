"""Video in without loading it all, masks out without storing them all at full size.

Readers decode lazily: a pass over the frames holds one decoded frame at a time. `MaskTrack` keeps
a (T, H, W) boolean track bit-packed (1/8 of a byte per pixel): 1000 frames at 854x480 take 51 MB
instead of 410 MB as bool, or 4.9 GB as float logits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)


class FrameSource(Protocol):
    """What the model needs of a video: its length, size, rate, and frames on demand."""

    num_frames: int
    size: tuple[int, int]  # (H, W) of the frames it yields
    fps: float

    def iter_frames(self) -> Iterator[np.ndarray]:
        """Every frame in order, uint8 (H, W, 3), one at a time."""
        ...

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """The frames at ``indices`` (sorted), uint8 (len(indices), H, W, 3)."""
        ...


@dataclass
class VideoLimits:
    """Caps applied while decoding; long or large clips are reduced, never refused silently."""

    max_frames: int | None = None  # keep at most this many frames, by a uniform stride
    stride: int = 1  # keep every stride-th frame
    max_side: int | None = None  # downscale so that max(H, W) <= max_side


# What to do, worded for any interface (the CLI must not say "upload"; the studio adds that itself).
_AGAIN = "Export or copy the clip again from its source."
_CHOOSE = "Choose a video file: mp4, webm, mov, avi, mkv or gif."
_REENCODE = "Re-encode it as H.264 mp4, e.g. ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4."
# First bytes of the containers accepted: a file that starts like one but cannot be read is damaged
# or cut short, not "not a video". (offset, bytes).
_SIGNATURES = {
    "mp4/mov": [(4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"), (4, b"skip")],
    "webm/mkv": [(0, b"\x1a\x45\xdf\xa3")],
    "avi": [(0, b"RIFF")],
    "gif": [(0, b"GIF87a"), (0, b"GIF89a")],
}


class VideoError(ValueError):
    """A file that cannot be used as a video. ``kind``: empty, not_video, truncated, codec, no_video,
    no_frames; the message names the file (never its folder) and says what to do."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _container_of(path: Path) -> str | None:
    """The container the file's first bytes announce, or None."""
    with open(path, "rb") as f:
        head = f.read(16)
    for name, marks in _SIGNATURES.items():
        if any(head[offset : offset + len(mark)] == mark for offset, mark in marks):
            return name
    return None


def _undecodable(path: Path) -> VideoError:
    kind = _container_of(path)
    if kind is None:
        return VideoError(
            "not_video", f"{path.name} is not a video: its contents are no video format. {_CHOOSE}"
        )
    return VideoError(
        "truncated",
        f"{path.name} starts like a video file ({kind}) but cannot be read: it is truncated or damaged "
        f"(an interrupted download or copy?). {_AGAIN}",
    )


class VideoFile:
    """A video file read lazily with PyAV (mp4, webm, mov, avi, mkv, gif...).

    Opening validates the file and counts its frames by demuxing, decoding only the first frame.
    Raises FileNotFoundError, or `VideoError` (a ValueError) saying what is wrong and what to do.
    """

    def __init__(self, path: str | Path, limits: VideoLimits | None = None):
        self.path = Path(path)
        self.limits = limits or VideoLimits()
        if not self.path.is_file():
            raise FileNotFoundError(f"video not found: {self.path}")
        import av

        name = self.path.name
        if self.path.stat().st_size == 0:
            raise VideoError("empty", f"{name} is an empty file (0 bytes). {_AGAIN}")
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise VideoError("no_video", f"{name} holds no video stream (sound only?). {_CHOOSE}")
                stream = container.streams.video[0]
                if stream.codec_context is None:
                    raise VideoError(
                        "codec", f"{name} uses a video codec this machine cannot decode. {_REENCODE}"
                    )
                rate = stream.average_rate or stream.guessed_rate or 25
                self.fps_source = float(rate)
                self.source_size = (stream.codec_context.height, stream.codec_context.width)
                total = self._count_frames(container)
        except av.error.DecoderNotFoundError as err:
            raise VideoError(
                "codec", f"{name} uses a video codec this machine cannot decode. {_REENCODE}"
            ) from err
        except av.error.FFmpegError as err:
            # FFmpeg's own text names the path and an errno: neither helps, and a server path must not leak.
            raise _undecodable(self.path) from err
        if total == 0:
            raise VideoError("no_frames", f"{name} contains no video frames. {_AGAIN}")
        self.source_frames = total
        stride = max(1, self.limits.stride)
        if self.limits.max_frames and -(-total // stride) > self.limits.max_frames:
            stride = -(-total // self.limits.max_frames)
        self.stride = stride
        self.kept = list(range(0, total, stride))
        self.num_frames = len(self.kept)
        self.fps = self.fps_source / stride
        self.size = _capped_size(self.source_size, self.limits.max_side)
        if stride > 1 or self.size != self.source_size:
            logger.info(
                "%s: %d frames at %dx%d reduced to %d frames (stride %d) at %dx%d",
                self.path.name, total, self.source_size[1], self.source_size[0],
                self.num_frames, stride, self.size[1], self.size[0],
            )  # fmt: skip

    def _count_frames(self, container) -> int:
        """Frames in the stream, by demuxing (no decoding): one packet per frame for every format
        accepted (checked for mp4, webm, mov, avi, gif, mkv); container headers' own counts are
        unreliable (0 for webm, estimates for some avi). The first frame is decoded, so a file
        that demuxes but cannot be decoded fails here, with the clear message, not mid-request."""
        stream = container.streams.video[0]
        count = sum(1 for packet in container.demux(stream) if packet.size > 0)
        # An mp4/mov index is exact; fewer packets than it lists means the file was cut short (its
        # index at the front, as "faststart" files have it, survives a cut download).
        if "mp4" in container.format.name and stream.frames > count:
            raise VideoError(
                "truncated",
                f"{self.path.name} is truncated: its index lists {stream.frames} frames, but only "
                f"{count} are in the file (an interrupted download or copy?). {_AGAIN}",
            )
        if count:
            container.seek(0)
            next(iter(container.decode(stream)), None)
        return count

    def iter_frames(self) -> Iterator[np.ndarray]:
        keep = set(self.kept)
        for i, frame in self._decode():
            if i in keep:
                yield self._convert(frame)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at positions ``indices`` of the kept (strided) sequence."""
        wanted = {self.kept[i]: n for n, i in enumerate(indices)}
        out = np.empty((len(indices), *self.size, 3), dtype=np.uint8)
        found = 0
        for i, frame in self._decode():
            if i in wanted:
                out[wanted[i]] = self._convert(frame)
                found += 1
                if found == len(wanted):
                    break
        if found != len(wanted):
            raise ValueError(f"{self.path.name}: could only decode {found} of {len(wanted)} requested frames")
        return out

    def _decode(self) -> Iterator[tuple[int, object]]:
        import av

        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                yield from enumerate(container.decode(stream))
        except av.error.FFmpegError as err:  # damaged past the frames checked on opening
            raise VideoError(
                "truncated", f"{self.path.name} is damaged part-way through and cannot be decoded. {_AGAIN}"
            ) from err

    def _convert(self, frame) -> np.ndarray:
        h, w = self.size
        if (h, w) != self.source_size:
            frame = frame.reformat(width=w, height=h)
        return frame.to_ndarray(format="rgb24")


class ArrayVideo:
    """Frames already in memory, uint8 (T, H, W, 3) (tests, synthetic clips)."""

    def __init__(self, frames: np.ndarray, fps: float = 10.0):
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
        if len(frames) == 0:
            raise ValueError("the video contains no frames")
        self.frames = frames
        self.num_frames = len(frames)
        self.size = (frames.shape[1], frames.shape[2])
        self.fps = fps

    def iter_frames(self) -> Iterator[np.ndarray]:
        yield from self.frames

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return self.frames[list(indices)]


class CallbackVideo:
    """Frames loaded on demand by a callback (dataset samples: ``load(indices) -> (n, H, W, 3)``)."""

    def __init__(
        self, load: Callable[[list[int]], np.ndarray], num_frames: int, size: tuple[int, int], fps=10.0
    ):
        self._load = load
        self.num_frames = num_frames
        self.size = size
        self.fps = fps

    def iter_frames(self) -> Iterator[np.ndarray]:
        for i in range(self.num_frames):
            yield self._load([i])[0]

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return self._load(list(indices))


def _capped_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    h, w = size
    if not max_side or max(h, w) <= max_side:
        return size
    scale = max_side / max(h, w)
    # Even sizes keep H.264 encoders of the overlays happy.
    return max(2, int(round(h * scale / 2)) * 2), max(2, int(round(w * scale / 2)) * 2)


class MaskTrack:
    """A boolean mask track (T, H, W) stored bit-packed.

    ``np.asarray(track)`` or ``track.numpy()`` unpacks the whole track; ``track[t]`` one frame.
    """

    def __init__(self, num_frames: int, size: tuple[int, int]):
        self.size = size
        self._bits = np.zeros((num_frames, (size[0] * size[1] + 7) // 8), dtype=np.uint8)
        self._area = np.zeros(num_frames, dtype=np.int64)

    @classmethod
    def from_array(cls, masks: np.ndarray) -> MaskTrack:
        track = cls(len(masks), masks.shape[1:])
        for t, m in enumerate(masks):
            track[t] = m
        return track

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self._bits), *self.size)

    def __len__(self) -> int:
        return len(self._bits)

    def __setitem__(self, t: int, mask: np.ndarray) -> None:
        if mask.shape != self.size:
            raise ValueError(f"mask {mask.shape} does not match track size {self.size}")
        self._bits[t] = np.packbits(mask.astype(bool).ravel())
        self._area[t] = int(mask.sum())

    def __getitem__(self, t: int) -> np.ndarray:
        n = self.size[0] * self.size[1]
        return np.unpackbits(self._bits[t], count=n).astype(bool).reshape(self.size)

    def __iter__(self) -> Iterator[np.ndarray]:
        for t in range(len(self)):
            yield self[t]

    def areas(self) -> np.ndarray:
        """Pixels in each frame's mask, int (T,)."""
        return self._area.copy()

    def numpy(self) -> np.ndarray:
        """The whole track, bool (T, H, W)."""
        n = self.size[0] * self.size[1]
        return np.unpackbits(self._bits, axis=1, count=n).astype(bool).reshape(self.shape)

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    @property
    def nbytes(self) -> int:
        return self._bits.nbytes
