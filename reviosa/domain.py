"""Whether a clip comes from the synthetic world the built-in model was trained on.

The built-in model (``reviosa/builtin/``) has only ever seen the synthetic interaction world
(``reviosa.data.synth``): square frames of 64-512 px (`WorldConfig` refuses other sizes) showing a
few flat shapes over muted backgrounds, drawn with every channel at most 140 plus a little grain.
On anything else its masks are meaningless, so the CLI and the studio say so.

The rule, measured on the sampled frames (cheap: the keyframes are decoded anyway):

1. the frames are square with a side of 64-512 px, and
2. at least `MIN_MUTED_SHARE` of their pixels are muted (every channel <= `MUTED_LEVEL`).

On 40 clips of the world's test split (seed 1) the muted share was 0.87-0.98 (mean 0.94), and
0.89-0.96 on the studio's H.264-encoded synthetic examples; the two real example clips (Big Buck
Bunny, OpenCV's vtest) score 0.60 and 0.67 and are not square.
"""

from __future__ import annotations

import numpy as np

BUILTIN_NAME = "reviosa-builtin"  # config.name of the shipped built-in model
WORLD_SIDES = (64, 512)
MUTED_LEVEL = 150  # the world's backgrounds: channels <= 140 (+ grain of std 4)
MIN_MUTED_SHARE = 0.8


def is_builtin(model) -> bool:
    """Whether ``model`` is the built-in demo model (by its config name, wherever it was loaded from)."""
    return model.config.name == BUILTIN_NAME


def outside_world(frames: np.ndarray) -> str | None:
    """Why ``frames`` (uint8 (N, H, W, 3), a few frames of the clip) are not from the synthetic world.

    Returns None when both rules of the module docstring hold, else the reason in a few words.
    """
    frames = np.asarray(frames)
    _n, h, w, _c = frames.shape
    reasons = []
    if h != w or not WORLD_SIDES[0] <= h <= WORLD_SIDES[1]:
        reasons.append(
            f"its frames are {w}x{h}, the world's are square, {WORLD_SIDES[0]}-{WORLD_SIDES[1]} px"
        )
    muted = float((frames.max(axis=-1) <= MUTED_LEVEL).mean())
    if muted < MIN_MUTED_SHARE:
        reasons.append(
            f"{muted:.0%} of its pixels are muted, the world's backgrounds make {MIN_MUTED_SHARE:.0%} or more"
        )
    return "; ".join(reasons) or None


def builtin_warning(reason: str, how_to_load: str) -> str:
    """The sentence shown when the built-in model runs on a clip outside its world."""
    return (
        "These masks are not meaningful: the built-in demo model only knows its synthetic world of flat "
        f"shapes, and this clip is not from it ({reason}). {how_to_load}"
    )
