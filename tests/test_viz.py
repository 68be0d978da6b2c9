"""viz/: overlays, contours, attention heatmaps and charts, video / PNG-zip / RLE export, object labels."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
import warnings
import weakref
import zipfile
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from reviosa import results, rle
from viz import annotate, attention, overlay, video
from viz.annotate import OBJECT_PALETTE, label_anchor, label_objects
from viz.attention import HIGHLIGHT_COLOR, head_grid, heatmap_overlay, keyframe_strip
from viz.overlay import ACTOR_COLOR, TARGET_COLOR, mask_contour, overlay_frame

GREY = 100


def _blend(color, alpha: float, base: int = GREY) -> np.ndarray:
    """What a fill of ``color`` at ``alpha`` over a flat ``base`` frame must look like (uint8 RGB)."""
    return np.clip(base * (1 - alpha) + np.array(color, np.float32) * alpha + 0.5, 0, 255).astype(np.uint8)


def _flat(height: int, width: int, value: int = GREY) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def _is(image: np.ndarray, color) -> np.ndarray:
    """bool (H, W): pixels of ``image`` exactly equal to ``color``."""
    return np.all(image == np.asarray(color, np.uint8), axis=-1)


# ---------------------------------------------------------------- overlays


def test_overlap_shows_both_colours_and_both_contours():
    actor = np.zeros((120, 160), bool)
    target = np.zeros((120, 160), bool)
    actor[20:100, 10:100] = True
    target[20:100, 60:150] = True
    out = overlay_frame(_flat(120, 160), actor, target, alpha=0.5, legend=False)
    actor_fill, target_fill = _blend(ACTOR_COLOR, 0.5), _blend(TARGET_COLOR, 0.5)

    assert (out[50, 30] == actor_fill).all() and (out[50, 120] == target_fill).all()
    both = out[30:90, 70:90]  # overlap interior, away from every contour
    is_actor, is_target = _is(both, actor_fill), _is(both, target_fill)
    assert (is_actor | is_target).all()
    # Every 8x8 window holds both colours: no part of the overlap reads as one role only.
    for y in range(0, both.shape[0] - 8, 4):
        for x in range(0, both.shape[1] - 8, 4):
            assert is_actor[y : y + 8, x : x + 8].any() and is_target[y : y + 8, x : x + 8].any()
    mean = both.reshape(-1, 3).mean(axis=0)
    assert np.abs(mean - actor_fill).max() > 20 and np.abs(mean - target_fill).max() > 20

    # Both contours run through the overlap: the actor's right edge and the target's left edge.
    assert _is(out[30:90, 99], ACTOR_COLOR).all()
    assert _is(out[30:90, 60], TARGET_COLOR).all()


def test_contour_is_the_inner_boundary_of_a_small_square():
    mask = np.zeros((10, 12), bool)
    mask[3:7, 2:6] = True  # 4x4 square
    expected = mask.copy()
    expected[4:6, 3:5] = False  # by hand: the square minus its 2x2 interior
    assert (mask_contour(mask, 1) == expected).all()
    assert (mask_contour(mask, 2) == mask).all()  # two pixels thick eats a 4x4 square whole

    out = overlay_frame(_flat(10, 12), mask, None, alpha=0.5, legend=False)
    assert (_is(out, ACTOR_COLOR) == expected).all()
    assert (out[~mask] == GREY).all()  # nothing painted outside the object


def test_contour_follows_the_frame_edge():
    mask = np.zeros((6, 6), bool)
    mask[:, :3] = True
    contour = mask_contour(mask, 1)
    assert contour[:, 0].all() and contour[0, :3].all() and contour[:, 2].all()
    assert not contour[2:4, 1].any()


def test_overlay_odd_sizes_legend_and_input_untouched():
    for height, width in [(1, 1), (7, 9), (33, 47), (481, 853)]:
        frame = _flat(height, width)
        actor = np.zeros((height, width), bool)
        actor[height // 3 :, : max(1, width // 2)] = True
        before = frame.copy()
        out = overlay_frame(frame, actor, np.zeros_like(actor))
        assert out.shape == frame.shape and out.dtype == np.uint8
        assert (frame == before).all()
    # The legend sits in the top-left corner and only for roles given.
    big = _flat(480, 854)
    with_legend = overlay_frame(big, np.zeros((480, 854), bool), None)
    assert (with_legend[:60, :120] != GREY).any() and (with_legend[100:, 200:] == GREY).all()
    assert not _is(with_legend[:60, :120], TARGET_COLOR).any()
    assert (overlay_frame(big, None, None) == big).all()
    with pytest.raises(ValueError, match="actor mask"):
        overlay_frame(big, np.zeros((10, 10), bool), None)


# ---------------------------------------------------------------- attention


def _lut(cmap: str = "inferno") -> np.ndarray:
    return (matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.float32)


def test_heatmap_max_maps_to_the_top_colour():
    frame = _flat(64, 48)
    top, bottom = _lut()[255], _lut()[0]
    attn = np.full((4, 4), 3e-4, np.float32)  # raw probabilities are tiny
    out = heatmap_overlay(frame, attn, alpha=1.0)
    assert (out == np.rint(top).astype(np.uint8)).all()

    attn = np.zeros((4, 4), np.float32)
    attn[1, 2] = 2e-3
    attn[3, 0] = 1e-3
    out = heatmap_overlay(frame, attn, alpha=1.0, resample="nearest")
    # Cells are 16 x 12 pixels; the hottest is top, a zero cell bottom, a half-max cell the middle.
    assert (out[16:32, 24:36] == np.rint(top).astype(np.uint8)).all()
    assert (out[0:16, 0:12] == np.rint(bottom).astype(np.uint8)).all()
    assert (out[48:64, 0:12] == np.rint(_lut()[128]).astype(np.uint8)).all()
    # Per-map normalisation: the scale of the probabilities does not matter.
    assert (heatmap_overlay(frame, attn * 1e3, alpha=0.6) == heatmap_overlay(frame, attn, alpha=0.6)).all()


def test_heatmap_shared_vmax_and_zero_map():
    frame = _flat(32, 32)
    half = heatmap_overlay(frame, np.full((2, 2), 0.01), alpha=1.0, vmax=0.02)
    assert (half == np.rint(_lut()[128]).astype(np.uint8)).all()
    saturated = heatmap_overlay(frame, np.full((2, 2), 0.05), alpha=1.0, vmax=0.02)
    assert (saturated == np.rint(_lut()[255]).astype(np.uint8)).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero
        zero = heatmap_overlay(frame, np.zeros((2, 2)), alpha=1.0)
    assert (zero == np.rint(_lut()[0]).astype(np.uint8)).all()


def test_heatmap_odd_frame_and_bicubic_stays_in_range():
    frame = _flat(13, 11)
    attn = np.random.default_rng(0).random((4, 4))
    for resample in ("bilinear", "bicubic", "nearest"):
        out = heatmap_overlay(frame, attn, resample=resample)
        assert out.shape == (13, 11, 3) and out.dtype == np.uint8


def test_head_grid_frames_the_supervised_tiles():
    rng = np.random.default_rng(0)
    rows = rng.random((2, 2, 3, 4, 4)).astype(np.float32) * 1e-3  # (NL, NH, K, g, g)
    frame = _flat(48, 64)
    grid = head_grid(
        rows, frame, keyframe=1, layers=[20, 22], heads=[3, 5], supervised=[(22, 5)], tile_width=64
    )
    framed = _is(grid, HIGHLIGHT_COLOR)
    ys, xs = np.nonzero(framed)
    # One 64x48 frame, in the second row and second column (bottom-right of the grid).
    assert xs.max() - xs.min() + 1 == 64 and ys.max() - ys.min() + 1 == 48
    assert xs.min() > grid.shape[1] / 2 and ys.min() > grid.shape[0] / 2
    plain = head_grid(rows, frame, layers=[20, 22], heads=[3, 5], tile_width=64)
    assert plain.shape == grid.shape and not _is(plain, HIGHLIGHT_COLOR).any()
    with pytest.raises(ValueError, match="keyframe"):
        head_grid(rows, frame, keyframe=3)


def test_keyframe_strip_shares_one_scale_across_keyframes():
    rows = np.zeros((3, 2, 2), np.float32)
    rows[0] = 0.02
    rows[1] = 0.01
    frames = np.stack([_flat(20, 30)] * 3)
    strip = keyframe_strip(rows, frames, alpha=1.0)
    assert strip.shape == (20, 3 * 30 + 2 * 2, 3)
    tiles = [strip[:, k * 32 : k * 32 + 30] for k in range(3)]
    assert (tiles[0] == np.rint(_lut()[255]).astype(np.uint8)).all()
    assert (tiles[1] == np.rint(_lut()[128]).astype(np.uint8)).all()
    assert (tiles[2] == np.rint(_lut()[0]).astype(np.uint8)).all()
    per_frame = keyframe_strip(rows, frames, alpha=1.0, shared_scale=False)
    assert (per_frame[:, 32:62] == np.rint(_lut()[255]).astype(np.uint8)).all()
    labelled = keyframe_strip(rows, frames, labels=["0", "8", "16"], tile_width=60)
    assert labelled.shape[0] == 40


def test_figure6_charts_highlight_the_selection(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.random((24, 14, 2, 4, 4)) * 1e-3
    mass = attention.vision_mass(rows)
    assert mass.shape == (24, 14) and np.isclose(mass[3, 4], rows[3, 4].sum())

    fig = attention.plot_layer_vision_mass(mass.mean(axis=1), list(range(24)), selected_layer=22)
    bars = fig.axes[0].patches
    assert len(bars) == 24
    assert [i for i, bar in enumerate(bars) if bar.get_facecolor() == to_rgba(attention._BAR_HIGHLIGHT)] == [
        22
    ]
    assert "averaged over heads" in fig.axes[0].get_ylabel()

    fig = attention.plot_head_vision_mass(mass[22], list(range(14)), selected_heads=(5, 7, 10, 11), layer=22)
    bars = fig.axes[0].patches
    assert [i for i, bar in enumerate(bars) if bar.get_facecolor() == to_rgba(attention._BAR_HIGHLIGHT)] == [
        5,
        7,
        10,
        11,
    ]
    image = attention.figure_to_array(fig)
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    path = attention.save_figure_png(fig, tmp_path / "heads.png", dpi=50)
    assert Image.open(path).size[0] > 0
    with pytest.raises(ValueError, match="selected heads"):
        attention.plot_head_vision_mass(mass[22], list(range(14)), selected_heads=(20,))


# ---------------------------------------------------------------- video and mask export


@pytest.fixture(params=["ffmpeg", "pyav"])
def encoder(request, monkeypatch):
    """Runs a test on both encoders: the ffmpeg process, and PyAV where imageio-ffmpeg is missing."""
    if request.param == "ffmpeg":
        pytest.importorskip("imageio_ffmpeg", reason="the ffmpeg encoder comes with requirements.txt")
    else:
        monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails: the PyAV fallback
    return request.param


@pytest.mark.parametrize("fps", [12, 30000 / 1001])
def test_mp4_round_trip_flat_colour(tmp_path, fps):
    color = (200, 60, 30)
    frames = (np.full((48, 64, 3), color, np.uint8) for _ in range(10))
    path = video.write_mp4(tmp_path / "flat.mp4", frames, fps=fps)
    back, back_fps = video.read_mp4(path)
    assert back.shape == (10, 48, 64, 3)
    assert back_fps == pytest.approx(fps, abs=1e-6)
    # H.264 at CRF 20 plus the yuv420p round trip: a flat colour comes back within a few levels.
    assert np.abs(back.astype(int) - np.array(color)).max() <= 4


def test_mp4_pads_odd_sizes_and_keeps_fractional_fps(tmp_path, encoder):
    frames = np.zeros((3, 33, 47, 3), np.uint8)
    frames[:, -1, :] = 200  # the last row and column are replicated into the padding
    frames[:, :, -1] = 200
    back, back_fps = video.read_mp4(video.write_mp4(tmp_path / "odd.mp4", frames, fps=29.97))
    assert back.shape == (3, 34, 48, 3)
    assert back_fps == pytest.approx(29.97, abs=1e-9)
    assert back[:, 2:30, 2:44].max() < 12 and back[:, -1, 2:44].min() > 150
    assert video.to_fraction(30000 / 1001) == video.to_fraction(29.97002997002997)


def test_mp4_streams_frames_and_rejects_bad_input(tmp_path, encoder):
    alive = []

    def generate():
        for _ in range(6):
            gc.collect()
            # Only the frame being encoded may still be referenced when the next one is requested.
            assert sum(ref() is not None for ref in alive) <= 1
            frame = np.full((16, 16, 3), 50, np.uint8)
            alive.append(weakref.ref(frame))
            yield frame

    before = _child_processes()
    video.write_mp4(tmp_path / "stream.mp4", generate(), fps=5)
    with pytest.raises(ValueError, match="no frames"):
        video.write_mp4(tmp_path / "empty.mp4", iter(()), fps=5)
    assert not (tmp_path / "empty.mp4").exists()
    with pytest.raises(ValueError, match="shape"):
        video.write_mp4(tmp_path / "mixed.mp4", [_flat(16, 16), _flat(16, 18)], fps=5)
    assert not (tmp_path / "mixed.mp4").exists()
    with pytest.raises(ValueError, match="uint8"):
        video.write_mp4(tmp_path / "float.mp4", [np.zeros((16, 16, 3))], fps=5)
    assert not _encoder_threads() and _child_processes() == before


def _encoder_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "write_mp4-encoder"]


def _child_processes() -> list[int]:
    """Live child processes of this one (from /proc: a leaked ffmpeg or worker would show here)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                children.append(int(stat.parent.name))
    return children


