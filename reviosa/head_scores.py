"""Head scores: where each layer x head's role-token attention lands, inside the actor, the target, or elsewhere.

For every captured layer and head, and each role token ([SEG_ACT], [SEG_TAR]), the captured attention
row over the vision tokens (`reviosa.attention.AttentionRows`: raw softmax probabilities over all L keys,
so a row sums to its vision mass <= 1 over the vision tokens) is split by the masks of the actor and
the target, on each keyframe and over all keyframes:

    actor     = sum(row * cover_actor) / sum(row)        (sum over one keyframe's g x g tokens)
    target    = sum(row * cover_target) / sum(row)
    elsewhere = sum(row * (1 - cover_actor_or_target)) / sum(row)
    vision    = sum(row)                                 (share of the full row on those vision tokens)

``cover`` is the mask reduced to the g x g token grid. The shares are of the *vision* attention
(renormalised by ``sum(row)``), so heads that look at the video a little and heads that look at it
a lot compare on where they look; ``vision`` says how much they look. Actor and target masks may
overlap (predicted masks can): ``elsewhere`` is outside their union, so the three sum to 1 exactly
when the masks are disjoint.

Mask to grid: **area coverage** by default, the fraction of each token's cell the mask covers
(exact, with fractional pixels when H or W is not a multiple of g). The MLLM sees each keyframe
resized to a square, so token (y, x) sees the cell [y H / g, (y + 1) H / g) x [x W / g, (x + 1) W / g)
of the frame. Coverage weights the attention on a cell by how much of the cell is the object, which
is the share of attention on the object if a token's attention is spread over its cell; the paper's
AML target is instead a **nearest** resize (one pixel per cell, 0 or 1), which lets a small object
vanish from the grid or fill whole cells it barely touches (objects of 14-32 px on a 128 px frame with
16 px cells, the built-in world's, are 1-4 cells). ``resize="nearest"`` gives that reduction
(as ``torch.nn.functional.interpolate(mode="nearest")``, the AML target), to read the scores on the
grid the loss was trained on.

"mean" (keyframe index K of the arrays) pools all keyframes: the share of all the row's vision
attention that lands in the masks, i.e. the per-keyframe shares averaged with each keyframe weighted
by its vision attention; its ``vision`` is the row's mass on all vision tokens. An absent role (zero
rows) gets no scores; a role whose row puts no mass on a keyframe gets NaN shares there; without a
target mask ``target`` is NaN.

Axis letters: R roles, NL layers, NH heads, K keyframes, g tokens per side, H/W pixels. No plotting
here: ``viz.head_scores`` draws these tables.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "COLUMNS",
    "MEAN",
    "RESIZES",
    "ROLE_NAMES",
    "SHARES",
    "HeadScores",
    "average_head_scores",
    "compute_head_scores",
    "coverage_grid",
    "head_scores_from_prediction",
    "nearest_grid",
]

ROLE_NAMES = ("actor", "target")  # the R axis of captured rows: [SEG_ACT] = 0, [SEG_TAR] = 1
SHARES = ("actor", "target", "elsewhere", "vision")
MEAN = "mean"
RESIZES = ("coverage", "nearest")
# The CSV / JSON row layout (a contract: scripts read it). "keyframe" is 0..K-1 or "mean"; "frame" is
# the video frame of that keyframe (empty / null for "mean"); "clips" is how many clips were averaged.
COLUMNS = ("role", "layer", "head", "keyframe", "frame", *SHARES, "clips")


@dataclass(frozen=True)
class HeadScores:
    """Head scores of one clip (or the average over clips), for the roles present.

    Attributes:
        actor, target, elsewhere: float64 (R', NL, NH, K + 1): share of the role's vision attention
            inside the actor mask, the target mask, and outside both, on keyframe k (index k) and over
            all keyframes (index K, "mean"). NaN where undefined (no target mask; no vision mass).
        vision: float64 (R', NL, NH, K + 1): share of the full attention row on the keyframe's vision
            tokens (index K: on all vision tokens).
        roles: the R' roles present, names from ``ROLE_NAMES``.
        layers, heads: the real layer / head index of each NL / NH entry.
        keyframes: the video frame of each of the K keyframes (empty for an average over clips, whose
            keyframes differ: only "mean" is kept).
        masks: "predicted" or "ground truth" (or any label the caller gives).
        resize: how masks were reduced to the grid, one of ``RESIZES``.
        clips: int (R',) clips averaged per role (1 for one clip).
    """

    actor: np.ndarray
    target: np.ndarray
    elsewhere: np.ndarray
    vision: np.ndarray
    roles: tuple[str, ...]
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    keyframes: tuple[int, ...]
    masks: str = "predicted"
    resize: str = "coverage"
    clips: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        shape = (len(self.roles), len(self.layers), len(self.heads), len(self.keyframes) + 1)
        for name in SHARES:
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape}")
        if not self.clips:
            object.__setattr__(self, "clips", (1,) * len(self.roles))

    def table(self, role: str, share: str, keyframe: int | str = MEAN) -> np.ndarray:
        """One layer x head table, float64 (NL, NH): ``share`` of ``role`` on ``keyframe`` (k or "mean")."""
        if role not in self.roles:
            raise ValueError(f"no {role} scores (roles present: {', '.join(self.roles) or 'none'})")
        if share not in SHARES:
            raise ValueError(f"share must be one of {', '.join(SHARES)}, got {share!r}")
        return getattr(self, share)[self.roles.index(role), :, :, self._keyframe_index(keyframe)]

    def _keyframe_index(self, keyframe: int | str) -> int:
        if keyframe in (MEAN, None):
            return len(self.keyframes)
        k = int(keyframe)
        if not 0 <= k < len(self.keyframes):
            raise ValueError(f"keyframe {k} out of range: this run has {len(self.keyframes)} keyframes")
        return k

    def records(self, role: str | None = None, keyframe: int | str | None = None) -> list[dict]:
        """Rows of ``COLUMNS`` (role, layer, head, keyframe, ...), roles x keyframes ("mean" last) x layers
        x heads; filtered to one role and / or one keyframe when given. NaN shares are None."""
        roles = self.roles if role is None else (role,)
        if keyframe is None:
            picks = [*range(len(self.keyframes)), MEAN]
        else:
            picks = [MEAN if self._keyframe_index(keyframe) == len(self.keyframes) else int(keyframe)]
        out = []
        for name in roles:
            if name not in self.roles:
                raise ValueError(f"no {name} scores (roles present: {', '.join(self.roles) or 'none'})")
            r = self.roles.index(name)
            for pick in picks:
                k = self._keyframe_index(pick)
                frame = None if pick == MEAN else self.keyframes[k]
                for i, layer in enumerate(self.layers):
                    for j, head in enumerate(self.heads):
                        shares = {s: _number(getattr(self, s)[r, i, j, k]) for s in SHARES}
                        out.append({"role": name, "layer": layer, "head": head, "keyframe": pick,
                                    "frame": frame, **shares, "clips": self.clips[r]})  # fmt: skip
        return out

    def to_csv(self, path: str | Path | None = None) -> str:
        """The records as CSV with the header ``COLUMNS`` (empty cells for None); written to ``path`` too."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.records():
            writer.writerow({k: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
                             for k, v in row.items()})  # fmt: skip
        return _write(buffer.getvalue(), path)

    def to_json(self, path: str | Path | None = None) -> str:
        """``{"roles", "layers", "heads", "keyframes", "masks", "resize", "clips", "columns", "rows"}``,
        rows as in ``records()`` (NaN as null); written to ``path`` too."""
        data = {
            "roles": list(self.roles),
            "layers": list(self.layers),
            "heads": list(self.heads),
            "keyframes": list(self.keyframes),
            "masks": self.masks,
            "resize": self.resize,
            "clips": dict(zip(self.roles, self.clips, strict=True)),
            "columns": list(COLUMNS),
            "rows": self.records(),
        }
        return _write(json.dumps(data, indent=1, allow_nan=False), path)

    @classmethod
    def from_json(cls, text: str) -> HeadScores:
        """Read back what ``to_json`` wrote."""
        data = json.loads(text)
        roles, layers, heads = tuple(data["roles"]), tuple(data["layers"]), tuple(data["heads"])
        keyframes = tuple(data["keyframes"])
        arrays = {
            s: np.full((len(roles), len(layers), len(heads), len(keyframes) + 1), np.nan) for s in SHARES
        }
        for row in data["rows"]:
            k = len(keyframes) if row["keyframe"] == MEAN else int(row["keyframe"])
            at = (roles.index(row["role"]), layers.index(row["layer"]), heads.index(row["head"]), k)
            for s in SHARES:
                arrays[s][at] = np.nan if row[s] is None else row[s]
        clips = tuple(int(data["clips"][r]) for r in roles)
        return cls(**arrays, roles=roles, layers=layers, heads=heads, keyframes=keyframes,
                   masks=data["masks"], resize=data["resize"], clips=clips)  # fmt: skip


def _number(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _write(text: str, path: str | Path | None) -> str:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return text


# --- masks on the token grid --------------------------------------------------------------------------------


def _cell_weights(size: int, grid: int) -> np.ndarray:
    """float64 (g, size): the fraction of pixel p that lies in cell i, divided by the cell's width."""
    edges = np.arange(grid + 1) * (size / grid)  # cell i spans [edges[i], edges[i + 1])
    pixels = np.arange(size)
    overlap = np.minimum(edges[1:, None], pixels[None, :] + 1) - np.maximum(edges[:-1, None], pixels[None, :])
    return np.clip(overlap, 0.0, None) / (size / grid)


def coverage_grid(masks: np.ndarray, grid: int) -> np.ndarray:
    """bool (..., H, W) -> float64 (..., g, g): the fraction of each token cell's area the mask covers.

    Exact area pooling with fractional pixels at the cell borders (equal to average pooling when
    H and W are multiples of g).
    """
    masks = np.asarray(masks)
    wy, wx = _cell_weights(masks.shape[-2], grid), _cell_weights(masks.shape[-1], grid)
    return np.einsum("iy,...yx,jx->...ij", wy, masks.astype(np.float64), wx)


def nearest_grid(masks: np.ndarray, grid: int) -> np.ndarray:
    """bool (..., H, W) -> float64 (..., g, g) of 0 / 1: nearest resize, pixel floor(i * H / g) for cell i,
    as ``torch.nn.functional.interpolate(mode="nearest")`` (the AML target)."""
    masks = np.asarray(masks)
    height, width = masks.shape[-2:]
    ys = np.minimum(np.floor(np.arange(grid) * (height / grid)).astype(np.intp), height - 1)
    xs = np.minimum(np.floor(np.arange(grid) * (width / grid)).astype(np.intp), width - 1)
    return masks[..., ys[:, None], xs[None, :]].astype(np.float64)


def _to_grid(masks: np.ndarray, grid: int, resize: str) -> np.ndarray:
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {resize!r}")
    return coverage_grid(masks, grid) if resize == "coverage" else nearest_grid(masks, grid)


# --- the scores --------------------------------------------------------------------------------------------


def compute_head_scores(
    rows: np.ndarray,
    actor_masks: np.ndarray,
    target_masks: np.ndarray | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    keyframes: Sequence[int] | None = None,
    roles_present: Sequence[bool] | None = None,
    resize: str = "coverage",
    masks: str = "predicted",
) -> HeadScores:
    """Split each role's captured attention by the actor and target masks.

    Args:
        rows: float (R, NL, NH, K, g, g) attention rows of one expression (``AttentionRows.rows[0]``,
            numpy or torch), R = 1 or 2 roles in ``ROLE_NAMES`` order.
        actor_masks: bool (K, H, W) the actor's masks on the K keyframes.
        target_masks: bool (K, H, W) the target's, or None when there is no target (target share NaN).
        layers, heads: real indices of the NL / NH entries (default 0..NL-1, 0..NH-1).
        keyframes: the video frame of each keyframe (default 0..K-1), for the tables.
        roles_present: which of the R roles the answer has (default: those with any attention mass;
            ``AttentionCapture`` returns zero rows for an absent role).
        resize: "coverage" (default) or "nearest", see the module docstring.
        masks: a label for where the masks come from ("predicted", "ground truth").
    Returns:
        HeadScores over the present roles.
    """
    rows = _numpy(rows).astype(np.float64)
    if rows.ndim != 6 or rows.shape[-1] != rows.shape[-2]:
        raise ValueError(f"expected rows of shape (R, NL, NH, K, g, g), got {rows.shape}")
    num_roles, num_layers, num_heads, num_keyframes, grid = rows.shape[:5]
    actor_masks = np.asarray(actor_masks, dtype=bool)
    _check_masks("actor", actor_masks, num_keyframes)
    cover_actor = _to_grid(actor_masks, grid, resize)  # (K, g, g)
    if target_masks is None:
        cover_target = None
        cover_union = cover_actor
    else:
        target_masks = np.asarray(target_masks, dtype=bool)
        _check_masks("target", target_masks, num_keyframes)
        if target_masks.shape != actor_masks.shape:
            raise ValueError(f"actor masks {actor_masks.shape} and target masks {target_masks.shape} differ")
        cover_target = _to_grid(target_masks, grid, resize)
        cover_union = _to_grid(actor_masks | target_masks, grid, resize)

    mass = rows.sum(axis=(-2, -1))  # (R, NL, NH, K)
    present = mass.sum(axis=(1, 2, 3)) > 0 if roles_present is None else np.asarray(roles_present, bool)
    if present.shape != (num_roles,):
        raise ValueError(f"roles_present has {present.shape[0]} entries for {num_roles} roles")

    def shares(cover: np.ndarray | None) -> np.ndarray:
        if cover is None:
            return np.full((num_roles, num_layers, num_heads, num_keyframes + 1), np.nan)
        inside = (rows * cover).sum(axis=(-2, -1))  # (R, NL, NH, K)
        per_keyframe = _divide(inside, mass)
        pooled = _divide(inside.sum(-1), mass.sum(-1))  # (R, NL, NH)
        return np.concatenate([per_keyframe, pooled[..., None]], axis=-1)

    vision = np.concatenate([mass, mass.sum(-1, keepdims=True)], axis=-1)
    keep = np.flatnonzero(present[: len(ROLE_NAMES)])
    return HeadScores(
        actor=shares(cover_actor)[keep],
        target=shares(cover_target)[keep],
        elsewhere=(1.0 - shares(cover_union))[keep],
        vision=vision[keep],
        roles=tuple(ROLE_NAMES[r] for r in keep),
        layers=tuple(range(num_layers)) if layers is None else tuple(int(i) for i in layers),
        heads=tuple(range(num_heads)) if heads is None else tuple(int(h) for h in heads),
        keyframes=tuple(range(num_keyframes)) if keyframes is None else tuple(int(t) for t in keyframes),
        masks=masks,
        resize=resize,
    )


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: no torch import needed here
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def _check_masks(name: str, masks: np.ndarray, num_keyframes: int) -> None:
    if masks.ndim != 3 or masks.shape[0] != num_keyframes:
        raise ValueError(
            f"{name} masks must be (K={num_keyframes}, H, W) at the keyframes, got {masks.shape}"
        )


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def head_scores_from_prediction(
    pred,
    actor: np.ndarray | None = None,
    target: np.ndarray | None = None,
    resize: str = "coverage",
) -> HeadScores | None:
    """Head scores of a `reviosa.modeling.Prediction` captured with ``capture_attention=True``.

    Args:
        pred: the prediction; its attention rows (1, R, NL, NH, K, g, g) and keyframes are used.
        actor, target: bool (K, H, W) ground-truth masks on ``pred.keyframes`` (``target`` None: no
            target); when ``actor`` is None the prediction's own masks are used.
    Returns:
        HeadScores labelled "ground truth" or "predicted", or None when no attention was captured.
    """
    if pred.attention is None:
        return None
    keyframes = list(pred.keyframes)
    if actor is None:
        actor_k = np.stack([pred.actor[t] for t in keyframes])
        target_k = None if pred.target is None else np.stack([pred.target[t] for t in keyframes])
        label = "predicted"
    else:
        actor_k = np.asarray(actor, dtype=bool)
        target_k = None if target is None else np.asarray(target, dtype=bool)
        label = "ground truth"
    return compute_head_scores(
        pred.attention.rows[0], actor_k, target_k, layers=pred.attention.layers, heads=pred.attention.heads,
        keyframes=keyframes, roles_present=(pred.status == "ok", pred.target is not None),
        resize=resize, masks=label,
    )  # fmt: skip


def average_head_scores(scores: Sequence[HeadScores]) -> HeadScores:
    """The mean over clips of their "mean" scores, each clip weighted equally, per role over the clips
    where that role is present (NaN entries, e.g. no target mask, left out of their cell's mean).

    Keyframes differ between clips, so only "mean" is kept (``keyframes`` is empty). All clips must
    share layers, heads, masks and resize.
    """
    if not scores:
        raise ValueError("no head scores to average")
    first = scores[0]
    for s in scores:
        if (s.layers, s.heads, s.masks, s.resize) != (first.layers, first.heads, first.masks, first.resize):
            raise ValueError("head scores to average must share layers, heads, masks and resize")
    roles = tuple(r for r in ROLE_NAMES if any(r in s.roles for s in scores))
    arrays, clips = {}, []
    for role in roles:
        having = [s for s in scores if role in s.roles]
        clips.append(sum(s.clips[s.roles.index(role)] for s in having))
    for share in SHARES:
        per_role = []
        for role in roles:
            having = [s for s in scores if role in s.roles]
            stack = np.stack([s.table(role, share) for s in having])  # (clips, NL, NH)
            weights = np.array([s.clips[s.roles.index(role)] for s in having], dtype=np.float64)
            per_role.append(_nan_weighted_mean(stack, weights)[..., None])
        arrays[share] = (
            np.stack(per_role) if per_role else np.zeros((0, len(first.layers), len(first.heads), 1))
        )
    return HeadScores(**arrays, roles=roles, layers=first.layers, heads=first.heads, keyframes=(),
                      masks=first.masks, resize=first.resize, clips=tuple(clips))  # fmt: skip


def _nan_weighted_mean(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """float (N, ...) with weights (N,) -> (...), NaN entries left out; NaN where all are NaN."""
    valid = ~np.isnan(stack)
    w = weights.reshape(-1, *([1] * (stack.ndim - 1))) * valid
    return _divide((np.where(valid, stack, 0.0) * w).sum(0), w.sum(0))
