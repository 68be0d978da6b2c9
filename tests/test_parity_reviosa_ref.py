"""Golden parity with the InterRVOS reference ReVIOSa (cvlab-kaist/InterRVOS 14c261e, ReVIOSa/model/hf).

The fixture (tests/fixtures/parity/reviosa_ref) is a tiny reference ReVIOSa, with both role tokens
([SEG] actor, [SEG_OBJ] target), written by the reference's own ``state_dict()`` and config class,
and what its ``predict_forward`` computed on an 8-frame clip (answer forced to "Sure, [SEG] and
[SEG_OBJ]."; each role tracked on its own, as the reference does). Regenerate it with
scripts/parity/record_sa2va.py --reference interrvos (see its docstring).
"""

from __future__ import annotations

import pytest
from parity_reference import GoldenSet, check_mllm, check_ours_differs, check_sam, check_token_ids, run_sam

SET = "reviosa_ref"


@pytest.fixture(scope="module")
def golden() -> GoldenSet:
    return GoldenSet.load(SET)


@pytest.fixture(scope="module")
def model(golden):
    return golden.model()


@pytest.fixture(scope="module")
def sam_run(golden, model):
    return run_sam(golden, model)


def test_parity_reviosa_ref_detected_with_its_protocol(model):
    assert model.config.protocol == "interrvos"
    proc = model.config.processor
    assert proc.expression_lowercase and proc.expression_remove == "."


def test_parity_reviosa_ref_token_ids(golden, model):
    # prompt 1 ("The Person walking a Dog.") only matches once lowercased and stripped of '.'
    check_token_ids(golden, model)


def test_parity_reviosa_ref_mllm(golden, model):
    errors = check_mllm(golden, model)
    assert "role states" in errors


def test_parity_reviosa_ref_sam2_masks_both_roles(golden, sam_run):
    pred, calls = sam_run
    assert pred.answer == "Sure, [SEG_ACT] and [SEG_TAR]." and pred.target is not None
    check_sam(golden, pred, calls)


def test_parity_reviosa_ref_our_protocol_differs(golden, model):
    check_ours_differs(golden, model)
