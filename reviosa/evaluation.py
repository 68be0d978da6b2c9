"""InterRVOS evaluation: J, F and J&F for InterRVOS-Actor, InterRVOS-Target and RVOS.

Definitions follow DAVIS (FACTS.md, "Evaluation protocol"):

* J = IoU of boolean masks; both empty -> 1.
* F = boundary F-measure. Boundary map: the mask xor its east, south and south-east shifted copies
  (with DAVIS's rules at the last row and column). A boundary pixel matches when the other boundary
  has a pixel within a disk of radius ``ceil(0.008 * sqrt(H^2 + W^2))``. Precision = matched predicted
  boundary pixels / predicted ones, recall the reverse; both boundaries empty -> 1, one empty -> 0.
* Per expression: mean over all frames; per benchmark: mean over expressions x 100; J&F = (J + F) / 2.

Benchmarks: Actor = interaction expressions (bidirectional, unidirectional), actor prediction vs the
union of the subject masks; Target = unidirectional expressions, target prediction (none: an empty
track) vs the union of the object masks; RVOS = every expression, actor prediction vs the union of
the expression's ``anno_id``.

The fast F path works on boundary pixel lists inside bounding boxes (objects are small next to the
frame) and is tested against the dense reference :func:`f_measure_dense`.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from reviosa import rle

logger = logging.getLogger(__name__)

BENCHMARKS = ("actor", "target", "rvos")
TITLES = {"actor": "InterRVOS-Actor", "target": "InterRVOS-Target", "rvos": "RVOS"}
BOUND_TH = 0.008  # DAVIS: tolerance radius as a fraction of the image diagonal


# --------------------------------------------------------------------------------------------- per frame


def iou(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """J per frame. gt, pred: bool (..., H, W). Returns float64 (...); both empty -> 1."""
    inter = np.count_nonzero(gt & pred, axis=(-2, -1))
    union = np.count_nonzero(gt | pred, axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def boundary_radius(height: int, width: int) -> int:
    """DAVIS tolerance: ceil(0.008 * image diagonal) pixels (8 at 854x480, 2 at 128x128)."""
    return int(math.ceil(BOUND_TH * math.hypot(height, width)))


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """DAVIS ``seg2bmap``: bool (..., H, W) -> bool (..., H, W) boundary pixels.

    A pixel is boundary when it differs from its east, south or south-east neighbour (outside the
    frame counts as background). On the last row only the east neighbour counts, on the last column
    only the south one, and the bottom-right pixel is never boundary.
    """
    seg = mask.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[..., :, :-1] = seg[..., :, 1:]
    s[..., :-1, :] = seg[..., 1:, :]
    se[..., :-1, :-1] = seg[..., 1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[..., -1, :] = seg[..., -1, :] ^ e[..., -1, :]
    b[..., :, -1] = seg[..., :, -1] ^ s[..., :, -1]
    b[..., -1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """skimage's ``disk``: bool (2r+1, 2r+1), True where x^2 + y^2 <= r^2."""
    axis = np.arange(-radius, radius + 1)
    return axis[:, None] ** 2 + axis[None, :] ** 2 <= radius**2


