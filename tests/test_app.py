"""The studio: service and callbacks called directly, then the app served on 127.0.0.1 and driven with
gradio_client (8 clients at once; every bad input answered with an error, and the app keeps serving).

The model is the tiny one of ``conftest.answering_model_dir`` (taught to answer "Sure, [SEG_ACT] and
[SEG_TAR].", so both mask paths and both attention roles run); clips are 8 frames at 64 px.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import trial_inputs
from conftest import encode_mp4
from PIL import Image

from studio.examples import EXAMPLES_DIR, LABEL_MAX, REAL, SYNTHETIC, ensure_synthetic, list_examples
from studio.limits import Limits
from studio.service import ModelRegistry, RunOptions, UserError, keyframe_options, run_request

EXPRESSION = "red circle pushing the blue square"
# The tiny model's greedy answer depends on the frames; forcing it makes both roles run on any clip.
BOTH_ROLES = "Sure, [SEG_ACT] and [SEG_TAR]."


def _no_progress(*_args, **_kwargs):
    pass


def _push_frames(num_frames: int = 8, size: int = 64) -> np.ndarray:
    """uint8 (T, size, size, 3): a red disc pushing a blue square to the right."""
    yy, xx = np.mgrid[:size, :size]
    frames = np.full((num_frames, size, size, 3), 90, dtype=np.uint8)
    for t in range(num_frames):
        frames[t][(yy - 32) ** 2 + (xx - 12 - 3 * t) ** 2 < 64] = (220, 40, 40)
        frames[t][(abs(yy - 32) < 7) & (abs(xx - 28 - 3 * t) < 7)] = (40, 70, 220)
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """8 frames, 64x64."""
    path = tmp_path_factory.mktemp("clips") / "push.mp4"
    encode_mp4(path, _push_frames())
    return path


@pytest.fixture(scope="module")
def clips_of_lengths(tmp_path_factory) -> dict[int, Path]:
    """Clips of 5..12 frames: a result whose frame count matches its clip is that client's own."""
    folder = tmp_path_factory.mktemp("lengths")
    paths = {}
    for n in range(5, 13):
        paths[n] = folder / f"push{n}.mp4"
        encode_mp4(paths[n], _push_frames(n))
    return paths


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {
        "corrupt": corrupt,
        "text": trial_inputs.text_renamed(folder),
        "zero": trial_inputs.zero_byte(folder),
        "cut": trial_inputs.truncated(folder),
    }


