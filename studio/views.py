"""What the studio shows, made from a `RunResult`: attention pictures, charts and the result summary.

Pictures come from ``viz`` (numpy in, numpy out); this module only picks the rows, layers and heads the
user chose and words the text around them. Axis letters: R roles, NL layers, NH heads, K keyframes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from studio.service import AttentionView, RunResult

ALL = "all"
ROLE_NAMES = ("actor", "target")
# Tiles per grid above which tiles shrink: 24 layers x 14 heads (ReVIOSa-1B) at 96 px is 2.4k px tall.
_MANY_TILES = 64
GRID_HEADING = "**Heatmaps**: layers (rows) x heads (columns) on one keyframe"


@dataclass
class AttentionPictures:
    grid: np.ndarray | None  # heatmaps, layers x heads, on one keyframe
    strip: np.ndarray | None  # one layer/head across the keyframes
    layer_chart: np.ndarray | None  # Figure 6(a)
    head_chart: np.ndarray | None  # Figure 6(b)
    note: str
    heading: str = GRID_HEADING  # what the grid shows, in the words of the picks


def layer_choices(view: AttentionView) -> list[str]:
    """Dropdown choices for the layer picker: "all", then each captured layer."""
    return [ALL] + [str(layer) for layer in view.layers]


def head_choices(view: AttentionView) -> list[str]:
    return [ALL] + [str(head) for head in view.heads]


def kept_pick(choices: list[str], pick: str | None) -> str:
    """The user's pick when the new run still has it, else "all" (a run never changes what the heading says)."""
    return pick if pick in choices else ALL


def grid_heading(view: AttentionView, layer: str, head: str, k: int) -> str:
    """The grid's caption, naming the picked layer / head when one is picked."""
    rows = "layers (rows)" if layer in (None, "", ALL) else f"layer {layer} (one row)"
    cols = "heads (columns)" if head in (None, "", ALL) else f"head {head}"
    return f"**Heatmaps**: {rows} x {cols} on keyframe {k} (frame {view.keyframes[k]})"


def attention_pictures(
    view: AttentionView | None, role: str, layer: str, head: str, keyframe: int
) -> AttentionPictures:
    """Heatmap grid, keyframe strip and both Figure 6 charts for the user's picks.

    ``layer`` / ``head`` are real indices as text, or ``ALL``; ``keyframe`` indexes the K keyframes.
    """
    from viz.attention import figure_to_array, head_grid, keyframe_strip

    if view is None:
        return AttentionPictures(
            None, None, None, None, "Run a clip first: the attention comes from that run."
        )
    r = ROLE_NAMES.index(role)
    if not view.roles_present[r]:
        token = "[SEG_TAR]" if r else "[SEG_ACT]"
        return AttentionPictures(
            None,
            None,
            None,
            None,
            f"The answer has no {token} token, so there is no {role} attention to show.",
        )
    rows = view.rows[r]  # (NL, NH, K, g, g)
    li = _indices(view.layers, layer)
    hi = _indices(view.heads, head)
    k = int(np.clip(keyframe, 0, len(view.keyframes) - 1))
    tiles = len(li) * len(hi)
    tile = 128 if tiles <= 16 else 96 if tiles <= _MANY_TILES else 56
    grid = head_grid(
        rows[np.ix_(li, hi)], view.keyframe_images[k], keyframe=k,
        layers=[view.layers[i] for i in li], heads=[view.heads[i] for i in hi],
        supervised=view.supervised, tile_width=tile,
    )  # fmt: skip
    strip_layer, strip_heads = _strip_pick(view, li, hi)
    strip = keyframe_strip(
        rows[strip_layer, strip_heads].mean(axis=0), view.keyframe_images,
        labels=[f"frame {t}" for t in view.keyframes], tile_width=160,
    )  # fmt: skip
    layer_fig, head_fig = _charts(view, rows, strip_layer)
    note = _attention_note(view, role, k, strip_layer, strip_heads)
    pictures = AttentionPictures(grid, strip, figure_to_array(layer_fig), figure_to_array(head_fig), note)
    pictures.heading = grid_heading(view, layer, head, k)
    return pictures


