"""Still images (jpg, png, webp) as one-frame clips: decoding, errors, tiling for the MLLM, predict CLI."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from reviosa.generation import force_answers
from reviosa.image import StillImage, is_image_path, open_media, tile_count
from reviosa.video import VideoFile, VideoLimits


def _pattern(h: int = 30, w: int = 44) -> np.ndarray:
    """uint8 (h, w, 3) where every pixel differs from its neighbours (orientation is visible)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 5 % 256, y * 7 % 256, (x + y) * 3 % 256], axis=-1).astype(np.uint8)


def test_png_and_lossless_webp_decode_exactly(tmp_path):
    frame = _pattern()
    for name, kwargs in (("a.png", {}), ("a.webp", {"lossless": True}), ("a.PNG", {})):
        Image.fromarray(frame).save(tmp_path / name, **kwargs)
        image = StillImage(tmp_path / name)
        assert (image.num_frames, image.size) == (1, (30, 44))
        np.testing.assert_array_equal(image.read([0])[0], frame)
        np.testing.assert_array_equal(next(image.iter_frames()), frame)


def test_jpeg_exif_orientation_is_applied(tmp_path):
    frame = _pattern()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": how phones store portrait shots
    Image.fromarray(frame).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = StillImage(tmp_path / "phone.jpg")
    assert image.size == (44, 30)  # upright: the stored 44x30 becomes 30 wide, 44 high
    upright = np.rot90(frame, k=-1)
    assert np.abs(image.frame.astype(int) - upright).mean() < 6  # JPEG noise only


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "P", "P_transparent", "I;16", "CMYK"])
def test_every_colour_mode_becomes_rgb(tmp_path, mode):
    frame = _pattern()
    base = Image.fromarray(frame)
    if mode == "RGBA":
        image, expected = base.convert("RGBA"), frame  # alpha dropped, colours kept
    elif mode in ("L", "LA"):
        image = base.convert(mode)
        expected = np.repeat(np.asarray(base.convert("L"))[..., None], 3, axis=-1)
    elif mode.startswith("P"):
        image = base.quantize(16)
        if mode == "P_transparent":
            image.info["transparency"] = 0
        expected = np.asarray(image.convert("RGB"))
    elif mode == "I;16":
        grey = np.asarray(base.convert("L")).astype(np.uint16) * 257  # full 16-bit range
        image, expected = Image.fromarray(grey), np.repeat(np.asarray(base.convert("L"))[..., None], 3, -1)
    else:
        image, expected = base.convert("CMYK"), np.asarray(base.convert("CMYK").convert("RGB"))
    suffix = "jpg" if mode == "CMYK" else "png"
    image.save(tmp_path / f"x.{suffix}", **({"quality": 100} if suffix == "jpg" else {}))
    still = StillImage(tmp_path / f"x.{suffix}")
    assert still.frame.dtype == np.uint8 and still.frame.shape == (30, 44, 3)
    tolerance = 8 if suffix == "jpg" else 1
    assert np.abs(still.frame.astype(int) - expected.astype(int)).max() <= tolerance, mode


def test_max_side_downscales_and_frame_caps_do_nothing(tmp_path):
    Image.fromarray(_pattern(60, 80)).save(tmp_path / "big.png")
    image = StillImage(tmp_path / "big.png", VideoLimits(max_side=40, max_frames=1, stride=3))
    assert image.size == (30, 40) and image.frame.shape == (30, 40, 3) and image.num_frames == 1
    with pytest.raises(ValueError, match="only frame 0"):
        image.read([1])


