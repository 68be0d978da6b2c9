"""Fresh synthetic stills and short clips for the pretraining stages, drawn on the fly.

Each draw renders only the frames it returns, so a step costs milliseconds of numpy and no stage
can memorise a fixed set of objects. Objects, backgrounds, occluders, single motions and the
two-object interactions are the synthetic world's own (``reviosa.data.synth_*``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reviosa.data.synth import random_look
from reviosa.data.synth_motion import (
    BIDIRECTIONAL,
    SINGLE_MOTIONS,
    UNIDIRECTIONAL,
    fit_inside,
    interaction_paths,
    single_path,
)
from reviosa.data.synth_render import Appearance, make_background, make_occluder, render_clip, shape_mask

PATH_FRAMES = 32  # a clip's whole path; the frames returned are taken from it at a stride


class Backgrounds:
    """A pool of the world's backgrounds, drawn once: one costs more than rendering a whole short
    clip, so each draw takes a pooled one, flipped and rolled at random (seeded by the caller)."""

    def __init__(self, rng: np.random.Generator, size: int, count: int = 64):
        self.pool = [make_background(rng, size) for _ in range(count)]

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """float32 (S, S, 3)."""
        bg = self.pool[int(rng.integers(len(self.pool)))]
        if rng.random() < 0.5:
            bg = bg[:, ::-1]
        if rng.random() < 0.5:
            bg = bg[::-1]
        shift = rng.integers(0, bg.shape[0], size=2)
        return np.ascontiguousarray(np.roll(bg, tuple(int(s) for s in shift), axis=(0, 1)))


@dataclass
class Clip:
    """frames uint8 (T, S, S, 3); labels int8 (T, S, S): the visible object's index, -1 none;
    looks / motions / paths: per object (paths float (N, T, 2) at the returned frames)."""

    frames: np.ndarray
    labels: np.ndarray
    looks: list[Appearance]
    motions: list[str]
    paths: np.ndarray

    def masks(self, k: int) -> np.ndarray:
        """bool (T, S, S): object k's visible pixels."""
        return self.labels == k


def full_area(look: Appearance) -> float:
    """The object's whole area in pixels (its shape on a grid around the origin)."""
    r = look.radius
    d = np.arange(-int(np.ceil(1.3 * r)), int(np.ceil(1.3 * r)) + 1, dtype=np.float64)
    return float(shape_mask(look.shape, d[None, :], d[:, None], r).sum())


def random_clip(
    rng: np.random.Generator,
    backgrounds: Backgrounds,
    frames: int,
    max_objects: int = 4,
    occluder_prob: float = 0.25,
    interaction_prob: float = 0.5,
    max_stride: int = 4,
    stride: int | None = None,
) -> Clip:
    """One to ``max_objects`` objects; with ``interaction_prob`` two of them interact (push, chase,
    bump, ...), the others move alone; ``frames`` frames of their paths at ``stride`` (None: at
    random from 1 to ``max_stride``)."""
    size = backgrounds.pool[0].shape[0]
    n = int(rng.integers(1, max_objects + 1))
    looks = [random_look(rng, size) for _ in range(n)]
    paths: list[np.ndarray] = []
    motions: list[str] = []
    k = 0
    if n >= 2 and rng.random() < interaction_prob:
        kind = str(rng.choice([*UNIDIRECTIONAL, *BIDIRECTIONAL]))
        pair = _fitted(
            lambda scale: interaction_paths(
                kind, rng, PATH_FRAMES, size, looks[0].radius + looks[1].radius, scale
            ),
            looks[:2], size, rng,
        )  # fmt: skip
        if pair is not None:
            paths += pair
            motions += [kind, kind]
            k = 2
    for look in looks[k:]:
        motion = str(rng.choice(SINGLE_MOTIONS))
        path = _fitted(
            lambda scale, m=motion: [single_path(m, rng, PATH_FRAMES, size) * scale], [look], size, rng
        )
        if path is None:  # cannot happen for a lone object at scale 0, kept for safety
            motion, path = "still", [np.full((PATH_FRAMES, 2), size / 2.0)]
        paths += path
        motions.append(motion)
    stride = stride or int(rng.integers(1, max_stride + 1))
    stride = min(stride, max(1, (PATH_FRAMES - 1) // max(frames - 1, 1)))
    start = int(rng.integers(0, PATH_FRAMES - (frames - 1) * stride))
    idx = start + stride * np.arange(frames)
    positions = np.stack(paths)[:, idx]  # (N, T, 2)
    occluder = make_occluder(rng, size) if rng.random() < occluder_prob else None
    order = [int(i) for i in rng.permutation(n)]
    out, labels = render_clip(backgrounds.draw(rng), looks, positions, order, occluder)
    return Clip(out, labels, looks, motions, positions)


def _fitted(make, looks, size, rng) -> list[np.ndarray] | None:
    """Paths from ``make(scale)`` translated inside the frame, shrinking the motion until they fit."""
    for scale in (1.0, 0.7, 0.45, 0.0):
        placed = fit_inside(make(scale), [look.radius for look in looks], size, rng)
        if placed is not None:
            return placed
    return None