@pytest.fixture(scope="module")
def broken_model_dir(tmp_path_factory, answering_model_dir) -> Path:
    """A copy of the answering model whose safetensors file is cut in half."""
    folder = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(answering_model_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


@pytest.fixture(scope="module")
def studio(answering_model_dir):
    from app import Studio

    return Studio(ModelRegistry(str(answering_model_dir)), Limits(), forced_answer=BOTH_ROLES)


def _segment(studio, clip, expression=EXPRESSION, model="", keyframes=0, strategy="model default", **caps):
    return studio.segment(
        None, None if clip is None else str(clip), expression, model, keyframes, strategy,
        caps.get("stride", 1), caps.get("max_frames", 300), caps.get("max_side", 640), progress=_no_progress,
    )  # fmt: skip


# --- limits and examples ---------------------------------------------------------------------------------


def test_limits_from_env_then_flags():
    env = {"REVIOSA_MAX_FRAMES": "120", "REVIOSA_ALLOW_MODEL_CHOICE": "no", "REVIOSA_MAX_SIDE": "480"}
    limits = Limits.from_env(env, max_side=320)
    assert (limits.max_frames, limits.allow_model_choice, limits.max_side) == (120, False, 320)
    with pytest.raises(ValueError, match="REVIOSA_MAX_FRAMES"):
        Limits.from_env({"REVIOSA_MAX_FRAMES": "many"})
    with pytest.raises(ValueError, match="positive"):
        Limits(max_frames=0)


def test_cli_flags_reach_the_limits():
    from app import parse_args
    from studio.limits import limits_from_args

    args = parse_args(
        ["--model", "some/model", "--max-frames", "50", "--allow-model-choice", "no", "--port", "9"]
    )
    limits = limits_from_args(args)
    assert (args.model, args.port, limits.max_frames, limits.allow_model_choice) == (
        "some/model",
        9,
        50,
        False,
    )


def test_examples_are_committed_small_and_regenerated(tmp_path):
    rows = list_examples(EXAMPLES_DIR)
    assert {r.path.name for r in rows} == {c.file for c in SYNTHETIC + REAL}
    assert all(r.path.stat().st_size < 1_000_000 for r in rows)
    assert {r.needs_real_weights for r in rows if r.path.name in {c.file for c in REAL}} == {True}
    assert all(len(r.label) <= LABEL_MAX and r.label == r.expression for r in rows)  # Gradio cuts longer ones
    assert (EXAMPLES_DIR / "ATTRIBUTION.md").read_text().count("Blender Foundation") == 1
    paths = ensure_synthetic(tmp_path)  # missing clips are generated on first run
    from reviosa.video import VideoFile

    assert all(VideoFile(p).num_frames >= 24 for p in paths)


def test_synthetic_examples_are_drawn_by_the_rule():
    """The examples are draw_synthetic's (first test clip of each caption type, seed 0), not chosen."""
    from reviosa.data.synth import WorldConfig, make_clip
    from studio.examples import CAPTION_TYPES, draw_synthetic

    assert draw_synthetic() == SYNTHETIC
    for drawn in (SYNTHETIC, draw_synthetic(seed=3)):  # another seed: the rule scans further
        kinds = set()
        for clip in drawn:
            record, _info = make_clip(
                clip.seed, clip.split, clip.index, WorldConfig(size=128, frames=(24, 32))
            )
            written = [(e.caption_type, e.text) for e in record.expressions]
            texts = dict((text, kind) for kind, text in written)
            assert set(clip.expressions) <= set(texts), clip.file
            for text in clip.expressions:  # the first of its kind in its clip (or the passive second)
                same = [t for k, t in written if k == texts[text]]
                assert text in same[: 2 if texts[text] == "unidirectional" else 1]
            kinds |= {texts[text] for text in clip.expressions}
        assert kinds == set(CAPTION_TYPES)  # every kind, actor-only and actor + target included


# --- service and callbacks ---------------------------------------------------------------------------


def test_segment_callback_outputs(studio, clip):
    state, overlay, slider, frame, spans, summary, downloads = _segment(studio, clip)
    assert Path(overlay).is_file() and Path(frame).is_file()
    assert slider.maximum == 7
    assert ("[SEG_ACT]", "actor") in spans and ("[SEG_TAR]", "target") in spans
    assert EXPRESSION in summary.replace("\\", "") and "Actor (pink)" in summary
    names = sorted(Path(p).name for p in downloads)
    assert names == ["masks.zip", "overlay.mp4", "results.json"]
    with zipfile.ZipFile(state.masks_zip) as archive:
        members = archive.namelist()
    assert len([m for m in members if m.startswith("actor/")]) == 8
    assert len([m for m in members if m.startswith("target/")]) == 8
    entry = json.loads(state.results_json.read_text())["videos"]["push"]["0"]
    assert len(entry["actor"]) == 8 and len(entry["target"]) == 8 and "[SEG_ACT]" in entry["answer"]
    from viz.video import read_mp4

    frames, _fps = read_mp4(overlay)
    assert frames.shape == (8, 384, 384, 3)  # 64 px enlarged 6x, so the legend is drawn at the size seen
    assert studio.show_frame(state, 5) == str(state.frame_paths[5])
    assert studio.show_frame(state, 99) == str(state.frame_paths[-1])


def test_attention_tab_uses_the_rows_of_the_run(studio, clip):
    state = _segment(studio, clip)[0]
    view = state.attention
    assert view.rows.shape[:3] == (2, 2, 4) and view.keyframe_images.shape[0] == len(view.keyframes)
    # A run keeps the user's picks when it captured them (the picker never jumps from "all" to a
    # layer under a heading that says "layers (rows)"), and falls back to "all" when it did not.
    layer, head, keyframe = studio.attention_controls(state, "all", "all")
    assert (layer.value, head.value, keyframe.visible) == ("all", "all", True)
    layer, head, _keyframe = studio.attention_controls(state, "1", "3")
    assert (layer.value, head.value) == ("1", "3")
    layer, head, _keyframe = studio.attention_controls(state, "7", "3")
    assert (layer.value, head.value) == ("all", "3")
    for role in ("actor", "target"):
        grid, strip, layer_chart, head_chart, note, heading = studio.draw_attention(
            state, role, "all", "all", 1
        )
        pictures = [np.asarray(Image.open(p)) for p in (grid, strip, layer_chart, head_chart)]
        assert all(p.ndim == 3 and p.dtype == np.uint8 for p in pictures)
        # Files under the run's own folder, written once: a redraw hands back the same file untouched.
        assert all(
            Path(p).parent == state.out_dir / "pictures" for p in (grid, strip, layer_chart, head_chart)
        )
        again = studio.draw_attention(state, role, "all", "all", 1)
        assert again[0] == grid and os.stat(grid).st_mtime_ns == os.stat(again[0]).st_mtime_ns
        assert role in note and "layers (rows) x heads (columns) on keyframe 1" in heading
    one, *_rest, heading = studio.draw_attention(state, "actor", "1", "all", 0)
    assert (
        Image.open(one).height < Image.open(grid).height and "layer 1 (one row) x heads (columns)" in heading
    )
    with pytest.raises(gr.Error, match="not captured"):
        studio.draw_attention(state, "actor", "7", "all", 0)
    assert studio.draw_attention(None, "actor", "all", "all", 0)[-2].startswith("Run a clip first")


def test_keyframe_settings_do_not_touch_the_shared_model(studio, clip):
    loaded = studio.registry.get(None)
    before = (loaded.model.config.processor.num_keyframes, loaded.model.config.processor.keyframe_strategy)
    state = _segment(studio, clip, keyframes=3, strategy="first")[0]
    assert state.attention.keyframes == [0, 1, 2]
    assert (
        loaded.model.config.processor.num_keyframes,
        loaded.model.config.processor.keyframe_strategy,
    ) == before
    assert keyframe_options(loaded.model, RunOptions(keyframes=3)) == {
        "num_keyframes": 3,
        "keyframe_strategy": before[1],
    }
    with pytest.raises(UserError, match="Keyframes"):
        keyframe_options(loaded.model, RunOptions(keyframes=99))


def test_long_and_large_clips_are_reduced_with_a_notice(studio, clip):
    state, *_rest, summary, _downloads = _segment(studio, clip, max_frames=4, max_side=32)
    assert state.num_frames == 4 and state.size == (32, 32)
    assert "1 frame in every 2" in summary and "downscaled from 64x64 to 32x32" in summary


def test_registry_loads_each_model_once_under_concurrency(answering_model_dir):
    registry = ModelRegistry(str(answering_model_dir), max_models=1)
    with ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(lambda _: registry.get(""), range(4)))
    assert all(m is loaded[0] for m in loaded)
    registry.get("builtin")  # a second model evicts the first (max_models=1)
    assert registry.get(None) is not loaded[0]