def test_mp4_encodes_in_an_ffmpeg_process_or_says_it_falls_back(tmp_path, encoder, caplog):
    before = set(_child_processes())
    during = []

    def frames():
        for i in range(8):
            if i == 4:
                during.extend(set(_child_processes()) - before)
            yield _flat(32, 32, 20 * i)

    with caplog.at_level(logging.DEBUG, logger="viz.video"):
        video.write_mp4(tmp_path / "which.mp4", frames(), fps=5)
    # The ffmpeg process encodes while the producer runs; the fallback starts no process and says so.
    if encoder == "ffmpeg":
        assert len(during) == 1 and "write_mp4 encodes with ffmpeg" in caplog.text
    else:
        assert during == [] and "imageio-ffmpeg is not installed: write_mp4 encodes with PyAV" in caplog.text
    assert video.read_mp4(tmp_path / "which.mp4")[0].shape == (8, 32, 32, 3)


def test_mp4_frames_come_back_in_order_and_all_of_them(tmp_path, encoder):
    # 40 frames (10x the PyAV encoder's queue), each a different grey: order and count survive.
    levels = [16 + 5 * i for i in range(40)]
    frames = (np.full((32, 48, 3), level, np.uint8) for level in levels)
    before = _child_processes()
    back, _ = video.read_mp4(video.write_mp4(tmp_path / "order.mp4", frames, fps=10))
    assert back.shape == (40, 32, 48, 3)
    assert np.abs(back.mean(axis=(1, 2, 3)) - np.array(levels)).max() < 3
    assert not _encoder_threads() and _child_processes() == before


