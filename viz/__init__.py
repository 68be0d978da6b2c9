"""Pictures and videos from model outputs: numpy arrays in, numpy arrays or matplotlib figures out.

No Gradio, no model or training code: the model returns data (masks, attention rows) and this package
draws it. Modules: ``overlay`` (actor / target masks on frames), ``attention`` (heatmaps and the
Figure 6 charts), ``video`` (mp4, PNG-zip and RLE-JSON export), ``annotate`` (numbered object labels).
"""

from viz.annotate import OBJECT_PALETTE, label_objects
from viz.attention import (
    figure_to_array,
    head_grid,
    heatmap_overlay,
    keyframe_strip,
    plot_head_vision_mass,
    plot_layer_vision_mass,
    save_figure_png,
    vision_mass,
)
from viz.overlay import ACTOR_COLOR, ROLE_COLORS, TARGET_COLOR, mask_contour, overlay_frame
from viz.video import masks_to_png_zip, read_mp4, write_mp4

__all__ = [
    "ACTOR_COLOR",
    "OBJECT_PALETTE",
    "ROLE_COLORS",
    "TARGET_COLOR",
    "figure_to_array",
    "head_grid",
    "heatmap_overlay",
    "keyframe_strip",
    "label_objects",
    "mask_contour",
    "masks_to_png_zip",
    "overlay_frame",
    "plot_head_vision_mass",
    "plot_layer_vision_mass",
    "read_mp4",
    "save_figure_png",
    "vision_mass",
    "write_mp4",
]