def test_duration_cap_refuses_with_a_reason(answering_model_dir, clip):
    loaded = ModelRegistry(str(answering_model_dir)).get()
    with pytest.raises(UserError, match="Trim the clip"):
        run_request(loaded, clip, EXPRESSION, RunOptions(), Limits(max_duration_s=0.1))


def test_service_forced_answer_gives_both_tracks(answering_model_dir, clip):
    from reviosa.generation import force_answers

    loaded = ModelRegistry(str(answering_model_dir)).get()
    actor_only = force_answers(loaded.model, ["Sure, [SEG_ACT]."])
    phases = []
    result = run_request(
        loaded, clip, EXPRESSION, RunOptions(), Limits(), lambda frac, desc: phases.append((frac, desc)),
        logits_processor=actor_only,
    )  # fmt: skip
    assert result.status == "ok" and result.target_frames is None
    assert [f for f, _ in phases] == sorted(f for f, _ in phases) and phases[-1][0] == 1.0
    for phase in ("decoding", "MLLM", "propagation", "rendering"):
        assert any(desc.startswith(phase) for _, desc in phases), phase
    assert result.attention.roles_present == (True, False)


CONTAINERS = {"webm": ("libvpx-vp9", "yuv420p"), "mov": ("libx264", "yuv420p"), "avi": ("mpeg4", "yuv420p"),
              "gif": ("gif", "rgb8")}  # fmt: skip


