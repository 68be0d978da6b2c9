"""Caps on one clip and one expression, shared by the CLI and the studio (the same numbers in both).

Long clips are strided to fit the frame cap and large frames downscaled, each with a notice saying
what was done and how to change it; expressions over the limit are refused. The studio's `Limits`
(``studio/limits.py``) take their defaults from here, and so do ``python -m reviosa predict``'s flags.
"""

from __future__ import annotations

from reviosa.config import ProcessorConfig

# Frames the model processes per clip; longer clips are strided uniformly to fit. 300 frames at
# 128 px run in seconds with the built-in model on 2 CPU cores (a 10,000-frame clip ran 8.7 minutes).
MAX_FRAMES = 300
# Longer frame side after decoding; larger frames are downscaled. 640 keeps the overlays and the
# per-frame masks small while leaving objects recognisable.
MAX_SIDE = 640
# Longest expression in characters: the model config's own default, so one number holds everywhere.
MAX_EXPRESSION_CHARS = ProcessorConfig.max_expression_chars


def expression_limit(model, cap: int | None = None) -> int:
    """Characters allowed for ``model``: the smaller of the cap (default `MAX_EXPRESSION_CHARS`) and its own."""
    return min(cap or MAX_EXPRESSION_CHARS, model.config.processor.max_expression_chars)


def reduction_notices(video, frames_hint: str, side_hint: str) -> list[str]:
    """What the caps did to a `reviosa.video.VideoFile`, one sentence each (empty when nothing).

    ``frames_hint`` / ``side_hint`` end the notices with how to change it in the caller's interface
    (flags on the command line, the Advanced panel in the studio).
    """
    notices = []
    asked = max(1, video.limits.stride)
    if video.stride > asked:
        notices.append(
            f"The clip has {video.source_frames} frames; 1 frame in every {video.stride} was used "
            f"({video.num_frames} frames, the cap is {video.limits.max_frames}). {frames_hint}"
        )
    if tuple(video.size) != tuple(video.source_size):
        (h0, w0), (h, w) = video.source_size, video.size
        notices.append(
            f"Frames were downscaled from {w0}x{h0} to {w}x{h} (resolution cap {video.limits.max_side} px). "
            f"{side_hint}"
        )
    return notices


def plural(n: int, word: str) -> str:
    """``1 frame``, ``2 frames``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
