"""Head scores (reviosa.head_scores) on hand-built rows and masks whose answers are known, against a
brute-force pixel computation, on a real tiny-model run; and their heatmaps (viz.head_scores)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import force

from reviosa.head_scores import (
    COLUMNS,
    MEAN,
    HeadScores,
    average_head_scores,
    compute_head_scores,
    coverage_grid,
    head_scores_from_prediction,
    nearest_grid,
)

BOTH = "Sure, [SEG_ACT] and [SEG_TAR]."


def _rows(roles=2, layers=2, heads=3, keyframes=2, grid=4) -> np.ndarray:
    return np.zeros((roles, layers, heads, keyframes, grid, grid))


def _brute_share(att: np.ndarray, mask: np.ndarray) -> float:
    """Share of a (g, g) map's attention on a (H, W) mask, each token's attention spread evenly over its
    cell's pixels: pixels are split g x g times so that every cell is a whole block of sub-pixels."""
    g = att.shape[0]
    fine = np.repeat(np.repeat(mask, g, axis=0), g, axis=1)  # (H g, W g): cell = (H, W) sub-pixels
    h, w = mask.shape
    per_pixel = np.kron(att, np.ones((h, w))) / (h * w)  # (g H, g W): the cell's attention spread out
    return float((per_pixel * fine).sum() / att.sum())


def test_all_attention_on_one_actor_cell_gives_actor_share_one():
    rows = _rows()
    rows[0, 1, 2, 0, 1, 2] = 0.3  # actor role, layer 1, head 2, keyframe 0: all on cell (1, 2)
    rows[0, :, :, 1] = 0.01  # everything else spread over keyframe 1
    actor = np.zeros((2, 16, 16), bool)
    actor[:, 4:8, 8:12] = True  # exactly cell (1, 2) of the 4 x 4 grid
    target = np.zeros((2, 16, 16), bool)
    target[:, 12:, :4] = True  # cell (3, 0)
    s = compute_head_scores(rows, actor, target, roles_present=(True, False))
    assert s.roles == ("actor",)
    assert s.actor[0, 1, 2, 0] == 1.0 and s.target[0, 1, 2, 0] == 0.0 and s.elsewhere[0, 1, 2, 0] == 0.0
    # Shares are of the vision attention; "vision" is the raw row's mass on that keyframe's tokens.
    assert s.vision[0, 1, 2, 0] == pytest.approx(0.3)
    # Keyframe 1: uniform over 16 cells, one actor cell and one target cell.
    assert s.actor[0, 0, 0, 1] == pytest.approx(1 / 16) and s.target[0, 0, 0, 1] == pytest.approx(1 / 16)
    assert s.elsewhere[0, 0, 0, 1] == pytest.approx(14 / 16)
    # A head with no attention on keyframe 0 has no share there (NaN), and is not invented.
    assert np.isnan(s.actor[0, 0, 0, 0])


def test_mean_pools_the_keyframes_by_their_vision_attention():
    rows = _rows(roles=1, layers=1, heads=1, keyframes=2)
    rows[0, 0, 0, 0, 0, 0] = 0.2  # keyframe 0: all inside the actor
    rows[0, 0, 0, 1, 3, 3] = 0.6  # keyframe 1: all outside
    actor = np.zeros((2, 8, 8), bool)
    actor[:, :2, :2] = True
    s = compute_head_scores(rows, actor)
    assert s.table("actor", "actor", 0)[0, 0] == 1.0 and s.table("actor", "actor", 1)[0, 0] == 0.0
    assert s.table("actor", "actor", MEAN)[0, 0] == pytest.approx(0.2 / 0.8)
    assert s.table("actor", "vision", MEAN)[0, 0] == pytest.approx(0.8)
    assert np.isnan(s.table("actor", "target")).all()  # no target mask: no target share


