"""``python -m reviosa predict`` on a real encoded mp4 and on a dataset, as users run it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import trial_inputs
from PIL import Image

from reviosa import rle


def run_cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "reviosa", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def cli_in_process(capsys, *args):
    """``python -m reviosa ARGS`` in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from reviosa.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_one_video_writes_actor_and_target_masks(answering_model_dir, clip_mp4, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(
        "predict", clip_mp4, "red square pushing the blue one", "--model", answering_model_dir, "--out", out
    )
    assert "answer: Sure, [SEG_ACT] and [SEG_TAR]." in proc.stdout
    for role in ("actor", "target"):
        pngs = sorted((out / role).glob("*.png"))
        assert len(pngs) == 12
        assert Image.open(pngs[0]).size == (64, 48)
    data = json.loads((out / "results.json").read_text())
    entry = data["videos"]["clip"]["0"]
    assert len(entry["actor"]) == 12 and len(entry["target"]) == 12
    png = np.asarray(Image.open(out / "actor" / "00005.png")) > 0
    assert np.array_equal(rle.decode(entry["actor"][5], (48, 64)), png)


def test_predict_bad_inputs_fail_with_one_clear_line(answering_model_dir, tmp_path, capsys):
    cases = [
        (["predict", tmp_path / "missing.mp4", "a dog"], "not found"),
        (["predict", trial_inputs.text_renamed(tmp_path), "a dog"], "Notes.mp4 is not a video"),
        (["predict", trial_inputs.zero_byte(tmp_path), "a dog"], "Zero.mp4 is an empty file"),
        (["predict", trial_inputs.truncated(tmp_path), "a dog"], "Cut.mp4 starts like a video file"),
        (["predict", tmp_path / "whole.mp4", trial_inputs.EMPTY], "the expression is empty"),
        (
            ["predict", tmp_path / "whole.mp4", "a dog", "--model", tmp_path / "nowhere" / "x"],
            "no model folder",
        ),
    ]
    for args, message in cases:
        if "--model" not in args:
            args = [*args, "--model", answering_model_dir]
        code, _out, err = cli_in_process(capsys, *args)
        assert code == 2, err
        assert message in err and "upload" not in err.lower() and "Errno" not in err


def test_expression_limit_is_the_studios(answering_model_dir, tmp_path, capsys):
    from reviosa.caps import MAX_EXPRESSION_CHARS
    from studio.limits import Limits

    assert Limits().max_expression_chars == MAX_EXPRESSION_CHARS
    clip = trial_inputs.one_frame(tmp_path)
    code, _out, err = cli_in_process(
        capsys, "predict", clip, trial_inputs.long_expression(), "--model", answering_model_dir
    )
    assert code == 2 and f"has 10000 characters; the limit is {MAX_EXPRESSION_CHARS}" in err


def test_progress_bar_cap_notice_and_singular(answering_model_dir, tmp_path, capsys):
    """A 10,000-frame clip: strided to the studio's cap with a notice, a progress bar on stderr."""
    from reviosa.caps import MAX_FRAMES

    out = tmp_path / "out"
    code, out_text, err = cli_in_process(capsys, "predict", trial_inputs.many_frames(tmp_path), "a red square",
                                         "--model", answering_model_dir, "--out", out)  # fmt: skip
    assert code == 0, err
    assert "note: The clip has 10000 frames; 1 frame in every 34 was used (295 frames" in err
    assert f"the cap is {MAX_FRAMES}" in err and "--max-frames N" in err
    assert "long.mp4: done 100%|" in err  # tqdm's bar, its last state
    assert "%|" not in out_text and len(list((out / "actor").glob("*.png"))) == 295
    _code, one, _err = cli_in_process(capsys, "predict", trial_inputs.one_frame(tmp_path), "a red square",
                                      "--model", answering_model_dir, "--out", tmp_path / "one")  # fmt: skip
    assert "/1 frame with a mask" in one and "1 frames" not in one


def test_odd_text_runs(answering_model_dir, tmp_path, capsys):
    clip = trial_inputs.one_frame(tmp_path)
    for expression in (trial_inputs.UNICODE, trial_inputs.CONTROL_TOKENS):
        _code, out, err = cli_in_process(capsys, "predict", clip, expression, "--model", answering_model_dir,
                                         "--out", tmp_path / "o")  # fmt: skip
        assert "answer: Sure, [SEG_ACT] and [SEG_TAR]." in out, err


def test_builtin_model_outside_its_world_is_flagged(answering_model_dir, tmp_path, capsys):
    model = trial_inputs.builtin_named_copy(answering_model_dir, tmp_path)
    _code, out, err = cli_in_process(capsys, "predict", trial_inputs.real_looking(tmp_path), "a red square",
                                     "--model", model, "--out", tmp_path / "street")  # fmt: skip
    assert "warning: These masks are not meaningful" in err and "frames are 160x96" in err
    assert "--model FOLDER_OR_HUB_ID" in err and "(not meaningful" in out
    _code, out, err = cli_in_process(capsys, "predict", trial_inputs.world_looking(tmp_path), "a red square",
                                     "--model", model, "--out", tmp_path / "world")  # fmt: skip
    assert "not meaningful" not in err + out


def test_predict_dataset_is_resumable(answering_model_dir, tmp_path):
    from reviosa.data.synth import generate_split

    generate_split(tmp_path / "world", "test", clips=2, seed=5, size=64, frames=(8, 8))
    out = tmp_path / "results.json"
    args = ["predict", "--dataset", tmp_path / "world", "--split", "test", "--model", answering_model_dir]
    run_cli(*args, "--out", out)
    first = json.loads(out.read_text())
    n = sum(len(v) for v in first["videos"].values())
    assert n > 0
    for video in first["videos"].values():
        for entry in video.values():
            assert entry["answer"] == "Sure, [SEG_ACT] and [SEG_TAR]." and entry["target"] is not None
    # Drop one expression: a second run must redo exactly that one and keep the rest.
    vid = next(iter(first["videos"]))
    exp = next(iter(first["videos"][vid]))
    del first["videos"][vid][exp]
    out.write_text(json.dumps(first))
    proc = run_cli(*args, "--out", out)
    assert f"{n} expressions ({n - 1} already done)" in proc.stdout
    assert "expressions: 100%|" in proc.stderr  # the progress bar
    assert exp in json.loads(out.read_text())["videos"][vid]


def test_predict_protocol_flags_override_the_saved_protocol(answering_model_dir, clip_mp4, tmp_path):
    proc = run_cli(
        "predict", clip_mp4, "red square pushing the blue one", "--model", answering_model_dir,
        "--out", tmp_path / "out", "--protocol", "reference", "--keyframe-strategy", "uniform", "--no-multimask",
    )  # fmt: skip
    first = proc.stdout.splitlines()[0]
    assert first.startswith("protocol custom: uniform 5 keyframes"), first
    assert "single-mask" in first and "no object-score overwrite" in first and "memory bfloat16" in first
    assert "answer: Sure, [SEG_ACT] and [SEG_TAR]." in proc.stdout
    bad = run_cli(
        "predict", clip_mp4, "a dog", "--model", answering_model_dir, "--protocol", "sam3", check=False
    )
    assert bad.returncode != 0 and "sam3" in bad.stderr
