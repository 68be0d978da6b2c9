"""The Compare tab: two models (or one model under two protocols) on the same clip and expression.

Side A is the input panel's model and settings; side B names its own model and keyframe protocol.
Each side is an ordinary studio run (`studio.service.run_request`), so it has its overlay, answer,
attention rows and head scores; nothing is recomputed when the user changes the role shown. The
model-choice policy is the app's: with ``allow_model_choice`` off, both sides run the server's
model and may differ only in protocol (keyframes, their choice).

E.g. a model trained with the attention mask loss against the same recipe without it (the paper's
Figure 4): the grids show where each model's role tokens look, the head scores how much of it lands
on the actor and the target, and the agreement line how far their masks differ.

The functions below know no Gradio; `build_compare_tab` lays the tab out and binds them.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass

import numpy as np

from studio.pictures import picture_file
from studio.service import KEYFRAME_STRATEGIES, RunOptions, RunResult, UserError, run_request

logger = logging.getLogger(__name__)

SIDES = ("A", "B")
MODEL_DEFAULT = "model default"


def run_options(keyframes, strategy, stride=1, max_frames=None, max_side=None) -> RunOptions:
    """`RunOptions` from the Advanced controls' values (0 keyframes / "model default": the model's)."""
    return RunOptions(
        keyframes=int(keyframes or 0) or None,
        keyframe_strategy=strategy if strategy in KEYFRAME_STRATEGIES else None,
        stride=int(stride or 1),
        max_frames=int(max_frames) if max_frames else None,
        max_side=int(max_side) if max_side else None,
    )


@dataclass(frozen=True)
class Side:
    """What one side runs: a model name (None: the server's default) and its options."""

    model: str | None
    options: RunOptions


@dataclass
class Comparison:
    """The two runs, A then B, and what each side ran."""

    runs: tuple[RunResult, RunResult]
    sides: tuple[Side, Side]
    names: tuple[str, str]  # the models' registry names


def run_compare(
    registry, limits, video, expression, a: Side, b: Side, progress=None, forcing=None
) -> Comparison:
    """Run both sides, one after the other, on the same clip and expression.

    forcing: optional ``loaded -> logits processor`` (tests force answers; the UI never does).
    Raises UserError naming the side for anything the user can fix.
    """
    report = progress or (lambda _f, _d: None)
    sides = (a, b) if limits.allow_model_choice else tuple(Side(None, s.options) for s in (a, b))
    runs, names = [], []
    for n, (label, side) in enumerate(zip(SIDES, sides, strict=True)):
        try:
            loaded = registry.get(side.model)
            result = run_request(
                loaded, video, expression, side.options, limits,
                lambda f, d, n=n, label=label: report((n + f) / 2, f"model {label}: {d}"),
                logits_processor=None if forcing is None else forcing(loaded),
            )  # fmt: skip
        except UserError as err:
            for done in runs:
                shutil.rmtree(done.out_dir, ignore_errors=True)
            raise UserError(f"Model {label}: {err}") from err
        runs.append(result)
        names.append(loaded.name)
    return Comparison(tuple(runs), sides, tuple(names))


def discard(comparison: Comparison | None) -> None:
    if comparison is not None:
        for run in comparison.runs:
            shutil.rmtree(run.out_dir, ignore_errors=True)


def side_heading(comparison: Comparison, n: int) -> str:
    """Which model and protocol side n ran, and what it found."""
    run, side = comparison.runs[n], comparison.sides[n]
    view = run.attention
    keys = "" if view is None else f"keyframes {', '.join(map(str, view.keyframes))}"
    strategy = side.options.keyframe_strategy or "model default"
    lines = [f"### Model {SIDES[n]}: {_plain(run.model_label)}", f"{keys} ({strategy})."]
    warning = getattr(run, "warning", None)  # the built-in model outside its world (set by the service)
    if warning:
        lines.append(f"⚠️ {warning}")
    if run.status != "ok":
        lines.append(f"**Nothing was segmented:** {_plain(run.reason or '')}.")
    else:
        target = (
            "no target" if run.target_frames is None else f"target in {run.target_frames}/{run.num_frames}"
        )
        lines.append(f"Actor in {run.actor_frames}/{run.num_frames} frames; {target}.")
    return "\n\n".join(lines)


def agreement_markdown(comparison: Comparison) -> str:
    """How far the two sides' masks agree: mean IoU over frames per role, and whether answers match."""
    from studio.correct import run_tracks

    a, b = comparison.runs
    tracks = [run_tracks(run) for run in comparison.runs]
    lines = []
    same_answer = a.answer == b.answer
    lines.append(
        "Same answer."
        if same_answer
        else f"Different answers: A *{_plain(a.answer)}*, B *{_plain(b.answer)}*."
    )
    for role in ("actor", "target"):
        ta, tb = tracks[0][role], tracks[1][role]
        if ta is None or tb is None:
            missing = [s for s, t in zip(SIDES, (ta, tb), strict=True) if t is None]
            lines.append(f"{role.capitalize()}: not emitted by model {' and '.join(missing)}.")
            continue
        ious = [_iou(ta[t], tb[t]) for t in range(len(ta))]
        lines.append(
            f"{role.capitalize()} masks of A and B: mean IoU {np.mean(ious):.2f} over {len(ious)} frames."
        )
    if comparison.sides[0] == comparison.sides[1] and comparison.names[0] == comparison.names[1]:
        lines.append(
            "Both sides ran the same model with the same protocol: pick another model or keyframes for B."
        )
    return "**Agreement.** " + " ".join(lines)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def side_attention(run: RunResult, role: str, layers: str):
    """The role's heatmap grid for one side: its supervised layer (or every layer) x all heads, keyframe 0.

    Returns (grid image or None, note).
    """
    from studio import views

    view = run.attention
    if view is None:
        return None, "No attention was captured in this run."
    supervised = str(view.supervised_layer) if view.supervised_layer in view.layers else views.ALL
    layer = views.ALL if layers == "all layers" else supervised
    pics = views.attention_pictures(view, role, layer, views.ALL, 0)
    shown = "all layers" if layer == views.ALL else f"layer {layer}"
    note = (
        pics.note
        if pics.grid is None
        else f"{role} token, {shown}, all heads, keyframe 0 (frame {view.keyframes[0]})."
    )
    return pics.grid, note


def side_scores(run: RunResult, role: str):
    """The side's head-score table for the role (mean over keyframes), or None and why not."""
    try:
        from studio.head_scores import head_scores_panel
    except ImportError:  # head scores are a separate module; the tab works without them
        return None, "Head scores are not available in this build."
    panel = head_scores_panel(run, role, None)
    return panel.table, panel.note


def _plain(text: str) -> str:
    from studio.views import _escape

    return _escape(text)


# --- the tab -----------------------------------------------------------------------------------------


LAYER_MODES = ("supervised layer", "all layers")
HELP = """Run two models on the clip and expression of the left panel, side by side. **Model A** is the
Model box and the Advanced settings on the left; set **model B** and its keyframes here. E.g. a model
trained with the attention mask loss against one trained without it (the paper's Figure 4), or the
same model with other keyframes."""


def build_compare_tab(studio, inputs: dict, gpu=lambda fn: fn) -> dict:
    """Lay out the Compare tab inside the caller's ``gr.Tab`` and bind its events.

    studio: the app's `Studio` (registry, limits, forced answers in tests); inputs: the input
    panel's components ("video", "expression", "model", "advanced").
    """
    import gradio as gr

    from studio.service import MAX_KEYFRAMES
    from viz.overlay import ROLE_COLORS

    limits = studio.limits
    state = gr.State(None, delete_callback=discard)
    gr.Markdown(
        HELP if limits.allow_model_choice else HELP + " (This server runs one model: compare protocols.)"
    )
    with gr.Row():
        model_b = gr.Textbox(
            label="Model B", value=studio.registry.default, interactive=limits.allow_model_choice,
            info="'builtin', a local model folder or a hub id", elem_id="compare-model", scale=2,
        )  # fmt: skip
        keyframes_b = gr.Slider(0, MAX_KEYFRAMES, value=0, step=1, label="B: keyframes (0 = model default)")
        strategy_b = gr.Radio(
            [MODEL_DEFAULT, *KEYFRAME_STRATEGIES], value=MODEL_DEFAULT, label="B: keyframe choice"
        )
    button = gr.Button("Compare", variant="primary", elem_id="compare-run")
    message = gr.Markdown(elem_id="compare-message")
    with gr.Row():
        role = gr.Radio(["actor", "target"], value="actor", label="Role", elem_id="compare-role")
        layers = gr.Radio(list(LAYER_MODES), value=LAYER_MODES[0], label="Heatmaps", elem_id="compare-layers")
    summary = gr.Markdown(elem_id="compare-summary")
    columns = []
    with gr.Row(equal_height=False):
        for label in SIDES:
            key = label.lower()
            with gr.Column():
                heading = gr.Markdown(f"### Model {label}", elem_id=f"compare-{key}-heading")
                video = gr.Video(show_label=False, interactive=False, elem_id=f"compare-{key}-overlay")
                answer = gr.HighlightedText(
                    label="Answer", elem_id=f"compare-{key}-answer", show_legend=False,
                    color_map={role: "#{:02x}{:02x}{:02x}".format(*ROLE_COLORS[role]) for role in ROLE_COLORS},
                )  # fmt: skip
                note = gr.Markdown(elem_id=f"compare-{key}-note")
                grid = gr.Image(
                    show_label=False, interactive=False, elem_id=f"compare-{key}-grid", buttons=[]
                )
                scores = gr.Dataframe(label="Head scores (mean over keyframes; click a column to sort)",
                                      interactive=False, elem_id=f"compare-{key}-scores", max_height=300)  # fmt: skip
            columns.append({"heading": heading, "video": video, "answer": answer, "note": note,
                            "grid": grid, "scores": scores})  # fmt: skip
    side_outputs = [c[k] for c in columns for k in ("heading", "video", "answer")]
    view_outputs = [c[k] for c in columns for k in ("note", "grid", "scores")]

    def views_of(comparison, role_name, layer_mode):
        out = []
        for run in comparison.runs:
            grid_image, note = side_attention(run, role_name, layer_mode)
            table, score_note = side_scores(run, role_name)
            grid_file = picture_file(grid_image, run.out_dir)  # a file, not an array: see studio.pictures
            out += [note if table is not None else f"{note} {score_note}", grid_file, table]
        return out

    def compare(previous, video, expression, model_a, keyframes_a, strategy_a, stride, max_frames, max_side,
                model_b_name, k_b, strategy_b_name, role_name, layer_mode, progress=gr.Progress()):  # noqa: B008  # fmt: skip
        a = Side(model_a or None, run_options(keyframes_a, strategy_a, stride, max_frames, max_side))
        b = Side(model_b_name or None, run_options(k_b, strategy_b_name, stride, max_frames, max_side))
        comparison = run_compare(studio.registry, limits, video, expression, a, b,
                                 lambda f, d: progress(f, desc=d), studio._forcing)  # fmt: skip
        discard(previous)
        sides = []
        for n, run in enumerate(comparison.runs):
            sides += [side_heading(comparison, n), str(run.overlay_mp4), run.token_spans]
        return [
            comparison,
            *sides,
            agreement_markdown(comparison),
            *views_of(comparison, role_name, layer_mode),
        ]

    def compare_api(*args, progress=gr.Progress()):  # noqa: B008
        try:
            return compare(*args, progress=progress)
        except UserError as err:
            raise gr.Error(str(err), title="Cannot compare", print_exception=False) from err

    def compare_in_page(*args, progress=gr.Progress()):  # noqa: B008
        """Errors go to the message line and the last comparison stays (as the Segment button)."""
        try:
            return [*compare(*args, progress=progress), ""]
        except UserError as err:
            return [
                *[gr.skip()] * (2 + len(side_outputs) + len(view_outputs)),
                f"⚠️ **Cannot compare:** {err}",
            ]

    def redraw(comparison, role_name, layer_mode):
        if comparison is None:
            return [gr.skip()] * len(view_outputs)
        return views_of(comparison, role_name, layer_mode)

    run_inputs = [state, inputs["video"], inputs["expression"], inputs["model"], *inputs["advanced"],
                  model_b, keyframes_b, strategy_b, role, layers]  # fmt: skip
    outputs = [state, *side_outputs, summary, *view_outputs]
    button.click(gpu(compare_in_page), run_inputs, [*outputs, message], api_visibility="private",
                 concurrency_id="model")  # fmt: skip
    api_button = gr.Button("Compare (API)", visible=False)
    api_button.click(gpu(compare_api), run_inputs, outputs, api_name="compare", concurrency_id="model")
    gr.on([role.input, layers.input], redraw, [state, role, layers], view_outputs, api_name="compare_views")
    return {"state": state, "button": button, "summary": summary, "columns": columns}