def test_bad_files_give_clear_errors_without_the_folder(tmp_path):
    folder = tmp_path / "private-server-folder"
    folder.mkdir()
    Image.fromarray(_pattern()).save(folder / "ok.jpg", quality=90)
    data = (folder / "ok.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "noise.png").write_bytes(b"\x89PNG not really" + bytes(range(200)))
    Image.fromarray(_pattern()).save(folder / "really_a.bmp", format="BMP")
    (folder / "really_a.bmp").rename(folder / "bitmap.png")
    Image.fromarray(_pattern()).save(folder / "anim.gif")
    (folder / "anim.gif").rename(folder / "gif.webp")
    (folder / "empty.png").write_bytes(b"")
    cases = {
        "empty.png": "not an image that can be read",
        "truncated.jpg": "damaged or truncated",
        "noise.png": "not an image that can be read",
        "bitmap.png": "is a BMP image",
        "gif.webp": "is a GIF image",
    }
    for name, words in cases.items():
        with pytest.raises(ValueError) as err:
            StillImage(folder / name)
        message = str(err.value)
        assert words in message and name in message and "jpg, png or webp" in message, message
        assert "private-server-folder" not in message, message
    with pytest.raises(FileNotFoundError) as err:
        StillImage(folder / "missing.png")
    assert "private-server-folder" not in str(err.value)


def test_open_media_routes_by_suffix(tmp_path, clip_mp4):
    Image.fromarray(_pattern()).save(tmp_path / "a.jpeg")
    assert is_image_path("x.JPG") and is_image_path("y.webp") and not is_image_path("clip.gif")
    assert isinstance(open_media(tmp_path / "a.jpeg"), StillImage)
    assert isinstance(open_media(clip_mp4), VideoFile)


def _spy_on_embed(model):
    """Record, per embed call, the <IMG_CONTEXT> slots per prompt and the images encoded."""
    seen = []
    original = model.embed

    def embed(input_ids, pixel_values, image_index=None):
        slots = (input_ids == model.processor.ids.img_context).sum(1).tolist()
        seen.append((slots, None if pixel_values is None else tuple(pixel_values.shape)))
        return original(input_ids, pixel_values, image_index)

    model.embed = embed
    return seen


@pytest.mark.parametrize("max_tiles", [1, 12])
def test_segment_an_image_tiles_for_the_mllm_and_masks_one_frame(tmp_path, tiny_model, max_tiles):
    model = copy.deepcopy(tiny_model)
    model.config = dataclasses.replace(
        model.config, processor=dataclasses.replace(model.config.processor, max_image_tiles=max_tiles)
    )
    h, w = 40, 100  # aspect 2.5: 5 x 2 tiles of 32 px (tiny model), plus the thumbnail
    Image.fromarray(_pattern(h, w)).save(tmp_path / "still.png")
    seen = _spy_on_embed(model)
    forced = force_answers(model, ["Sure, [SEG_ACT] and [SEG_TAR]."])
    (pred,) = model.segment(
        StillImage(tmp_path / "still.png"),
        ["the red circle"],
        capture_attention=True,
        logits_processor=forced,
    )
    n = tile_count(w, h, max_tiles)
    assert n == (11 if max_tiles == 12 else 1)
    size, tokens = model.config.vision.image_size, model.config.tokens_per_frame
    assert seen[0] == ([n * tokens], (n, 3, size, size))
    assert pred.keyframes == [0]
    assert np.asarray(pred.actor).shape == (1, h, w) and np.asarray(pred.target).shape == (1, h, w)
    # One attention grid per keyframe, as for a 1-frame video: a tiled still's is its thumbnail's.
    g = model.config.grid
    assert pred.attention.rows.shape[-3:] == (1, g, g)


def test_videos_are_never_tiled(tiny_model):
    from reviosa.video import ArrayVideo

    model = copy.deepcopy(tiny_model)
    model.config = dataclasses.replace(
        model.config, processor=dataclasses.replace(model.config.processor, max_image_tiles=12)
    )
    seen = _spy_on_embed(model)
    frames = np.repeat(_pattern(40, 100)[None], 3, axis=0)
    model.segment(ArrayVideo(frames), ["the red circle"], num_keyframes=2)
    size = model.config.vision.image_size
    assert seen[0] == ([2 * model.config.tokens_per_frame], (2, 3, size, size))


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reviosa", "predict", *args], capture_output=True, text=True, timeout=300
    )


def test_predict_cli_on_an_image_writes_one_frame(answering_model_dir, tmp_path):
    Image.fromarray(_pattern(48, 64)).save(tmp_path / "photo.webp", quality=90)
    out = tmp_path / "out"
    proc = _predict(str(tmp_path / "photo.webp"), "red circle pushing the blue square",
                    "--model", str(answering_model_dir), "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / "actor").iterdir()) == ["00000.png"]
    assert sorted(p.name for p in (out / "target").iterdir()) == ["00000.png"]
    assert np.asarray(Image.open(out / "actor" / "00000.png")).shape == (48, 64)
    entry = json.loads((out / "results.json").read_text())["videos"]["photo"]["0"]
    assert len(entry["actor"]) == 1 and len(entry["target"]) == 1
    tiled = _predict(str(tmp_path / "photo.webp"), "red circle pushing the blue square", "--model",
                     str(answering_model_dir), "--out", str(tmp_path / "tiled"), "--max-image-tiles", "12")  # fmt: skip
    assert tiled.returncode == 0 and "protocol custom" in tiled.stdout, tiled.stderr
    assert (
        len(json.loads((tmp_path / "tiled" / "results.json").read_text())["videos"]["photo"]["0"]["actor"])
        == 1
    )
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    proc = _predict(str(tmp_path / "broken.jpg"), "x", "--model", str(answering_model_dir))
    assert proc.returncode == 2
    assert "broken.jpg" in proc.stderr and str(tmp_path) not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_studio_runs_an_uploaded_image_as_one_frame(answering_model_dir, tmp_path):
    import app
    from studio.service import ModelRegistry, RunOptions, UserError, run_request

    assert {".jpg", ".png", ".webp", ".mp4"} <= set(app.UPLOAD_TYPES)
    Image.fromarray(_pattern(45, 63)).save(tmp_path / "upload.png")  # odd sides: the mp4 pads them
    loaded = ModelRegistry(str(answering_model_dir)).get()
    result = run_request(loaded, tmp_path / "upload.png", "red circle pushing the blue square", RunOptions(),
                         app.Limits())  # fmt: skip
    assert result.num_frames == 1 and tuple(result.size) == (45, 63)
    entry = json.loads(result.results_json.read_text())["videos"]["upload"]["0"]
    assert len(entry["actor"]) == 1
    (tmp_path / "bad.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 broken")
    with pytest.raises(UserError, match="bad.webp"):
        run_request(loaded, tmp_path / "bad.webp", "x", RunOptions(), app.Limits())
