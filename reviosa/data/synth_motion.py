"""Trajectories for the synthetic world: single-object motions and two-object interactions.

Every function returns centre paths float (T, 2) as (x, y) pixels around the origin; :func:`fit_inside`
then translates a group of paths jointly (so contacts stay contacts) to a random place where every
object stays fully in the frame. Distances scale with the frame side S and times with T, so a clip
looks alike at any size and length.

Interactions make the roles visible over time (the point of the world: an image model cannot tell
them apart): the pusher / hitter / chaser moves first and the other one moves only after contact or
in reaction; a follower retraces the leader's path some frames later.
"""

from __future__ import annotations

import numpy as np

DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SINGLE_MOTIONS = ("still", "left", "right", "up", "down", "bouncing", "circling", "shaking")
UNIDIRECTIONAL = ("chase", "push", "follow", "circle", "hit")
BIDIRECTIONAL = ("bump", "orbit")


def _unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


def single_path(motion: str, rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
    """One object's path for a motion of SINGLE_MOTIONS: float (T, 2)."""
    t = np.arange(num_frames, dtype=np.float64)[:, None]  # (T, 1)
    if motion == "still":
        return np.zeros((num_frames, 2))
    if motion in DIRECTIONS:
        # Travel 25-50% of the frame whatever T, at a steady speed.
        distance = rng.uniform(0.25, 0.5) * size
        return t * (distance / (num_frames - 1)) * np.asarray(DIRECTIONS[motion])
    if motion == "bouncing":
        # A ball hopping on a floor: |sin| hops, 2-4 of them, 15-30% of the frame high.
        hops = rng.uniform(2, 4)
        height = rng.uniform(0.15, 0.3) * size
        y = -height * np.abs(np.sin(np.pi * hops * t[:, 0] / (num_frames - 1)))
        return np.stack([np.zeros(num_frames), y], axis=1)
    if motion == "circling":
        return _orbit(rng, num_frames, rng.uniform(0.1, 0.18) * size)
    if motion == "shaking":
        # Fast left-right jitter of 3-5% of the frame: frame to frame, never a net displacement.
        amplitude = rng.uniform(0.03, 0.05) * size
        sign = np.where(np.arange(num_frames) % 2 == 0, 1.0, -1.0)
        x = amplitude * sign * rng.uniform(0.6, 1.0, num_frames)
        y = rng.uniform(-0.3, 0.3, num_frames) * amplitude
        return np.stack([x, y], axis=1)
    raise ValueError(f"unknown motion {motion!r}")


def _orbit(
    rng: np.random.Generator, num_frames: int, radius: float, phase: float | None = None
) -> np.ndarray:
    """Circle around the origin, 0.8-1.5 turns over the clip, either way round."""
    turns = rng.uniform(0.8, 1.5) * rng.choice([-1.0, 1.0])
    start = rng.uniform(0, 2 * np.pi) if phase is None else phase
    angle = start + 2 * np.pi * turns * np.arange(num_frames) / num_frames
    return radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)


