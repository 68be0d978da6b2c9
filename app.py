"""ReVIOSa Studio: segment the actor (pink) and target (blue) of an interaction in a video, and see
where the [SEG_ACT] / [SEG_TAR] tokens look.

    python app.py                         # http://127.0.0.1:7860 with the built-in model
    python app.py --model org/name --port 7861 --max-frames 600

The same file runs as a Hugging Face Space (``app_file: app.py``). The work is in ``studio/``
(service: load, check, segment, render; views: attention pictures); this file is the layout and
the callbacks. Per-user state is a `RunResult` in ``gr.State``; the model is shared read-only.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from reviosa.image import IMAGE_SUFFIXES
from studio import head_scores, views
from studio.bootstrap import ensure_sam2
from studio.compare import build_compare_tab
from studio.correct import build_fix_tab
from studio.examples import EXAMPLES_DIR, ensure_synthetic, list_examples
from studio.limits import Limits, add_limit_arguments, limits_from_args
from studio.pictures import picture_file
from studio.service import (
    KEYFRAME_STRATEGIES,
    MAX_KEYFRAMES,
    ModelRegistry,
    RunOptions,
    UserError,
    browser_preview,
    run_request,
)
from viz.overlay import ACTOR_COLOR, TARGET_COLOR

logger = logging.getLogger("reviosa.studio")

MODEL_DEFAULT = "model default"
# What the upload box accepts (by extension: a gif is image/gif, which a video/* filter refuses).
VIDEO_TYPES = [".mp4", ".m4v", ".webm", ".mov", ".avi", ".mkv", ".gif"]
RESULT_OUTPUTS = 7  # state + the Result tab's six outputs
# Stills are one-frame clips (reviosa.image).
UPLOAD_TYPES = [*VIDEO_TYPES, *IMAGE_SUFFIXES]


def _gpu(fn):
    """On a ZeroGPU Space, ``spaces.GPU`` attaches a GPU for the call; elsewhere the function as is."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=120)(fn)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


