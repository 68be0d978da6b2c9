"""The Compare tab: two runs side by side, called directly and through a real server with gradio_client.

Models: the tiny answering model of ``conftest`` (answers forced to both roles, so both tracks and
both attention roles exist) and the plain tiny model; clips are 8 frames at 64 px.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import encode_mp4

from studio.compare import Side, agreement_markdown, run_compare, run_options, side_attention, side_scores
from studio.limits import Limits
from studio.service import ModelRegistry, RunOptions, UserError

EXPRESSION = "red circle pushing the blue square"
BOTH_ROLES = "Sure, [SEG_ACT] and [SEG_TAR]."


def _push_frames(num_frames: int = 8, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    frames = np.full((num_frames, size, size, 3), 90, dtype=np.uint8)
    for t in range(num_frames):
        frames[t][(yy - 32) ** 2 + (xx - 12 - 3 * t) ** 2 < 64] = (220, 40, 40)
        frames[t][(abs(yy - 32) < 7) & (abs(xx - 28 - 3 * t) < 7)] = (40, 70, 220)
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("compare") / "push.mp4"
    encode_mp4(path, _push_frames())
    return path


def _forcing(loaded):
    from reviosa.generation import force_answers

    return force_answers(loaded.model, [BOTH_ROLES])


def test_two_protocols_of_one_model_side_by_side(answering_model_dir, clip):
    registry = ModelRegistry(str(answering_model_dir))
    a = Side(None, RunOptions())
    b = Side(None, run_options(3, "first"))
    comparison = run_compare(registry, Limits(), clip, EXPRESSION, a, b, forcing=_forcing)
    run_a, run_b = comparison.runs
    assert run_a.out_dir != run_b.out_dir and Path(run_a.overlay_mp4).is_file()
    assert run_b.attention.keyframes == [0, 1, 2]
    assert run_a.attention.keyframes != run_b.attention.keyframes  # the model's default: 2, uniform
    text = agreement_markdown(comparison)
    assert "Same answer" in text and text.count("mean IoU") == 2
    for run in comparison.runs:
        grid, note = side_attention(run, "target", "supervised layer")
        assert grid.ndim == 3 and "layer 1" in note
        table, _note = side_scores(run, "target")
        assert len(table) == 2 * 4  # tiny preset: 2 layers x 4 heads
        assert ((table["actor"] >= 0) & (table["actor"] <= 1)).all()
    one_layer = side_attention(run_a, "actor", "supervised layer")[0]
    all_layers = side_attention(run_a, "actor", "all layers")[0]
    assert all_layers.shape[0] > one_layer.shape[0]


def test_two_models_and_the_model_choice_policy(answering_model_dir, tiny_model_dir, clip):
    registry = ModelRegistry(str(answering_model_dir))
    a, b = Side(None, RunOptions()), Side(str(tiny_model_dir), RunOptions())
    comparison = run_compare(registry, Limits(), clip, EXPRESSION, a, b, forcing=_forcing)
    assert comparison.names == (str(answering_model_dir), str(tiny_model_dir))
    # Model choice off (a public Space): both sides run the server's model, whatever B names.
    locked = run_compare(registry, Limits(allow_model_choice=False), clip, EXPRESSION, a, b, forcing=_forcing)
    assert locked.names == (str(answering_model_dir),) * 2
    assert "same model with the same protocol" in agreement_markdown(locked)
    with pytest.raises(UserError, match="Model B: The model '/nonexistent/model' could not be loaded"):
        run_compare(registry, Limits(), clip, EXPRESSION, a, Side("/nonexistent/model", RunOptions()))


def test_an_actor_only_side_says_so(answering_model_dir, clip):
    from reviosa.generation import force_answers

    registry = ModelRegistry(str(answering_model_dir))
    answers = iter([BOTH_ROLES, "Sure, [SEG_ACT]."])
    comparison = run_compare(
        registry, Limits(), clip, EXPRESSION, Side(None, RunOptions()), Side(None, run_options(3, "first")),
        forcing=lambda loaded: force_answers(loaded.model, [next(answers)]),
    )  # fmt: skip
    text = agreement_markdown(comparison)
    assert "Different answers" in text and "Target: not emitted by model B" in text
    grid, note = side_attention(comparison.runs[1], "target", "supervised layer")
    assert grid is None and "no [SEG_TAR]" in note


# --- through the served app -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(answering_model_dir):
    from app import Studio, build_demo

    studio = Studio(ModelRegistry(str(answering_model_dir)), Limits(), forced_answer=BOTH_ROLES)
    demo = build_demo(studio)
    _app, url, _share = demo.launch(
        server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True
    )
    yield url
    demo.close()


def test_client_compares_and_redraws_without_running(server, clip, tiny_model_dir):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    out = client.predict(
        handle_file(str(clip)), EXPRESSION, "", 0, "model default", 1, 300, 640,
        str(tiny_model_dir), 3, "first", "actor", "supervised layer", api_name="/compare",
    )  # fmt: skip
    head_a, video_a, answer_a, head_b, video_b, _answer_b, summary, note_a, grid_a, scores_a, *_b = out
    assert "Model A" in head_a and "Model B" in head_b and "keyframes 0, 1, 2 (first)" in head_b
    assert Path(video_a).is_file() and Path(video_b).is_file() and video_a != video_b
    assert any(s["class_or_confidence"] == "target" for s in answer_a)
    assert "mean IoU" in summary and Path(grid_a).is_file()
    assert scores_a["headers"][:2] == ["layer", "head"] and len(scores_a["data"]) == 8
    # The role picker redraws from the kept runs (no model call): target grid and scores now.
    note_a2, grid_a2, scores_a2, *_rest = client.predict("target", "all layers", api_name="/compare_views")
    assert "target token, all layers" in note_a2 and Path(grid_a2).is_file()


def test_client_gets_compare_errors_as_errors(server, clip):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server, verbose=False)
    with pytest.raises(AppError, match="Model B: The model '/nonexistent/model' could not be loaded"):
        client.predict(
            handle_file(str(clip)), EXPRESSION, "", 0, "model default", 1, 300, 640,
            "/nonexistent/model", 0, "model default", "actor", "supervised layer", api_name="/compare",
        )  # fmt: skip
    with pytest.raises(AppError, match="expression is empty"):
        client.predict(
            handle_file(str(clip)), "  ", "", 0, "model default", 1, 300, 640,
            "", 0, "model default", "actor", "supervised layer", api_name="/compare",
        )  # fmt: skip
