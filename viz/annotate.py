"""Numbered object labels on a frame, for the data-annotation pipeline (issue 7).

Each object gets a distinct colour, a contour, and its label in a dark box near the object's centre, so
a person or a captioning model can name objects by number. Numpy in, numpy out.

Axis letters: N objects, H/W pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from viz.overlay import load_font, mask_contour

logger = logging.getLogger(__name__)

__all__ = ["OBJECT_PALETTE", "label_objects", "label_anchor"]

# Kelly-style maximally distinct colours, bright enough to read over dark and light scenes; object i
# takes OBJECT_PALETTE[i % len(OBJECT_PALETTE)].
OBJECT_PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)
_BOX_BG = (0, 0, 0)
_TEXT = (255, 255, 255)
# Fill opacity of the highlighted object when one object is shown at a time.
_HIGHLIGHT_ALPHA = 0.35


def label_anchor(mask: np.ndarray) -> tuple[int, int] | None:
    """Where to put an object's label: the mask pixel nearest its centroid, as (x, y); None if empty.

    The centroid of a ring or a crescent lies outside the object, so the nearest pixel of the mask
    keeps the label on the object it names.
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    cy, cx = ys.mean(), xs.mean()
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return int(xs[i]), int(ys[i])


def _draw_label(
    draw: ImageDraw.ImageDraw, anchor: tuple[int, int], text: str, color, font_size: int, size
) -> None:
    """A dark box with a border in the object's colour and white text, centred on ``anchor``, kept in frame."""
    font = load_font(font_size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, font_size // 4)
    box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
    width, height = size
    x0 = min(max(anchor[0] - box_w // 2, 0), max(width - box_w, 0))
    y0 = min(max(anchor[1] - box_h // 2, 0), max(height - box_h, 0))
    draw.rectangle(
        [x0, y0, x0 + box_w - 1, y0 + box_h - 1], fill=_BOX_BG, outline=color, width=max(1, pad // 2)
    )
    draw.text((x0 + pad - left, y0 + pad - top), text, font=font, fill=_TEXT)


def label_objects(
    frame: np.ndarray,
    masks: Sequence[np.ndarray],
    labels: Sequence[str | int],
    highlight: int | None = None,
) -> np.ndarray:
    """Draw coloured contours and numeric labels for objects on a frame.

    Args:
        frame: uint8 (H, W, 3) RGB.
        masks: N bool (H, W) masks, one per object; an empty mask is skipped (nothing to point at).
        labels: N labels (e.g. object ids), drawn as text.
        highlight: None draws every object; an index i draws only object i, with a light fill of its
            colour as well, so the annotator sees one object at a time.
    Returns:
        uint8 (H, W, 3), a new array. Object i is drawn in ``OBJECT_PALETTE[i % 12]`` whether or not
        others are shown, so colours stay stable across the one-at-a-time and all-objects views.
    """
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB frame (H, W, 3), got shape {frame.shape}")
    if len(masks) != len(labels):
        raise ValueError(f"{len(masks)} masks but {len(labels)} labels")
    if highlight is not None and not 0 <= highlight < len(masks):
        raise ValueError(f"highlight index {highlight} out of range for {len(masks)} objects")
    height, width = frame.shape[:2]
    for i, mask in enumerate(masks):
        if np.shape(mask) != (height, width):
            raise ValueError(f"mask {i} has shape {np.shape(mask)}, the frame is {(height, width)}")
    shown = range(len(masks)) if highlight is None else [highlight]
    # Thicker than the role overlay (2 px at 480p): these contours must stand out to an annotator.
    thickness = max(2, round(min(height, width) / 240))
    out = frame.astype(np.float32)
    anchors = {}
    for i in shown:
        mask = np.asarray(masks[i], dtype=bool)
        color = np.array(OBJECT_PALETTE[i % len(OBJECT_PALETTE)], dtype=np.float32)
        if highlight is not None:
            out[mask] = out[mask] * (1.0 - _HIGHLIGHT_ALPHA) + color * _HIGHLIGHT_ALPHA
        out[mask_contour(mask, thickness)] = color
        anchors[i] = label_anchor(mask)
        if anchors[i] is None:
            logger.debug("object %s has an empty mask; no label drawn", labels[i])

    image = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    font_size = max(12, round(min(height, width) / 20))  # 24 px at 480p
    for i, anchor in anchors.items():
        if anchor is not None:
            color = OBJECT_PALETTE[i % len(OBJECT_PALETTE)]
            _draw_label(draw, anchor, str(labels[i]), color, font_size, (width, height))
    return np.array(image)