def test_coverage_counts_part_covered_cells_and_nearest_does_not():
    rows = _rows(roles=1, layers=1, heads=1, keyframes=1)
    rows[0, 0, 0, 0, 0, 0] = 1.0  # all on cell (0, 0), pixels [0, 4) x [0, 4)
    actor = np.zeros((1, 16, 16), bool)
    actor[0, :4, 2:4] = True  # the right half of that cell
    assert compute_head_scores(rows, actor).actor[0, 0, 0, 0] == pytest.approx(0.5)
    # Nearest samples pixel (0, 0) of the cell, outside the mask: the attention is all "elsewhere".
    nearest = compute_head_scores(rows, actor, resize="nearest")
    assert nearest.actor[0, 0, 0, 0] == 0.0 and nearest.elsewhere[0, 0, 0, 0] == 1.0
    with pytest.raises(ValueError, match="resize"):
        compute_head_scores(rows, actor, resize="bilinear")


@pytest.mark.parametrize("size", [(16, 16), (37, 53), (5, 7)])
def test_coverage_equals_brute_force_on_odd_sizes(size):
    rng = np.random.default_rng(1)
    g = 4
    masks = rng.random((3, *size)) < 0.4
    cover = coverage_grid(masks, g)
    assert cover.shape == (3, g, g) and cover.min() >= 0 and cover.max() <= 1 + 1e-12
    att = rng.random((g, g))
    for k in range(3):
        assert (att * cover[k]).sum() / att.sum() == pytest.approx(_brute_share(att, masks[k]), abs=1e-12)
    # Whole-pixel cells: coverage is plain average pooling.
    if size == (16, 16):
        assert np.allclose(cover, masks.reshape(3, g, 4, g, 4).mean(axis=(2, 4)))


def test_nearest_grid_is_the_aml_target_resize():
    masks = np.random.default_rng(2).random((2, 37, 53)) < 0.5
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(masks).float()[:, None], size=(8, 8), mode="nearest"
    )
    assert np.array_equal(nearest_grid(masks, 8), expected[:, 0].numpy())


def test_overlapping_masks_elsewhere_is_outside_their_union():
    rows = _rows(roles=1, layers=1, heads=1, keyframes=1)
    rows[0, 0, 0, 0] = np.random.default_rng(3).random((4, 4))
    actor = np.zeros((1, 8, 8), bool)
    actor[0, :4] = True
    target = np.zeros((1, 8, 8), bool)
    target[0, 2:6] = True
    s = compute_head_scores(rows, actor, target)
    outside = _brute_share(rows[0, 0, 0, 0], ~(actor[0] | target[0]))
    assert s.elsewhere[0, 0, 0, 0] == pytest.approx(outside)
    assert s.actor[0, 0, 0, 0] + s.target[0, 0, 0, 0] + s.elsewhere[0, 0, 0, 0] > 1.0  # overlap counted twice


def test_absent_roles_and_bad_masks():
    rows = _rows()
    rows[1] = 0.05  # only the target role has attention (an answer without [SEG_ACT] never has this)
    actor = np.zeros((2, 8, 8), bool)
    assert compute_head_scores(rows, actor).roles == ("target",)  # inferred from the mass
    assert compute_head_scores(rows, actor, roles_present=(False, False)).roles == ()
    with pytest.raises(ValueError, match="keyframes"):
        compute_head_scores(rows, np.zeros((3, 8, 8), bool))
    with pytest.raises(ValueError, match="differ"):
        compute_head_scores(rows, actor, np.zeros((2, 8, 9), bool))
    with pytest.raises(ValueError, match="no actor scores"):
        compute_head_scores(rows, actor).table("actor", "actor")


def _example_scores() -> HeadScores:
    rng = np.random.default_rng(4)
    rows = rng.random((2, 2, 3, 2, 4, 4)) * 0.01
    actor = rng.random((2, 16, 16)) < 0.3
    return compute_head_scores(rows, actor, None, layers=(1, 2), heads=(0, 3, 5), keyframes=(0, 9))


