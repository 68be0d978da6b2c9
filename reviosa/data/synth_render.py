"""Drawing for the synthetic interaction world: shapes, textures, backgrounds, occluders.

Everything is exact: an object's mask is the set of pixels its colour was painted on and nothing
painted over afterwards, so the ground truth is the rendering itself (no anti-aliasing).
Coordinates are (x, y) in pixels, x to the right, y down; frames are (H, W) = (S, S).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Saturated, well-separated hues; backgrounds stay darker and desaturated so every colour stands out.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 40, 40),
    "green": (45, 190, 65),
    "blue": (45, 95, 235),
    "yellow": (240, 220, 45),
    "purple": (160, 70, 210),
    "orange": (250, 145, 30),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
TEXTURES = ("plain", "striped", "dotted")
# Radius as a fraction of the frame side: two bins far apart so "small" and "big" are unambiguous.
SIZES: dict[str, tuple[float, float]] = {"small": (0.055, 0.07), "big": (0.1, 0.125)}


@dataclass(frozen=True)
class Appearance:
    """How an object looks; ``radius`` in pixels (the shape fits in a disk of about that radius)."""

    colour: str
    shape: str
    size: str
    texture: str
    radius: float

    def same_look(self, other: Appearance) -> bool:
        return (self.colour, self.shape, self.size, self.texture) == (
            other.colour,
            other.shape,
            other.size,
            other.texture,
        )


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Inside test for a shape centred at the origin; dx, dy broadcast to (h, w) pixel offsets."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        # Half-side 0.85 r: about the circle's area, so shape does not leak size.
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.2 * r
    if shape == "triangle":
        # Apex up at -r, base at +0.75 r, half-width at the base r.
        top, bottom = -r, 0.75 * r
        half_width = (dy - top) / (bottom - top) * r
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half_width)
    if shape == "cross":
        arm = 0.38 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def texture_factor(texture: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray | float:
    """Brightness multiplier in object coordinates, so the texture moves with the object."""
    if texture == "plain":
        return 1.0
    period = max(3.0, 0.5 * r)
    if texture == "striped":
        return np.where(np.floor((dx + dy) / period) % 2 == 0, 1.0, 0.55)
    if texture == "dotted":
        fx = (dx / period) % 1.0 - 0.5
        fy = (dy / period) % 1.0 - 0.5
        return np.where(fx * fx + fy * fy < 0.09, 0.45, 1.0)
    raise ValueError(f"unknown texture {texture!r}")


def make_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A varied, muted background: float32 (S, S, 3) in [0, 255]."""
    from PIL import Image

    base = rng.uniform(30, 120, size=3)
    other = np.clip(base + rng.uniform(-40, 40, size=3), 15, 140)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.choice(["gradient", "noise", "stripes", "checker"])
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.0) / 2.0
    elif kind == "noise":
        # Low-frequency blobs: a coarse random grid upsampled bilinearly.
        cells = int(rng.integers(3, 7))
        coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
        t = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
    elif kind == "stripes":
        period = rng.uniform(0.1, 0.3)
        angle = rng.uniform(0, np.pi)
        t = (np.floor((np.cos(angle) * xx + np.sin(angle) * yy) / period) % 2) * 0.6
    else:
        cell = rng.uniform(0.08, 0.2)
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2) * 0.5
    image = base * (1 - t[..., None]) + other * t[..., None]
    image += rng.normal(0, 4, size=image.shape)  # sensor-like grain, so flat regions are not perfectly flat
    return np.clip(image, 0, 255).astype(np.float32)


@dataclass(frozen=True)
class Occluder:
    """A static grey bar drawn in front of every object (not an annotated object)."""

    vertical: bool
    start: int  # first pixel column (vertical) or row (horizontal)
    width: int
    shade: float


def make_occluder(rng: np.random.Generator, size: int) -> Occluder:
    width = int(rng.uniform(0.07, 0.11) * size)
    start = int(rng.uniform(0.25, 0.75) * size) - width // 2
    return Occluder(
        vertical=bool(rng.random() < 0.5), start=start, width=width, shade=float(rng.uniform(90, 170))
    )


def render_clip(
    background: np.ndarray,
    appearances: list[Appearance],
    positions: np.ndarray,
    depth_order: list[int],
    occluder: Occluder | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint every frame.

    Args:
        background: float32 (S, S, 3).
        appearances: one per object, N objects.
        positions: float (N, T, 2) centres (x, y) in pixels.
        depth_order: object indices back to front.
        occluder: optional bar in front of everything.
    Returns:
        frames uint8 (T, S, S, 3) and labels int8 (T, S, S): the visible object index, -1 for none.
    """
    num_frames = positions.shape[1]
    size = background.shape[0]
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    labels = np.full((num_frames, size, size), -1, dtype=np.int8)
    for t in range(num_frames):
        image = background.copy()
        for k in depth_order:
            _paint(image, labels[t], k, appearances[k], positions[k, t])
        if occluder is not None:
            _paint_occluder(image, labels[t], occluder)
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames, labels


def _paint(image: np.ndarray, labels: np.ndarray, index: int, look: Appearance, centre: np.ndarray) -> None:
    """Paint one object in place, inside its bounding box only (objects are small)."""
    size = image.shape[0]
    r = look.radius
    cx, cy = float(centre[0]), float(centre[1])
    x0, x1 = max(0, int(np.floor(cx - 1.3 * r))), min(size, int(np.ceil(cx + 1.3 * r)) + 1)
    y0, y1 = max(0, int(np.floor(cy - 1.3 * r))), min(size, int(np.ceil(cy + 1.3 * r)) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    dy, dx = np.ogrid[y0:y1, x0:x1]
    dx = dx - cx
    dy = dy - cy
    inside = shape_mask(look.shape, dx, dy, r)  # (h, w)
    shade = texture_factor(look.texture, dx, dy, r)
    colour = np.asarray(COLOURS[look.colour], dtype=np.float32)
    patch = np.broadcast_to(np.asarray(shade, dtype=np.float32)[..., None] * colour, (*inside.shape, 3))
    image[y0:y1, x0:x1][inside] = patch[inside]
    labels[y0:y1, x0:x1][inside] = index


def _paint_occluder(image: np.ndarray, labels: np.ndarray, occ: Occluder) -> None:
    region = (
        np.s_[:, occ.start : occ.start + occ.width]
        if occ.vertical
        else np.s_[occ.start : occ.start + occ.width, :]
    )
    image[region] = occ.shade
    labels[region] = -1