def _encode(path: Path, frames: np.ndarray, codec: str, pix_fmt: str) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))


@pytest.mark.parametrize("ext", list(CONTAINERS))
def test_other_containers_upload(ext, studio, tmp_path):
    path = tmp_path / f"clip.{ext}"
    _encode(path, _push_frames(), *CONTAINERS[ext])
    state, overlay, *_rest = _segment(studio, path)
    assert state.num_frames == 8 and Path(overlay).suffix == ".mp4"


def test_untrained_demo_model_shows_no_seg_token(monkeypatch, tmp_path, clip):
    monkeypatch.setattr("reviosa.hub.BUILTIN_DIR", tmp_path / "not-installed")
    from app import Studio

    demo = Studio(ModelRegistry("builtin"), Limits())
    assert demo.registry.default_is_demo()
    state, overlay, _slider, _frame, _spans, summary, _downloads = _segment(demo, clip)
    assert state.demo_model and "untrained demo weights" in summary
    assert state.status == "no_seg_token" and "Nothing was segmented" in summary
    assert Path(overlay).is_file()
    assert "no [SEG_ACT]" in demo.draw_attention(state, "actor", "all", "all", 0)[-2]


BAD_REQUESTS = {
    # name: (which clip, expression, model, words the error must contain)
    "corrupt mp4": ("corrupt", EXPRESSION, "", "corrupt.mp4 is not a video"),
    "text renamed .mp4": ("text", EXPRESSION, "", "Notes.mp4 is not a video"),
    "zero-byte mp4": ("zero", EXPRESSION, "", "Zero.mp4 is an empty file"),
    "first 30 % of an mp4": (
        "cut",
        EXPRESSION,
        "",
        "Cut.mp4 starts like a video file .mp4/mov. but cannot be read",
    ),
    "no clip": (None, EXPRESSION, "", "Upload a clip"),
    "empty expression": ("good", trial_inputs.EMPTY, "", "expression is empty"),
    "10,000-char expression": ("good", trial_inputs.long_expression(), "", "Shorten it"),
    "broken checkpoint": ("good", EXPRESSION, "broken", "[Rr]e-download it"),
    "missing model folder": ("good", EXPRESSION, "/nonexistent/model", "could not be loaded"),
}


def _bad_args(name, clip, bad_files, broken_model_dir):
    which, expression, model, _words = BAD_REQUESTS[name]
    video = {"good": clip, None: None}.get(which, bad_files.get(which))
    return video, expression, str(broken_model_dir) if model == "broken" else model


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_input_gives_a_clear_error(name, studio, clip, bad_files, broken_model_dir):
    video, expression, model = _bad_args(name, clip, bad_files, broken_model_dir)
    with pytest.raises(gr.Error, match=BAD_REQUESTS[name][3]) as caught:
        _segment(studio, video, expression, model)
    message = caught.value.message
    assert "Errno" not in message and str(bad_files["zero"].parent) not in message
    assert "upload an mp4" not in message  # said to someone who did


def test_error_in_the_page_keeps_the_last_result(studio, clip, bad_files):
    """The Segment button: an error goes to the message area; every panel keeps the last good result."""
    args = [EXPRESSION, "", 0, "model default", 1, 300, 640]
    good = studio.segment_in_page(None, str(clip), *args, progress=_no_progress)
    assert good[-1] == "" and Path(good[1]).is_file()
    for video, expression in ((clip, trial_inputs.EMPTY), (bad_files["zero"], EXPRESSION)):
        *outputs, message = studio.segment_in_page(
            good[0], str(video), expression, *args[1:], progress=_no_progress
        )
        assert outputs == [gr.skip()] * 7 and message.startswith("⚠️ **Cannot run this request:**")
    assert good[0].out_dir.is_dir()  # the kept result's files were not removed


def test_one_frame_clip_has_no_slider_and_says_frame(studio, tmp_path):
    state, _overlay, slider, _frame, _spans, summary, _downloads = _segment(
        studio, trial_inputs.one_frame(tmp_path)
    )
    assert state.num_frames == 1 and slider.visible is False
    assert "1 frame at 64x64" in summary and "1 frames" not in summary and "/1 frame;" in summary
    assert studio.attention_controls(state, "all", "all")[2].visible == (len(state.attention.keyframes) > 1)


