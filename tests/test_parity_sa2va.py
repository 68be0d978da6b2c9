"""Golden parity with Sa2VA's HF model code (magic-research/Sa2VA d01bf3f, projects/llava_sam2/hf/models).

The fixture (tests/fixtures/parity/sa2va) is a tiny Sa2VA written by the reference's own
``state_dict()`` and config class, and what its ``predict_forward`` computed on an 8-frame clip
(answer forced to "Sure, [SEG]."). Regenerate it with scripts/parity/record_sa2va.py (see its
docstring); docs/checkpoints.md "Parity with the references" lists the measured errors.
"""

from __future__ import annotations

import pytest
from parity_reference import GoldenSet, check_mllm, check_ours_differs, check_sam, check_token_ids, run_sam

SET = "sa2va"


@pytest.fixture(scope="module")
def golden() -> GoldenSet:
    return GoldenSet.load(SET)


@pytest.fixture(scope="module")
def model(golden):
    return golden.model()


@pytest.fixture(scope="module")
def sam_run(golden, model):
    return run_sam(golden, model)


def test_parity_sa2va_detected_with_its_protocol(model):
    assert model.config.name.startswith("sa2va")
    assert model.config.protocol == "sa2va"
    assert model.config.processor.keyframe_strategy == "first" and model.config.processor.num_keyframes == 5


def test_parity_sa2va_token_ids(golden, model):
    check_token_ids(golden, model)


def test_parity_sa2va_mllm(golden, model):
    check_mllm(golden, model)


def test_parity_sa2va_sam2_masks(golden, sam_run):
    pred, calls = sam_run
    assert pred.answer == "Sure, [SEG_ACT]." and pred.target is None
    check_sam(golden, pred, calls)


def test_parity_sa2va_our_protocol_differs(golden, model):
    check_ours_differs(golden, model)