def test_mp4_pyav_encoder_error_reaches_the_caller(tmp_path, monkeypatch):
    """An exception inside the PyAV encoder thread is raised by write_mp4, the file removed, the thread gone."""
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # the PyAV fallback
    real_open = video._open_stream

    class Failing:
        def __init__(self, stream):
            self.stream, self.count = stream, 0

        def encode(self, frame):
            self.count += 1
            if self.count == 3:
                raise RuntimeError("encoder broke")
            return self.stream.encode(frame)

    monkeypatch.setattr(video, "_open_stream", lambda *a: Failing(real_open(*a)))
    produced = []

    def frames():
        for i in range(200):
            produced.append(i)
            yield _flat(16, 16)

    with pytest.raises(RuntimeError, match="encoder broke"):
        video.write_mp4(tmp_path / "broken.mp4", frames(), fps=5)
    assert not (tmp_path / "broken.mp4").exists()
    assert not _encoder_threads()
    assert len(produced) < 20  # the caller stopped soon after, not at the end of the frames


def test_mp4_ffmpeg_error_reaches_the_caller_with_its_log(tmp_path):
    """ffmpeg refusing the options: its log's end is raised, without server paths, the process reaped."""
    pytest.importorskip("imageio_ffmpeg", reason="the ffmpeg encoder comes with requirements.txt")
    produced = []
    before = _child_processes()

    def frames():
        for i in range(200):
            produced.append(i)
            yield _flat(480, 854)  # 1.2 MB a frame: more than a pipe holds, so each write waits for ffmpeg

    with pytest.raises(RuntimeError, match="ffmpeg stopped") as caught:
        video.write_mp4(tmp_path / "broken.mp4", frames(), fps=5, preset="no-such-preset")
    assert "no-such-preset" in str(caught.value)  # x264's own complaint, from ffmpeg's log
    assert not (tmp_path / "broken.mp4").exists()
    assert len(produced) < 40  # the caller stopped soon after, not at the end of the frames
    # A folder that does not exist: ffmpeg's message names the file, not where it lives on the server.
    with pytest.raises(RuntimeError, match="ffmpeg stopped") as caught:
        video.write_mp4(tmp_path / "missing" / "out.mp4", [_flat(16, 16)], fps=5)
    assert "out.mp4" in str(caught.value) and str(tmp_path) not in str(caught.value)
    assert _child_processes() == before


