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

F is computed from the boundary pixels' positions (binary searches of one mask's sorted boundary
for each row of the other's tolerance disks) rather than by dilating whole frames, and RLE decodes
straight into column-major masks; the tests check every number against the DAVIS code's
definitions, written out in the test.
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


def _f_from_counts(matched_pred: int, n_pred: int, matched_gt: int, n_gt: int) -> float:
    """DAVIS precision / recall rules, then the harmonic mean."""
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    precision, recall = matched_pred / n_pred, matched_gt / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _boundary_flat(mask: np.ndarray) -> np.ndarray:
    """Sorted flat indices (N,) of ``boundary_map(mask)``, mask bool (R, C) C-contiguous.

    On the flat array f (row stride C), with d[i] = f[i] ^ f[i + 1] (east) and v[i] = f[i] ^ f[i + C]
    (south): the south-east difference is v[i] ^ d[i + C], so the interior boundary is
    d[i] | v[i] | d[i + C]: three full-frame passes and no shifted copies. The last column (where d
    wraps to the next row) and the last row then get DAVIS's rules. The boundary is sparse, so its
    indices are read 8 pixels at a time (one uint64 each) and only non-zero words are expanded.
    """
    rows, cols = mask.shape
    if rows < 2 or cols < 2:
        return np.flatnonzero(boundary_map(mask))
    f = mask.reshape(-1)
    n = f.size
    m = n - cols - 1  # interior positions: every row but the last, less row R-2's last column
    east = f[:-1] ^ f[1:]  # (n - 1,)
    b = np.empty(-(-n // 8) * 8, dtype=bool)
    b[n:] = False
    np.bitwise_xor(f[:m], f[cols : cols + m], out=b[:m])  # south
    b[:m] |= east[:m]
    b[:m] |= east[cols : cols + m]  # with the south one, the south-east difference
    b[cols - 1 : n - cols : cols] = f[cols - 1 : n - cols : cols] ^ f[2 * cols - 1 :: cols]  # last column
    b[n - cols : n - 1] = east[n - cols :]  # last row: east only
    b[n - 1] = False
    words = np.flatnonzero(b.view(np.uint64) != 0)  # (nonzero on the bool is 6x faster than on uint64)
    word, byte = np.nonzero(b.view(np.uint8).reshape(-1, 8)[words])
    return words[word] * 8 + byte


def boundary_points(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a bool (H, W) mask as int (N, 2) (y, x), row-major: ``np.argwhere(boundary_map)``."""
    flat = _boundary_flat(np.ascontiguousarray(mask, dtype=bool))
    return np.stack(np.divmod(flat, mask.shape[1]), axis=1)


def _count_matched(points: np.ndarray, others: np.ndarray, stride: int, radius: int) -> int:
    """How many of ``points`` have one of ``others`` within the disk of ``radius`` (DAVIS's dilation).

    Both are sorted int64 keys y * stride + x, with ``stride`` >= width + 2 * radius so that a row
    window [x - h, x + h] never reaches into a neighbouring row. The disk is 2r + 1 such windows, of
    half-width floor(sqrt(r^2 - dy^2)) at row offset dy; each window is one binary search of the
    sorted ``others``. The widest window (dy = 0) goes first, on every point; the other rows follow
    in batches by distance, each for the points still unmatched.
    """
    if points.size == 0 or others.size == 0:
        return 0
    others = np.append(others, np.iinfo(np.int64).max)  # sentinel: a search past the end finds no hit
    low = points - radius
    left = low[others[np.searchsorted(others, low)] > points + radius] + radius
    if left.size == 0 or radius == 0:
        return points.size - left.size
    # Then the other rows in three batches, nearest first, each on the points still unmatched.
    for near, far in ((1, 2), (3, 4), (5, radius)):
        if near > radius or left.size == 0:
            break
        dy = np.array([d for d in range(near, min(far, radius) + 1) for d in (d, -d)])
        half = np.array([math.isqrt(radius * radius - int(d) * int(d)) for d in dy])
        # (rows, K) window starts: increasing along each row, which numpy's binary search exploits
        low = (dy * stride - half)[:, None] + left[None, :]
        hit = others[np.searchsorted(others, low.ravel())].reshape(low.shape) <= low + 2 * half[:, None]
        left = left[~hit.any(axis=0)]
    return points.size - left.size


def frame_scores(gt: np.ndarray, pred: np.ndarray, radius: int) -> tuple[float, float]:
    """(J, F) of one frame, gt / pred bool (R, C); equal to the DAVIS definitions.

    Works on either orientation: J and F are unchanged when both masks are transposed (the boundary
    rules of the last row and the last column swap into each other, the disk is symmetric), so the
    column-major masks that RLE decodes to (``rle.decode_columns``, shape (W, H)) go in without a copy.
    Cost: a few full-frame passes and O(boundary pixels x radius) searches, whatever the masks' shape
    (stray pixels far apart cost no more than a compact object).
    """
    g = np.ascontiguousarray(gt, dtype=bool)
    p = np.ascontiguousarray(pred, dtype=bool)
    if g.shape != p.shape or g.ndim != 2:
        raise ValueError(f"expected two (H, W) masks of one shape, got {g.shape} and {p.shape}")
    n_g, n_p = np.count_nonzero(g), np.count_nonzero(p)
    if n_g == 0 and n_p == 0:
        return 1.0, 1.0
    inter = np.count_nonzero(g & p)
    j = inter / (n_g + n_p - inter)
    stride = g.shape[1] + 2 * radius
    keys = []
    for mask, count in ((g, n_g), (p, n_p)):
        flat = _boundary_flat(mask) if count else np.zeros(0, dtype=np.int64)
        keys.append(flat + 2 * radius * (flat // g.shape[1]))  # y * stride + x
    gt_keys, pred_keys = keys
    if gt_keys.size == 0 or pred_keys.size == 0:
        return j, _f_from_counts(0, pred_keys.size, 0, gt_keys.size)
    matched_pred = _count_matched(pred_keys, gt_keys, stride, radius)
    matched_gt = _count_matched(gt_keys, pred_keys, stride, radius)
    return j, _f_from_counts(matched_pred, pred_keys.size, matched_gt, gt_keys.size)


def f_measure(gt: np.ndarray, pred: np.ndarray, radius: int | None = None) -> float:
    """Boundary F of one frame; gt, pred bool (H, W); ``radius`` defaults to DAVIS's for the frame size."""
    radius = boundary_radius(*gt.shape) if radius is None else radius
    return frame_scores(gt, pred, radius)[1]


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


def _run_job(job: _Job) -> tuple[tuple[str, str], dict[str, tuple[float, float]], int]:
    """Mean J and F of each benchmark of one expression; decodes one frame at a time (flat memory).

    Masks are decoded column-major, (W, H), and scored so (``frame_scores`` is transpose-invariant).
    """
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
                gt_mask = rle.decode_columns([track[t] for track in tracks], job.size)
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(
                    f"video {video_id!r}, expression {exp_id!r}, ground truth ({bench}), frame {t}: {err}"
                ) from err
            try:
                pred_mask = rle.decode_columns([pred[t] if pred is not None else None], job.size)
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
        # Full precision: a file is for comparing and re-aggregating; only the printed tables round.
        return {"J": self.J, "F": self.F, "JF": self.JF, "count": self.count}


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
                f"{v}/{e}": {b: {"J": 100 * j, "F": 100 * f} for b, (j, f) in d.items()}
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
    # Means in the dataset's order, whatever order the workers finished in: full-precision sums
    # then do not depend on the number of workers.
    per_expression = {key: per_expression[key] for key in types if key in per_expression}

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
