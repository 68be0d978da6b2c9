"""A synthetic interaction world, written in the InterRVOS layout.

Short clips (16-48 frames, 128-256 px) of 2-5 flat shapes that differ in colour, shape, size and
texture over varied backgrounds, sometimes behind an occluding bar. Objects move on their own
(still, in a direction, bouncing, circling, shaking) or interact: unidirectionally (chase, push,
follow, circle around, hit: actor and target roles only visible over time) or mutually (bump into,
circle around each other). Some clips hold look-alike objects that only their motion tells apart, and
groups that share shape and motion. Expressions of every caption type are written for each clip,
each checked to pick out exactly its ground truth (see ``synth_language``). Masks are exact.

Seeds: clip ``i`` of split ``s`` draws from ``SeedSequence([seed, SPLIT_CODES[s], i])``, so train, val
and test never share a random stream, even when generated with the same ``--seed``; a clip depends
only on (seed, split, i), not on how many clips are generated.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reviosa.data.interrvos import CAPTION_TYPES, ExpressionSpec, ObjectTrack, VideoRecord, write_dataset
from reviosa.data.synth_language import (
    Candidate,
    SceneFacts,
    bidirectional_candidates,
    corpus,
    multi_candidates,
    single_candidates,
    unidirectional_candidates,
)
from reviosa.data.synth_motion import (
    BIDIRECTIONAL,
    DIRECTIONS,
    SINGLE_MOTIONS,
    UNIDIRECTIONAL,
    fit_inside,
    interaction_paths,
    observed_motion_labels,
    single_path,
)
from reviosa.data.synth_render import (
    COLOURS,
    SHAPES,
    SIZES,
    TEXTURES,
    Appearance,
    make_background,
    make_occluder,
    render_clip,
)

logger = logging.getLogger(__name__)

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# Per clip, at most this many expressions of each caption type (all types when the scene allows).
MAX_PER_TYPE = {"unidirectional": 6, "bidirectional": 2, "multi": 2, "single": 5}
MIN_VISIBLE = 0.3  # an object counts as visible in a frame when >= 30% of its area shows


@dataclass(frozen=True)
class WorldConfig:
    """Generator settings."""

    size: int = 128  # frame side S in pixels (128-256)
    frames: tuple[int, int] = (16, 48)  # clip length T is drawn uniformly in [lo, hi]
    occluder_prob: float = 0.25  # clips with a static bar in front of the objects
    lookalike_prob: float = 0.3  # clips with two identical-looking objects (told apart by motion)
    group_prob: float = 0.3  # clips with two objects sharing shape and motion
    uni_prob: float = 0.8  # clips with a unidirectional interaction
    bi_prob: float = 0.35  # clips with a bidirectional interaction

    def __post_init__(self):
        if not 64 <= self.size <= 512:
            raise ValueError(f"frame size {self.size} outside 64-512 px")
        lo, hi = self.frames
        if not 4 <= lo <= hi:
            raise ValueError(f"frame range {self.frames} must satisfy 4 <= lo <= hi")


@dataclass
class _Plan:
    """Objects of one clip before rendering."""

    looks: list[Appearance]
    paths: list[np.ndarray]  # per object float (T, 2)
    facts: SceneFacts


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLIT_CODES:
        raise ValueError(f"split {split!r} is none of {tuple(SPLIT_CODES)}")
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], index]))


# --------------------------------------------------------------------------------------------- planning


def random_look(rng: np.random.Generator, size: int, shape: str | None = None) -> Appearance:
    """A random object look; ``size`` is the frame side in pixels (the radius scales with it)."""
    size_name = str(rng.choice(list(SIZES)))
    return Appearance(
        colour=str(rng.choice(list(COLOURS))),
        shape=shape or str(rng.choice(SHAPES)),
        size=size_name,
        texture=str(rng.choice(TEXTURES, p=[0.5, 0.25, 0.25])),
        radius=float(rng.uniform(*SIZES[size_name]) * size),
    )


def _units(rng: np.random.Generator, num_objects: int, cfg: WorldConfig) -> list[tuple[str, str]]:
    """Split the objects into units: ("uni", kind), ("bi", kind), ("group", motion), ("lookalike", ""),
    and ("single", motion) for the rest."""
    units, left = [], num_objects
    for name, prob, options in (
        ("uni", cfg.uni_prob, UNIDIRECTIONAL),
        ("bi", cfg.bi_prob, BIDIRECTIONAL),
        ("group", cfg.group_prob, SINGLE_MOTIONS),
        ("lookalike", cfg.lookalike_prob, ("",)),
    ):
        if left >= 2 and rng.random() < prob:
            units.append((name, str(rng.choice(options))))
            left -= 2
    units += [("single", str(rng.choice(SINGLE_MOTIONS))) for _ in range(left)]
    return units


def _place(rng, paths, radii, size, redraw) -> list[np.ndarray]:
    """Fit paths in the frame, redrawing them smaller (x0.8 each time) until they do."""
    scale = 1.0
    for _ in range(12):
        placed = fit_inside(paths, radii, size, rng)
        if placed is not None:
            return placed
        scale *= 0.8
        paths = redraw(scale)
    raise RuntimeError("could not fit the paths in the frame")  # unreachable: scale -> 0 always fits


def _plan(rng: np.random.Generator, cfg: WorldConfig, num_frames: int) -> _Plan:
    size = cfg.size
    num_objects = int(rng.integers(2, 6))
    looks: list[Appearance] = []
    paths: list[np.ndarray] = []
    motions: list[set[str]] = []
    single: list[str | None] = []
    relations, mutual = [], []
    for unit, kind in _units(rng, num_objects, cfg):
        first = len(looks)
        if unit in ("uni", "bi"):
            pair = [random_look(rng, size), random_look(rng, size)]
            contact = pair[0].radius + pair[1].radius
            pair_paths = _place(
                rng,
                list(interaction_paths(kind, rng, num_frames, size, contact)),
                [p.radius for p in pair],
                size,
                lambda s, kind=kind, contact=contact: list(
                    interaction_paths(kind, rng, num_frames, size, contact, s)
                ),
            )
            looks += pair
            paths += pair_paths
            circling = kind in ("circle", "orbit")
            motions += [observed_motion_labels(pair_paths[0], size) | ({"circling"} if circling else set())]
            motions += [
                observed_motion_labels(pair_paths[1], size) | ({"circling"} if kind == "orbit" else set())
            ]
            single += [None, None]
            (relations if unit == "uni" else mutual).append((kind, first, first + 1))
            continue
        if unit == "group":
            shape = str(rng.choice(SHAPES))
            members = [(random_look(rng, size, shape), kind), (random_look(rng, size, shape), kind)]
        elif unit == "lookalike":
            twin = random_look(rng, size)
            m1, m2 = rng.choice(SINGLE_MOTIONS, size=2, replace=False)
            members = [(twin, str(m1)), (twin, str(m2))]
        else:
            members = [(random_look(rng, size), kind)]
        for look, motion in members:
            path = _place(
                rng,
                [single_path(motion, rng, num_frames, size)],
                [look.radius],
                size,
                lambda s, motion=motion: [single_path(motion, rng, num_frames, int(size * s))],
            )[0]
            looks.append(look)
            paths.append(path)
            motions.append({motion})
            single.append(motion)
    return _Plan(looks, paths, SceneFacts(looks, motions, single, relations, mutual))


# --------------------------------------------------------------------------------------------- clips


def _visible_enough(labels: np.ndarray, looks: list[Appearance], num_objects: int) -> bool:
    """Every object shows >= MIN_VISIBLE of its area in at least 70% of the frames."""
    counts = np.stack([(labels == k).sum(axis=(1, 2)) for k in range(num_objects)])  # (N, T)
    full = np.array([_area(look) for look in looks])[:, None]  # (N, 1)
    return bool(np.all(np.mean(counts >= MIN_VISIBLE * full, axis=1) >= 0.7))


def _area(look: Appearance) -> float:
    """Approximate pixel area of a shape (for the visibility check only)."""
    r = look.radius
    factor = {
        "circle": np.pi,
        "square": 4 * 0.85**2,
        "diamond": 2 * 1.2**2,
        "triangle": 1.75,
        "cross": 4 * 0.38 * 2 - 4 * 0.38**2,
    }
    return factor[look.shape] * r * r


def _choose(candidates: list[Candidate], rng: np.random.Generator) -> list[Candidate]:
    """Deduplicate texts and keep at most MAX_PER_TYPE of each caption type, at random."""
    unique = {}
    for c in candidates:
        unique.setdefault(c.text, c)
    chosen = []
    for caption_type in CAPTION_TYPES:
        pool = [c for c in unique.values() if c.caption_type == caption_type]
        if len(pool) > MAX_PER_TYPE[caption_type]:
            keep = rng.choice(len(pool), size=MAX_PER_TYPE[caption_type], replace=False)
            pool = [pool[k] for k in sorted(keep)]
        chosen += pool
    return chosen


def make_clip(seed: int, split: str, index: int, cfg: WorldConfig | None = None) -> tuple[VideoRecord, dict]:
    """Generate clip ``index`` of a split: the record to write and a few facts for the summary."""
    cfg = cfg or WorldConfig()
    rng = clip_rng(seed, split, index)
    num_frames = int(rng.integers(cfg.frames[0], cfg.frames[1] + 1))
    for _attempt in range(20):
        plan = _plan(rng, cfg, num_frames)
        occluder = make_occluder(rng, cfg.size) if rng.random() < cfg.occluder_prob else None
        order = [int(k) for k in rng.permutation(len(plan.looks))]
        frames, labels = render_clip(
            make_background(rng, cfg.size), plan.looks, np.stack(plan.paths), order, occluder
        )
        if not _visible_enough(labels, plan.looks, len(plan.looks)):
            continue
        facts = plan.facts
        candidates = single_candidates(facts, rng) + multi_candidates(facts)
        candidates += unidirectional_candidates(facts, rng) + bidirectional_candidates(facts, rng)
        expressions = _choose(candidates, rng)
        if expressions:
            break
    else:
        raise RuntimeError(f"clip {index} of {split} (seed {seed}): no valid scene in 20 attempts")
    record = VideoRecord(
        video_id=f"{split}_{seed}_{index:05d}",
        frames=frames,
        objects=[ObjectTrack(obj_id=k, masks=labels == k) for k in range(len(plan.looks))],
        expressions=[
            ExpressionSpec(c.text, c.caption_type, list(c.subject), list(c.object)) for c in expressions
        ],
    )
    info = {
        "frames": num_frames,
        "objects": len(plan.looks),
        "caption_types": Counter(c.caption_type for c in expressions),
        "levels": Counter(f"{c.caption_type}/{c.level}" for c in expressions),
        "interactions": Counter(k for k, _, _ in facts.relations + facts.mutual),
        "lookalike": any(a.same_look(b) for i, a in enumerate(plan.looks) for b in plan.looks[i + 1 :]),
        "occluded": occluder is not None,
        "facts": facts,  # looks, motions and relations: what more expressions could be written from
    }
    return record, info


def generate_split(
    out_dir: str | Path,
    split: str,
    clips: int,
    seed: int = 0,
    size: int = 128,
    frames: tuple[int, int] = (16, 48),
    overwrite: bool = False,
) -> dict:
    """Write ``clips`` clips to ``out_dir/split`` and save ``summary.json`` there; returns the summary."""
    if clips < 1:
        raise ValueError(f"--clips must be >= 1, got {clips}")
    cfg = WorldConfig(size=size, frames=tuple(frames))
    split_dir = Path(out_dir) / split
    clip_rng(seed, split, 0)  # validates the split name before touching the disk
    if split_dir.exists() and any(split_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{split_dir} is not empty (pass overwrite / --overwrite to replace it)")
        shutil.rmtree(split_dir)
    infos = []

    def records():
        for i in range(clips):
            record, info = make_clip(seed, split, i, cfg)
            infos.append(info)
            if (i + 1) % 50 == 0:
                logger.info("%s: %d / %d clips", split, i + 1, clips)
            yield record

    write_dataset(split_dir, records())
    summary = summarise(infos, split=split, seed=seed, cfg=cfg)
    with open(split_dir / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def summarise(infos: list[dict], split: str, seed: int, cfg: WorldConfig) -> dict:
    frames = [i["frames"] for i in infos]
    types, levels, kinds = Counter(), Counter(), Counter()
    for info in infos:
        types.update(info["caption_types"])
        levels.update(info["levels"])
        kinds.update(info["interactions"])
    return {
        "split": split,
        "seed": seed,
        "size": cfg.size,
        "clips": len(infos),
        "frames": {
            "min": min(frames),
            "max": max(frames),
            "mean": round(float(np.mean(frames)), 2),
            "total": sum(frames),
        },
        "expressions": sum(types.values()),
        "expressions_per_caption_type": {t: types.get(t, 0) for t in CAPTION_TYPES},
        "expressions_per_level": dict(sorted(levels.items())),
        "objects_per_clip": {str(n): c for n, c in sorted(Counter(i["objects"] for i in infos).items())},
        "interactions": dict(sorted(kinds.items())),
        "lookalike_clips": sum(i["lookalike"] for i in infos),
        "occluded_clips": sum(i["occluded"] for i in infos),
    }


def format_summary(summary: dict) -> str:
    """A few human-readable lines of a split summary."""
    frames = summary["frames"]
    lines = [
        f"split {summary['split']} (seed {summary['seed']}, {summary['size']} px): {summary['clips']} clips, "
        f"{frames['min']}-{frames['max']} frames (mean {frames['mean']}), {summary['expressions']} expressions",
        "  expressions per caption type: "
        + ", ".join(f"{k} {v}" for k, v in summary["expressions_per_caption_type"].items()),
        "  objects per clip: " + ", ".join(f"{k}: {v}" for k, v in summary["objects_per_clip"].items()),
        "  interactions: " + ", ".join(f"{k} {v}" for k, v in summary["interactions"].items()),
        f"  look-alike clips {summary['lookalike_clips']}, occluded clips {summary['occluded_clips']}",
    ]
    return "\n".join(lines)


def expression_corpus() -> list[str]:
    """Every word and phrase template the world can produce (deterministic, sorted)."""
    return corpus()


__all__ = [
    "DIRECTIONS",
    "SPLIT_CODES",
    "WorldConfig",
    "expression_corpus",
    "format_summary",
    "generate_split",
    "make_clip",
]