class Studio:
    """The callbacks, bound to one model registry and one set of limits (no module-level state)."""

    def __init__(self, registry: ModelRegistry, limits: Limits, forced_answer: str | None = None):
        self.registry = registry
        self.limits = limits
        # Tests only (never set by the UI or the CLI): make tiny random models emit the role tokens.
        self.forced_answer = forced_answer
        self.segment = _gpu(self.segment)

    # --- run ------------------------------------------------------------------------------------------

    def segment(
        self, previous, video, expression, model_name, keyframes, strategy, stride, max_frames, max_side,
        progress=gr.Progress(),  # noqa: B008 (Gradio finds progress trackers by this default)
    ):  # fmt: skip
        """Run one request. Returns the new state and the Result tab's outputs."""
        options = RunOptions(
            keyframes=int(keyframes or 0) or None,
            keyframe_strategy=None if strategy in (None, MODEL_DEFAULT) else strategy,
            stride=int(stride or 1),
            max_frames=int(max_frames) if max_frames else None,
            max_side=int(max_side) if max_side else None,
        )
        name = model_name if self.limits.allow_model_choice else None
        try:
            loaded = self.registry.get(name)
            result = run_request(
                loaded, video, expression, options, self.limits, lambda f, d: progress(f, desc=d),
                logits_processor=self._forcing(loaded),
            )  # fmt: skip
        except UserError as err:
            raise gr.Error(str(err), title="Cannot run this request", print_exception=False) from err
        except torch.OutOfMemoryError as err:
            raise gr.Error(
                "The server ran out of memory on this clip. Lower the frame cap or the resolution "
                "cap under Advanced, or trim the clip."
            ) from err
        except Exception as err:  # keep serving: log the details, tell the user something useful
            logger.exception("request failed")
            raise gr.Error(
                f"Something went wrong on the server ({type(err).__name__}); it has been logged. "
                "Try again, or try another clip.",
                print_exception=False,
            ) from err
        _discard(previous)
        return (
            result,
            str(result.overlay_mp4),
            # A 1-frame clip gets no slider (a 0-1 slider would offer a frame that does not exist).
            gr.Slider(
                minimum=0,
                maximum=max(1, result.num_frames - 1),
                value=0,
                step=1,
                interactive=True,
                visible=result.num_frames > 1,
            ),  # fmt: skip
            str(result.frame_paths[0]),
            result.token_spans,
            views.summary_markdown(result),
            result.downloads,
        )

    def segment_in_page(self, *args, progress=gr.Progress()):  # noqa: B008 (as segment)
        """The page's Segment button: an error goes to the message area and the last good result stays.

        (Raising would paint every output panel "Error"; API clients call ``segment``, which raises.)
        """
        try:
            return (*self.segment(*args, progress=progress), "")
        except gr.Error as err:
            return (*[gr.skip()] * RESULT_OUTPUTS, error_markdown(err.title, err.message))

    def preview(self, previous_dir, clip):
        """A preview the browser can play of the chosen clip (avi, gif... transcoded to H.264 mp4)."""
        _remove(previous_dir)
        if not clip:
            return None, gr.update(value=None, visible=False), ""
        out_dir = Path(tempfile.mkdtemp(prefix="reviosa-preview-"))
        try:
            video = browser_preview(clip, self.limits, out_dir)
        except UserError as err:
            _remove(out_dir)
            return (
                None,
                gr.update(value=None, visible=False),
                error_markdown("Cannot read this clip", str(err)),
            )
        if video is None:  # a still image: checked, nothing to play
            _remove(out_dir)
            return None, gr.update(value=None, visible=False), ""
        return out_dir, gr.update(value=str(video), visible=True), ""

    def _forcing(self, loaded):
        if self.forced_answer is None:
            return None
        from reviosa.generation import force_answers

        return force_answers(loaded.model, [self.forced_answer])

    def show_frame(self, result, t):
        if result is None:
            return None
        t = int(np.clip(int(t or 0), 0, len(result.frame_paths) - 1))
        return str(result.frame_paths[t])

    # --- attention tab ------------------------------------------------------------------------------

    def attention_controls(self, result, layer, head):
        """The pickers for what this run captured, keeping the user's layer and head when it has them."""
        view = None if result is None else result.attention
        if view is None:
            return gr.Dropdown(), gr.Dropdown(), gr.Slider()
        layers, heads, k = views.layer_choices(view), views.head_choices(view), len(view.keyframes)
        return (
            gr.Dropdown(choices=layers, value=views.kept_pick(layers, layer)),
            gr.Dropdown(choices=heads, value=views.kept_pick(heads, head)),
            gr.Slider(minimum=0, maximum=max(1, k - 1), value=0, step=1, visible=k > 1),
        )

    def draw_attention(self, result, role, layer, head, keyframe):
        view = None if result is None else result.attention
        try:
            pics = views.attention_pictures(view, role, layer, head, int(keyframe or 0))
        except (
            ValueError
        ) as err:  # a stale pick from an earlier run (API clients only: the page keeps picks valid)
            raise gr.Error(f"{err}. Pick another layer or head.", print_exception=False) from err
        if result is None:  # nothing to draw, only the note
            return None, None, None, None, pics.note, pics.heading
        images = (pics.grid, pics.strip, pics.layer_chart, pics.head_chart)
        return (*(picture_file(image, result.out_dir) for image in images), pics.note, pics.heading)

    def head_score_controls(self, result, pick):
        choices = head_scores.keyframe_choices(result)
        return gr.Dropdown(choices=choices, value=pick if pick in choices else head_scores.MEAN)

    def draw_head_scores(self, result, role, keyframe):
        try:
            panel = head_scores.head_scores_panel(result, role, keyframe)
        except ValueError as err:  # a stale keyframe pick (API clients only)
            raise gr.Error(f"{err}.", print_exception=False) from err
        heatmap = None if result is None else picture_file(panel.heatmap, result.out_dir)
        return panel.table, heatmap, panel.files, panel.note


def _discard(previous) -> None:
    """Remove the previous run's folder: Gradio has already copied what it served into its cache."""
    if previous is not None:
        shutil.rmtree(previous.out_dir, ignore_errors=True)


def _remove(folder) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def error_markdown(title: str | None, message: str) -> str:
    return f"⚠️ **{title or 'Error'}:** {message}"


# --- layout --------------------------------------------------------------------------------------------

INTRO = """# ReVIOSa Studio
Segment the **actor** (<span style="color:{actor}">■ pink</span>) and the **target**
(<span style="color:{target}">■ blue</span>) of an interaction, e.g. *"person walking a dog"*, and see
where the model's `[SEG_ACT]` / `[SEG_TAR]` tokens look. Upload a clip or pick an example, then press
**Segment**."""

