"""``python -m reviosa predict`` on a real encoded mp4 and on a dataset, as users run it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from reviosa import rle


def run_cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "reviosa", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


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


def test_predict_bad_inputs_fail_with_one_clear_line(answering_model_dir, tmp_path):
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video")
    cases = [
        (["predict", tmp_path / "missing.mp4", "a dog"], "not found"),
        (["predict", notes, "a dog"], "not a video"),
        (["predict", notes, ""], "expression"),
        (["predict", notes, "a dog", "--model", tmp_path / "nowhere" / "x"], "no model folder"),
    ]
    for args, message in cases:
        if "--model" not in args:
            args = [*args, "--model", answering_model_dir]
        proc = run_cli(*args, check=False)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr


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
