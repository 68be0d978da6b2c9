"""Head-score heatmaps: layer x head tables of attention shares (numpy in, matplotlib figures out).

A table is float (NL, NH), one value per layer (rows, ``L{layer}``) and head (columns, ``H{head}``), as
`reviosa.head_scores.HeadScores.table` gives: the share of a role token's vision attention inside the
actor, the target, or elsewhere, or the share of its row on the vision tokens. Every such value is a
share in [0, 1], so all panels use that one fixed scale (0 -> dark, 1 -> bright) and read alike across
heads, roles, models and clips. NaN cells (no target mask, no attention) are drawn grey. Supervised
(layer, head) pairs (the heads the attention mask loss trains) are framed in ``HIGHLIGHT_COLOR``, as in
``viz.attention.head_grid``.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot); turn one into an
array with ``viz.attention.figure_to_array``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from viz.attention import HIGHLIGHT_COLOR

__all__ = ["head_scores_array", "plot_head_scores", "plot_head_table"]

# Values are written in the cells while the table is small enough to read them.
_ANNOTATE_MAX_CELLS = 120
_NAN_COLOR = "#d0d0d0"


def _check(table: np.ndarray, layers: Sequence[int], heads: Sequence[int]) -> np.ndarray:
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or table.shape != (len(layers), len(heads)):
        raise ValueError(
            f"expected a (NL, NH) table with {len(layers)} layers and {len(heads)} heads, got {table.shape}"
        )
    return table


def _draw_table(ax, table: np.ndarray, layers, heads, supervised: set, title: str, cmap: str):
    """One heatmap panel on ``ax``; returns the image (for a colour bar)."""
    colors = matplotlib.colormaps[cmap].with_extremes(bad=_NAN_COLOR)
    image = ax.imshow(np.ma.masked_invalid(table), cmap=colors, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(heads)), [f"H{h}" for h in heads], fontsize=7)
    ax.set_yticks(range(len(layers)), [f"L{layer}" for layer in layers], fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.tick_params(length=0)
    if table.size <= _ANNOTATE_MAX_CELLS:
        for i in range(table.shape[0]):
            for j in range(table.shape[1]):
                value = table[i, j]
                text = "n/a" if np.isnan(value) else f"{value:.2f}"
                dark = np.isnan(value) or value > 0.6  # bright cells of viridis take dark text
                ax.text(
                    j, i, text, ha="center", va="center", fontsize=6.5, color="black" if dark else "white"
                )
    edge = tuple(c / 255 for c in HIGHLIGHT_COLOR)
    for i, layer in enumerate(layers):
        for j, head in enumerate(heads):
            if (layer, head) in supervised:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=edge, linewidth=2))
    return image


def plot_head_table(
    table: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    title: str = "",
    supervised: Iterable[tuple[int, int]] = (),
    cmap: str = "viridis",
) -> Figure:
    """A heatmap of one layer x head table of shares.

    Args:
        table: float (NL, NH) values in [0, 1] (NaN allowed).
        layers, heads: real layer / head index of each row / column.
        title: the panel title.
        supervised: (layer, head) pairs, real indices, to frame.
        cmap: matplotlib colour map name.
    Returns:
        a matplotlib Figure on an Agg canvas.
    """
    return plot_head_scores({title: table}, layers, heads, supervised=supervised, cmap=cmap)


def plot_head_scores(
    tables: Mapping[str, np.ndarray],
    layers: Sequence[int],
    heads: Sequence[int],
    title: str | None = None,
    supervised: Iterable[tuple[int, int]] = (),
    cmap: str = "viridis",
    columns: int | None = None,
) -> Figure:
    """Several layer x head tables side by side on the [0, 1] scale, with one colour bar.

    Args:
        tables: panel title -> float (NL, NH), e.g. {"actor": ..., "target": ..., "elsewhere": ...}.
        layers, heads: real layer / head index of each row / column.
        title: a title over all panels.
        supervised: (layer, head) pairs, real indices, framed in every panel.
        cmap: matplotlib colour map name.
        columns: panels per row (default: all in one row); e.g. 2 puts four tables in a 2 x 2 block.
    Returns:
        a matplotlib Figure on an Agg canvas.
    """
    if not tables:
        raise ValueError("no tables to plot")
    checked = {name: _check(table, layers, heads) for name, table in tables.items()}
    layers, heads = list(layers), list(heads)
    chosen = {(int(layer), int(head)) for layer, head in supervised}
    panel_w = max(1.8, 0.42 * len(heads) + 0.8)
    height = max(1.9, 0.32 * len(layers) + 1.1)
    ncols = len(checked) if columns is None else max(1, min(int(columns), len(checked)))
    nrows = -(-len(checked) // ncols)
    fig = Figure(figsize=(panel_w * ncols + 0.9, height * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    image = None
    for ax, (name, table) in zip(axes, checked.items(), strict=False):
        image = _draw_table(ax, table, layers, heads, chosen, name, cmap)
    for ax in axes[len(checked) :]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes[: len(checked)]), shrink=0.9, pad=0.02, label="share")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def head_scores_array(
    tables: Mapping[str, np.ndarray],
    layers: Sequence[int],
    heads: Sequence[int],
    title: str | None = None,
    supervised: Iterable[tuple[int, int]] = (),
    columns: int | None = None,
) -> np.ndarray:
    """``plot_head_scores`` rendered to uint8 (H, W, 3) RGB."""
    from viz.attention import figure_to_array

    fig = plot_head_scores(tables, layers, heads, title=title, supervised=supervised, columns=columns)
    return figure_to_array(fig)