def test_csv_and_json_have_the_stable_columns_and_round_trip():
    s = _example_scores()
    table = list(csv.DictReader(io.StringIO(s.to_csv())))
    assert tuple(table[0]) == COLUMNS
    assert len(table) == 2 * 2 * 3 * 3  # roles x (2 keyframes + mean) x layers x heads
    assert {r["keyframe"] for r in table} == {"0", "1", MEAN}
    mean_row = next(r for r in table if r["role"] == "actor" and r["keyframe"] == MEAN and r["layer"] == "2")
    assert mean_row["frame"] == "" and mean_row["target"] == ""  # no target mask: empty cell
    assert float(mean_row["actor"]) == pytest.approx(s.table("actor", "actor")[1, 0], abs=1e-6)
    assert {r["frame"] for r in table if r["keyframe"] == "1"} == {"9"}
    text = s.to_json()
    data = json.loads(text)  # strict JSON: NaN is written as null
    assert data["columns"] == list(COLUMNS) and data["rows"][0]["target"] is None
    back = HeadScores.from_json(text)
    for share in ("actor", "target", "elsewhere", "vision"):
        assert np.allclose(getattr(back, share), getattr(s, share), equal_nan=True)
    assert (back.roles, back.layers, back.heads, back.keyframes) == (s.roles, s.layers, s.heads, s.keyframes)


def test_average_over_clips_weights_clips_equally_per_role():
    a = _rows(roles=2, layers=1, heads=1, keyframes=1)
    a[:, 0, 0, 0, 0, 0] = 0.5  # both roles: all on cell (0, 0)
    b = _rows(roles=2, layers=1, heads=1, keyframes=1)
    b[0, 0, 0, 0, 3, 3] = 0.9  # actor only: all on cell (3, 3)
    actor = np.zeros((1, 8, 8), bool)
    actor[0, :2, :2] = True  # cell (0, 0)
    target = np.zeros((1, 8, 8), bool)
    target[0, 6:, 6:] = True  # cell (3, 3)
    clip_a = compute_head_scores(a, actor, target)
    clip_b = compute_head_scores(b, actor, target)
    mean = average_head_scores([clip_a, clip_b])
    assert mean.roles == ("actor", "target") and mean.clips == (2, 1) and mean.keyframes == ()
    assert mean.table("actor", "actor")[0, 0] == pytest.approx(0.5)  # 1.0 and 0.0
    assert mean.table("actor", "target")[0, 0] == pytest.approx(0.5)
    assert mean.table("target", "actor")[0, 0] == pytest.approx(1.0)  # clip a only
    # An average of averages keeps each clip's weight.
    again = average_head_scores([mean, clip_a])
    assert again.table("actor", "actor")[0, 0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="share"):
        average_head_scores([clip_a, compute_head_scores(a, actor, target, resize="nearest")])