DEMO_NOTICE = """⚠️ **The built-in model is not installed**: `builtin` runs **untrained demo weights** (a tiny
random model). Every panel works, but answers are noise and usually nothing is segmented. Start the
studio with `--model FOLDER_OR_HUB_ID` or type a model below for real results."""


# Passed to launch() (Gradio 6 takes CSS there). Example buttons show their whole label (Gradio cuts
# long ones with "..."); the image toolbars go above the pictures, not over their top-right labels.
CSS = """
#examples-synthetic button, #examples-real button { white-space: normal !important; max-width: none !important;
  text-overflow: clip !important; overflow: visible !important; height: auto !important; text-align: left; }
#examples-synthetic button *, #examples-real button * { white-space: normal !important;
  text-overflow: clip !important; overflow: visible !important; }
#heatmap-grid img, #keyframe-strip img { object-fit: contain; max-width: 100%; height: auto; }
"""


def build_demo(studio: Studio, examples_dir=EXAMPLES_DIR) -> gr.Blocks:
    limits = studio.limits
    with gr.Blocks(title="ReVIOSa Studio", delete_cache=(3600, 3600)) as demo:
        state = gr.State(None, delete_callback=_discard)
        preview_dir = gr.State(None, delete_callback=_remove)
        gr.Markdown(INTRO.format(actor=_hex(ACTOR_COLOR), target=_hex(TARGET_COLOR)))
        if studio.registry.default_is_demo():
            gr.Markdown(DEMO_NOTICE, elem_id="demo-notice")
        with gr.Row():
            with gr.Column(scale=2):
                inputs = _input_panel(studio)
                # Right under the inputs, so they are on screen without scrolling (1400x1000).
                _examples_panel(inputs, examples_dir)
            with gr.Column(scale=3), gr.Tabs():
                with gr.Tab("Result"):
                    result_out = _result_panel()
                with gr.Tab("Attention"):
                    attn = _attention_panel()
                with gr.Tab("Compare"):
                    build_compare_tab(studio, inputs, _gpu)
                with gr.Tab("Fix & export"):
                    fix = build_fix_tab(studio, state, _gpu)

        run_inputs = [state, inputs["video"], inputs["expression"], inputs["model"], *inputs["advanced"]]
        run_outputs = [state, *result_out["outputs"]]
        inputs["video"].change(
            studio.preview, [preview_dir, inputs["video"]], [preview_dir, inputs["preview"], inputs["message"]],
            api_visibility="private",
        )  # fmt: skip
        run = inputs["run"].click(
            studio.segment_in_page, run_inputs, [*run_outputs, inputs["message"]],
            api_visibility="private", concurrency_id="model",
        )  # fmt: skip
        # API clients get errors as errors: the same run, raising, behind a button the page does not show.
        inputs["api_run"].click(
            studio.segment, run_inputs, run_outputs, api_name="segment", concurrency_id="model"
        )
        fix["follow"](run)  # after a page run, the Fix & export tab shows its first frame
        attn_inputs = [state, attn["role"], attn["layer"], attn["head"], attn["keyframe"]]
        attn_outputs = attn["outputs"]
        controls = [attn["layer"], attn["head"], attn["keyframe"]]
        run.success(
            studio.attention_controls,
            [state, attn["layer"], attn["head"]],
            controls,
            api_visibility="private",
        ).success(studio.draw_attention, attn_inputs, attn_outputs, api_visibility="private")
        result_out["slider"].input(
            studio.show_frame, [state, result_out["slider"]], [result_out["frame"]], api_name="frame"
        )
        # One endpoint serves all four pickers and API clients.
        gr.on(
            [attn[name].input for name in ("role", "layer", "head", "keyframe")],
            studio.draw_attention, attn_inputs, attn_outputs, api_name="attention",
        )  # fmt: skip
        scores = attn["scores"]
        score_inputs = [state, attn["role"], scores["keyframe"]]
        run.success(
            studio.head_score_controls,
            [state, scores["keyframe"]],
            [scores["keyframe"]],
            api_visibility="private",
        ).success(studio.draw_head_scores, score_inputs, scores["outputs"], api_visibility="private")
        gr.on([attn["role"].input, scores["keyframe"].input], studio.draw_head_scores, score_inputs,
              scores["outputs"], api_name="head_scores")  # fmt: skip
    demo.queue(default_concurrency_limit=limits.concurrency, max_size=64)
    return demo


