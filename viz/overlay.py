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
    "draw_legend",
    "legend_font_size",
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
    """One step of binary erosion with a 3x3 square; pixels outside the frame count as background.

    The square is separable: a 3-wide AND along rows, then along columns (4 passes instead of 8).
    """
    padded = np.pad(mask, 1, constant_values=False)
    rows = padded[:, :-2] & padded[:, 1:-1]
    rows &= padded[:, 2:]  # (H + 2, W)
    out = rows[:-2] & rows[1:-1]
    out &= rows[2:]
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


def stripe_pattern(height: int, width: int, period: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Diagonal stripes: bool (H, W), True on the first half of each ``period`` along x + y.

    ``offset`` = (y0, x0) places the pattern as if cut from a bigger image at that corner, so stripes
    drawn on a crop line up with the full frame.
    """
    yy, xx = np.ogrid[offset[0] : offset[0] + height, offset[1] : offset[1] + width]
    return ((xx + yy) % period) < (period // 2)


@lru_cache(maxsize=4)
def _frame_stripes(height: int, width: int, period: int) -> np.ndarray:
    """``stripe_pattern`` of a whole frame, computed once per frame size (read-only)."""
    stripes = stripe_pattern(height, width, period)
    stripes.setflags(write=False)
    return stripes


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


# The legend is drawn this many times larger and box-filtered down: at 8-15 px, glyphs placed on whole
# pixels read as "targe t"; supersampled, the advances keep their fractional widths.
_LEGEND_SUPERSAMPLE = 4


def legend_font_size(height: int, width: int) -> int:
    """Legend text height in pixels for a frame as displayed: ~1/28 of sqrt(H * W), 9 to 32 px.

    14 px on a 384x384 frame (a 128 px clip shown 3x), 15 px at 640x272, 23 px at 854x480.
    """
    return int(np.clip(round(np.sqrt(height * width) / 28), 9, 32))


@lru_cache(maxsize=32)
def _legend_patch(roles: tuple[str, ...], font_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render the legend once per (roles, size): float32 colour (h, w, 3) and alpha (h, w, 1) in [0, 1]."""
    s = _LEGEND_SUPERSAMPLE
    font = load_font(font_size * s)
    pad = max(2, font_size // 3)
    swatch = font_size
    text_w = max(font.getlength(role) for role in roles) / s
    line_h = font_size + pad
    width = int(np.ceil(pad + swatch + pad + text_w + pad))
    height = pad + line_h * len(roles)
    rgba = Image.new("RGBA", (width * s, height * s), (*_LEGEND_BG, round(255 * _LEGEND_BG_ALPHA)))
    draw = ImageDraw.Draw(rgba)
    for i, role in enumerate(roles):
        top = pad + i * line_h
        draw.rectangle(
            [pad * s, top * s, (pad + swatch) * s - 1, (top + swatch) * s - 1], fill=(*ROLE_COLORS[role], 255)
        )
        draw.text(
            ((2 * pad + swatch) * s, (top + swatch / 2) * s),
            role,
            font=font,
            fill=(*_LEGEND_TEXT, 255),
            anchor="lm",
        )
    arr = np.asarray(rgba.resize((width, height), Image.Resampling.BOX), dtype=np.float32)
    color, alpha = arr[..., :3], arr[..., 3:] / 255.0
    color.setflags(write=False)
    alpha.setflags(write=False)
    return color, alpha


def _legend_box(
    height: int, width: int, roles: tuple[str, ...]
) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Where the legend goes (top-left, inside the frame) and its colour / alpha patch cropped to fit."""
    font_size = legend_font_size(height, width)
    color, alpha = _legend_patch(roles, font_size)
    margin = max(2, font_size // 2)
    h = max(0, min(color.shape[0], height - margin))
    w = max(0, min(color.shape[1], width - margin))
    return slice(margin, margin + h), slice(margin, margin + w), color[:h, :w], alpha[:h, :w]


def draw_legend(frame: np.ndarray, roles: tuple[str, ...]) -> np.ndarray:
    """The role legend (``roles`` from ``ROLES``) in the top-left corner of uint8 (H, W, 3) ``frame``.

    For frames shown enlarged (a 128 px clip at 3x), enlarge first and draw the legend after, so it is
    sized for the picture as seen (`legend_font_size`). Returns a new array.
    """
    result = frame.copy()
    if not roles:
        return result
    rows, cols, color, alpha = _legend_box(*frame.shape[:2], tuple(roles))
    part = result[rows, cols].astype(np.float32)
    result[rows, cols] = np.clip(part * (1.0 - alpha) + color * alpha + 0.5, 0, 255).astype(np.uint8)
    return result


def _bbox(masks: list[np.ndarray], extra: tuple[slice, slice] | None) -> tuple[slice, slice] | None:
    """Smallest (rows, cols) slices holding every set pixel of ``masks`` and the ``extra`` box."""
    boxes = []
    for mask in masks:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if len(rows):
            boxes.append((rows[0], rows[-1] + 1, cols[0], cols[-1] + 1))
    if extra is not None and extra[0].stop > extra[0].start and extra[1].stop > extra[1].start:
        boxes.append((extra[0].start, extra[0].stop, extra[1].start, extra[1].stop))
    if not boxes:
        return None
    y0, y1, x0, x1 = (f(b[i] for b in boxes) for i, f in enumerate((min, max, min, max)))
    return slice(int(y0), int(y1)), slice(int(x0), int(x1))


# Codes of the per-pixel label map that drives the single blend in ``overlay_frame``.
_NONE, _ACTOR_FILL, _TARGET_FILL, _ACTOR_EDGE, _TARGET_EDGE = range(5)


def _fill_colors(alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per label code: colour float32 (5, 3) and opacity float32 (5,); fills at ``alpha``, contours opaque."""
    colors = np.array([(0, 0, 0), ACTOR_COLOR, TARGET_COLOR, ACTOR_COLOR, TARGET_COLOR], np.float32)
    alphas = np.array([0.0, alpha, alpha, 1.0, 1.0], np.float32)
    return colors, alphas


@lru_cache(maxsize=8)
def _blend_table(alpha: float) -> np.ndarray:
    """uint8 (5 * 3 * 256,): the blended value of input ``v`` in channel ``c`` under label ``k`` at
    ``(k * 3 + c) * 256 + v``; float32 arithmetic as ``v * (1 - a) + colour * a``, rounded to nearest.

    A lookup instead of per-pixel float math: the same numbers, 4x less work per frame.
    """
    colors, alphas = _fill_colors(alpha)
    values = np.arange(256, dtype=np.float32)
    out = values[None, None, :] * (1.0 - alphas)[:, None, None]  # (5, 1, 256)
    out = out + (colors * alphas[:, None])[:, :, None]  # (5, 3, 256)
    out += 0.5
    table = np.clip(out, 0, 255).astype(np.uint8).reshape(-1)
    table.setflags(write=False)
    return table


@lru_cache(maxsize=8)
def _code_table(alpha: float) -> np.ndarray:
    """``_blend_table`` indexed by pixel code instead of label: uint8 (32 * 3 * 256,)."""
    table = np.ascontiguousarray(_blend_table(alpha).reshape(-1, 768)[_LABEL_OF_CODE].reshape(-1))
    table.setflags(write=False)
    return table


# Bits of the per-pixel code that ``_pixel_codes`` builds; ``_LABEL_OF_CODE`` resolves them to a label.
_A, _T, _STRIPE, _A_EDGE, _T_EDGE = 1, 2, 4, 8, 16


def _label_of(code: int) -> int:
    """Fills, overlap stripes, then contours on top (the target's over the actor's)."""
    if code & _T_EDGE:
        return _TARGET_EDGE
    if code & _A_EDGE:
        return _ACTOR_EDGE
    if code & _A and code & _T:
        return _ACTOR_FILL if code & _STRIPE else _TARGET_FILL
    return _ACTOR_FILL if code & _A else _TARGET_FILL if code & _T else _NONE


_LABEL_OF_CODE = np.array([_label_of(code) for code in range(32)], dtype=np.uint8)


def _pixel_codes(actor: np.ndarray | None, target: np.ndarray | None, offset, full_size) -> np.ndarray:
    """uint8 (h, w): OR of the bits above; a few uint8 passes instead of masked assignments."""
    shape = (actor if actor is not None else target).shape
    code = np.zeros(shape, dtype=np.uint8)
    width = contour_width(*full_size)
    # The crop holds the masks' whole bounding box, so its edge is background, as the frame edge is.
    for mask, fill, edge in ((actor, _A, _A_EDGE), (target, _T, _T_EDGE)):
        if mask is not None:
            code |= mask.view(np.uint8) * np.uint8(fill)
            code |= mask_contour(mask, width).view(np.uint8) * np.uint8(edge)
    if actor is not None and target is not None:
        stripes = _frame_stripes(*full_size, _stripe_period(*full_size))
        stripes = stripes[offset[0] : offset[0] + shape[0], offset[1] : offset[1] + shape[1]]
        code |= stripes.view(np.uint8) * np.uint8(_STRIPE)  # only read where both fills are set
    return code


def _label_map(actor: np.ndarray | None, target: np.ndarray | None, offset, full_size) -> np.ndarray:
    """uint8 (h, w) label codes (``_NONE`` ... ``_TARGET_EDGE``) of the crop."""
    return _LABEL_OF_CODE[_pixel_codes(actor, target, offset, full_size)]


def overlay_frame(
    frame: np.ndarray,
    actor: np.ndarray | None,
    target: np.ndarray | None,
    alpha: float = 0.45,
    legend: bool = True,
) -> np.ndarray:
    """Draw the actor (pink) and target (blue) masks over one frame.

    Fills are blended with opacity ``alpha``; where both masks are set the fill alternates diagonal
    stripes of the two colours (period ~1/60 of the short side). Contours (``mask_contour``, width from
    ``contour_width``) are opaque, the target's drawn over the actor's. The legend lists the roles whose
    mask is not None (an empty mask still counts, so the legend does not flicker across a video).

    Only the bounding box of the masks and the legend is touched; fills and contours are one table
    lookup per channel value (``_blend_table``), and only the legend's box is blended in float32
    (bench/bench_viz.py times it).

    Args:
        frame: uint8 (H, W, 3) RGB.
        actor: bool (H, W) or None.
        target: bool (H, W) or None.
        alpha: fill opacity in [0, 1].
        legend: draw a small role legend in the top-left corner.
    Returns:
        uint8 (H, W, 3), a new array.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB frame (H, W, 3), got {frame.dtype} {frame.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    size = frame.shape[:2]
    actor, target = _check_mask("actor", actor, size), _check_mask("target", target, size)
    present = tuple(role for role, mask in zip(ROLES, (actor, target), strict=True) if mask is not None)
    result = frame.copy()
    box = _legend_box(*size, present) if legend and present else None
    if box is not None and box[3].size == 0:
        logger.debug("frame %dx%d too small for a legend", size[1], size[0])
        box = None
    region = _bbox([m for m in (actor, target) if m is not None], box[:2] if box else None)
    if region is None:
        return result

    crop = [None if m is None else m[region] for m in (actor, target)]
    codes = _pixel_codes(*crop, (region[0].start, region[1].start), size)
    if codes.any():
        # Fills and contours: one lookup per channel value, out = table[code, channel, value]
        # (``_code_table``: the float32 blend, rounded, for every input value).
        index = frame[region].astype(np.uint16)  # (h, w, 3)
        code = codes.astype(np.uint16) * 768
        for channel in range(3):  # per channel: broadcasting a (h, w, 1) code over 3 is 2x slower
            index[..., channel] += code + 256 * channel
        result[region] = np.take(_code_table(float(alpha)), index)
    if box is not None:
        # The legend goes over the blended fills: redo its small box in float32, in the one order
        # (fill blend, legend blend, rounding) that the table's values come from.
        rows, cols, color, a = box
        local = (
            slice(rows.start - region[0].start, rows.stop - region[0].start),
            slice(cols.start - region[1].start, cols.stop - region[1].start),
        )
        out = frame[rows, cols].astype(np.float32)
        colors, alphas = _fill_colors(float(alpha))
        code = _LABEL_OF_CODE[codes[local]]
        out *= (1.0 - alphas)[code][..., None]
        out += (colors * alphas[:, None])[code]
        out *= 1.0 - a
        out += color * a
        out += 0.5  # round to nearest on the one conversion back to uint8
        result[rows, cols] = np.clip(out, 0, 255).astype(np.uint8)
    return result