@pytest.mark.parametrize("builder", ["uhd", "greyscale", "rgba_gif", "avi"])
def test_trial_clips_run(builder, studio, tmp_path):
    path = getattr(trial_inputs, builder)(tmp_path)
    state, overlay, *_rest, summary, _downloads = _segment(studio, path)
    assert Path(overlay).is_file() and state.status == "ok"
    if builder == "uhd":
        assert state.size == (360, 640) and "downscaled from 3840x2160 to 640x360" in summary


def test_ten_thousand_frames_get_the_cap_notice(tmp_path):
    from studio.service import open_video

    limits = Limits()
    video, notices = open_video(
        trial_inputs.many_frames(tmp_path), RunOptions(), limits
    )  # counts, decodes one
    assert video.num_frames == 295 and len(notices) == 1
    assert (
        notices[0].startswith("The clip has 10000 frames; 1 frame in every 34 was used")
        and "Advanced" in notices[0]
    )


@pytest.mark.parametrize("expression", [trial_inputs.UNICODE, trial_inputs.CONTROL_TOKENS])
def test_odd_expressions_run_as_text(expression, studio, clip):
    state, *_rest, summary, _downloads = _segment(studio, clip, expression)
    assert state.status == "ok" and "\x00" not in state.expression
    assert ("Zaun" in summary) if expression == trial_inputs.UNICODE else ("SEG\\_TAR" in summary)


def test_one_expression_limit_for_app_and_cli(studio, clip):
    from reviosa.caps import MAX_EXPRESSION_CHARS

    assert Limits().max_expression_chars == MAX_EXPRESSION_CHARS
    _segment(studio, clip, "a" * MAX_EXPRESSION_CHARS)
    with pytest.raises(gr.Error, match=f"the limit is {MAX_EXPRESSION_CHARS}"):
        _segment(studio, clip, "a" * (MAX_EXPRESSION_CHARS + 1))


@pytest.mark.parametrize(("builder", "transcoded"), [("avi", True), ("rgba_gif", True), ("greyscale", True),
                                                     ("one_frame", False)])  # fmt: skip
def test_upload_preview_plays_in_a_browser(builder, transcoded, studio, tmp_path):
    import av

    path = getattr(trial_inputs, builder)(tmp_path)
    folder, preview, message = studio.preview(None, str(path))
    assert message == "" and preview["visible"]
    shown = Path(preview["value"])
    assert (shown != path) == transcoded
    with av.open(str(shown)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.format.name) == ("h264", "yuv420p")
        frames = sum(1 for _ in container.decode(stream))
    from reviosa.video import VideoFile

    assert frames == VideoFile(path).num_frames and shown.stem == path.stem
    studio.preview(folder, None)
    assert folder is None or not Path(folder).exists()  # the previous preview is removed


def test_upload_preview_of_a_broken_file_says_why(studio, bad_files):
    folder, preview, message = studio.preview(None, str(bad_files["zero"]))
    assert folder is None and not preview["visible"] and "Zero.mp4 is an empty file" in message


@pytest.fixture(scope="module")
def builtin_studio(answering_model_dir, tmp_path_factory):
    from app import Studio

    model = trial_inputs.builtin_named_copy(answering_model_dir, tmp_path_factory.mktemp("builtin"))
    return Studio(ModelRegistry(str(model)), Limits(), forced_answer=BOTH_ROLES)


def test_builtin_model_on_real_footage_says_the_masks_mean_nothing(builtin_studio, tmp_path):
    state, *_rest, summary, _downloads = _segment(builtin_studio, trial_inputs.real_looking(tmp_path))
    assert summary.startswith("⚠️ **These masks are not meaningful") and "frames are 160x96" in summary
    assert "Model box" in summary and "Masks drawn, not meaningful" in summary
    assert "Actor (pink)" not in summary  # nothing reads like a success
    state, *_rest, summary, _downloads = _segment(builtin_studio, trial_inputs.world_looking(tmp_path))
    assert state.warning is None and "not meaningful" not in summary and "Actor (pink)" in summary