def _dilate_dense(b: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of (H, W) by a disk, by OR-ing shifted copies (reference path only)."""
    height, width = b.shape
    padded = np.pad(b, radius)
    out = np.zeros_like(b)
    for dy, dx in np.argwhere(disk(radius)):
        out |= padded[dy : dy + height, dx : dx + width]
    return out


def _f_from_counts(matched_pred: int, n_pred: int, matched_gt: int, n_gt: int) -> float:
    """DAVIS precision / recall rules, then the harmonic mean."""
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    precision, recall = matched_pred / n_pred, matched_gt / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def f_measure_dense(gt: np.ndarray, pred: np.ndarray, radius: int | None = None) -> float:
    """Reference F for one frame (gt, pred bool (H, W)): full-frame boundaries and dilations."""
    radius = boundary_radius(*gt.shape) if radius is None else radius
    gt_b, pred_b = boundary_map(gt), boundary_map(pred)
    matched_pred = np.count_nonzero(pred_b & _dilate_dense(gt_b, radius))
    matched_gt = np.count_nonzero(gt_b & _dilate_dense(pred_b, radius))
    return _f_from_counts(matched_pred, np.count_nonzero(pred_b), matched_gt, np.count_nonzero(gt_b))


def boundary_points(
    mask: np.ndarray, origin: tuple[int, int] = (0, 0), frame: tuple[int, int] | None = None
) -> np.ndarray:
    """Boundary pixels of a mask as int (N, 2) (y, x) in the mask array's coordinates.

    Equal to ``np.argwhere(boundary_map(mask))``, computed inside the mask's bounding box: a boundary
    pixel is in the mask or just above / left of it, so the box grown by one pixel up and left holds
    them all. DAVIS's last-row / last-column rules apply only where the box touches the frame's edge
    (elsewhere the box's extra row and column are background, whose boundary is empty either way).

    Args:
        mask: bool (h, w), possibly a crop of a larger frame.
        origin: (y, x) of the crop in the frame; frame: (H, W) of the frame (default: the mask's own).
    """
    frame = mask.shape if frame is None else frame
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    height, width = mask.shape
    y0, x0 = max(rows[0] - 1, 0), max(cols[0] - 1, 0)
    y1, x1 = min(rows[-1] + 2, height), min(cols[-1] + 2, width)  # exclusive
    at_bottom = origin[0] + y1 == frame[0]
    at_right = origin[1] + x1 == frame[1]
    crop = mask[y0:y1, x0:x1].astype(bool)
    e = np.zeros_like(crop)
    s = np.zeros_like(crop)
    se = np.zeros_like(crop)
    e[:, :-1] = crop[:, 1:]
    s[:-1, :] = crop[1:, :]
    se[:-1, :-1] = crop[1:, 1:]
    b = (crop ^ e) | (crop ^ s) | (crop ^ se)
    if at_bottom:
        b[-1, :] = crop[-1, :] ^ e[-1, :]
    if at_right:
        b[:, -1] = crop[:, -1] ^ s[:, -1]
    if at_bottom and at_right:
        b[-1, -1] = False
    return _offset(np.argwhere(b), y0, x0)


def _count_matched(points: np.ndarray, other: np.ndarray, radius: int) -> int:
    """How many of ``points`` (N, 2) have a pixel of ``other`` (M, 2) within the disk of ``radius``.

    Rasterises ``other`` in the joint bounding box, takes row-wise prefix sums, and for each point and
    each row offset dy of the disk sums the row window of half-width floor(sqrt(r^2 - dy^2)): one
    gather of (N, 2r+1) instead of a dense dilation.
    """
    both = np.concatenate([points, other])
    origin = both.min(axis=0)
    height, width = both.max(axis=0) - origin + 1
    grid = np.zeros((height + 2 * radius, width + 2 * radius + 1), dtype=np.int32)
    grid[other[:, 0] - origin[0] + radius, other[:, 1] - origin[1] + radius + 1] = 1
    prefix = np.cumsum(grid, axis=1)  # prefix[y, x + 1] = count in columns [0, x]
    dy = np.arange(-radius, radius + 1)
    half = np.array([math.isqrt(radius * radius - int(d) * int(d)) for d in dy])  # (2r+1,)
    y = points[:, :1] - origin[0] + radius + dy[None, :]  # (N, 2r+1) padded rows
    x = points[:, 1:] - origin[1] + radius  # (N, 1) padded column
    window = prefix[y, x + half + 1] - prefix[y, x - half]  # (N, 2r+1)
    return int(np.count_nonzero((window > 0).any(axis=1)))


def f_measure(gt: np.ndarray, pred: np.ndarray, radius: int | None = None) -> float:
    """Boundary F for one frame; gt, pred bool (H, W). Same value as :func:`f_measure_dense`."""
    radius = boundary_radius(*gt.shape) if radius is None else radius
    gt_points, pred_points = boundary_points(gt), boundary_points(pred)
    n_gt, n_pred = len(gt_points), len(pred_points)
    if n_gt == 0 or n_pred == 0:
        return _f_from_counts(0, n_pred, 0, n_gt)
    matched_pred = _count_matched(pred_points, gt_points, radius)
    matched_gt = _count_matched(gt_points, pred_points, radius)
    return _f_from_counts(matched_pred, n_pred, matched_gt, n_gt)


def frame_scores(gt: np.ndarray, pred: np.ndarray, radius: int) -> tuple[float, float]:
    """(J, F) of one frame, gt / pred bool (H, W), computed inside the joint bounding box.

    Both measures only see pixels in either mask and their boundaries, which lie in the joint box
    grown by one pixel up and left; cropping once makes a frame cost O(object area), not O(H W).
    """
    rows = np.flatnonzero(gt.any(axis=1) | pred.any(axis=1))
    if rows.size == 0:
        return 1.0, 1.0  # both empty
    band = slice(rows[0], rows[-1] + 1)
    cols = np.flatnonzero(gt[band].any(axis=0) | pred[band].any(axis=0))
    height, width = gt.shape
    y0, x0 = max(rows[0] - 1, 0), max(cols[0] - 1, 0)
    y1, x1 = rows[-1] + 1, cols[-1] + 1
    g, p = gt[y0:y1, x0:x1], pred[y0:y1, x0:x1]
    union = np.count_nonzero(g | p)
    j = np.count_nonzero(g & p) / union
    # Boundaries need the crop's true frame edges: pad back to a frame-sized view only where the box
    # touches the bottom / right edge (boundary_points handles that from the crop's position).
    gt_points = _offset(boundary_points(g, (y0, x0), (height, width)), y0, x0)
    pred_points = _offset(boundary_points(p, (y0, x0), (height, width)), y0, x0)
    n_gt, n_pred = len(gt_points), len(pred_points)
    if n_gt == 0 or n_pred == 0:
        return j, _f_from_counts(0, n_pred, 0, n_gt)
    matched_pred = _count_matched(pred_points, gt_points, radius)
    matched_gt = _count_matched(gt_points, pred_points, radius)
    return j, _f_from_counts(matched_pred, n_pred, matched_gt, n_gt)


def _offset(points: np.ndarray, y0: int, x0: int) -> np.ndarray:
    points[:, 0] += y0
    points[:, 1] += x0
    return points


def score_track(gt: Sequence[np.ndarray], pred: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """J and F per frame of two (T, H, W) bool tracks (arrays or sequences of (H, W)): two float (T,)."""
    if len(gt) != len(pred):
        raise ValueError(f"{len(pred)} predicted frames for {len(gt)} ground-truth frames")
    if len(gt) == 0:
        return np.zeros(0), np.zeros(0)
    radius = boundary_radius(*gt[0].shape)
    scores = np.array([frame_scores(g, p, radius) for g, p in zip(gt, pred, strict=True)])  # (T, 2)
    return scores[:, 0], scores[:, 1]


# --------------------------------------------------------------------------------------------- jobs


@dataclass
class _Job:
    """Everything one worker needs for one expression, as RLE (cheap to pickle)."""

    key: tuple[str, str]
    size: tuple[int, int]
    gt: dict[str, list[list]]  # benchmark -> one RLE track per ground-truth id
    pred: dict[str, list | None]  # benchmark -> predicted RLE track (None: no prediction)
    same: dict[str, str] = field(default_factory=dict)  # benchmark -> one with identical GT and prediction


def _union(tracks: list[list], t: int, size: tuple[int, int]) -> np.ndarray:
    out = np.zeros(size, dtype=bool)
    for track in tracks:
        if track[t] is not None:
            out |= rle.decode(track[t], size)
    return out


def _run_job(job: _Job) -> tuple[tuple[str, str], dict[str, tuple[float, float]], int]:
    """Mean J and F of each benchmark of one expression; decodes one frame at a time (flat memory)."""
    video_id, exp_id = job.key
    out = {}
    num_frames = 0
    radius = boundary_radius(*job.size)
    for bench, tracks in job.gt.items():
        if bench in job.same:
            continue
        pred = job.pred[bench]
        num_frames = len(tracks[0])
        j, f = np.empty(num_frames), np.empty(num_frames)
        for t in range(num_frames):
            try:
                gt_mask = _union(tracks, t, job.size)
            except ValueError as err:
                raise ValueError(
                    f"video {video_id!r}, expression {exp_id!r}, ground truth ({bench}), frame {t}: {err}"
                ) from err
            try:
                pred_mask = rle.decode(pred[t] if pred is not None else None, job.size)
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(
                    f"video {video_id!r}, expression {exp_id!r}, prediction ({bench}), frame {t}: {err}"
                ) from err
            j[t], f[t] = frame_scores(gt_mask, pred_mask, radius)
        out[bench] = (float(j.mean()), float(f.mean()))
    for bench, twin in job.same.items():
        out[bench] = out[twin]
    return job.key, out, num_frames


# --------------------------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class Metric:
    """Mean J, F and J&F in percent over ``count`` expressions."""

    J: float
    F: float
    JF: float
    count: int

    @staticmethod
    def mean(values: list[tuple[float, float]]) -> Metric | None:
        if not values:
            return None
        j = 100 * float(np.mean([v[0] for v in values]))
        f = 100 * float(np.mean([v[1] for v in values]))
        return Metric(J=j, F=f, JF=(j + f) / 2, count=len(values))

    def to_json(self) -> dict:
        return {"J": round(self.J, 2), "F": round(self.F, 2), "JF": round(self.JF, 2), "count": self.count}


@dataclass
class Scores:
    """Results of :func:`evaluate_results`. A benchmark with no expression (e.g. Target on MeViS) is None."""

    actor: Metric | None
    target: Metric | None
    rvos: Metric | None
    per_caption_type: dict[str, dict[str, Metric | None]]
    per_expression: dict[tuple[str, str], dict[str, tuple[float, float]]]  # (video, exp) -> bench -> (J, F)
    missing: list[tuple[str, str]] = field(default_factory=list)  # no prediction at all: scored as empty
    no_target: list[tuple[str, str]] = field(default_factory=list)  # unidirectional, no [SEG_TAR]
    frames: int = 0  # frames scored (per benchmark and expression)

    def to_json(self, per_expression: bool = False) -> dict:
        def dump(m):
            return None if m is None else m.to_json()

        data = {
            "actor": dump(self.actor),
            "target": dump(self.target),
            "rvos": dump(self.rvos),
            "per_caption_type": {
                t: {b: dump(m) for b, m in d.items()} for t, d in self.per_caption_type.items()
            },
            "counts": {
                "expressions": len(self.per_expression),
                "frames_scored": self.frames,
                "missing_predictions": len(self.missing),
                "unidirectional_without_target": len(self.no_target),
            },
        }
        if per_expression:
            data["per_expression"] = {
                f"{v}/{e}": {b: {"J": round(100 * j, 2), "F": round(100 * f, 2)} for b, (j, f) in d.items()}
                for (v, e), d in sorted(self.per_expression.items())
            }
        return data

    def table(self, name: str = "model") -> str:
        """The paper's Table 2 row: Actor J / F / J&F | Target J / F / J&F | RVOS J / F / J&F."""
        width = max(12, len(name))
        header = " " * width + "".join(f" | {TITLES[b]:^20}" for b in BENCHMARKS)
        sub = " " * width + " | " + " | ".join(f"{'J':>6}{'F':>7}{'J&F':>7}" for _ in BENCHMARKS)
        row = f"{name:<{width}}" + "".join(f" | {_cells(getattr(self, b))}" for b in BENCHMARKS)
        return "\n".join([header, sub, "-" * len(sub), row])

    def type_table(self) -> str:
        """J&F per caption type (count of expressions in brackets)."""
        lines = [f"{'caption type':<15}" + "".join(f"{TITLES[b]:>20}" for b in BENCHMARKS)]
        for caption_type, metrics in self.per_caption_type.items():
            cells = "".join(
                f"{'-':>20}" if m is None else f"{m.JF:>13.1f} ({m.count:>4})"
                for m in (metrics[b] for b in BENCHMARKS)
            )
            lines.append(f"{caption_type:<15}{cells}")
        return "\n".join(lines)


def _cells(metric: Metric | None) -> str:
    if metric is None:
        return f"{'-':>6}{'-':>7}{'-':>7}"
    return f"{metric.J:>6.1f}{metric.F:>7.1f}{metric.JF:>7.1f}"


# --------------------------------------------------------------------------------------------- driver


def _benchmarks_of(sample) -> list[str]:
    """Which benchmarks an expression enters (FACTS.md: Actor = interactions, Target = unidirectional)."""
    benches = ["rvos"]
    if sample.is_interaction:
        benches.append("actor")
    if sample.caption_type == "unidirectional":
        benches.append("target")
    return benches


def _prediction_track(entry: dict | None, role: str, sample) -> list | None:
    """The predicted RLE track of a role, checked for length; None where the role was not predicted."""
    if entry is None or entry.get(role) is None:
        return None
    track = entry[role]
    if not isinstance(track, list) or len(track) != sample.num_frames:
        got = len(track) if isinstance(track, list) else type(track).__name__
        raise ValueError(
            f"video {sample.video_id!r}, expression {sample.exp_id!r}, prediction {role!r}: "
            f"{got} frames where the video has {sample.num_frames}"
        )
    return track


def _make_job(sample, entry: dict | None) -> _Job:
    ids = {"actor": sample.actor_ids, "target": sample.target_ids, "rvos": sample.rvos_ids}
    fields = {"actor": "actor", "target": "target", "rvos": "actor"}  # RVOS scores the actor prediction
    benches = _benchmarks_of(sample)
    gt = {b: sample.dataset.gt_tracks(sample, ids[b], b) for b in benches}
    pred = {b: _prediction_track(entry, fields[b], sample) for b in benches}
    # Actor and RVOS share the actor prediction; when they also share the ids (always, in the InterRVOS
    # layout), score once and copy: a third less work on interaction expressions.
    same = {"actor": "rvos"} if "actor" in benches and ids["actor"] == ids["rvos"] else {}
    return _Job(key=(sample.video_id, sample.exp_id), size=sample.size, gt=gt, pred=pred, same=same)


def evaluate_results(dataset, results: dict, workers: int = 2) -> Scores:
    """Score a results dict (the layout ``predict --dataset`` writes) against an InterRVOSDataset.

    Args:
        dataset: a ``reviosa.data.InterRVOSDataset``.
        results: ``{"videos": {VIDEO: {EXP: {"actor": [RLE|None]*T, "target": [RLE|None]*T | None}}}}``
            (the inner ``videos`` dict alone is accepted too).
        workers: processes scoring expressions in parallel (1: in this process).
    Expressions without a prediction are scored as empty tracks, and logged.
    """
    videos = results.get("videos", results) if isinstance(results, dict) else None
    if not isinstance(videos, dict):
        raise ValueError("results must be a dict {'videos': {VIDEO_ID: {EXP_ID: {...}}}}")
    jobs, missing, no_target = [], [], []
    known = set()
    for sample in dataset.samples():
        entry = videos.get(sample.video_id, {}).get(sample.exp_id)
        key = (sample.video_id, sample.exp_id)
        known.add(key)
        if entry is None:
            missing.append(key)
        elif sample.has_target and entry.get("target") is None:
            no_target.append(key)
        jobs.append(_make_job(sample, entry))
    extra = sum(1 for v, exps in videos.items() for e in exps if (v, str(e)) not in known)
    if missing:
        logger.warning(
            "%d of %d expressions have no prediction: scored as empty masks (first: %s/%s)",
            len(missing),
            len(jobs),
            *missing[0],
        )
    if no_target:
        logger.info(
            "%d unidirectional expressions have no target prediction: scored as empty", len(no_target)
        )
    if extra:
        logger.warning("%d predicted expressions are not in the dataset: ignored", extra)
    per_expression, frames = _run_jobs(jobs, workers)
    return _aggregate(dataset, per_expression, frames, missing, no_target)


def _run_jobs(jobs: list[_Job], workers: int) -> tuple[dict, int]:
    if workers <= 1 or len(jobs) < 4:
        return _collect(map(_run_job, jobs))
    # fork on Linux: workers run only numpy / pycocotools, and fork needs no `if __name__ == "__main__"`
    # guard in the caller's script (spawn would re-run it). Elsewhere fork is unsafe: spawn.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    chunk = max(1, len(jobs) // (8 * workers))
    with mp.get_context(method).Pool(min(workers, len(jobs))) as pool:
        return _collect(pool.imap_unordered(_run_job, jobs, chunksize=chunk))


def _collect(outputs) -> tuple[dict, int]:
    per_expression, frames = {}, 0
    for key, scores, num_frames in outputs:
        per_expression[key] = scores
        frames += num_frames * len(scores)
    return per_expression, frames


def _aggregate(dataset, per_expression: dict, frames: int, missing, no_target) -> Scores:
    types = {(s.video_id, s.exp_id): s.caption_type for s in dataset.samples()}

    def metric(bench: str, caption_type: str | None = None) -> Metric | None:
        return Metric.mean(
            [
                d[bench]
                for key, d in per_expression.items()
                if bench in d and (caption_type is None or types[key] == caption_type)
            ]
        )

    present = [t for t in ("single", "multi", "bidirectional", "unidirectional") if t in set(types.values())]
    return Scores(
        actor=metric("actor"),
        target=metric("target"),
        rvos=metric("rvos"),
        per_caption_type={t: {b: metric(b, t) for b in BENCHMARKS} for t in present},
        per_expression=per_expression,
        missing=missing,
        no_target=no_target,
        frames=frames,
    )
