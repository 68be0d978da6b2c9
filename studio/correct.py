"""The Fix & export tab: correct the last run's tracks with clicks, then export them as training data.

`FixSession` is one user's correction state (kept in ``gr.State``): the run's clip, as the run saw
it (same stride and resolution caps), its original tracks (read back from the run's RLE JSON), the
clicks so far and the tracks they give (`reviosa.correction.correct_tracks`, recomputed from the
original tracks on every change, so undo and reset are exact). `export` writes the corrected tracks
as the annotation pipeline's input and as an InterRVOS sample (`reviosa.data.export`), zipped.

The functions above `build_fix_tab` take and return plain objects; it lays the tab out and binds
them (Gradio resolves the click handler's ``gr.SelectData`` annotation from this module's names).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np

from studio.pictures import picture_file
from studio.service import UserError, preview_scale

logger = logging.getLogger(__name__)

ROLES = ("actor", "target")
POLARITIES = ("add (positive)", "remove (negative)")
AUTO = "auto (from the tracks)"
CAPTION_CHOICES = (AUTO, "single", "multi", "bidirectional", "unidirectional")
HELP = """Correct the last **Segment** run. Pick the role and whether the click adds or removes, then
click on the frame: SAM2 re-decodes that frame from your clicks and re-segments every frame after it
(frames before it stay as they were). **Export** writes the corrected tracks as training data: the
annotation pipeline's input (`python -m train.annotate --input`) and an InterRVOS sample that
`reviosa.data` reads."""


@dataclass
class FixSession:
    """One user's corrections. tracks: {"actor": bool (T, H, W) MaskTrack, "target": track or None}."""

    video: object  # reviosa.video.VideoFile, opened with the run's caps
    video_id: str
    expression: str
    model_name: str | None
    original: dict
    clicks: list = field(default_factory=list)  # reviosa.correction.Click, in order
    tracks: dict = field(default_factory=dict)
    out_dir: Path | None = None  # this session's exports
    result_dir: Path | None = None  # the run it corrects (a failed run keeps the session)

    @property
    def num_frames(self) -> int:
        return self.video.num_frames


def run_tracks(result) -> dict:
    """A finished run's tracks read back from its results JSON: {"actor": MaskTrack or None (nothing
    segmented), "target": MaskTrack or None (no [SEG_TAR])}, bool (T, H, W) each."""
    from reviosa import results, rle
    from reviosa.video import MaskTrack

    size = tuple(result.size)
    (entry,) = next(iter(results.load(result.results_json)["videos"].values())).values()

    def track(encoded):
        if encoded is None:
            return None
        out = MaskTrack(result.num_frames, size)
        for t, item in enumerate(encoded):
            if item is not None:
                out[t] = rle.decode(item, size)
        return out

    return {
        "actor": track(entry["actor"]) if result.status == "ok" else None,
        "target": track(entry["target"]),
    }


def new_session(result) -> FixSession:
    """A session on a finished run (`studio.service.RunResult`): its clip as the run read it and its
    tracks read back from its results JSON."""
    from reviosa.data.export import safe_video_id
    from reviosa.video import MaskTrack

    video = result.video
    if video is None or (video.num_frames, tuple(video.size)) != (result.num_frames, tuple(result.size)):
        raise UserError("This run kept no clip to correct: press Segment again.")
    original = run_tracks(result)
    if original["actor"] is None:  # nothing was segmented: the user draws the actor from scratch
        original["actor"] = MaskTrack(video.num_frames, tuple(video.size))
    name = safe_video_id(Path(getattr(video, "path", "video")).name)
    return FixSession(video, name, result.expression, result.model_name, original, [], dict(original),
                      result_dir=result.out_dir)  # fmt: skip


def add_click(session: FixSession, loaded, frame: int, role: str, polarity: str, x: float, y: float,
              progress=None) -> FixSession:  # fmt: skip
    """The session with one more click (frame pixels x, y) and the tracks it gives."""
    from reviosa.correction import Click

    if role not in ROLES:
        raise UserError(f"Pick the role to correct: {' or '.join(ROLES)}.")
    if polarity not in POLARITIES:
        raise UserError(f"Pick what the click does: {' or '.join(POLARITIES)}.")
    h, w = session.video.size
    t = int(frame)
    if not 0 <= t < session.num_frames:
        raise UserError(f"Frame {t} is outside the clip (frames 0..{session.num_frames - 1}).")
    if not (0 <= x < w and 0 <= y < h):
        raise UserError(f"The click ({x:g}, {y:g}) is outside the {w}x{h} frame.")
    click = Click(t, role, float(x), float(y), positive=polarity == POLARITIES[0])
    return _recompute(session, loaded, [*session.clicks, click], progress)