def test_the_world_rule_on_the_examples():
    """The built-in model's world rule (reviosa.domain) keeps the synthetic examples and flags the real ones."""
    from reviosa.domain import outside_world
    from reviosa.video import VideoFile

    for row in list_examples(EXAMPLES_DIR):
        video = VideoFile(row.path)
        frames = video.read([0, video.num_frames // 2, video.num_frames - 1])
        assert (outside_world(frames) is not None) == row.needs_real_weights, row.path.name


def test_unknown_hub_id_says_it_cannot_be_fetched(studio, clip):
    # Offline the hub client fails on the connection, online with a 401/404: both become this message.
    with pytest.raises(gr.Error, match="could not fetch 'reviosa-studio-tests/no-such-model'"):
        _segment(studio, clip, model="reviosa-studio-tests/no-such-model")


# --- the served app ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(answering_model_dir):
    from app import Studio, build_demo

    studio = Studio(ModelRegistry(str(answering_model_dir)), Limits(concurrency=2), forced_answer=BOTH_ROLES)
    demo = build_demo(studio)
    _app, url, _share = demo.launch(
        server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True
    )
    yield url
    demo.close()


def _client_segment(url, video, expression, model=""):
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    upload = None if video is None else handle_file(str(video))
    return client, client.predict(
        upload, expression, model, 0, "model default", 1, 300, 640, api_name="/segment"
    )


def test_client_gets_result_and_attention(server, clip):
    client, (overlay, slider, frame, spans, summary, downloads) = _client_segment(server, clip, EXPRESSION)
    assert Path(overlay).is_file() and Path(frame).is_file() and len(downloads) == 3
    assert slider["maximum"] == 7
    assert any(s["class_or_confidence"] == "target" for s in spans)
    # The attention endpoint reads the rows kept in this client's session state: no second pass.
    grid, strip, layer_chart, head_chart, note, _heading = client.predict(
        "target", "all", "all", 0, api_name="/attention"
    )
    assert Path(grid).is_file() and Path(layer_chart).is_file() and "target" in note


def test_eight_clients_at_once_each_get_their_own_result(server, clips_of_lengths):
    from viz.video import read_mp4

    jobs = [(n, path, f"{EXPRESSION} number {n}") for n, path in clips_of_lengths.items()]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: _client_segment(server, job[1], job[2])[1], jobs))
    for (n, _path, expression), (overlay, slider, _frame, _spans, summary, downloads) in zip(
        jobs, results, strict=True
    ):
        assert expression in summary.replace("\\", "")
        assert slider["maximum"] == n - 1 and len(read_mp4(overlay)[0]) == n
        entry = json.loads(Path(next(d for d in downloads if d.endswith(".json"))).read_text())["videos"]
        assert list(entry) == [f"push{n}"]
    assert len({r[0] for r in results}) == len(jobs)  # distinct overlay files


def test_each_bad_input_errors_then_a_good_request_works(server, clip, bad_files, broken_model_dir):
    from gradio_client.exceptions import AppError

    for name, (*_rest, words) in BAD_REQUESTS.items():
        video, expression, model = _bad_args(name, clip, bad_files, broken_model_dir)
        with pytest.raises(AppError, match=words) as caught:
            _client_segment(server, video, expression, model)
        if BAD_REQUESTS[name][0] not in (
            "good",
            None,
        ):  # a video's error: its name, never the server's folder
            assert "/tmp" not in str(caught.value) and "Errno" not in str(caught.value)
    _client, (overlay, *_rest) = _client_segment(server, clip, EXPRESSION)
    assert Path(overlay).is_file()


def test_sam2_bootstrap_installs_only_on_a_space_without_sam2(monkeypatch):
    import importlib.util
    import subprocess

    from studio import bootstrap

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw["env"])))
    monkeypatch.delenv("SPACE_ID", raising=False)
    bootstrap.ensure_sam2()  # sam2 is installed here, and this is no Space
    monkeypatch.setenv("SPACE_ID", "org/reviosa-studio")
    bootstrap.ensure_sam2()  # a Space that already has sam2
    assert calls == []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    bootstrap.ensure_sam2()  # a Space without sam2: one pip call with sam2's flags and the pinned file
    ((cmd, env),) = calls
    assert "--no-build-isolation" in cmd and "--no-deps" in cmd and str(bootstrap.PINNED) in cmd
    assert env["SAM2_BUILD_CUDA"] == "0" and bootstrap.PINNED.is_file()
