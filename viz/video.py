"""Video and mask export: H.264 mp4 encoding and per-frame PNG masks in a zip (the RLE results JSON is
``reviosa.results``).

Everything streams: frames and masks may come from generators and are encoded one at a time, so a long
video is never held in memory (peer tools run out of memory exactly there).

Axis letters: T frames, H/W pixels.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import re
import subprocess
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "masks_to_png_zip",
    "read_mp4",
    "to_fraction",
    "write_mp4",
]

# x264 settings: CRF 20 is visually lossless for overlays at this size; "veryfast" keeps the encoder
# from dominating the overlay + encode time on 2 CPU cores (see bench/bench_viz.py).
DEFAULT_CRF = 20
DEFAULT_PRESET = "veryfast"
# 1001 covers the NTSC rates (24000/1001, 30000/1001, 60000/1001) exactly.
_MAX_FPS_DENOMINATOR = 1001


def to_fraction(fps: float | Fraction) -> Fraction:
    """A frame rate as an exact Fraction: 30 -> 30/1, float(30000/1001) -> 30000/1001, 29.97 -> 2997/100."""
    rate = Fraction(fps).limit_denominator(_MAX_FPS_DENOMINATOR)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """Pad a (H, W, 3) frame by one edge-replicated pixel at the bottom / right where H / W is odd.

    yuv420p stores chroma at half resolution, so libx264 needs even sizes. The pixel is added rather
    than cropped so that no image content is lost; the encoded video is then (H + 1) or (W + 1) big.
    """
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if not (pad_h or pad_w):
        return frame
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def write_mp4(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float | Fraction,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
) -> Path:
    """Encode RGB frames to an H.264 (libx264, yuv420p) mp4 at ``fps``, one frame at a time.

    The encoder is an ffmpeg process of its own (imageio-ffmpeg's binary, ``_ffmpeg_exe``) fed raw
    rgb24 frames through a pipe, so producing the next frame (an overlay, say) in the calling thread
    overlaps the encoding of the previous ones, and x264 runs with the threads the ffmpeg command line
    gives it. Without imageio-ffmpeg, PyAV encodes in a thread of this process (``_EncoderThread``),
    same options, with less of the cores kept busy (docs/benchmarks.md).

    Args:
        path: output file (overwritten).
        frames: iterable of uint8 (H, W, 3) RGB frames, all the same size; a generator is consumed
            lazily, and a frame may be reused by the producer once the next one is requested. Odd H or
            W are padded by one pixel (see ``_pad_even``).
        fps: frame rate; fractional rates are kept exact (``to_fraction``).
        crf: x264 constant rate factor (lower = better quality, bigger file).
        preset: x264 speed preset.
    Returns:
        ``path`` as a Path. Raises ValueError (and removes the partial file) if ``frames`` is empty or a
        frame has a different shape from the first; an error of the encoder (RuntimeError with the end
        of ffmpeg's log) or of ``frames`` itself is raised here too, the partial file removed and the
        encoder (process or thread) ended.
    """
    path = Path(path)
    rate = to_fraction(fps)
    exe = _ffmpeg_exe()
    if exe is None:
        count = _write_mp4_pyav(path, frames, rate, crf, preset)
    else:
        count = _write_mp4_ffmpeg(exe, path, frames, rate, crf, preset)
    logger.debug("wrote %d frames at %s fps to %s", count, rate, path)
    return path


def _ffmpeg_exe() -> str | None:
    """imageio-ffmpeg's ffmpeg binary, or None (PyAV encodes instead) when it is not installed."""
    try:
        import imageio_ffmpeg
    except ImportError:
        logger.debug("imageio-ffmpeg is not installed: write_mp4 encodes with PyAV")
        return None
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as err:  # a platform without a bundled binary and no ffmpeg on PATH
        logger.debug("imageio-ffmpeg has no ffmpeg binary (%s): write_mp4 encodes with PyAV", err)
        return None
    logger.debug("write_mp4 encodes with ffmpeg (%s)", exe)
    return exe


def _check_frame(frame: np.ndarray, count: int, first_shape: tuple[int, ...] | None) -> None:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame {count}: expected uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    if first_shape is not None and frame.shape != first_shape:
        raise ValueError(f"frame {count} has shape {frame.shape}, the first frame {first_shape}")


# --------------------------------------------------------------------------- ffmpeg process


def _ffmpeg_command(
    exe: str, path: Path, shape: tuple[int, ...], rate: Fraction, crf: int, preset: str
) -> list[str]:
    """ffmpeg reading raw rgb24 (H, W) frames on stdin, writing libx264 yuv420p to ``path``."""
    height, width = shape[:2]
    return [
        exe, "-hide_banner", "-nostats", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
        "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0",
        "-an", "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
        # faststart moves the index to the front so a browser can play the file while it downloads.
        "-movflags", "+faststart", "-f", "mp4", "-y", f"file:{path}",  # file: so no name reads as an option or protocol
    ]  # fmt: skip


def _write_mp4_ffmpeg(
    exe: str, path: Path, frames: Iterable[np.ndarray], rate: Fraction, crf: int, preset: str
) -> int:
    """``write_mp4`` through an ffmpeg process; returns the number of frames written.

    The pipe is written by a thread of its own (``_EncoderThread``, up to ``_QUEUED_FRAMES`` frames
    queued): the pipe holds less than a frame, so a producer writing it directly would wait for ffmpeg
    to read each frame and ffmpeg for the producer to make the next one; the queue lets each run ahead.
    """
    count, first_shape, proc, writer = 0, None, None, None
    # ffmpeg's log goes to a file, not a pipe: a pipe nobody reads would stall ffmpeg once full.
    with tempfile.TemporaryFile() as log:
        try:
            for frame in frames:
                _check_frame(frame, count, first_shape)
                padded = _pad_even(frame)
                if proc is None:
                    first_shape = frame.shape
                    command = _ffmpeg_command(exe, path, padded.shape, rate, crf, preset)
                    proc = subprocess.Popen(
                        command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log
                    )
                    writer = _EncoderThread(proc.stdin.write, lambda: None)
                if proc.poll() is not None:  # ffmpeg stopped before the frames ended
                    raise _ffmpeg_error(proc, log, path)
                # A copy (unless padding made one): the producer may reuse its array once this returns.
                item = padded if padded is not frame else frame.copy(order="C")
                try:
                    writer.put(item)
                except BrokenPipeError:
                    raise _ffmpeg_error(proc, log, path) from None
                count += 1
            if proc is None:
                raise ValueError("no frames to encode")
            try:
                writer.finish()
                proc.stdin.close()  # end of the frames: ffmpeg flushes x264 and writes the index
            except BrokenPipeError:
                raise _ffmpeg_error(proc, log, path) from None
            if proc.wait() != 0:
                raise _ffmpeg_error(proc, log, path)
        except BaseException:
            if proc is not None:
                _stop(proc, writer)
            path.unlink(missing_ok=True)
            raise
    return count


def _stop(proc: subprocess.Popen, writer: _EncoderThread | None) -> None:
    """End ffmpeg without letting it finish the file (the caller failed), the writer thread, and reap."""
    if proc.poll() is None:
        proc.kill()  # first: a write blocked on the full pipe then fails, so the thread can end
    if writer is not None:
        writer.cancel()
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    proc.wait()


# The lines of ffmpeg's log that an error carries: its first errors are the cause (x264's "invalid
# preset", a missing folder), the lines after them the consequences ("Nothing was written ...").
_LOG_LINES = 3
_LOG_LINE_CHARS = 200
# An absolute path, cut down to its last component (messages show no server paths), and the object
# addresses ffmpeg prints ("[libx264 @ 0x55d0...]"), noise to a user.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s/:'\"]+/)+([^\s/:'\"]*)")
_ADDRESS = re.compile(r" @ 0x[0-9a-f]+")


def _ffmpeg_error(proc: subprocess.Popen, log, path: Path) -> RuntimeError:
    """The error for an ffmpeg that stopped: its exit status and the first lines of its log."""
    proc.wait()
    log.seek(0)
    lines = [line.strip() for line in log.read().decode("utf-8", "replace").splitlines() if line.strip()]
    shown = [
        _ADDRESS.sub("", _ABSOLUTE_PATH.sub(r"\1", line))[:_LOG_LINE_CHARS] for line in lines[:_LOG_LINES]
    ]
    if len(lines) > _LOG_LINES:
        shown.append(f"(and {len(lines) - _LOG_LINES} more lines)")
    detail = ": " + " | ".join(shown) if shown else " (it printed nothing)"
    return RuntimeError(f"ffmpeg stopped (exit status {proc.returncode}) while encoding {path.name}{detail}")


# ------------------------------------------------------------------------ PyAV fallback


def _write_mp4_pyav(path: Path, frames: Iterable[np.ndarray], rate: Fraction, crf: int, preset: str) -> int:
    """``write_mp4`` through PyAV, its encoder in a thread of its own; returns the number of frames.

    PyAV releases the GIL while x264 works, so producing the next frame overlaps encoding the
    previous ones; at most ``_QUEUED_FRAMES`` frames wait between the two threads.
    """
    count = 0
    container = av.open(str(path), mode="w", options={"movflags": "+faststart"})
    encoder = None
    try:
        first_shape = None
        for frame in frames:
            _check_frame(frame, count, first_shape)
            if encoder is None:
                first_shape = frame.shape
                stream = _open_stream(container, rate, _pad_even(frame).shape, crf, preset)
                encoder = _EncoderThread(
                    lambda item, stream=stream: container.mux(stream.encode(item)),
                    # flush the encoder's delayed frames
                    lambda stream=stream: container.mux(stream.encode(None)),
                )
            # from_ndarray copies the pixels: the caller may reuse its array once this returns. The
            # conversion to yuv420p is left to the encoder thread (x264's frame threads return from
            # each call at once, so that thread has the time), keeping this thread's work per frame
            # to the caller's own.
            encoder.put(av.VideoFrame.from_ndarray(np.ascontiguousarray(_pad_even(frame)), format="rgb24"))
            count += 1
        if encoder is None:
            raise ValueError("no frames to encode")
        encoder.finish()
    except BaseException:
        if encoder is not None:
            encoder.cancel()
        container.close()
        path.unlink(missing_ok=True)
        raise
    container.close()
    return count


# Frames waiting for the encoder thread: enough to absorb uneven frame times, few enough that memory
# stays flat (4 rgb24 frames at 854x480 are 5 MB).
_QUEUED_FRAMES = 4
_POLL_S = 0.05
_FINISH = object()  # end of the frames: flush the encoder


class _EncoderThread:
    """Hands the items put into a bounded queue to ``consume``, in order, in a thread of its own.

    ``consume`` is PyAV's encode + mux or the write into ffmpeg's pipe; ``flush`` runs after the last
    item. The thread owns what they touch until :meth:`finish` or :meth:`cancel` returns (it closes
    nothing: the caller does). An exception in the thread is re-raised in the caller by the next
    :meth:`put` or by :meth:`finish`.
    """

    def __init__(self, consume: Callable[[object], None], flush: Callable[[], None]) -> None:
        self._consume, self._flush = consume, flush
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUED_FRAMES)
        self._cancelled = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="write_mp4-encoder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if self._cancelled.is_set():
                    return
                if item is _FINISH:
                    self._flush()
                    return
                self._consume(item)
        except BaseException as err:  # handed to the caller's thread, which re-raises it
            self._error = err

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._thread.join()
            raise error

    def put(self, item) -> None:
        """Queue one frame (blocks while the queue is full); raises the thread's error if it failed."""
        while True:
            self._raise_if_failed()
            if not self._thread.is_alive():
                raise RuntimeError("the mp4 encoder thread stopped unexpectedly")
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Flush the encoder and wait for the thread; raises its error if it failed."""
        self.put(_FINISH)
        self._thread.join()
        self._raise_if_failed()

    def cancel(self) -> None:
        """Stop without flushing (the caller failed): drop the queued frames, wait for the thread."""
        self._cancelled.set()
        while self._thread.is_alive():
            try:
                self._queue.put_nowait(_FINISH)  # wakes a thread waiting for a frame
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
            self._thread.join(timeout=_POLL_S)


def _open_stream(container, rate: Fraction, shape: tuple[int, ...], crf: int, preset: str):
    stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": preset})
    stream.height, stream.width = shape[:2]
    stream.pix_fmt = "yuv420p"
    # Frame threads, as the ffmpeg command line uses for libx264 (PyAV's default is slice threads,
    # which split each frame and wait for it: less throughput, fewer threads to share the cores).
    stream.codec_context.thread_type = "FRAME"
    return stream


def read_mp4(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode a whole video into memory (for tests and short clips).

    Returns:
        frames uint8 (T, H, W, 3) RGB and the stream's average frame rate as a float.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path} holds no video frames")
    return np.stack(frames), float(rate)


def _png_bytes(mask: np.ndarray) -> bytes:
    """A bool (H, W) mask as a 1-bit PNG (mode "1": reads back as bool in Pillow, 0/255 in OpenCV)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def masks_to_png_zip(
    path: str | Path,
    actor_masks: Iterable[np.ndarray],
    target_masks: Iterable[np.ndarray] | None = None,
    frame_names: Sequence[str] | None = None,
) -> Path:
    """Write per-frame masks as PNGs into a zip: ``actor/<name>.png`` and ``target/<name>.png``.

    Masks are encoded one frame at a time, so both tracks may be generators (or a (T, H, W) array).
    Members are stored, not deflated: PNG is already compressed.

    Args:
        path: output zip (overwritten).
        actor_masks: T bool (H, W) masks (or a bool (T, H, W) array).
        target_masks: same for the target, or None (no ``target/`` folder).
        frame_names: T names without extension (e.g. the dataset's "00000"); default 5-digit indices.
    Returns:
        ``path`` as a Path. Raises ValueError if the tracks or names differ in length.
    """
    path = Path(path)
    tracks = {"actor": iter(actor_masks)}
    if target_masks is not None:
        tracks["target"] = iter(target_masks)
    count = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        while True:
            masks = {role: next(track, None) for role, track in tracks.items()}
            if all(mask is None for mask in masks.values()):
                break
            if any(mask is None for mask in masks.values()):
                raise ValueError(f"the actor and target tracks differ in length (one ends at frame {count})")
            name = _frame_name(frame_names, count)
            for role, mask in masks.items():
                archive.writestr(f"{role}/{name}.png", _png_bytes(mask))
            count += 1
    if frame_names is not None and count != len(frame_names):
        raise ValueError(f"{len(frame_names)} frame names for {count} frames")
    logger.debug("wrote %d frames of masks (%s) to %s", count, "+".join(tracks), path)
    return path


def _frame_name(frame_names: Sequence[str] | None, index: int) -> str:
    if frame_names is None:
        return f"{index:05d}"
    if index >= len(frame_names):
        raise ValueError(f"more frames than the {len(frame_names)} frame names given")
    return str(frame_names[index])