def test_real_tiny_model_run(tiny_model, clip_mp4):
    from reviosa.video import VideoFile

    video = VideoFile(clip_mp4)
    (pred,) = tiny_model.segment(
        video, ["the red square"], capture_attention=True, logits_processor=force(tiny_model, [BOTH])
    )
    s = head_scores_from_prediction(pred)
    att = pred.attention
    nl, nh = len(att.layers), len(att.heads)
    assert s.roles == ("actor", "target") and s.masks == "predicted"
    assert s.actor.shape == (2, nl, nh, len(pred.keyframes) + 1) and s.keyframes == tuple(pred.keyframes)
    # "vision" of the mean row is the captured vision mass; per keyframe, it sums to it.
    mass = att.vision_mass[0].numpy()
    assert np.allclose(s.vision[..., -1], mass, atol=1e-5)
    assert np.allclose(s.vision[..., :-1].sum(-1), mass, atol=1e-5)
    # Every share against the brute force with the predicted masks at the keyframes.
    rows = att.rows[0].numpy()
    for k, t in enumerate(pred.keyframes):
        for r, role in enumerate(("actor", "target")):
            for layer in range(nl):
                for head in range(nh):
                    att_map = rows[r, layer, head, k]
                    for share, track in (("actor", pred.actor), ("target", pred.target)):
                        assert s.table(role, share, k)[layer, head] == pytest.approx(
                            _brute_share(att_map, track[t]), abs=1e-6
                        )
    # Ground truth given: those masks are used at the keyframes, and the scores say so.
    gt_actor = np.zeros((len(pred.keyframes), *video.size), bool)
    gt_actor[:, :, : video.size[1] // 2] = True  # the left half of every keyframe
    gt = head_scores_from_prediction(pred, gt_actor, None)
    assert gt.masks == "ground truth" and np.isnan(gt.target).all()
    left = rows[..., : rows.shape[-1] // 2].sum(axis=(-2, -1)) / rows.sum(axis=(-2, -1))  # (R, NL, NH, K)
    assert np.allclose(gt.actor[..., :-1], left, atol=1e-6)


# --- heatmaps -------------------------------------------------------------------------------------------


def test_heatmap_draws_each_table_on_the_share_scale():
    from viz.attention import figure_to_array
    from viz.head_scores import plot_head_scores, plot_head_table

    s = _example_scores()
    tables = {name: s.table("actor", name) for name in ("actor", "target", "elsewhere")}
    fig = plot_head_scores(tables, s.layers, s.heads, title="actor", supervised=[(2, 3)])
    panels = [ax for ax in fig.axes if ax.images and ax.get_title() in tables]
    assert [ax.get_title() for ax in panels] == ["actor", "target", "elsewhere"]
    for ax in panels:
        shown = ax.images[0].get_array()
        assert np.allclose(shown.filled(np.nan), tables[ax.get_title()], equal_nan=True)
        assert ax.images[0].get_clim() == (0.0, 1.0)
        assert [t.get_text() for t in ax.get_yticklabels()] == ["L1", "L2"]
    assert [t.get_text() for t in panels[1].texts][:1] == ["n/a"]  # no target mask
    assert len(panels[0].patches) == 1  # the supervised (2, 3) cell is framed
    image = figure_to_array(plot_head_table(tables["actor"], s.layers, s.heads, "actor"))
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    with pytest.raises(ValueError, match="layers"):
        plot_head_table(np.zeros((3, 3)), s.layers, s.heads)


def test_reviosa_imports_no_plotting():
    import subprocess
    import sys

    code = (
        "import sys, reviosa.head_scores, reviosa.modeling; "
        "bad = [m for m in ('matplotlib', 'gradio', 'viz') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the studio: callbacks, then a real server driven with gradio_client -----------------------------------


def _push_clip(path):
    """8 frames, 64x64: a red disc pushing a blue square to the right."""
    from conftest import encode_mp4

    yy, xx = np.mgrid[:64, :64]
    frames = np.full((8, 64, 64, 3), 90, dtype=np.uint8)
    for t in range(8):
        frames[t][(yy - 32) ** 2 + (xx - 12 - 3 * t) ** 2 < 64] = (220, 40, 40)
        frames[t][(abs(yy - 32) < 7) & (abs(xx - 28 - 3 * t) < 7)] = (40, 70, 220)
    encode_mp4(path, frames)
    return path


@pytest.fixture(scope="module")
def studio_app(answering_model_dir):
    from app import Studio
    from studio.limits import Limits
    from studio.service import ModelRegistry

    return Studio(ModelRegistry(str(answering_model_dir)), Limits(), forced_answer=BOTH)


@pytest.fixture(scope="module")
def push_clip(tmp_path_factory):
    return _push_clip(tmp_path_factory.mktemp("clips") / "push.mp4")


def _masks_from_zip(result, role):
    """The run's masks of ``role`` on its keyframes, from the masks zip the user downloads."""
    import zipfile

    from PIL import Image

    with zipfile.ZipFile(result.masks_zip) as z:
        return np.stack(
            [np.asarray(Image.open(z.open(f"{role}/{t:05d}.png"))) > 0 for t in result.attention.keyframes]
        )


def test_studio_panel_shows_the_runs_scores(studio_app, push_clip):
    from studio.head_scores import TABLE_COLUMNS, head_scores_panel, keyframe_choices

    result = studio_app.segment(None, str(push_clip), "red disc pushing the blue square", "", 0,
                                "model default", 1, 300, 640, progress=lambda *a, **k: None)[0]  # fmt: skip
    view = result.attention
    expected = compute_head_scores(
        view.rows, _masks_from_zip(result, "actor"), _masks_from_zip(result, "target"),
        layers=view.layers, heads=view.heads, keyframes=view.keyframes,
    )  # fmt: skip
    choices = keyframe_choices(result)
    assert choices[0] == MEAN and len(choices) == len(view.keyframes) + 1
    for role in ("actor", "target"):
        for pick, k in ((MEAN, MEAN), (choices[2], 1)):
            panel = head_scores_panel(result, role, pick)
            table = panel.table
            assert list(table.columns) == list(TABLE_COLUMNS) and len(table) == len(view.layers) * len(
                view.heads
            )
            for share in ("actor", "target", "elsewhere", "vision"):
                want = expected.table(role, share, k).ravel()  # layers outer, heads inner, as the table
                assert np.allclose(table[share].to_numpy(float), want, atol=1e-3)
            aml = table[table["AML"] == "yes"]
            assert sorted(zip(aml["layer"], aml["head"], strict=True)) == sorted(view.supervised)
            assert panel.heatmap.ndim == 3 and role in panel.note
    files = sorted(panel.files)
    assert [f.rsplit("/", 1)[1] for f in files] == ["head_scores.csv", "head_scores.json"]
    saved = HeadScores.from_json(Path(files[1]).read_text())
    assert np.allclose(saved.actor, expected.actor, atol=1e-6, equal_nan=True)
    with pytest.raises(ValueError, match="keyframe"):
        head_scores_panel(result, "actor", "9 (frame 99)")
    assert "Run a clip first" in head_scores_panel(None, "actor", MEAN).note


@pytest.fixture(scope="module")
def server(studio_app):
    import socket

    from app import build_demo

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_demo(studio_app)
    _app, url, _share = demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    yield url
    demo.close()


def test_client_gets_head_scores_and_downloads(server, push_clip):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server, verbose=False)
    client.predict(handle_file(str(push_clip)), "red disc pushing the blue square", "", 0, "model default",
                   1, 300, 640, api_name="/segment")  # fmt: skip
    table, heatmap, files, note = client.predict("target", MEAN, api_name="/head_scores")
    assert table["headers"] == ["layer", "head", "actor", "target", "elsewhere", "vision", "AML"]
    values = np.array([row[2:6] for row in table["data"]], dtype=float)
    assert len(values) > 0 and values.min() >= 0 and values.max() <= 1
    assert Path(heatmap).is_file() and "target" in note
    csv_file = next(f for f in files if f.endswith(".csv"))
    rows = [
        r
        for r in csv.DictReader(io.StringIO(Path(csv_file).read_text()))
        if r["role"] == "target" and r["keyframe"] == MEAN
    ]
    assert [round(float(r["actor"]), 3) for r in rows] == [row[2] for row in table["data"]]
    # A keyframe of this run; then a pick this run does not have is an error, and the next call works.
    one = client.predict("actor", "1 (frame 2)", api_name="/head_scores")[0]
    assert len(one["data"]) == len(table["data"])
    with pytest.raises(AppError, match="out of range"):
        client.predict("actor", "7 (frame 9)", api_name="/head_scores")
    assert client.predict("actor", MEAN, api_name="/head_scores")[0]["data"]
