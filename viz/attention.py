"""Attention of the role tokens over the vision tokens: heatmaps and the paper's Figure 6 charts.

Inputs are the captured attention rows, float (R, NL, NH, K, g, g): raw softmax probabilities of each
role query ([SEG_ACT] = 0, [SEG_TAR] = 1) over the g x g vision tokens of each of K keyframes, for NL
layers and NH heads (``layers`` / ``heads`` name the real indices those axes hold). They are small
numbers (a row sums to at most 1 over all L keys), so every map is rescaled before colour mapping:

* by default per map, ``map / map.max()`` (the hottest token gets the top colour), which shows where
  each head looks but hides how much it looks;
* or by a given ``vmax`` shared by several maps (``map / vmax``, clipped to 1), which keeps magnitudes
  comparable across heads, layers or keyframes.

Charts are built on ``matplotlib.figure.Figure`` with the Agg canvas directly (no pyplot, no global
backend switch, no display needed).

Axis letters: R roles, NL layers, NH heads, K keyframes, g tokens per side of a frame's grid, H/W pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from viz.overlay import load_font

logger = logging.getLogger(__name__)

__all__ = [
    "HIGHLIGHT_COLOR",
    "colorize",
    "figure_to_array",
    "head_grid",
    "heatmap_overlay",
    "keyframe_strip",
    "plot_head_vision_mass",
    "plot_layer_vision_mass",
    "save_figure_png",
    "vision_mass",
]

# Frame around supervised (layer, head) tiles and colour of the selected bars in the charts.
HIGHLIGHT_COLOR = (255, 200, 0)
_BAR_COLOR = "#9aa4b1"
_BAR_HIGHLIGHT = "#e8a200"
_CANVAS_BG = (255, 255, 255)
_LABEL_COLOR = (30, 30, 30)
_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC}  # fmt: skip


@lru_cache(maxsize=8)
def _lut(cmap: str) -> np.ndarray:
    """float32 (256, 3) RGB lookup table of a matplotlib colour map, in [0, 255] (read-only, cached)."""
    colors = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3]
    lut = (colors * 255.0).astype(np.float32)
    lut.setflags(write=False)
    return lut


def _normalise(attn: np.ndarray, vmax: float | None) -> np.ndarray:
    """Scale a map into [0, 1]: by its own max (default) or by ``vmax``; an all-zero map stays zero."""
    attn = np.asarray(attn, dtype=np.float32)
    scale = float(attn.max()) if vmax is None else float(vmax)
    if not np.isfinite(scale) or scale <= 0.0:
        return np.zeros_like(attn)
    return np.clip(attn / scale, 0.0, 1.0)


def _upsample(values: np.ndarray, size: tuple[int, int], resample: str) -> np.ndarray:
    """Resize a float32 (g, g) map to ``size`` = (H, W); bicubic overshoot is clipped back into [0, 1]."""
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
    height, width = size
    image = Image.fromarray(values.astype(np.float32), mode="F")
    out = np.asarray(image.resize((width, height), _RESAMPLE[resample]), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def colorize(values: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """Map values in [0, 1] (any shape S) to float32 RGB (S + (3,)) in [0, 255] through ``cmap``."""
    index = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.intp)
    return _lut(cmap)[index]


def heatmap_overlay(
    frame: np.ndarray,
    attn: np.ndarray,
    alpha: float = 0.6,
    cmap: str = "inferno",
    vmax: float | None = None,
    resample: str = "bilinear",
) -> np.ndarray:
    """Colour-map one attention map and blend it over its frame.

    Args:
        frame: uint8 (H, W, 3) RGB keyframe.
        attn: float (g, g) attention over the frame's vision tokens (raw probabilities).
        alpha: heatmap opacity in [0, 1]; 1 shows the colour map alone.
        cmap: matplotlib colour map name.
        vmax: None normalises by the map's own max (max -> top colour); a number normalises by it so
            several maps share one scale (values above it saturate).
        resample: "bilinear" (default), "bicubic" or "nearest" (shows the token grid as blocks).
    Returns:
        uint8 (H, W, 3).
    """
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB frame (H, W, 3), got shape {frame.shape}")
    if attn.ndim != 2:
        raise ValueError(f"expected a (g, g) attention map, got shape {attn.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    values = _upsample(_normalise(attn, vmax), frame.shape[:2], resample)
    heat = colorize(values, cmap)  # (H, W, 3) float32
    out = frame.astype(np.float32) * (1.0 - alpha) + heat * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _resize_frame(frame: np.ndarray, width: int) -> np.ndarray:
    """Downscale a uint8 (H, W, 3) frame to ``width`` pixels wide, keeping the aspect ratio."""
    height = max(1, round(frame.shape[0] * width / frame.shape[1]))
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))


def _frame_box(tile: np.ndarray, color: tuple[int, int, int], thickness: int) -> None:
    """Paint a ``thickness``-pixel border of ``color`` inside a uint8 (h, w, 3) tile, in place."""
    tile[:thickness] = color
    tile[-thickness:] = color
    tile[:, :thickness] = color
    tile[:, -thickness:] = color


def head_grid(
    rows_for_role: np.ndarray,
    frame: np.ndarray,
    keyframe: int = 0,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    supervised: Iterable[tuple[int, int]] = (),
    tile_width: int = 96,
    alpha: float = 0.6,
    cmap: str = "inferno",
    shared_scale: bool = False,
) -> np.ndarray:
    """A layer x head grid of heatmap tiles for one role on one keyframe.

    Rows are layers (labelled ``L{layer}``), columns heads (``H{head}``); tiles of supervised
    (layer, head) pairs get a highlight frame. Each tile is normalised on its own by default, because
    heads differ in attention mass by orders of magnitude; ``shared_scale=True`` uses the grid's max
    over this keyframe for all tiles, to compare magnitudes.

    Args:
        rows_for_role: float (NL, NH, K, g, g) attention rows of one role.
        frame: uint8 (H, W, 3) the keyframe ``keyframe``.
        keyframe: index into K.
        layers: the real layer index of each of the NL rows (default 0..NL-1).
        heads: the real head index of each of the NH columns (default 0..NH-1).
        supervised: (layer, head) pairs, in real indices, to frame in ``HIGHLIGHT_COLOR``.
        tile_width: width of one tile in pixels (height follows the frame's aspect ratio).
        alpha, cmap: as in ``heatmap_overlay``.
        shared_scale: one scale for all tiles instead of one per tile.
    Returns:
        uint8 (Hg, Wg, 3) image with the labels in margins on the top and left.
    """
    if rows_for_role.ndim != 5:
        raise ValueError(f"expected rows of shape (NL, NH, K, g, g), got {rows_for_role.shape}")
    num_layers, num_heads, num_keyframes = rows_for_role.shape[:3]
    if not 0 <= keyframe < num_keyframes:
        raise ValueError(f"keyframe {keyframe} out of range for K={num_keyframes}")
    layers = list(range(num_layers)) if layers is None else list(layers)
    heads = list(range(num_heads)) if heads is None else list(heads)
    if len(layers) != num_layers or len(heads) != num_heads:
        raise ValueError(
            f"{len(layers)} layer / {len(heads)} head names for rows of shape {rows_for_role.shape}"
        )
    chosen = {(layer, head) for layer, head in supervised}
    unplotted = sorted(chosen - {(layer, head) for layer in layers for head in heads})
    if unplotted:
        logger.debug("supervised (layer, head) pairs not in this grid: %s", unplotted)

    maps = rows_for_role[:, :, keyframe]  # (NL, NH, g, g)
    vmax = float(maps.max()) if shared_scale else None
    small = _resize_frame(frame, tile_width)
    tile_h, tile_w = small.shape[:2]
    gap = 2
    font_size = max(9, tile_w // 7)
    left, top = 3 * font_size, font_size + 6  # margins sized for "L35" / "H15"
    canvas = np.full(
        (top + num_layers * (tile_h + gap), left + num_heads * (tile_w + gap), 3), _CANVAS_BG, np.uint8
    )
    for i, layer in enumerate(layers):
        for j, head in enumerate(heads):
            tile = heatmap_overlay(small, maps[i, j], alpha=alpha, cmap=cmap, vmax=vmax)
            if (layer, head) in chosen:
                _frame_box(tile, HIGHLIGHT_COLOR, max(2, tile_w // 32))
            y, x = top + i * (tile_h + gap), left + j * (tile_w + gap)
            canvas[y : y + tile_h, x : x + tile_w] = tile

    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    font = load_font(font_size)
    for j, head in enumerate(heads):
        x = left + j * (tile_w + gap) + tile_w / 2
        draw.text((x, top / 2), f"H{head}", font=font, fill=_LABEL_COLOR, anchor="mm")
    for i, layer in enumerate(layers):
        y = top + i * (tile_h + gap) + tile_h / 2
        draw.text((left / 2, y), f"L{layer}", font=font, fill=_LABEL_COLOR, anchor="mm")
    return np.array(image)


def keyframe_strip(
    rows: np.ndarray,
    frames: np.ndarray,
    alpha: float = 0.6,
    cmap: str = "inferno",
    shared_scale: bool = True,
    labels: Sequence[str] | None = None,
    tile_width: int | None = None,
) -> np.ndarray:
    """One head's attention across the keyframes, side by side.

    The scale is shared across keyframes by default: one softmax row spans all K keyframes, so how
    the mass splits between frames is part of what the head does. ``shared_scale=False`` normalises
    each keyframe on its own.

    Args:
        rows: float (K, g, g) attention of one role, layer and head.
        frames: uint8 (K, H, W, 3) the keyframes.
        alpha, cmap: as in ``heatmap_overlay``.
        shared_scale: one scale (the max over all K maps) instead of one per keyframe.
        labels: one caption per keyframe (e.g. frame numbers), drawn in each tile's top-left corner.
        tile_width: downscale each frame to this width first (None keeps the frame size).
    Returns:
        uint8 (H', K * W' + (K - 1) * 2, 3), white 2-pixel gaps between keyframes.
    """
    if rows.ndim != 3 or frames.ndim != 4 or rows.shape[0] != frames.shape[0]:
        raise ValueError(
            f"expected rows (K, g, g) and frames (K, H, W, 3), got {rows.shape} and {frames.shape}"
        )
    if labels is not None and len(labels) != rows.shape[0]:
        raise ValueError(f"{len(labels)} labels for {rows.shape[0]} keyframes")
    vmax = float(rows.max()) if shared_scale else None
    tiles = []
    for k in range(rows.shape[0]):
        frame = frames[k] if tile_width is None else _resize_frame(frames[k], tile_width)
        tiles.append(heatmap_overlay(frame, rows[k], alpha=alpha, cmap=cmap, vmax=vmax))
    gap = np.full((tiles[0].shape[0], 2, 3), _CANVAS_BG, np.uint8)
    strip = np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)
    if labels is None:
        return strip
    image = Image.fromarray(strip)
    draw = ImageDraw.Draw(image)
    font = load_font(max(9, tiles[0].shape[0] // 12))
    for k, label in enumerate(labels):
        x = k * (tiles[0].shape[1] + 2) + 3
        draw.text((x, 3), str(label), font=font, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    return np.array(image)


def vision_mass(rows_for_role: np.ndarray) -> np.ndarray:
    """Attention mass on the vision tokens per (layer, head): float (NL, NH, K, g, g) -> float64 (NL, NH).

    Sum over all K x g x g vision keys of the raw softmax row: the fraction of the role query's
    attention spent on the video (Figure 6; the AML layer/head selection ranks by it).
    """
    if rows_for_role.ndim != 5:
        raise ValueError(f"expected rows of shape (NL, NH, K, g, g), got {rows_for_role.shape}")
    return rows_for_role.sum(axis=(2, 3, 4), dtype=np.float64)


def _bar_chart(
    values: np.ndarray, names: Sequence[str], highlight: set[int], xlabel: str, ylabel: str, title: str
) -> Figure:
    """Bars of ``values`` named ``names``; bars whose index is in ``highlight`` take the highlight colour."""
    fig = Figure(figsize=(max(4.0, 0.28 * len(values) + 1.5), 3.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [_BAR_HIGHLIGHT if i in highlight else _BAR_COLOR for i in range(len(values))]
    ax.bar(range(len(values)), values, color=colors, edgecolor="none")
    ax.set_xticks(range(len(values)), names, fontsize=7)
    ax.set_xlim(-0.6, len(values) - 0.4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def plot_layer_vision_mass(
    mass: np.ndarray, layers: Sequence[int], selected_layer: int | None = None
) -> Figure:
    """Figure 6(a): head-averaged attention to vision tokens, one bar per layer.

    Args:
        mass: float (NL,) attention mass on the vision tokens averaged over heads
            (``vision_mass(rows).mean(axis=1)``).
        layers: real layer index of each bar.
        selected_layer: real index of the layer to highlight (the AML layer), or None.
    Returns:
        a matplotlib Figure on an Agg canvas.
    """
    mass = np.asarray(mass, dtype=np.float64)
    if mass.ndim != 1 or len(layers) != len(mass):
        raise ValueError(f"expected mass (NL,) and NL layer names, got {mass.shape} and {len(layers)}")
    layers = list(layers)
    if selected_layer is not None and selected_layer not in layers:
        raise ValueError(f"selected layer {selected_layer} is not among the plotted layers {layers}")
    highlight = set() if selected_layer is None else {layers.index(selected_layer)}
    ylabel = "attention to vision tokens\n(averaged over heads)"
    return _bar_chart(mass, [str(layer) for layer in layers], highlight, "layer", ylabel, "(a) per layer")


def plot_head_vision_mass(
    mass: np.ndarray, heads: Sequence[int], selected_heads: Iterable[int] = (), layer: int | None = None
) -> Figure:
    """Figure 6(b): attention to vision tokens of each head within one layer.

    Args:
        mass: float (NH,) attention mass on the vision tokens per head (``vision_mass(rows)[i]``).
        heads: real head index of each bar.
        selected_heads: real indices of the supervised heads, highlighted.
        layer: real index of the layer, for the title.
    Returns:
        a matplotlib Figure on an Agg canvas.
    """
    mass = np.asarray(mass, dtype=np.float64)
    if mass.ndim != 1 or len(heads) != len(mass):
        raise ValueError(f"expected mass (NH,) and NH head names, got {mass.shape} and {len(heads)}")
    heads = list(heads)
    missing = [h for h in selected_heads if h not in heads]
    if missing:
        raise ValueError(f"selected heads {missing} are not among the plotted heads {heads}")
    highlight = {heads.index(h) for h in selected_heads}
    title = "(b) per head" + ("" if layer is None else f", layer {layer}")
    return _bar_chart(mass, [str(h) for h in heads], highlight, "head", "attention to vision tokens", title)


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a Figure to uint8 (H, W, 3) RGB (Agg canvas attached if it has none)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure_png(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Save a Figure as PNG at ``path`` and return the path."""
    path = Path(path)
    fig.savefig(path, format="png", dpi=dpi)
    logger.debug("saved figure to %s", path)
    return path