def undo(session: FixSession, loaded, progress=None) -> FixSession:
    return _recompute(session, loaded, session.clicks[:-1], progress)


def reset(session: FixSession) -> FixSession:
    return dataclasses.replace(session, clicks=[], tracks=dict(session.original))


def _recompute(session: FixSession, loaded, clicks: list, progress) -> FixSession:
    from reviosa.correction import correct_tracks

    if not clicks:
        return reset(session)
    tracks = correct_tracks(loaded.model, session.video, session.original, clicks, progress=progress)
    return dataclasses.replace(session, clicks=clicks, tracks=tracks)


# --- pictures and text -------------------------------------------------------------------------------


def frame_picture(session: FixSession, t: int) -> np.ndarray:
    """uint8 (H*s, W*s, 3): frame t with the corrected masks and that frame's clicks marked
    (green: add, red: remove), enlarged by ``preview_scale``."""
    from reviosa.tokens import ROLES as ROLE_ORDER
    from viz.overlay import draw_legend, overlay_frame

    t = int(np.clip(int(t or 0), 0, session.num_frames - 1))
    frame = session.video.read([t])[0]
    masks = {r: None if session.tracks.get(r) is None else session.tracks[r][t] for r in ROLE_ORDER}
    image = overlay_frame(frame, masks["actor"], masks["target"], legend=False)
    s = preview_scale(frame.shape[:2])
    # Enlarged first, then the legend, so it is sized for the picture as seen (as the Result tab's).
    image = draw_legend(np.repeat(np.repeat(image, s, axis=0), s, axis=1),
                        tuple(r for r in ROLE_ORDER if masks[r] is not None))  # fmt: skip
    for c in session.clicks:
        if c.frame == t:
            _mark(image, (c.x + 0.5) * s, (c.y + 0.5) * s, c.positive)
    return image


def _mark(image: np.ndarray, x: float, y: float, positive: bool) -> None:
    """A filled dot with a white ring where the user clicked, in place."""
    h, w = image.shape[:2]
    r = max(4.0, 0.012 * max(h, w))
    yy, xx = np.ogrid[:h, :w]
    d2 = (yy - y) ** 2 + (xx - x) ** 2
    image[d2 <= (r + 2) ** 2] = (255, 255, 255)
    image[d2 <= r**2] = (40, 200, 80) if positive else (230, 40, 40)


def status_markdown(session: FixSession | None) -> str:
    if session is None:
        return "Run **Segment** first: the corrections start from its tracks."
    if not session.clicks:
        return f"{session.num_frames} frames, no clicks yet: the tracks are the model's."
    lines = [f"**{len(session.clicks)} click(s):**"]
    for n, c in enumerate(session.clicks, 1):
        kind = "add" if c.positive else "remove"
        lines.append(f"{n}. frame {c.frame}, {c.role}, {kind} at ({c.x:.0f}, {c.y:.0f})")
    first = min(c.frame for c in session.clicks)
    lines.append(
        f"\nFrames {first}..{session.num_frames - 1} were re-segmented; frames before {first} are unchanged."
    )
    return "\n".join(lines)


# --- export ----------------------------------------------------------------------------------------------


