"""reviosa.correction: clicks correct a track on one frame, and the frames after it are re-segmented.

Tiny random models (SAM2 memory propagation with clicks as points or as an example prompt, and
per_frame) for the contract; the built-in model (trained) for what the re-decoding does to a real
mask.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reviosa.correction import Click, CorrectionConfig, click_disk, correct_tracks
from reviosa.video import ArrayVideo, MaskTrack

T, H, W = 8, 48, 64


@pytest.fixture(scope="module", params=["memory", "memory-example", "per_frame"])
def model(request, tiny_tokenizer):
    from reviosa.config import tiny_config
    from reviosa.modeling import ReviosaModel

    config = tiny_config()
    config.sam.propagation = request.param.split("-")[0]
    config.sam.click_prompt = "example" if request.param.endswith("example") else "points"
    torch.manual_seed(0)
    return ReviosaModel(config, tiny_tokenizer).eval()


@pytest.fixture(scope="module")
def video():
    return ArrayVideo(np.random.default_rng(0).integers(0, 255, (T, H, W, 3), dtype=np.uint8))


def _square_track() -> MaskTrack:
    masks = np.zeros((T, H, W), dtype=bool)
    masks[:, 10:30, 10:40] = True
    return MaskTrack.from_array(masks)


def _equal(a: MaskTrack, b: MaskTrack, frames) -> bool:
    return all(np.array_equal(a[t], b[t]) for t in frames)


def test_negative_click_removes_pixels_and_leaves_earlier_frames(model, video):
    actor = _square_track()
    before = actor.numpy()
    out = correct_tracks(model, video, {"actor": actor, "target": None}, [Click(3, "actor", 20, 20, False)])
    fixed = out["actor"]
    assert not fixed[3][20, 20]
    assert _equal(fixed, actor, range(3))  # frames before the click untouched
    assert np.array_equal(actor.numpy(), before)  # the input track is not modified
    assert out["target"] is None  # a role without clicks stays as it was


def test_positive_click_adds_a_region_containing_it(model, video):
    actor = _square_track()
    out = correct_tracks(model, video, {"actor": actor, "target": None}, [Click(5, "target", 50, 40, True)])
    target = out["target"]  # the model emitted no target: the click creates one
    assert target.shape == (T, H, W)
    assert target[5][40, 50] and target.areas()[5] >= 5
    assert target.areas()[:5].sum() == 0
    assert _equal(out["actor"], actor, range(T))  # the actor had no clicks


def test_clicking_a_small_object_away_empties_its_frame(model, video):
    """A negative click whose disk covers the whole mask leaves nothing to decode from: the frame
    is empty (the example-prompt paths decode no prompt then; the memory stores an absent object)."""
    if model.config.sam.propagation == "memory" and model.config.sam.click_prompt == "points":
        pytest.skip("clicks as points: SAM2 decodes the frame from the click itself")
    masks = np.zeros((T, H, W), dtype=bool)
    masks[:, 20:22, 30:32] = True
    fixed = correct_tracks(model, video, {"actor": masks, "target": None}, [Click(4, "actor", 30, 20, False)])
    assert not fixed["actor"][4].any()
    assert _equal(fixed["actor"], MaskTrack.from_array(masks), range(4))


def test_same_clicks_same_result_so_undo_is_a_rerun(model, video):
    tracks = {"actor": _square_track(), "target": None}
    first = [Click(2, "actor", 15, 15, False)]
    both = [*first, Click(6, "actor", 60, 5, True)]
    a = correct_tracks(model, video, tracks, first)["actor"]
    b = correct_tracks(model, video, tracks, first)["actor"]
    c = correct_tracks(model, video, tracks, both)["actor"]
    assert _equal(a, b, range(T))
    assert _equal(a, c, range(6))  # the second click changes nothing before its frame
    assert c[6][5, 60] and not c[2][15, 15]


def test_memory_propagation_carries_the_correction(tiny_tokenizer, video):
    """With SAM2's memory, the corrected frame conditions the frames after it: two different
    corrections of frame 2 give different later frames, and neither keeps the old track there."""
    from reviosa.config import tiny_config
    from reviosa.modeling import ReviosaModel

    torch.manual_seed(0)
    model = ReviosaModel(tiny_config(), tiny_tokenizer).eval()
    assert model.config.sam.propagation == "memory"
    tracks = {"actor": _square_track(), "target": None}
    left = correct_tracks(model, video, tracks, [Click(2, "actor", 5, 40, True)])["actor"]
    right = correct_tracks(model, video, tracks, [Click(2, "actor", 60, 40, True)])["actor"]
    assert not _equal(left, right, range(3, T))
    assert not _equal(left, tracks["actor"], range(3, T))


@pytest.mark.parametrize(
    "click, words",
    [
        (Click(T, "actor", 1, 1), "frames 0..7"),
        (Click(0, "actor", W, 1), "outside the 64x48 frame"),
        (Click(0, "subject", 1, 1), "role must be one of actor, target"),
    ],
)
def test_bad_clicks_say_what_is_wrong(model, video, click, words):
    with pytest.raises(ValueError, match=words):
        correct_tracks(model, video, {"actor": _square_track(), "target": None}, [click])


def test_track_of_the_wrong_size_is_refused(model, video):
    with pytest.raises(ValueError, match="the actor track is"):
        correct_tracks(model, video, {"actor": np.zeros((T, 8, 8), bool)}, [Click(0, "actor", 1, 1)])


def test_builtin_model_keeps_the_object_and_cuts_the_clicked_part():
    """On a synthetic clip the built-in model's re-decoding (an example prompt, then SAM2's memory)
    keeps the clicked frame's mask apart from the cut disk, and the frames after it keep following
    the same object."""
    from reviosa.hub import BUILTIN_DIR, WEIGHTS_NAME, from_pretrained
    from reviosa.video import VideoFile
    from studio.examples import EXAMPLES_DIR

    if not (BUILTIN_DIR / WEIGHTS_NAME).is_file() or not (EXAMPLES_DIR / "synth_push.mp4").is_file():
        pytest.skip("the built-in model or its example clip is not installed")
    model = from_pretrained("builtin")
    video = VideoFile(EXAMPLES_DIR / "synth_push.mp4", None)
    (pred,) = model.segment(video, ["white circle pushing the big red cross"])
    actor = pred.actor
    t = 5
    ys, xs = np.nonzero(actor[t])
    cy, cx = int(np.median(ys)), int(np.median(xs))
    click = Click(t, "actor", cx, cy, False)
    fixed = correct_tracks(model, video, {"actor": actor, "target": None}, [click])["actor"]
    # The disk is cut and the rest stays: compared outside the disk, whose share of the object
    # depends on the object's size (here about 80 of 510 pixels).
    disk = click_disk(actor.shape[1:], click, CorrectionConfig().click_radius)
    assert not fixed[t][disk].any()
    assert _iou(fixed[t] & ~disk, actor[t] & ~disk) > 0.85
    assert np.mean([_iou(fixed[k], actor[k]) for k in range(t + 1, video.num_frames)]) > 0.7
    assert _equal(fixed, actor, range(t))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))