def _indices(names: tuple[int, ...], pick: str) -> list[int]:
    """Positions along a captured axis for a pick ("all" or one real index)."""
    if pick in (None, "", ALL):
        return list(range(len(names)))
    value = int(pick)
    if value not in names:
        raise ValueError(f"{value} was not captured (captured: {list(names)})")
    return [names.index(value)]


def _strip_pick(view: AttentionView, li: list[int], hi: list[int]) -> tuple[int, list[int]]:
    """Layer position and head positions for the keyframe strip.

    One layer and one head when the user picked them; otherwise the supervised layer and its heads
    (averaged), since those are the heads the attention mask loss trains to look at the referent.
    """
    layer = (
        li[0] if len(li) == 1 else _position(view.layers, view.supervised_layer, default=len(view.layers) - 1)
    )
    if len(hi) == 1:
        return layer, hi
    supervised = [view.heads.index(h) for h in view.supervised_heads if h in view.heads]
    return layer, supervised if view.layers[layer] == view.supervised_layer and supervised else hi


def _position(names: tuple[int, ...], value: int | None, default: int) -> int:
    return names.index(value) if value in names else default


def _charts(view: AttentionView, rows: np.ndarray, layer: int):
    from viz.attention import plot_head_vision_mass, plot_layer_vision_mass, vision_mass

    mass = vision_mass(rows)  # (NL, NH)
    selected = view.supervised_layer if view.supervised_layer in view.layers else None
    layer_fig = plot_layer_vision_mass(mass.mean(axis=1), view.layers, selected_layer=selected)
    real_layer = view.layers[layer]
    heads = (
        [h for h in view.supervised_heads if h in view.heads] if real_layer == view.supervised_layer else []
    )
    head_fig = plot_head_vision_mass(mass[layer], view.heads, selected_heads=heads, layer=real_layer)
    return layer_fig, head_fig


def _attention_note(view: AttentionView, role: str, k: int, layer: int, heads: list[int]) -> str:
    sup = (
        f"The attention mask loss supervises layer {view.supervised_layer}, heads "
        f"{', '.join(map(str, view.supervised_heads))} (framed in yellow, bars in orange)."
        if view.supervised_layer is not None
        else "This model names no supervised layer and heads."
    )
    head_text = ", ".join(str(view.heads[h]) for h in heads)
    return (
        f"**{role}** token on keyframe {k} (frame {view.keyframes[k]}). {sup} "
        f"The strip shows layer {view.layers[layer]}, head(s) {head_text} across all keyframes on one scale. "
        "Each grid tile is scaled to its own maximum; the charts show how much of each row lands on the video."
    )


# --- result text ------------------------------------------------------------------------------------


def summary_markdown(result: RunResult) -> str:
    """What happened, in a few lines: model, outcome, tracks, notices, timings."""
    from reviosa.caps import plural

    lines = [f"Expression: *{_escape(result.expression)}*"]
    if result.warning:  # first, so a meaningless run never reads like a success
        lines.insert(0, f"⚠️ **{_escape(result.warning)}**")
    if result.demo_model:
        lines.append(f"⚠️ **{result.model_label}**")
    else:
        lines.append(f"Model: {result.model_label}.")
    n = plural(result.num_frames, "frame")
    if result.status == "ok":
        target = (
            "no target (the answer has no [SEG_TAR])"
            if result.target_frames is None
            else f"target (blue) in {result.target_frames}/{n}"
        )
        drawn = "Masks drawn, not meaningful (see above): a" if result.warning else "A"
        lines.append(f"{drawn}ctor (pink) in {result.actor_frames}/{n}; {target}.")
    else:
        lines.append(f"**Nothing was segmented:** {_escape(result.reason or '')}.")
    h, w = result.size
    lines.append(f"{n} at {w}x{h}, {result.fps:.3g} fps.")
    lines += [f"ℹ️ {notice}" for notice in result.notices]
    t = result.timings
    lines.append(
        f"Time: MLLM {t.get('mllm', 0):.1f} s, propagation {t.get('propagate', 0):.1f} s, "
        f"rendering {t.get('rendering', 0):.1f} s."
    )
    return "\n\n".join(lines)


def _escape(text: str) -> str:
    """User text shown inside Markdown: markup characters are shown, not interpreted."""
    return "".join("\\" + ch if ch in "\\`*_{}[]()#+-.!<>|~" else ch for ch in text)