def test_mp4_ffmpeg_dying_mid_stream_is_raised(tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason="the ffmpeg encoder comes with requirements.txt")
    before = set(_child_processes())

    def frames():
        for i in range(200):
            if i == 5:
                for pid in set(_child_processes()) - before:
                    os.kill(pid, signal.SIGKILL)
            yield _flat(240, 320)

    with pytest.raises(RuntimeError, match=r"ffmpeg stopped \(exit status -9\)"):
        video.write_mp4(tmp_path / "killed.mp4", frames(), fps=5)
    assert not (tmp_path / "killed.mp4").exists()
    assert set(_child_processes()) == before


def test_mp4_producer_error_stops_the_encoder(tmp_path, encoder):
    before = _child_processes()

    def frames():
        for i in range(10):
            if i == 6:
                raise KeyError("frame source failed")
            yield _flat(16, 16)

    with pytest.raises(KeyError, match="frame source failed"):
        video.write_mp4(tmp_path / "partial.mp4", frames(), fps=5)
    assert not (tmp_path / "partial.mp4").exists()
    assert not _encoder_threads() and _child_processes() == before


def test_mp4_frame_reused_by_the_producer_is_encoded_as_it_was(tmp_path, encoder):
    # A producer that refills one buffer: each frame must be taken when given, not when encoded.
    buffer = np.zeros((16, 16, 3), np.uint8)

    def frames():
        for level in (40, 120, 200, 80, 160):
            buffer[:] = level
            yield buffer

    back, _ = video.read_mp4(video.write_mp4(tmp_path / "reuse.mp4", frames(), fps=5))
    assert np.abs(back.mean(axis=(1, 2, 3)) - [40, 120, 200, 80, 160]).max() < 3


