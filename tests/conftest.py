"""Shared fixtures: tiny random models, forced answers, encoded test videos."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

torch.set_num_threads(1)

TINY_CORPUS = ["red circle pushing the blue square", "the object moving in circles", "person walking a dog"]


class ForceAnswer(LogitsProcessor):
    """Makes greedy generation emit exactly ``ids`` (then anything), per batch row."""

    def __init__(self, rows: list[list[int]], prompt_len: int):
        self.rows = rows
        self.prompt_len = prompt_len

    def __call__(self, input_ids, scores):
        # With inputs_embeds, generate() passes only the generated ids so far.
        step = (
            input_ids.shape[1]
            if input_ids.shape[1] < self.prompt_len
            else input_ids.shape[1] - self.prompt_len
        )
        forced = torch.full_like(scores, -1e9)
        for b, row in enumerate(self.rows):
            if step < len(row):
                forced[b, row[step]] = 0.0
            else:
                forced[b] = scores[b]
        return forced


def force(model, answers: list[str]) -> LogitsProcessorList:
    rows = [model.processor.answer_ids(a) for a in answers]
    return LogitsProcessorList([ForceAnswer(rows, prompt_len=10**9)])


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from reviosa.tokenizer import build_tokenizer

    return build_tokenizer(TINY_CORPUS, vocab_size=320)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    from reviosa.config import tiny_config
    from reviosa.modeling import ReviosaModel

    torch.manual_seed(0)
    return ReviosaModel(tiny_config(), tiny_tokenizer).eval()


@pytest.fixture
def random_frames():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(9, 40, 56, 3), dtype=np.uint8)


def encode_mp4(path, frames: np.ndarray, fps: int = 10) -> None:
    """Encode uint8 (T, H, W, 3) frames (even H, W) as H.264 with PyAV."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
