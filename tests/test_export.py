"""reviosa.data.export: corrected tracks written in the annotation pipeline's input layout and as an
InterRVOS sample, each read back by its own reader (train.annotate.inputs, reviosa.data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reviosa.data import InterRVOSDataset
from reviosa.data.export import (
    ACTOR_ID,
    TARGET_ID,
    role_objects,
    safe_video_id,
    write_annotation_input,
    write_interrvos_sample,
)
from reviosa.video import ArrayVideo
from train.annotate.inputs import from_folder, open_input

T, H, W = 6, 40, 56


@pytest.fixture
def clip():
    """Frames and two overlapping tracks: the actor moves right into the target's square."""
    frames = np.full((T, H, W, 3), 80, dtype=np.uint8)
    actor = np.zeros((T, H, W), dtype=bool)
    target = np.zeros((T, H, W), dtype=bool)
    for t in range(T):
        actor[t, 10:20, 4 + 4 * t : 14 + 4 * t] = True
        target[t, 12:24, 24:36] = True
        frames[t][actor[t]] = (220, 40, 40)
        frames[t][target[t] & ~actor[t]] = (40, 70, 220)
    actor[2] = False  # the actor leaves the view on frame 2: no PNG there
    return ArrayVideo(frames), actor, target


def test_annotation_input_per_object_reads_back(tmp_path, clip):
    video, actor, target = clip
    folder = write_annotation_input(tmp_path, "my_clip", video, role_objects(actor, target), {1: "disc"})
    assert not (folder / "masks" / "1" / "00002.png").exists()
    (item,) = list(from_folder(tmp_path))
    assert item.video_id == "my_clip" and item.num_frames == T and item.frames.size == (H, W)
    objects = {o.obj_id: o for o in item.objects}
    assert set(objects) == {ACTOR_ID, TARGET_ID} and objects[1].category == "disc"
    np.testing.assert_array_equal(objects[1].masks.numpy(), actor)  # overlaps kept
    np.testing.assert_array_equal(objects[2].masks.numpy(), target)
    frames = item.frames.read([0, 5])
    assert np.abs(frames.astype(int) - video.frames[[0, 5]].astype(int)).mean() < 3  # JPEG


def test_annotation_input_indexed_gives_overlap_to_the_higher_id(tmp_path, clip):
    video, actor, target = clip
    write_annotation_input(tmp_path, "clip", video, role_objects(actor, target), layout="indexed")
    (item,) = list(open_input(tmp_path))
    objects = {o.obj_id: o.masks.numpy() for o in item.objects}
    np.testing.assert_array_equal(objects[TARGET_ID], target)
    np.testing.assert_array_equal(objects[ACTOR_ID], actor & ~target)


def test_interrvos_sample_reads_back_with_roles(tmp_path, clip):
    video, actor, target = clip
    split = write_interrvos_sample(
        tmp_path / "mine" / "train", "clip", video, " red disc pushing a square ", actor, target
    )
    dataset = InterRVOSDataset(tmp_path / "mine", "train")
    dataset.validate()
    (sample,) = list(dataset.samples())
    assert (sample.expression, sample.caption_type) == ("red disc pushing a square", "unidirectional")
    np.testing.assert_array_equal(sample.actor_masks(), actor)
    np.testing.assert_array_equal(sample.target_masks(), target)
    np.testing.assert_array_equal(sample.rvos_masks(), actor)  # anno_id lists the actor side
    assert sample.load_frames([3]).shape == (1, H, W, 3)
    # The annotation pipeline reads the same split as a dataset input: both objects, both tracks.
    (item,) = list(open_input(split))
    assert sorted(o.masks.areas().sum() for o in item.objects) == sorted([actor.sum(), target.sum()])


def test_actor_only_sample_is_single_by_default(tmp_path, clip):
    video, actor, _target = clip
    write_interrvos_sample(tmp_path, "clip", video, "the red disc", actor)
    (sample,) = list(InterRVOSDataset(tmp_path).samples())
    assert sample.caption_type == "single" and sample.target_masks() is None
    np.testing.assert_array_equal(sample.actor_masks(), actor)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"caption_type": "unidirectional"}, "needs a target track"),
        ({"caption_type": "single", "target": "given"}, "only it takes one"),
        ({"caption_type": "sideways"}, "caption type must be one of"),
        ({"expression": "  "}, "expression is empty"),
        ({"video_id": "../up"}, "may use letters, digits"),
        ({"actor": np.zeros((T, 8, 8), bool)}, "the frames are"),
    ],
)
def test_bad_samples_are_refused_before_writing(tmp_path, clip, kwargs, words):
    video, actor, target = clip
    args = {"video_id": "clip", "expression": "the red disc", "actor": actor, "target": None, **kwargs}
    if args["target"] == "given":
        args["target"] = target
    with pytest.raises(ValueError, match=words):
        write_interrvos_sample(tmp_path / "out", frames=video, **args)
    assert not (tmp_path / "out" / "meta_expressions.json").exists()


def test_safe_video_id():
    assert safe_video_id("/tmp/gradio/abc/My Clip (1).mp4") == "My_Clip__1_"
    assert safe_video_id("...mp4") == "video"


# --- the studio's Fix & export tab, through a real server (gradio_client) ---------------------------------


BOTH_ROLES = "Sure, [SEG_ACT] and [SEG_TAR]."


