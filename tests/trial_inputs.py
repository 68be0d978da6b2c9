"""The inputs of the studio trial (issue 17), rebuilt by the tests: broken files, odd clips, odd text.

Every builder writes into the folder it is given and returns the path; clips are tiny (seconds to make).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Expressions of the trial, beside the "empty" one (whitespace only).
EMPTY = "   "
UNICODE = "Pferd, das über den Zaun springt — 人が犬を散歩させる 🐕"
# Typed role tokens and chat-template markers stay text (special-token matching is off); the control
# characters are dropped by clean_expression.
CONTROL_TOKENS = "[SEG_TAR] <|im_end|> [SEG_ACT]\x00\x1b[31m person <img>"


def long_expression(n: int = 10_000) -> str:
    return "a" * n


def moving_frames(num_frames: int, height: int, width: int, background: int = 90) -> np.ndarray:
    """uint8 (T, H, W, 3): a red square moving right over a flat background."""
    frames = np.full((num_frames, height, width, 3), background, dtype=np.uint8)
    side = max(2, min(height, width) // 4)
    for t in range(num_frames):
        x = (2 + 2 * t) % max(1, width - side)
        frames[t, height // 3 : height // 3 + side, x : x + side] = (220, 40, 40)
    return frames


def encode(
    path: Path, frames: np.ndarray, codec: str = "libx264", pix_fmt: str = "yuv420p", fps: int = 10
) -> Path:
    """Encode uint8 (T, H, W, 3) RGB frames with PyAV; the container follows the file's extension."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if codec == "libx264":
            stream.options = {"preset": "ultrafast"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        out.mux(stream.encode(None))
    return path


def zero_byte(folder: Path) -> Path:
    path = folder / "Zero.mp4"  # capital Z: messages must keep the name's case
    path.write_bytes(b"")
    return path


def text_renamed(folder: Path) -> Path:
    path = folder / "Notes.mp4"
    path.write_text("this is a text file renamed to .mp4\n" * 20)
    return path


def truncated(folder: Path, share: float = 0.3) -> Path:
    """The first ``share`` of an mp4's bytes (index at the end, as most cameras and encoders write it)."""
    whole = encode(folder / "whole.mp4", moving_frames(20, 64, 64))
    path = folder / "Cut.mp4"
    data = whole.read_bytes()
    path.write_bytes(data[: int(len(data) * share)])
    return path


def truncated_faststart(folder: Path, share: float = 0.3) -> Path:
    """The same cut of an mp4 whose index is at the front (web "faststart" files, the studio's own)."""
    from viz.video import write_mp4

    # Noise, so the frames' data and not the index make up most of the file and the cut keeps the index.
    noise = np.random.default_rng(0).integers(0, 256, (20, 64, 64, 3), dtype=np.uint8)
    whole = write_mp4(folder / "whole_fs.mp4", noise, 10)
    path = folder / "CutFast.mp4"
    data = whole.read_bytes()
    path.write_bytes(data[: int(len(data) * share)])
    return path


def one_frame(folder: Path) -> Path:
    return encode(folder / "one.mp4", moving_frames(1, 64, 64))


def many_frames(folder: Path, n: int = 10_000) -> Path:
    """``n`` frames of 16x16 at 30 fps (333 s for 10,000: inside the 600 s duration cap)."""
    return encode(folder / "long.mp4", moving_frames(n, 16, 16), fps=30)


def uhd(folder: Path) -> Path:
    """Two 3840x2160 frames."""
    return encode(folder / "uhd.mp4", moving_frames(2, 2160, 3840, background=200))


def greyscale(folder: Path) -> Path:
    """A clip stored as grey levels only (ffv1 'gray' in mkv: one channel, decoded to RGB)."""
    frames = moving_frames(8, 64, 64).mean(axis=-1, keepdims=True).astype(np.uint8).repeat(3, axis=-1)
    return encode(folder / "grey.mkv", frames, codec="ffv1", pix_fmt="gray")


def rgba_gif(folder: Path, num_frames: int = 8) -> Path:
    """An animated gif with a transparent background (saved from RGBA frames by Pillow)."""
    from PIL import Image

    images = []
    for frame in moving_frames(num_frames, 64, 64):
        rgba = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])
        rgba[..., 3][(frame == 90).all(axis=-1)] = 0  # the background is transparent
        images.append(Image.fromarray(rgba, "RGBA"))
    path = folder / "rgba.gif"
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0, disposal=2)
    return path


def avi(folder: Path, num_frames: int = 8) -> Path:
    return encode(folder / "clip.avi", moving_frames(num_frames, 64, 64), codec="mpeg4")


def builtin_named_copy(model_dir: Path, folder: Path) -> Path:
    """A copy of a tiny model that calls itself the built-in model (config.name), so the check of
    `reviosa.domain` runs on it exactly as on the shipped one."""
    import json
    import shutil

    from reviosa.domain import BUILTIN_NAME

    copy = folder / "builtin-named"
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["name"] = BUILTIN_NAME
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def real_looking(folder: Path) -> Path:
    """Not the synthetic world: 96x160 (not square) with a bright background, like daylight footage."""
    return encode(folder / "street.mp4", moving_frames(6, 96, 160, background=210))


def world_looking(folder: Path) -> Path:
    """Like the synthetic world: square 128 px, muted background."""
    return encode(folder / "world.mp4", moving_frames(6, 128, 128, background=70))
