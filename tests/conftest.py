"""Shared fixtures: tiny random models, forced answers, encoded test videos."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Gradio's file cache is /tmp/gradio, shared by every Gradio process on the machine, with paths named
# by content hash: another test run closing its server deleted this run's cached example clips.
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="gradio-tests-"))

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


def teach_answer(model, answer: str, max_steps: int = 300, frames: int = 2) -> None:
    """Fit the tiny model's language side until greedy decoding produces ``answer`` for any prompt.

    Teacher forcing on a few expressions, checked by real greedy generation every 10 steps: the CLI
    and app tests then see the role tokens come out of the unforced model. The vision projector's
    output is zeroed first so that the answer depends on the text alone and holds for any video
    (the masks still depend on the video, through SAM2).
    """
    proc = model.processor
    answer_ids = proc.answer_ids(answer)
    projector_out = model.mllm.model.multi_modal_projector.linear_2
    with torch.no_grad():
        projector_out.weight.zero_()
        projector_out.bias.zero_()
    opt = torch.optim.Adam(model.language_model.parameters(), lr=3e-3)
    opt.add_param_group({"params": model.mllm.lm_head.parameters()})
    rng = torch.Generator().manual_seed(0)
    size = model.config.vision.image_size
    phrases = _phrases()
    for step in range(max_steps):
        model.train()
        # Many wordings, and random mixes of them, so that the answer holds for any expression.
        picks = torch.randint(len(phrases), (2,), generator=rng).tolist()
        expression = phrases[picks[0]] if step % 2 else f"{phrases[picks[0]]} {phrases[picks[1]]}"
        prompt = proc.prompt_ids(expression, frames)
        ids = torch.tensor([prompt + answer_ids])
        pixels = torch.randn(frames, 3, size, size, generator=rng)
        hidden = model.hidden_states(model.embed(ids, pixels), torch.ones_like(ids))
        logits = model.mllm.lm_head(hidden[0, len(prompt) - 1 : -1])
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(answer_ids))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9 and _answers_everywhere(model, answer_ids[:-1], frames, rng):
            model.eval()
            return
    raise AssertionError(f"the tiny model did not learn to answer {answer!r} in {max_steps} steps")


def _phrases() -> list[str]:
    from reviosa.data.synth import expression_corpus

    return [*TINY_CORPUS, *expression_corpus()]


def _answers_everywhere(model, expected: list[int], frames: int, rng) -> bool:
    model.eval()
    size = model.config.vision.image_size
    for expression in [*TINY_CORPUS, "something it never saw", *_phrases()[::40]]:
        batch = model.processor.batch_prompts([model.processor.prompt_ids(expression, frames)])
        embeds = model.embed(batch.input_ids, torch.randn(frames, 3, size, size, generator=rng))
        if model.generate_answers(embeds, batch.attention_mask)[0] != expected:
            return False
    return True


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
