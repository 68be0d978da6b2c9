"""Dataset I/O: write / read round trip, which ids give which ground truth, layouts, and errors that
name the video, expression and field."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from reviosa import rle
from reviosa.data import (
    DatasetError,
    ExpressionSpec,
    InterRVOSDataset,
    ObjectTrack,
    VideoRecord,
    write_dataset,
)

H, W, T = 24, 40, 3


def _box(y, x, h, w, frames=T):
    m = np.zeros((frames, H, W), dtype=bool)
    m[:, y : y + h, x : x + w] = True
    return m


def _record(video_id="v0"):
    frames = np.zeros((T, H, W, 3), dtype=np.uint8)
    frames[:, :, :, 0] = np.arange(T)[:, None, None] * 80  # frame t is a flat (80 t, 0, 0) red
    objects = [
        ObjectTrack(10, _box(2, 2, 5, 5)),
        ObjectTrack(11, _box(10, 20, 6, 8)),
        ObjectTrack(12, _box(15, 3, 4, 4)),
    ]
    expressions = [
        ExpressionSpec("the red circle", "single", [10]),
        ExpressionSpec("the two squares", "multi", [11, 12]),
        ExpressionSpec("circles bumping into each other", "bidirectional", [10, 11]),
        ExpressionSpec("red circle pushing the blue square", "unidirectional", [10], [11, 12]),
    ]
    return VideoRecord(video_id, frames, objects, expressions)


@pytest.fixture()
def split_dir(tmp_path):
    write_dataset(tmp_path / "train", [_record("v0"), _record("v1")])
    return tmp_path / "train"


def test_round_trip(split_dir):
    ds = InterRVOSDataset(split_dir)
    assert ds.video_ids == ["v0", "v1"] and len(ds) == 8
    s = ds.sample("v0", "3")
    assert (s.caption_type, s.expression, s.num_frames, s.size) == (
        "unidirectional",
        "red circle pushing the blue square",
        T,
        (H, W),
    )
    assert s.has_target and s.frame_names == ["00000", "00001", "00002"]
    np.testing.assert_array_equal(s.actor_masks(), _box(2, 2, 5, 5))
    np.testing.assert_array_equal(s.target_masks(), _box(10, 20, 6, 8) | _box(15, 3, 4, 4))
    np.testing.assert_array_equal(s.rvos_masks(), s.actor_masks())
    frames = s.load_frames([2, 0])
    assert frames.shape == (2, H, W, 3) and frames.dtype == np.uint8
    assert abs(int(frames[0, 5, 5, 0]) - 160) <= 3 and abs(int(frames[1, 5, 5, 0])) <= 3  # JPEG is lossy
    assert s.actor_masks([1]).shape == (1, H, W)


def test_roles_per_caption_type(split_dir):
    ds = InterRVOSDataset(split_dir)
    single, multi, bidi, uni = (ds.sample("v1", str(k)) for k in range(4))
    assert not single.has_target and single.target_masks() is None
    np.testing.assert_array_equal(multi.actor_masks(), _box(10, 20, 6, 8) | _box(15, 3, 4, 4))
    # Bidirectional: one mask, the union of both participants, no target.
    assert not bidi.has_target
    np.testing.assert_array_equal(bidi.actor_masks(), _box(2, 2, 5, 5) | _box(10, 20, 6, 8))
    assert uni.is_interaction and bidi.is_interaction and not multi.is_interaction


def test_meta_follows_the_interrvos_layout(split_dir):
    meta = json.loads((split_dir / "meta_expressions.json").read_text())["videos"]["v0"]
    exp = meta["expressions"]["3"]
    assert exp["caption_type"] == "unidirectional" and exp["obj_id"] == [10]
    assert exp["subject/object"]["obj_id"] == {"subject": [10], "object": [11, 12]}
    masks = json.loads((split_dir / "mask_dict.json").read_text())
    assert exp["anno_id"] == exp["subject/object"]["anno_id"]["subject"]
    assert len(masks[str(exp["anno_id"][0])]) == T


def test_frames_load_lazily(split_dir):
    ds = InterRVOSDataset(split_dir)
    (split_dir / "JPEGImages" / "v0" / "00001.jpg").unlink()
    s = ds.sample("v0", "0")
    assert s.load_frames([0, 2]).shape == (2, H, W, 3)  # only the asked frames are read
    with pytest.raises(FileNotFoundError, match="'v0'.*00001.jpg"):
        s.load_frames([1])
    with pytest.raises(FileNotFoundError, match="v0"):
        ds.validate()


def test_split_resolution(tmp_path, split_dir):
    assert InterRVOSDataset(tmp_path).root == split_dir  # the only split
    assert InterRVOSDataset(tmp_path, split="train").root == split_dir
    write_dataset(tmp_path / "val", [_record()])
    with pytest.raises(ValueError, match="--split"):
        InterRVOSDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="test"):
        InterRVOSDataset(tmp_path, split="test")


def test_reference_file_names_accepted(split_dir):
    (split_dir / "meta_expressions.json").rename(split_dir / "new_meta_expressions.json")
    (split_dir / "mask_dict.json").rename(split_dir / "new_mask_dict.json")
    assert len(InterRVOSDataset(split_dir)) == 8


def _edit(split_dir, edit):
    path = split_dir / "meta_expressions.json"
    meta = json.loads(path.read_text())
    edit(meta["videos"])
    path.write_text(json.dumps(meta))


def test_unknown_id_names_video_expression_and_field(split_dir):
    _edit(split_dir, lambda v: v["v1"]["expressions"]["3"]["subject/object"]["anno_id"].update(object=[999]))
    s = InterRVOSDataset(split_dir).sample("v1", "3")
    with pytest.raises(DatasetError, match=r"'v1'.*'3'.*subject/object\.anno_id\.object.*999"):
        s.target_masks()


def test_wrong_rle_size_names_video_expression_and_field(split_dir):
    masks = json.loads((split_dir / "mask_dict.json").read_text())
    masks["0"][1] = rle.encode(np.ones((H + 1, W), dtype=bool))
    (split_dir / "mask_dict.json").write_text(json.dumps(masks))
    s = InterRVOSDataset(split_dir).sample("v0", "0")
    with pytest.raises(DatasetError, match="'v0'.*'0'.*anno_id.*frame 1"):
        s.actor_masks()
    assert s.actor_masks([0]).any()  # other frames still read


def test_malformed_meta(split_dir):
    _edit(split_dir, lambda v: v["v0"]["expressions"]["3"]["subject/object"]["anno_id"].update(object=[]))
    with pytest.raises(DatasetError, match="'v0'.*'3'.*object.*target"):
        InterRVOSDataset(split_dir)
    _edit(split_dir, lambda v: v["v0"]["expressions"]["0"].update(caption_type="sideways"))
    with pytest.raises(DatasetError, match="caption_type"):
        InterRVOSDataset(split_dir)


def test_mevis_layout_without_caption_type(split_dir):
    def strip(videos):
        for video in videos.values():
            for exp in video["expressions"].values():
                exp.pop("caption_type")
                exp.pop("subject/object")

    _edit(split_dir, strip)
    ds = InterRVOSDataset(split_dir)
    types = [ds.sample("v0", str(k)).caption_type for k in range(4)]
    assert types == ["single", "multi", "multi", "single"]
    assert not any(s.has_target for s in ds.samples())


def test_ref_youtube_vos_layout(tmp_path):
    root = tmp_path / "valid"
    (root / "JPEGImages" / "vid").mkdir(parents=True)
    (root / "Annotations" / "vid").mkdir(parents=True)
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[2:6, 2:6] = 1
    labels[10:14, 20:30] = 2
    for name in ("00000", "00005"):
        Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(root / "JPEGImages" / "vid" / f"{name}.jpg")
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(root / "Annotations" / "vid" / "00000.png")  # 00005 not annotated: empty
    meta = {
        "videos": {
            "vid": {"frames": ["00000", "00005"], "expressions": {"0": {"exp": "a dog", "obj_id": "2"}}}
        }
    }
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    s = InterRVOSDataset(root).sample("vid", "0")
    assert s.caption_type == "single"
    masks = s.rvos_masks()
    np.testing.assert_array_equal(masks[0], labels == 2)
    assert not masks[1].any()
    tracks = s.dataset.gt_tracks(s, s.rvos_ids, "rvos")
    assert tracks[0][1] is None and rle.decode(tracks[0][0], (H, W)).sum() == 40


def test_writer_validates(tmp_path):
    bad = _record()
    bad.expressions.append(ExpressionSpec("x hitting y", "unidirectional", [10]))
    with pytest.raises(ValueError, match="'v0'.*'4'.*object"):
        write_dataset(tmp_path / "a", [bad])
    bad = _record()
    bad.expressions.append(ExpressionSpec("ghost", "single", [77]))
    with pytest.raises(ValueError, match="unknown object ids \\[77\\]"):
        write_dataset(tmp_path / "b", [bad])
    bad = _record()
    bad.objects[0].masks = bad.objects[0].masks[:, :-1]
    with pytest.raises(ValueError, match="object 10 masks"):
        write_dataset(tmp_path / "c", [bad])
    shutil.rmtree(tmp_path)