def export(session: FixSession, caption_type: str, fps: float = 10.0) -> tuple[list[Path], str]:
    """Write the corrected overlay video and the two training-data zips into a fresh folder.

    Returns the files and a note for the user. Raises UserError for a choice the tracks cannot meet.
    """
    from reviosa.data.export import role_objects, write_annotation_input, write_interrvos_sample

    actor, target = session.tracks["actor"], session.tracks.get("target")
    has_target = target is not None and int(target.areas().sum()) > 0
    kind = (
        ("unidirectional" if has_target else "single") if caption_type in (None, "", AUTO) else caption_type
    )
    if kind not in CAPTION_CHOICES[1:]:
        raise UserError(f"Pick a caption type: {', '.join(CAPTION_CHOICES[1:])}.")
    if kind == "unidirectional" and not has_target:
        raise UserError("A unidirectional sample needs a target: add one with role 'target' clicks first.")
    note = f"Caption type **{kind}**; the actor is object 1" + (
        ", the target object 2." if has_target else "."
    )
    if has_target and kind != "unidirectional":
        note += (
            " The target track is left out of the InterRVOS sample: only unidirectional expressions have one."
        )
    if session.out_dir is not None:
        shutil.rmtree(session.out_dir, ignore_errors=True)
    session.out_dir = Path(tempfile.mkdtemp(prefix="reviosa-fix-"))
    work = session.out_dir / "work"
    objects = role_objects(actor, target if has_target else None)
    write_annotation_input(work / "annotate_input", session.video_id, session.video, objects)
    write_interrvos_sample(
        work / "interrvos" / "train", session.video_id, session.video, session.expression, actor,
        target if kind == "unidirectional" else None, caption_type=kind,
    )  # fmt: skip
    files = [
        _overlay_mp4(session, session.out_dir / "corrected_overlay.mp4", fps),
        _zip(work / "annotate_input", session.out_dir / "annotate_input.zip"),
        _zip(work / "interrvos", session.out_dir / "interrvos_sample.zip"),
    ]
    shutil.rmtree(work, ignore_errors=True)
    return files, note


def _overlay_mp4(session: FixSession, path: Path, fps: float) -> Path:
    from viz.overlay import overlay_frame
    from viz.video import write_mp4

    actor, target = session.tracks["actor"], session.tracks.get("target")
    frames = (
        overlay_frame(frame, actor[t], None if target is None else target[t])
        for t, frame in enumerate(session.video.iter_frames())
    )
    return Path(write_mp4(path, frames, fps))