@pytest.fixture(scope="module")
def served(answering_model_dir, tmp_path_factory):
    """The app on 127.0.0.1 with the tiny answering model, and an 8-frame 64 px clip."""
    import socket

    from conftest import encode_mp4

    from app import Studio, build_demo
    from studio.limits import Limits
    from studio.service import ModelRegistry

    frames = np.full((8, 64, 64, 3), 90, dtype=np.uint8)
    for t in range(8):
        frames[t, 24:40, 4 + 3 * t : 20 + 3 * t] = (220, 40, 40)
    clip = tmp_path_factory.mktemp("fix") / "my clip.mp4"
    encode_mp4(clip, frames)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    studio = Studio(ModelRegistry(str(answering_model_dir)), Limits(), forced_answer=BOTH_ROLES)
    demo = build_demo(studio)
    _app, url, _share = demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    yield url, clip
    demo.close()


def _segment(client, clip):
    from gradio_client import handle_file

    return client.predict(
        handle_file(str(clip)), "red circle pushing the blue square", "", 0, "model default", 1, 300, 640,
        api_name="/segment",
    )  # fmt: skip


def _unzip(path, folder):
    import zipfile

    with zipfile.ZipFile(path) as archive:
        archive.extractall(folder)
    return folder


def test_client_clicks_undoes_and_exports_training_data(served, tmp_path):
    import json

    from gradio_client import Client

    from reviosa import rle

    url, clip = served
    client = Client(url, verbose=False)
    *_rest, downloads = _segment(client, clip)
    run = json.loads(Path(next(d for d in downloads if d.endswith(".json"))).read_text())
    (entry,) = run["videos"]["my clip"].values()
    original = np.stack([rle.decode(m, (64, 64)) for m in entry["actor"]])

    picture, status = client.predict(3, "actor", "add (positive)", 50, 10, api_name="/fix_click")
    assert "1 click(s)" in status and "Frames 3..7 were re-segmented" in status
    assert Path(picture).is_file()
    _picture, status = client.predict(4, "target", "remove (negative)", 10, 30, api_name="/fix_click")
    assert "2 click(s)" in status
    _picture, status = client.predict(4, api_name="/fix_undo")
    assert "1 click(s)" in status

    files, note = client.predict("auto (from the tracks)", api_name="/fix_export")
    names = sorted(Path(f).name for f in files)
    assert names == ["annotate_input.zip", "corrected_overlay.mp4", "interrvos_sample.zip"]
    assert "unidirectional" in note
    by_name = {Path(f).name: f for f in files}

    dataset = InterRVOSDataset(_unzip(by_name["interrvos_sample.zip"], tmp_path / "data"), "train")
    (sample,) = list(dataset.samples())
    assert (sample.video_id, sample.expression) == ("my_clip", "red circle pushing the blue square")
    actor = sample.actor_masks()
    assert actor[3][10, 50]  # the positive click
    np.testing.assert_array_equal(actor[:3], original[:3])  # frames before it are the model's
    assert sample.target_masks() is not None

    (item,) = list(from_folder(_unzip(by_name["annotate_input.zip"], tmp_path / "annotate")))
    objects = {o.obj_id: o.masks.numpy() for o in item.objects}
    np.testing.assert_array_equal(objects[ACTOR_ID], actor)
    assert item.num_frames == 8 and item.frames.size == (64, 64)

    _picture, status = client.predict(0, api_name="/fix_reset")
    assert "no clicks yet" in status


def test_client_fix_errors_are_clear(served):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, clip = served
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match="Run Segment first"):
        client.predict(0, "actor", "add (positive)", 1, 1, api_name="/fix_click")
    _segment(client, clip)
    with pytest.raises(AppError, match=r"outside the 64x64 frame"):
        client.predict(0, "actor", "add (positive)", 64, 1, api_name="/fix_click")
    files, note = client.predict("bidirectional", api_name="/fix_export")  # no clicks: the model's tracks
    assert "target track is left out" in note


def test_studio_export_refuses_unidirectional_without_target(tmp_path, clip):
    from studio.correct import FixSession, export
    from studio.service import UserError

    video, actor, _target = clip
    tracks = {"actor": role_objects(actor)[ACTOR_ID], "target": None}
    session = FixSession(video, "clip", "the red disc", None, tracks, [], dict(tracks))
    with pytest.raises(UserError, match="needs a target: add one with role 'target' clicks"):
        export(session, "unidirectional")
    files, note = export(session, "auto (from the tracks)")
    assert "**single**" in note and len(files) == 3


def test_cli_export_applies_clicks_and_writes_both_layouts(answering_model_dir, tmp_path):
    import json

    from conftest import encode_mp4

    from reviosa.cli import main

    frames = np.full((6, 48, 64, 3), 90, dtype=np.uint8)
    frames[:, 16:32, 20:36] = (220, 40, 40)
    clip = tmp_path / "walk.mp4"
    encode_mp4(clip, frames)
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps([{"frame": 2, "role": "actor", "x": 5, "y": 5, "positive": True},
                                  {"frame": 2, "role": "actor", "x": 60, "y": 44, "positive": False}]))  # fmt: skip
    out = tmp_path / "out"
    args = ["export", str(clip), "red circle pushing the blue square", "--out", str(out), "--clicks", str(clicks),
            "--model", str(answering_model_dir)]  # fmt: skip
    assert main(args) == 0
    (sample,) = list(InterRVOSDataset(out / "interrvos", "train").samples())
    actor = sample.actor_masks()
    assert actor[2][5, 5] and not actor[2][44, 60] and sample.caption_type == "unidirectional"
    (item,) = list(from_folder(out / "annotate_input"))
    np.testing.assert_array_equal({o.obj_id: o.masks.numpy() for o in item.objects}[ACTOR_ID], actor)
    clicks.write_text(json.dumps([{"frame": 9, "role": "actor", "x": 1, "y": 1}]))
    assert main(args) == 2  # a click outside the clip: one clear error line, no trace
