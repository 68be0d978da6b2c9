"""Actor / target mask overlays on video frames.

Numpy in, numpy out. The actor is drawn in pink and the target in blue; where the two masks overlap the
fill is a diagonal stripe of both colours, so an overlap never reads as a third object, and both
contours stay visible. All blending is done in float32 and clipped to uint8 once, at the end.

Axis letters: H/W pixels.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from reviosa.tokens import ROLES

logger = logging.getLogger(__name__)

__all__ = [
    "ACTOR_COLOR",
    "TARGET_COLOR",
    "ROLE_COLORS",
    "contour_width",
    "load_font",
    "mask_contour",
    "overlay_frame",
    "stripe_pattern",
]

# Role colours, RGB uint8; every overlay, legend and test reads them from here.
ACTOR_COLOR = (255, 64, 160)
TARGET_COLOR = (40, 120, 255)
ROLE_COLORS = dict(zip(ROLES, (ACTOR_COLOR, TARGET_COLOR), strict=True))

# Legend box: dark, mostly opaque background so white text reads over any frame content.
_LEGEND_BG = (20, 20, 20)
_LEGEND_BG_ALPHA = 0.7
_LEGEND_TEXT = (255, 255, 255)


@lru_cache(maxsize=16)
def load_font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font (Pillow >= 10.1), so no system font is needed."""
    return ImageFont.load_default(size=size)


def contour_width(height: int, width: int) -> int:
    """Contour thickness in pixels: 1 px up to ~540p, 2 px from 720p up (thin, but visible when scaled)."""
    return 1 if min(height, width) < 540 else 2


def _erode(mask: np.ndarray) -> np.ndarray:
    """One step of binary erosion with a 3x3 square; pixels outside the frame count as background."""
    padded = np.pad(mask, 1, constant_values=False)
    height, width = mask.shape
    out = mask.copy()
    for dy in range(3):
        for dx in range(3):
            out &= padded[dy : dy + height, dx : dx + width]
    return out


def mask_contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Inner boundary of a mask: ``mask xor eroded(mask)``.

    Erosion uses a 3x3 square, repeated ``width`` times, so the contour is a 4-connected line ``width``
    pixels thick lying inside the mask (it never paints outside the object). The frame edge counts as
    background, so an object cut by the frame edge gets a contour along that edge.

    Args:
        mask: bool (H, W).
        width: thickness in pixels, >= 1.
    Returns:
        bool (H, W), True on the boundary pixels.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    if width < 1:
        raise ValueError(f"contour width must be >= 1, got {width}")
    mask = mask.astype(bool, copy=False)
    eroded = mask
    for _ in range(width):
        eroded = _erode(eroded)
    return mask ^ eroded


def stripe_pattern(height: int, width: int, period: int) -> np.ndarray:
    """Diagonal stripes: bool (H, W), True on the first half of each ``period`` along x + y."""
    yy, xx = np.ogrid[:height, :width]
    return ((xx + yy) % period) < (period // 2)


def _stripe_period(height: int, width: int) -> int:
    # ~1/60 of the short side (8 px at 480p) keeps both colours visible at thumbnail size.
    return max(4, 2 * round(min(height, width) / 120))


def _check_mask(name: str, mask: np.ndarray | None, size: tuple[int, int]) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != size:
        raise ValueError(f"{name} mask has shape {mask.shape}, the frame is {size}")
    return mask.astype(bool, copy=False)


@lru_cache(maxsize=32)
def _legend_patch(roles: tuple[str, ...], font_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render the legend once per (roles, size): float32 colour (h, w, 3) and alpha (h, w, 1) in [0, 1]."""
    font = load_font(font_size)
    pad = max(2, font_size // 3)
    swatch = font_size
    text_w = max(int(font.getlength(role)) for role in roles)
    line_h = font_size + pad
    width = pad + swatch + pad + text_w + pad
    height = pad + line_h * len(roles)
    rgba = Image.new("RGBA", (width, height), (*_LEGEND_BG, round(255 * _LEGEND_BG_ALPHA)))
    draw = ImageDraw.Draw(rgba)
    for i, role in enumerate(roles):
        top = pad + i * line_h
        draw.rectangle([pad, top, pad + swatch - 1, top + swatch - 1], fill=(*ROLE_COLORS[role], 255))
        draw.text(
            (2 * pad + swatch, top + swatch / 2), role, font=font, fill=(*_LEGEND_TEXT, 255), anchor="lm"
        )
    arr = np.asarray(rgba, dtype=np.float32)
    color, alpha = arr[..., :3], arr[..., 3:] / 255.0
    color.setflags(write=False)
    alpha.setflags(write=False)
    return color, alpha


def _composite_legend(out: np.ndarray, roles: tuple[str, ...]) -> None:
    """Alpha-composite the legend into the float32 frame ``out`` (H, W, 3), top-left corner, in place."""
    height, width = out.shape[:2]
    font_size = max(8, round(min(height, width) / 32))  # 15 px at 480p
    color, alpha = _legend_patch(roles, font_size)
    margin = max(2, font_size // 2)
    h = min(color.shape[0], height - margin)
    w = min(color.shape[1], width - margin)
    if h <= 0 or w <= 0:
        logger.debug("frame %dx%d too small for a legend", width, height)
        return
    region = out[margin : margin + h, margin : margin + w]
    a = alpha[:h, :w]
    region *= 1.0 - a
    region += color[:h, :w] * a


def overlay_frame(
    frame: np.ndarray,
    actor: np.ndarray | None,
    target: np.ndarray | None,
    alpha: float = 0.45,
    legend: bool = True,
) -> np.ndarray:
    """Draw the actor (pink) and target (blue) masks over one frame.

    Fills are blended with opacity ``alpha``; where both masks are set the fill alternates diagonal
    stripes of the two colours. Contours (``mask_contour``, width from ``contour_width``) are opaque,
    the target's drawn over the actor's. The legend lists the roles whose mask is not None (an empty
    mask still counts, so the legend does not flicker across a video).

    Args:
        frame: uint8 (H, W, 3) RGB.
        actor: bool (H, W) or None.
        target: bool (H, W) or None.
        alpha: fill opacity in [0, 1].
        legend: draw a small role legend in the top-left corner.
    Returns:
        uint8 (H, W, 3), a new array.
    """
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB frame (H, W, 3), got shape {frame.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    size = frame.shape[:2]
    masks = {"actor": _check_mask("actor", actor, size), "target": _check_mask("target", target, size)}
    present = tuple(role for role in ROLES if masks[role] is not None)

    out = frame.astype(np.float32)
    colors = {role: np.array(ROLE_COLORS[role], dtype=np.float32) for role in ROLES}
    both = None
    if masks["actor"] is not None and masks["target"] is not None:
        both = masks["actor"] & masks["target"]
    for role in present:
        fill = masks[role] if both is None else masks[role] & ~both
        out[fill] = out[fill] * (1.0 - alpha) + colors[role] * alpha
    if both is not None and both.any():
        stripes = stripe_pattern(*size, _stripe_period(*size))
        for role, part in (("actor", both & stripes), ("target", both & ~stripes)):
            out[part] = out[part] * (1.0 - alpha) + colors[role] * alpha
    width = contour_width(*size)
    for role in present:
        out[mask_contour(masks[role], width)] = colors[role]
    if legend and present:
        _composite_legend(out, present)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