def interaction_paths(
    kind: str, rng: np.random.Generator, num_frames: int, size: int, contact: float, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Paths (actor, target) of a UNIDIRECTIONAL interaction, or of the two sides of a BIDIRECTIONAL one.

    Args:
        contact: centre distance at which the two objects touch (sum of radii), pixels.
        scale: shrinks travelled distances when a first draw did not fit in the frame.
    Returns:
        two float (T, 2) paths.
    """
    builders = {
        "push": _push,
        "hit": _hit,
        "chase": _chase,
        "follow": _follow,
        "circle": _circle_around,
        "bump": _bump,
        "orbit": _orbit_pair,
    }
    if kind not in builders:
        raise ValueError(f"unknown interaction {kind!r}")
    return builders[kind](rng, num_frames, size * scale, contact)


def _push(rng, num_frames, size, contact):
    """A walks up to a still B, touches it at t_c, then both move on together (B in front)."""
    u = _unit(rng.uniform(0, 2 * np.pi))
    t_c = int(num_frames * rng.uniform(0.3, 0.45))
    gap = rng.uniform(0.15, 0.28) * size
    v_after = gap / t_c * rng.uniform(0.6, 0.9)
    t = np.arange(num_frames, dtype=np.float64)
    a = np.where(t <= t_c, -(contact + gap) + gap * t / t_c, -contact + v_after * (t - t_c))
    b = np.where(t <= t_c, 0.0, v_after * (t - t_c))
    return a[:, None] * u, b[:, None] * u


def _hit(rng, num_frames, size, contact):
    """A rushes into a still B and stops dead at contact; B flies off, slowing down (friction)."""
    u = _unit(rng.uniform(0, 2 * np.pi))
    t_c = int(num_frames * rng.uniform(0.25, 0.4))
    gap = rng.uniform(0.15, 0.25) * size
    v_hit = gap / t_c
    t = np.arange(num_frames, dtype=np.float64)
    a = np.where(t <= t_c, -(contact + gap) + gap * t / t_c, -contact)
    # B starts at 1.4x A's speed and loses 12% per frame: it travels at most ~11.7x v_hit.
    after = np.maximum(t - t_c, 0)
    b = 1.4 * v_hit * (1 - 0.88**after) / 0.12
    return a[:, None] * u, b[:, None] * u


def _chase(rng, num_frames, size, contact):
    """A runs at B from the first frame; B flees (from ~15% of the clip on), slower, on a bending path;
    A closes in but never passes through B."""
    heading = rng.uniform(0, 2 * np.pi)
    turn = rng.uniform(-0.04, 0.04)
    v_b = rng.uniform(0.25, 0.4) * size / num_frames
    v_a = v_b * rng.uniform(1.5, 1.9)
    t_start = max(1, int(0.15 * num_frames))
    b = np.zeros((num_frames, 2))
    a = np.zeros((num_frames, 2))
    a[0] = -_unit(heading) * (contact + rng.uniform(0.15, 0.25) * size)
    for t in range(1, num_frames):
        b[t] = b[t - 1] + (v_b * _unit(heading) if t >= t_start else 0.0)
        if t >= t_start:
            heading += turn
        step = b[t] - a[t - 1]
        dist = np.linalg.norm(step)
        a[t] = a[t - 1] + step / dist * min(v_a, max(0.0, dist - contact - 1.0))
    return a, b


def _follow(rng, num_frames, size, contact):
    """B wanders on a wavy path; A retraces exactly B's path, `lag` frames later."""
    u = _unit(rng.uniform(0, 2 * np.pi))
    normal = np.array([-u[1], u[0]])
    v = rng.uniform(0.3, 0.45) * size / num_frames
    lag = int(np.ceil((contact + rng.uniform(0.05, 0.1) * size) / v))
    wave = rng.uniform(0.03, 0.08) * size
    period = num_frames * rng.uniform(0.5, 1.0)
    t = np.arange(-lag, num_frames, dtype=np.float64)[:, None]  # B existed before the clip started
    trail = t * v * u + wave * np.sin(2 * np.pi * t / period) * normal  # (lag + T, 2)
    return trail[:num_frames], trail[lag:]


def _circle_around(rng, num_frames, size, contact):
    """B stays still; A circles around it, never touching."""
    radius = contact + rng.uniform(0.06, 0.12) * size
    return _orbit(rng, num_frames, radius), np.zeros((num_frames, 2))


def _bump(rng, num_frames, size, contact):
    """Both run into each other, touch at t_c, and bounce back (symmetric: no actor, no target)."""
    u = _unit(rng.uniform(0, 2 * np.pi))
    t_c = int(num_frames * rng.uniform(0.35, 0.55))
    gap = rng.uniform(0.12, 0.2) * size
    v_back = gap / t_c * rng.uniform(0.6, 1.0)
    t = np.arange(num_frames, dtype=np.float64)
    d = np.where(t <= t_c, contact / 2 + gap * (1 - t / t_c), contact / 2 + v_back * (t - t_c))
    return -d[:, None] * u, d[:, None] * u


def _orbit_pair(rng, num_frames, size, contact):
    """Both circle around their common centre, on opposite sides."""
    radius = contact / 2 + rng.uniform(0.04, 0.1) * size
    a = _orbit(rng, num_frames, radius)
    return a, -a


def fit_inside(
    paths: list[np.ndarray], radii: list[float], size: int, rng: np.random.Generator
) -> list[np.ndarray] | None:
    """Translate paths jointly to a random place where every object stays inside the frame.

    Returns the shifted paths, or None when they cannot fit (the caller draws again, smaller).
    """
    low = np.min([p.min(axis=0) - 1.3 * r for p, r in zip(paths, radii, strict=True)], axis=0)  # (2,)
    high = np.max([p.max(axis=0) + 1.3 * r for p, r in zip(paths, radii, strict=True)], axis=0)
    room = size - 1 - (high - low)
    if np.any(room < 0):
        return None
    shift = -low + rng.uniform(0, 1, size=2) * room
    return [p + shift for p in paths]


def observed_motion_labels(path: np.ndarray, size: int) -> set[str]:
    """Motion labels an observer could fairly use for an interaction participant's path (T, 2).

    Conservative on purpose: a motion-only expression is only written when no other object could be
    described by it, so a participant that at some point moves left counts as "left", and one
    that stays still for a quarter of the clip counts as "still".
    """
    labels = set()
    displacement = path - path[0]  # (T, 2)
    for name, direction in DIRECTIONS.items():
        if np.max(displacement @ np.asarray(direction)) > 0.06 * size:
            labels.add(name)
    steps = np.linalg.norm(np.diff(path, axis=0), axis=1)
    if np.mean(steps < 0.2) >= 0.25:
        labels.add("still")
    return labels