def _random_masks(seed: int, count: int = 3, size=(20, 30)) -> np.ndarray:
    return np.random.default_rng(seed).random((count, *size)) > 0.6


def test_png_zip_contents(tmp_path):
    actor, target = _random_masks(0), _random_masks(1)
    names = ["00010", "00020", "00030"]
    path = video.masks_to_png_zip(tmp_path / "m.zip", iter(actor), (m for m in target), frame_names=names)
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == sorted(
            f"{r}/{n}.png" for r in ("actor", "target") for n in names
        )
        for role, masks in (("actor", actor), ("target", target)):
            for name, mask in zip(names, masks, strict=True):
                with archive.open(f"{role}/{name}.png") as f:
                    assert (np.array(Image.open(f)).astype(bool) == mask).all()

    path = video.masks_to_png_zip(tmp_path / "a.zip", actor)
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["actor/00000.png", "actor/00001.png", "actor/00002.png"]
    with pytest.raises(ValueError, match="differ in length"):
        video.masks_to_png_zip(tmp_path / "b.zip", actor, target[:2])
    with pytest.raises(ValueError, match="frame names"):
        video.masks_to_png_zip(tmp_path / "c.zip", actor, None, frame_names=names[:2])


def test_rle_results_json(tmp_path):
    actor = _random_masks(2)
    actor[1] = False
    entries = {"vid1": {"0": results.track_entry(actor, None, "Sure, [SEG_ACT]."),
                        "1": results.track_entry(actor, actor[::-1], "Sure, [SEG_ACT] and [SEG_TAR].")}}  # fmt: skip
    data = json.loads(results.save({"videos": entries}, tmp_path / "r.json").read_text())
    single, pair = data["videos"]["vid1"]["0"], data["videos"]["vid1"]["1"]
    assert single["target"] is None and single["actor"][1] is None and single["answer"] == "Sure, [SEG_ACT]."
    for got, want in zip(pair["target"], actor[::-1], strict=True):
        assert (rle.decode(got, want.shape) == want).all()


