"""The built-in model shipped in reviosa/builtin: loads strictly, answers in the right form.

Its segmentation quality is measured by `predict --dataset` + `evaluate` (docs/training.md, "Where
the stages stand"; scores in reviosa/builtin/eval/), not here.
"""

from __future__ import annotations

import numpy as np
import pytest

from reviosa.hub import from_pretrained
from reviosa.video import VideoFile

EXAMPLES = "examples"


@pytest.fixture(scope="module")
def builtin():
    return from_pretrained("builtin")


def test_builtin_loads_and_tracks_through_sams_memory(builtin):
    assert builtin.config.name == "reviosa-builtin"
    # Per frame, the same weights score 1.6-3.2 J&F lower on every figure of every test split
    # (docs/training.md, "Twentieth session")
    assert builtin.config.sam.propagation == "memory"
    # its SAM2 was trained on example prompts, never on mask inputs (reviosa.correction)
    assert builtin.config.sam.click_prompt == "example"
    # stage 4's pick on stage 3 (checkpoints/stage4/heads)
    assert builtin.config.attention_supervision.layer == 2


def test_builtin_answers_with_one_or_two_role_tokens(builtin):
    video = VideoFile(f"{EXAMPLES}/synth_push.mp4")
    interaction, single = builtin.segment(
        video, ["white circle pushing the big red cross", "the white circle"], capture_attention=True
    )
    assert interaction.answer == "Sure, [SEG_ACT] and [SEG_TAR]." and interaction.target is not None
    assert single.answer == "Sure, [SEG_ACT]." and single.target is None
    assert np.asarray(interaction.actor).any() and np.asarray(interaction.target).any()
    cfg = builtin.config
    assert interaction.attention.rows.shape[2:4] == (cfg.text.num_hidden_layers, cfg.text.num_attention_heads)
