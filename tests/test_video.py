"""Lazy video decoding and clear errors on bad files."""

from __future__ import annotations

import numpy as np
import pytest
import trial_inputs
from conftest import encode_mp4

from reviosa.video import VideoError, VideoFile, VideoLimits


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


# --- the trial's broken files (issue 17): what is wrong, what to do, the name as given, no folder ----------


@pytest.mark.parametrize(
    ("builder", "kind", "words"),
    [
        (trial_inputs.zero_byte, "empty", "Zero.mp4 is an empty file"),
        (trial_inputs.text_renamed, "not_video", "Notes.mp4 is not a video"),
        (
            trial_inputs.truncated,
            "truncated",
            "Cut.mp4 starts like a video file (mp4/mov) but cannot be read",
        ),
        (
            trial_inputs.truncated_faststart,
            "truncated",
            "CutFast.mp4 is truncated: its index lists 20 frames",
        ),
    ],
)
def test_broken_files_say_what_is_wrong(builder, kind, words, tmp_path):
    with pytest.raises(VideoError) as caught:
        VideoFile(builder(tmp_path))
    message = str(caught.value)
    assert caught.value.kind == kind and words in message
    assert str(tmp_path) not in message and "Errno" not in message and "upload" not in message.lower()


def test_unknown_codec_says_reencode(tmp_path):
    good = trial_inputs.encode(tmp_path / "good.mp4", trial_inputs.moving_frames(4, 32, 32))
    data = good.read_bytes()
    at = data.find(b"avc1", data.find(b"stsd"))  # the sample entry's codec tag, not the ftyp brand
    path = tmp_path / "Odd.mp4"
    path.write_bytes(data[:at] + b"zzzz" + data[at + 4 :])
    with pytest.raises(
        VideoError, match="Odd.mp4 uses a video codec this machine cannot decode. Re-encode"
    ) as caught:
        VideoFile(path)
    assert caught.value.kind == "codec"


def test_odd_but_valid_clips_decode(tmp_path):
    one = VideoFile(trial_inputs.one_frame(tmp_path))
    assert one.num_frames == 1 and one.read([0]).shape == (1, 64, 64, 3)
    grey = VideoFile(trial_inputs.greyscale(tmp_path))
    frame = next(grey.iter_frames())
    assert frame.shape == (64, 64, 3) and (frame[..., 0] == frame[..., 1]).all()
    gif = VideoFile(trial_inputs.rgba_gif(tmp_path))
    assert gif.num_frames == 8 and next(gif.iter_frames()).shape == (64, 64, 3)
    uhd = VideoFile(trial_inputs.uhd(tmp_path), VideoLimits(max_side=640))
    assert uhd.source_size == (2160, 3840) and uhd.size == (360, 640)
    assert uhd.read([1]).shape == (1, 360, 640, 3)


def test_ten_thousand_frames_are_counted_without_decoding_and_capped(tmp_path):
    from reviosa.caps import MAX_FRAMES, reduction_notices

    video = VideoFile(trial_inputs.many_frames(tmp_path), VideoLimits(max_frames=MAX_FRAMES))
    assert video.source_frames == 10_000 and video.num_frames <= MAX_FRAMES and video.stride == 34
    (notice,) = reduction_notices(video, frames_hint="HINT", side_hint="")
    assert notice.startswith("The clip has 10000 frames; 1 frame in every 34 was used (295 frames")
    assert notice.endswith("HINT")