def _input_panel(studio: Studio) -> dict:
    limits = studio.limits
    # A file box, not gr.Video: Gradio's video upload accepts only video/* types, which refuses gif.
    # Side by side, so a chosen clip's preview does not push the examples below the fold.
    with gr.Row(equal_height=True):
        video = gr.File(
            label="Clip (mp4, webm, mov, avi, mkv, gif) or image (jpg, png, webp)", file_types=UPLOAD_TYPES, file_count="single",
            elem_id="clip", height=110, scale=3,
        )  # fmt: skip
        preview = gr.Video(
            label="Preview", interactive=False, visible=False, elem_id="clip-preview", height=180, scale=2
        )
    expression = gr.Textbox(
        label="Expression", placeholder="person walking a dog", max_lines=2, elem_id="expression",
        info=f"Who does what to whom; at most {limits.max_expression_chars} characters.",
    )  # fmt: skip
    model = gr.Textbox(
        label="Model", value=studio.registry.default, interactive=limits.allow_model_choice,
        info="'builtin', a local model folder, or a Hugging Face hub id (org/name). Loaded once, then shared.",
    )  # fmt: skip
    with gr.Accordion("Advanced", open=False):
        keyframes = gr.Slider(0, MAX_KEYFRAMES, value=0, step=1, label="Keyframes (0 = the model's default)")
        strategy = gr.Radio([MODEL_DEFAULT, *KEYFRAME_STRATEGIES], value=MODEL_DEFAULT,
                            label="How keyframes are chosen", info="uniform: spread over the clip; first: frames 0..K-1")  # fmt: skip
        stride = gr.Slider(1, 16, value=1, step=1, label="Frame stride", info="keep every n-th frame")
        max_frames = gr.Slider(8, limits.max_frames, value=limits.max_frames, step=1, label="Frame cap",
                               info="longer clips are strided to fit")  # fmt: skip
        max_side = gr.Slider(64, limits.max_side, value=limits.max_side, step=2, label="Resolution cap (px)",
                             info="frames are downscaled so the longer side fits")  # fmt: skip
    run = gr.Button("Segment", variant="primary", elem_id="run")
    api_run = gr.Button("Segment (API)", visible=False)
    # Errors land here; the panels keep the last good result.
    message = gr.Markdown(elem_id="message")
    return {"video": video, "preview": preview, "expression": expression, "model": model, "run": run,
            "api_run": api_run, "message": message,
            "advanced": [keyframes, strategy, stride, max_frames, max_side]}  # fmt: skip


def _result_panel() -> dict:
    # Captions as Markdown, not component labels: a label is drawn over the top-left corner, where
    # the overlay's legend is.
    gr.Markdown("**Overlay** (actor pink, target blue)")
    # 360 px high like the frame view: a small clip's overlay (enlarged to 384 px) is shown about
    # at its own size, so the legend keeps the size it was drawn at.
    video = gr.Video(show_label=False, interactive=False, elem_id="overlay", height=360)
    slider = gr.Slider(0, 1, value=0, step=1, label="Frame", interactive=False, elem_id="frame-slider")
    frame = gr.Image(show_label=False, interactive=False, elem_id="frame", height=360)
    answer = gr.HighlightedText(
        label="Answer (the tokens the model emitted; role tokens coloured)", elem_id="answer",
        color_map={"actor": _hex(ACTOR_COLOR), "target": _hex(TARGET_COLOR)}, show_legend=True,
    )  # fmt: skip
    summary = gr.Markdown(elem_id="summary")
    downloads = gr.File(
        label="Downloads: overlay mp4, masks zip (PNG per frame), RLE JSON", file_count="multiple"
    )
    return {"slider": slider, "frame": frame, "outputs": [video, slider, frame, answer, summary, downloads]}