def _zip(folder: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in sorted(folder.rglob("*")):
            if item.is_file():
                archive.write(item, item.relative_to(folder))
    return path


def discard(session: FixSession | None) -> None:
    if session is not None and session.out_dir is not None:
        shutil.rmtree(session.out_dir, ignore_errors=True)


# --- the tab -------------------------------------------------------------------------------------------------


def build_fix_tab(studio, run_state, gpu=lambda fn: fn) -> dict:
    """Lay out the Fix & export tab inside the caller's ``gr.Tab`` and bind its events.

    studio: the app's `Studio` (registry); run_state: the Segment run's ``gr.State``. Returns the
    components and ``follow(event)``, to call with the page's Segment event: after a run the tab shows
    its first frame. Every fix call starts the session on the user's latest run when there is none
    (API clients, whose calls trigger no follow-up events).
    """
    session_state = gr.State(None, delete_callback=discard)

    def shown(session, t):  # the picture as a file under the run's folder: see studio.pictures
        return picture_file(frame_picture(session, t), session.result_dir)

    gr.Markdown(HELP)
    with gr.Row():
        role = gr.Radio(list(ROLES), value="actor", label="Role", elem_id="fix-role")
        polarity = gr.Radio(list(POLARITIES), value=POLARITIES[0], label="Click", elem_id="fix-polarity")
    slider = gr.Slider(0, 1, value=0, step=1, label="Frame", interactive=False, elem_id="fix-frame-slider")
    # A caption, not a label: a label is drawn over the picture's top-left corner, where the legend is.
    gr.Markdown("**Click on the frame** to correct it (green dot: add, red dot: remove).")
    picture = gr.Image(show_label=False, interactive=False, elem_id="fix-frame", height=400, buttons=[])
    with gr.Row():
        undo_button = gr.Button("Undo last click", elem_id="fix-undo")
        reset_button = gr.Button("Reset to the model's tracks", elem_id="fix-reset")
    with gr.Accordion("Or type the point (frame pixels)", open=False), gr.Row():
        # The frame as a number too: the slider's range is the page's, an API client has none.
        frame_no = gr.Number(0, label="frame", precision=0, minimum=0, elem_id="fix-frame-number")
        x_in = gr.Number(0, label="x (column)", precision=1, elem_id="fix-x")
        y_in = gr.Number(0, label="y (row)", precision=1, elem_id="fix-y")
        typed = gr.Button("Add click", elem_id="fix-add")
    status = gr.Markdown(status_markdown(None), elem_id="fix-status")
    with gr.Row():
        caption = gr.Dropdown(list(CAPTION_CHOICES), value=AUTO, label="Caption type of the exported sample")
        export_button = gr.Button("Export", variant="primary", elem_id="fix-export")
    export_note = gr.Markdown(elem_id="fix-export-note")
    downloads = gr.File(label="Corrected overlay, annotation-pipeline input (zip), InterRVOS sample (zip)",
                        file_count="multiple", interactive=False, elem_id="fix-downloads")  # fmt: skip

    def loaded_for(session):
        try:
            return studio.registry.get(session.model_name)
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from err

    def current(session, result) -> FixSession:
        """The session on the user's last run, started on first use (API clients have no page to start it)."""
        if result is None:
            raise gr.Error("Run Segment first: the corrections start from its tracks.", print_exception=False)
        if session is not None and session.result_dir == result.out_dir:
            return session
        discard(session)
        try:
            return new_session(result)
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from err

    def start(session, result):
        """After a page run: show the new run's first frame (a failed run kept the last one: no change)."""
        if result is None or (session is not None and session.result_dir == result.out_dir):
            return [gr.skip()] * 5
        session = current(session, result)
        last = max(1, session.num_frames - 1)
        return (session, shown(session, 0),
                gr.Slider(0, last, value=0, step=1, interactive=True, visible=session.num_frames > 1), 0,
                status_markdown(session))  # fmt: skip

    def click(session, result, t, role_name, kind, x, y, progress=gr.Progress()):  # noqa: B008
        session = current(session, result)
        try:
            session = add_click(session, loaded_for(session), t, role_name, kind, float(x), float(y),
                                lambda f: progress(f, desc="re-segmenting"))  # fmt: skip
        except (UserError, ValueError) as err:
            raise gr.Error(str(err), print_exception=False) from err
        return session, shown(session, t), status_markdown(session)

    def select(session, result, t, role_name, kind, evt: gr.SelectData, progress=gr.Progress()):  # noqa: B008
        """The page's click: an error goes to the status line, the picture and clicks stay."""
        if session is None or result is None:
            return gr.skip(), gr.skip(), status_markdown(None)
        s = preview_scale(session.video.size)
        x, y = evt.index  # pixels of the shown (enlarged) picture
        try:
            return click(session, result, t, role_name, kind, min(x // s, session.video.size[1] - 1),
                         min(y // s, session.video.size[0] - 1), progress)  # fmt: skip
        except gr.Error as err:
            return gr.skip(), gr.skip(), f"⚠️ {err.message}\n\n{status_markdown(session)}"

    def undo_cb(session, result, t, progress=gr.Progress()):  # noqa: B008
        session = current(session, result)
        session = undo(session, loaded_for(session), lambda f: progress(f, desc="re-segmenting"))
        return session, shown(session, t), status_markdown(session)

    def reset_cb(session, result, t):
        session = reset(current(session, result))
        return session, shown(session, t), status_markdown(session)

    def show(session, t):
        return None if session is None else shown(session, t)

    def export_cb(session, result, kind):
        session = current(session, result)
        try:
            files, note = export(session, kind, fps=float(session.video.fps))
        except (UserError, ValueError) as err:
            raise gr.Error(str(err), print_exception=False) from err
        return session, [str(f) for f in files], note

    outputs = [session_state, picture, status]

    def follow(run_event) -> None:
        run_event.success(start, [session_state, run_state], [session_state, picture, slider, frame_no, status],
                          api_visibility="private")  # fmt: skip

    picture.select(gpu(select), [session_state, run_state, frame_no, role, polarity], outputs,
                   api_visibility="private", concurrency_id="model")  # fmt: skip
    # A typed point: precise, keyboard-only, and the API's way to click (frame, role, polarity, x, y).
    typed.click(gpu(click), [session_state, run_state, frame_no, role, polarity, x_in, y_in], outputs,
                api_name="fix_click", concurrency_id="model")  # fmt: skip
    undo_button.click(
        gpu(undo_cb),
        [session_state, run_state, frame_no],
        outputs,
        api_name="fix_undo",
        concurrency_id="model",
    )
    reset_button.click(reset_cb, [session_state, run_state, frame_no], outputs, api_name="fix_reset")
    slider.input(lambda session, t: (show(session, t), t), [session_state, slider], [picture, frame_no],
                 api_visibility="private")  # fmt: skip
    frame_no.submit(show, [session_state, frame_no], [picture], api_name="fix_frame")
    export_button.click(export_cb, [session_state, run_state, caption], [session_state, downloads, export_note],
                        api_name="fix_export")  # fmt: skip
    return {"state": session_state, "picture": picture, "slider": slider, "status": status, "follow": follow}
