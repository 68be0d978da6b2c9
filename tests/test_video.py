"""Lazy video decoding and clear errors on bad files."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import encode_mp4

from reviosa.video import VideoFile, VideoLimits


def test_mp4_is_decoded_lazily_and_exactly(clip_mp4):
    video = VideoFile(clip_mp4)
    assert video.num_frames == 12 and video.size == (48, 64) and video.fps == pytest.approx(10)
    frames = video.iter_frames()
    first = next(frames)  # a generator: nothing beyond this frame has been decoded into memory
    assert first.shape == (48, 64, 3) and first.dtype == np.uint8
    assert len(list(frames)) == 11
    picked = video.read([0, 5, 11])
    # The red square moves 3 px per frame; its left edge shows where each frame came from.
    for frame, t in zip(picked, [0, 5, 11], strict=True):
        red = (frame[:, :, 0] > 150) & (frame[:, :, 1] < 100)
        assert abs(np.argwhere(red.any(0))[0, 0] - (4 + 3 * t)) <= 1


def test_limits_stride_and_downscale(tmp_path):
    frames = np.full((30, 120, 160, 3), 90, dtype=np.uint8)
    path = tmp_path / "long.mp4"
    encode_mp4(path, frames, fps=30)
    video = VideoFile(path, VideoLimits(max_frames=8, max_side=80))
    assert video.num_frames == 8 and video.stride == 4 and video.fps == pytest.approx(7.5)
    assert video.size == (60, 80)
    assert len(list(video.iter_frames())) == 8
    assert video.read([7]).shape == (1, 60, 80, 3)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        VideoFile(tmp_path / "nope.mp4")


def test_text_file_is_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(ValueError, match="not a video"):
        VideoFile(path)


def test_random_bytes_are_not_a_video(tmp_path):
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="not a video"):
        VideoFile(path)


def test_zero_frame_video(tmp_path):
    import av

    path = tmp_path / "empty.mp4"
    out = av.open(str(path), "w")  # a header and no frame at all
    stream = out.add_stream("libx264", rate=10)
    stream.height, stream.width, stream.pix_fmt = 32, 32, "yuv420p"
    out.start_encoding()
    out.close()
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="no video frames|no video stream|not a video"):
        VideoFile(path)