def _attention_panel() -> dict:
    with gr.Row():
        role = gr.Radio(list(views.ROLE_NAMES), value="actor", label="Role")
        layer = gr.Dropdown([views.ALL], value=views.ALL, label="Layer", elem_id="layer-pick")
        head = gr.Dropdown([views.ALL], value=views.ALL, label="Head", elem_id="head-pick")
        keyframe = gr.Slider(0, 1, value=0, step=1, label="Keyframe")
    note = gr.Markdown()
    # Captions as Markdown: a Gradio image label is drawn over the image's top-left corner, where the
    # grid's first head label and the charts' titles are. The heading follows the layer / head picks.
    heading = gr.Markdown(views.GRID_HEADING, elem_id="grid-heading")
    # No toolbar: its buttons sit over the top-right tile's label.
    grid = gr.Image(show_label=False, interactive=False, elem_id="heatmap-grid", buttons=[])
    scores = _head_scores_panel()
    gr.Markdown("**Across the keyframes**: the chosen layer and head(s) on one scale")
    strip = gr.Image(show_label=False, interactive=False, elem_id="keyframe-strip", buttons=[])
    gr.Markdown("**Figure 6**: how much of each token's attention lands on the video")
    with gr.Row():
        layer_chart = gr.Image(show_label=False, interactive=False, elem_id="layer-chart")
        head_chart = gr.Image(show_label=False, interactive=False, elem_id="head-chart")
    return {"role": role, "layer": layer, "head": head, "keyframe": keyframe, "scores": scores,
            "outputs": [grid, strip, layer_chart, head_chart, note, heading]}  # fmt: skip


def _head_scores_panel() -> dict:
    gr.Markdown("**Head scores**: where each head's attention on the video lands, per layer and head")
    with gr.Row():
        # Custom values: API clients name a keyframe of their run, which the page's choices do not know.
        keyframe = gr.Dropdown([head_scores.MEAN], value=head_scores.MEAN, label="Head scores on",
                               allow_custom_value=True, elem_id="score-keyframe")  # fmt: skip
        files = gr.File(label="Head scores (CSV, JSON): all roles and keyframes", file_count="multiple",
                        interactive=False, elem_id="score-files")  # fmt: skip
    heatmap = gr.Image(show_label=False, interactive=False, elem_id="head-scores-map", buttons=[])
    table = gr.Dataframe(headers=list(head_scores.TABLE_COLUMNS), datatype=head_scores.TABLE_TYPES,
                         interactive=False, max_height=420, elem_id="head-scores-table")  # fmt: skip
    note = gr.Markdown(elem_id="head-scores-note")
    return {"keyframe": keyframe, "outputs": [table, heatmap, files, note]}


def _examples_panel(inputs: dict, examples_dir) -> None:
    rows = list_examples(examples_dir)
    fields = [inputs["video"], inputs["expression"]]
    for real, elem_id, label in (
        (False, "examples-synthetic", "Examples: synthetic clips (the built-in model handles these)"),
        (True, "examples-real", "Examples: real clips (need real weights, e.g. ReVIOSa-1B)"),
    ):
        chosen = [r for r in rows if r.needs_real_weights == real]
        if chosen:
            gr.Examples(
                [[str(r.path), r.expression] for r in chosen], fields, label=label, elem_id=elem_id,
                example_labels=[r.label for r in chosen], cache_examples=False,
            )  # fmt: skip


# --- entry points ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ReVIOSa Studio (Gradio app)")
    # Spaces set GRADIO_SERVER_NAME=0.0.0.0; an explicit server_name would override it.
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="0.0.0.0 to serve other machines")  # fmt: skip
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--model", default="builtin", help="default model: 'builtin', a folder, or a hub id")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--share", action="store_true", help="also serve on a temporary public gradio.live link")
    add_limit_arguments(p)
    return p.parse_args(argv)


def create(args: argparse.Namespace) -> gr.Blocks:
    ensure_sam2()  # on a Space only: requirements.txt cannot carry sam2's install flags
    limits = limits_from_args(args)
    registry = ModelRegistry(args.model, args.device, getattr(torch, args.dtype), limits.max_models)
    ensure_synthetic(EXAMPLES_DIR)
    return build_demo(Studio(registry, limits))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    args = parse_args(argv)
    demo = create(args)
    limits = limits_from_args(args)
    demo.launch(
        server_name=args.host, server_port=args.port, share=args.share,
        max_file_size=limits.max_upload_bytes, show_error=True, css=CSS,
    )  # fmt: skip


# `gradio app.py` (reload mode) imports this module and looks for `demo`; building it loads no model
# (models load on the first request), so importing stays cheap. Run as a script, main() builds it.
demo = None if __name__ == "__main__" else create(parse_args([]))

if __name__ == "__main__":
    main()
