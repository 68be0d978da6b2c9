"""Shared fixtures: tiny random models, forced answers, encoded test videos."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

TINY_CORPUS = ["red circle pushing the blue square", "the object moving in circles", "person walking a dog"]


def force(model, answers: list[str]):
    from reviosa.generation import force_answers

    return force_answers(model, answers)


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


def teach_answer(model, answer: str, steps: int = 40, frames: int = 2) -> None:
    """Fit the tiny model's language side until greedy decoding produces ``answer`` for any prompt.

    Teacher forcing on random frames and a few expressions: the real generation path (no forced
    logits) then emits the role tokens, which is what the CLI and app tests need.
    """
    proc = model.processor
    answer_ids = proc.answer_ids(answer)
    opt = torch.optim.Adam(model.mllm.parameters(), lr=1e-2)
    rng = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        expression = TINY_CORPUS[step % len(TINY_CORPUS)]
        prompt = proc.prompt_ids(expression, frames)
        ids = torch.tensor([prompt + answer_ids])
        pixels = torch.randn(
            frames, 3, model.config.vision.image_size, model.config.vision.image_size, generator=rng
        )
        hidden = model.hidden_states(model.embed(ids, pixels), torch.ones_like(ids))
        logits = model.mllm.lm_head(hidden[0, len(prompt) - 1 : -1])
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(answer_ids))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="session")
def answering_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved tiny model that answers "Sure, [SEG_ACT] and [SEG_TAR]." (both roles)."""
    from reviosa.config import tiny_config
    from reviosa.hub import save_pretrained
    from reviosa.modeling import ReviosaModel

    torch.manual_seed(1)
    model = ReviosaModel(tiny_config(), tiny_tokenizer)
    teach_answer(model, "Sure, [SEG_ACT] and [SEG_TAR].")
    return save_pretrained(model, tmp_path_factory.mktemp("answering") / "model")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model):
    from reviosa.hub import save_pretrained

    return save_pretrained(tiny_model, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def clip_mp4(tmp_path):
    """A real H.264 mp4: 12 frames, 48x64, a square moving right."""
    frames = np.zeros((12, 48, 64, 3), dtype=np.uint8)
    for t in range(12):
        frames[t, 16:32, 4 + 3 * t : 20 + 3 * t] = (230, 40, 40)
    path = tmp_path / "clip.mp4"
    encode_mp4(path, frames)
    return path