# ---------------------------------------------------------------- object labels


def _three_objects(height: int = 120, width: int = 160) -> list[np.ndarray]:
    yy, xx = np.mgrid[:height, :width]
    return [
        (yy - 40) ** 2 + (xx - 40) ** 2 < 25**2,
        (yy > 70) & (xx > 20) & (xx < 80),
        (yy - 60) ** 2 + (xx - 125) ** 2 < 30**2,
    ]


def test_label_objects_draws_each_colour_and_a_readable_label():
    masks = _three_objects()
    out = label_objects(_flat(120, 160), masks, [1, 2, 3])
    for i, mask in enumerate(masks):
        contour = mask_contour(mask, 2)
        assert _is(out, OBJECT_PALETTE[i])[contour].mean() > 0.5  # labels may cover a little of it
        x, y = label_anchor(mask)
        near = out[max(0, y - 10) : y + 10, max(0, x - 10) : x + 10]
        # Light (anti-aliased white) text on a black box.
        assert (near.min(axis=-1) > 200).any() and _is(near, (0, 0, 0)).any()

    one = label_objects(_flat(120, 160), masks, ["7", "8", "9"], highlight=1)
    assert _is(one, OBJECT_PALETTE[1]).any()
    assert not _is(one, OBJECT_PALETTE[0]).any() and not _is(one, OBJECT_PALETTE[2]).any()
    with pytest.raises(ValueError, match="labels"):
        label_objects(_flat(120, 160), masks, [1, 2])


def test_label_anchor_stays_on_a_ring_and_skips_empty_masks():
    yy, xx = np.mgrid[:60, :60]
    ring = ((yy - 30) ** 2 + (xx - 30) ** 2 < 20**2) & ((yy - 30) ** 2 + (xx - 30) ** 2 > 12**2)
    x, y = label_anchor(ring)
    assert ring[y, x]
    assert label_anchor(np.zeros((5, 5), bool)) is None
    out = label_objects(_flat(60, 60), [np.zeros((60, 60), bool)], [1])
    assert (out == GREY).all()


def test_viz_imports_no_app_or_model_code():
    """House rule: viz imports no gradio, no model or training code; only reviosa.rle / reviosa.tokens."""
    import ast

    for module in (overlay, attention, video, annotate):
        tree = ast.parse(Path(module.__file__).read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        for name in names:
            root = name.split(".")[0]
            assert root not in ("gradio", "torch", "train", "transformers", "sam2"), (module.__name__, name)
            assert not name.startswith("reviosa") or name in ("reviosa.rle", "reviosa.tokens"), name
            assert name != "matplotlib.pyplot", module.__name__


@pytest.mark.parametrize(("height", "width"), [(384, 384), (272, 640)])
def test_legend_is_sized_for_the_frame_as_seen(height, width):
    """A 128 px clip is shown 3x (384 px) in the studio; 640x272 is a wide real clip (issue 17)."""
    from viz.overlay import draw_legend, legend_font_size

    frame = np.full((height, width, 3), 120, np.uint8)
    out = draw_legend(frame, ("actor", "target"))
    rows = np.flatnonzero((out != 120).any(axis=(1, 2)))
    assert 11 <= legend_font_size(height, width) <= 16
    assert rows[-1] - rows[0] <= 0.2 * height  # not a large share of the frame
    white = (out > 200).all(axis=-1)  # the text
    text_rows = np.flatnonzero(white.any(axis=1))
    assert text_rows[-1] - text_rows[0] >= 20  # two lines of text at least ~10 px each
    assert (draw_legend(frame, ()) == frame).all()
