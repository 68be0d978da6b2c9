"""The Attention tab's head scores: a sortable layer x head table, its heatmap, and CSV / JSON downloads.

For the run in a `RunResult`, ``reviosa.head_scores`` splits each role token's captured vision
attention by the run's predicted masks on the keyframes (read back from the run's results JSON,
so no second model pass): the share inside the actor, inside the target, elsewhere, and the share of
the whole row on the vision tokens, per layer and head, on one keyframe or over all ("mean").
``viz.head_scores`` draws the tables. No Gradio here: ``app.py`` shows what these functions return.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from reviosa.head_scores import MEAN, SHARES, HeadScores, compute_head_scores
from studio.service import RunResult

__all__ = [
    "MEAN",
    "TABLE_COLUMNS",
    "HeadScoresPanel",
    "keyframe_choices",
    "run_head_scores",
    "head_scores_panel",
]

TABLE_COLUMNS = ("layer", "head", *SHARES, "AML")
TABLE_TYPES = ["number", "number", "number", "number", "number", "number", "str"]
_DECIMALS = 3


@dataclass
class HeadScoresPanel:
    table: object  # pandas.DataFrame with TABLE_COLUMNS, one row per (layer, head)
    heatmap: np.ndarray | None  # uint8 (H, W, 3): the four tables as heatmaps
    files: list[str]  # head_scores.csv, head_scores.json (all roles and keyframes)
    note: str


def keyframe_choices(result: RunResult | None) -> list[str]:
    """``MEAN`` then "k (frame t)" for each keyframe of the run."""
    view = None if result is None else result.attention
    if view is None:
        return [MEAN]
    return [MEAN, *(f"{k} (frame {t})" for k, t in enumerate(view.keyframes))]


def _keyframe(pick: str | None) -> int | str:
    """A keyframe choice ("mean" or "k (frame t)") -> k or ``MEAN``."""
    if pick in (None, "", MEAN):
        return MEAN
    try:
        return int(str(pick).split(" ", 1)[0])
    except ValueError:
        raise ValueError(f"unknown keyframe choice {pick!r}: pick 'mean' or a keyframe") from None


def _keyframe_masks(result: RunResult) -> tuple[np.ndarray, np.ndarray | None]:
    """The run's predicted masks on its keyframes, bool (K, H, W) each (target None without [SEG_TAR])."""
    from reviosa import rle

    data = json.loads(result.results_json.read_text())
    (entry,) = (e for video in data["videos"].values() for e in video.values())
    keyframes = result.attention.keyframes

    def masks(track: list) -> np.ndarray:
        return np.stack([rle.decode(track[t], result.size) for t in keyframes]).astype(bool)

    return masks(entry["actor"]), None if entry["target"] is None else masks(entry["target"])


def run_head_scores(result: RunResult | None) -> HeadScores | None:
    """The head scores of a run with the predicted masks (None without captured attention)."""
    view = None if result is None else result.attention
    if view is None:
        return None
    actor, target = _keyframe_masks(result)
    return compute_head_scores(
        view.rows, actor, target, layers=view.layers, heads=view.heads, keyframes=view.keyframes,
        roles_present=view.roles_present,
    )  # fmt: skip


def _downloads(result: RunResult, scores: HeadScores) -> list[str]:
    """The full tables (every role, keyframe, layer and head) in the run's folder, written once."""
    folder = result.out_dir / "head_scores"
    csv_path, json_path = folder / "head_scores.csv", folder / "head_scores.json"
    if not json_path.is_file():
        scores.to_csv(csv_path)
        scores.to_json(json_path)
    return [str(csv_path), str(json_path)]


def head_scores_panel(result: RunResult | None, role: str, keyframe: str | None) -> HeadScoresPanel:
    """Table, heatmap, downloads and a note for one role on one keyframe (or "mean")."""
    import pandas as pd

    from viz.head_scores import head_scores_array

    empty = pd.DataFrame(columns=list(TABLE_COLUMNS))
    scores = run_head_scores(result)
    if scores is None:
        return HeadScoresPanel(empty, None, [], "Run a clip first: the head scores come from that run.")
    files = _downloads(result, scores)
    if role not in scores.roles:
        token = "[SEG_TAR]" if role == "target" else "[SEG_ACT]"
        note = f"The answer has no {token} token, so there are no {role} head scores."
        return HeadScoresPanel(empty, None, files, note)
    k = _keyframe(keyframe)
    tables = {share: scores.table(role, share, k) for share in SHARES}  # (NL, NH) each
    view = result.attention
    supervised = set(view.supervised)
    rows = [
        [layer, head, *(round(float(tables[s][i, j]), _DECIMALS) for s in SHARES),
         "yes" if (layer, head) in supervised else ""]
        for i, layer in enumerate(scores.layers) for j, head in enumerate(scores.heads)
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    where = "all keyframes" if k == MEAN else f"keyframe {k} (frame {view.keyframes[k]})"
    heatmap = head_scores_array(
        tables, scores.layers, scores.heads, title=f"{role}, {where}", supervised=supervised, columns=2
    )
    return HeadScoresPanel(table, heatmap, files, _note(role, where, scores, result.target_frames is None))


def _note(role: str, where: str, scores: HeadScores, no_target: bool) -> str:
    target = " There is no target mask (no [SEG_TAR]), so the target column is empty." if no_target else ""
    return (
        f"**{role}** token, {where}, with the run's predicted masks. Each row: of this head's attention on "
        "the video, the share inside the actor, inside the target and elsewhere (masks reduced to the "
        "token grid by area coverage), and the share of its whole attention that is on the video "
        f"(vision). Sort by a column from its ⋮ menu; AML marks the heads the attention mask loss supervises.{target}"
    )
