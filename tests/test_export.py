"""reviosa.data.export: corrected tracks written in the annotation pipeline's input layout and as an
InterRVOS sample, each read back by its own reader (train.annotate.inputs, reviosa.data)."""

from __future__ import annotations

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
