"""Prompt building, tokenisation and frame preprocessing: the only place prompts are made.

Prompt layout (InternVL2.5 chat template, one image block per keyframe)::

    <|im_start|>system\\n{system}<|im_end|>\\n            (only when a system prompt is set)
    <|im_start|>user\\n<img><IMG_CONTEXT>*n</img>\\n ... Please segment {expression}.<|im_end|>\\n
    <|im_start|>assistant\\n

User text is tokenised with special-token matching off, so text a user types ("[SEG_TAR]",
"<IMG_CONTEXT>", "<|im_end|>") stays text and can never become a control token. How it is
tokenised is the protocol's ``prompt_encoding``: "whole" (the newline after the last image block,
instruction and expression in one encode, as the references do) or "pieces" (instruction text and
expression separately, as the built-in model was trained).
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import PreTrainedTokenizerBase

from reviosa import tokens
from reviosa.config import ProcessorConfig, ReviosaConfig

logger = logging.getLogger(__name__)


@dataclass
class TokenIds:
    """Ids of the control tokens in one tokenizer."""

    seg_act: int
    seg_tar: int
    img_start: int
    img_end: int
    img_context: int
    im_end: int
    pad: int


@dataclass
class PromptBatch:
    """Tokenised prompts, left-padded for generation.

    input_ids: long (B, L); attention_mask: long (B, L), 0 on padding.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def add_role_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Register [SEG_ACT] / [SEG_TAR] (and any missing control token) once; returns how many were added."""
    missing = [t for t in tokens.CONTROL_TOKENS if t not in tokenizer.get_vocab()]
    if not missing:
        return 0
    return tokenizer.add_special_tokens(
        {"additional_special_tokens": missing}, replace_extra_special_tokens=False
    )


def token_ids(tokenizer: PreTrainedTokenizerBase) -> TokenIds:
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens.CONTROL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"tokenizer lacks control tokens {missing}; call add_role_tokens() first")
    return TokenIds(
        seg_act=vocab[tokens.SEG_ACT],
        seg_tar=vocab[tokens.SEG_TAR],
        img_start=vocab[tokens.IMG_START],
        img_end=vocab[tokens.IMG_END],
        img_context=vocab[tokens.IMG_CONTEXT],
        im_end=vocab[tokens.IM_END],
        pad=vocab[tokens.PAD],
    )


def clean_expression(expression: str, max_chars: int) -> str:
    """Validate a user's expression; returns it with whitespace normalised.

    Raises ValueError with what to change: empty, too long, or made only of control characters.
    """
    if not isinstance(expression, str):
        raise ValueError("the expression must be text")
    # Control characters (NUL, escape codes) carry no meaning for the model and can break logs.
    text = "".join(ch for ch in expression if unicodedata.category(ch)[0] != "C" or ch in "\t\n")
    text = " ".join(text.split())
    if not text:
        raise ValueError("the expression is empty: describe who does what, e.g. 'person walking a dog'")
    if len(text) > max_chars:
        raise ValueError(
            f"the expression has {len(text)} characters; the limit is {max_chars}. Shorten it to one sentence."
        )
    return text


class ReviosaProcessor:
    """Builds model inputs: token ids for the prompt and pixel tensors for the MLLM and SAM2."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: ReviosaConfig):
        self.tokenizer = tokenizer
        self.config = config
        self.ids = token_ids(tokenizer)

    @property
    def cfg(self) -> ProcessorConfig:
        return self.config.processor

    # --- text ------------------------------------------------------------------------------------

    def _encode_control(self, text: str) -> list[int]:
        """Template text, where control tokens are meant."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _encode_user(self, text: str) -> list[int]:
        """User text, where nothing may become a control token."""
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    def prompt_ids(self, expression: str, num_frames: int, tiles: int = 1) -> list[int]:
        """Token ids of the whole prompt up to and including the assistant header.

        tiles: images in each frame's block (a tiled still image: its tiles and thumbnail, all in
        one ``<img>...</img>`` block, as the references build it).
        """
        expression = self.normalise(expression)
        before, after = self.cfg.instruction.split("{expression}")
        ids: list[int] = []
        if self.cfg.system_prompt:
            ids += self._encode_control(f"{tokens.IM_START}system\n")
            ids += self._encode_user(self.cfg.system_prompt)
            ids += self._encode_control(f"{tokens.IM_END}\n")
        ids += self._encode_control(f"{tokens.IM_START}user\n")
        newline = self._encode_control("\n")
        image_block = [self.ids.img_start] + [self.ids.img_context] * (self.config.tokens_per_frame * tiles)
        for i in range(num_frames):
            ids += image_block + [self.ids.img_end]
            if i < num_frames - 1 or self.cfg.prompt_encoding == "pieces":
                ids += newline
        if self.cfg.prompt_encoding == "whole":
            # The references encode the user turn in one piece: the newline after the last image
            # block, the instruction and the expression share one encode, so BPE sees the words
            # with their leading spaces (no lone "Ġ", no unprefixed first word).
            ids += self._encode_user(("\n" if num_frames else "") + before + expression + after)
        else:
            ids += self._encode_user(before) + self._encode_user(expression) + self._encode_user(after)
        ids += self._encode_control(f"{tokens.IM_END}\n{tokens.IM_START}assistant\n")
        return ids

    def normalise(self, expression: str) -> str:
        """The expression as the protocol feeds it: validated, then lowercased and stripped of
        ``expression_remove`` characters when the protocol says so."""
        text = clean_expression(expression, self.cfg.max_expression_chars)
        if self.cfg.expression_remove:
            text = text.translate({ord(c): None for c in self.cfg.expression_remove}).strip()
        if self.cfg.expression_lowercase:
            text = text.lower()
        if not text:
            raise ValueError(
                f"the expression {expression!r} is empty once normalised; describe who does what"
            )
        return text

    def expression_ids(self, expression: str) -> list[int]:
        """Token ids of the expression alone, as ``prompt_ids`` places them."""
        return self._encode_user(self.normalise(expression))

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an answer as the model should produce it, closed by <|im_end|>.

        Role tokens in ``answer`` are meant (training targets such as "Sure, [SEG_ACT].").
        """
        return self._encode_control(answer) + [self.ids.im_end]

    def batch_prompts(self, prompts: list[list[int]]) -> PromptBatch:
        """Left-pad prompts (generation appends on the right)."""
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.ids.pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        return PromptBatch(input_ids, mask)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Answer text with role tokens kept and the closing <|im_end|> / padding dropped."""
        ids = [int(i) for i in ids if int(i) not in (self.ids.im_end, self.ids.pad)]
        return self.tokenizer.decode(ids, skip_special_tokens=False).strip()

    # --- frames ----------------------------------------------------------------------------------

    def mllm_pixels(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (K, H, W, 3) keyframes -> float (K, 3, S, S), S = vision.image_size, normalised."""
        size = self.config.vision.image_size
        if self.cfg.resize == "pil_bicubic":
            x = pil_resize(np.asarray(frames), size).permute(0, 3, 1, 2).float().div_(255.0)
        else:
            x = torch.as_tensor(frames).permute(0, 3, 1, 2).float().div_(255.0)
            # antialias: real frames are usually larger than 448 and are downscaled.
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp_(0.0, 1.0)
        mean = torch.tensor(self.cfg.pixel_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.pixel_std).view(1, 3, 1, 1)
        return (x - mean) / std


def pil_resize(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (K, H, W, 3) -> uint8 (K, size, size, 3) by PIL's bicubic filter, on uint8 as the
    references resize (their PIL ``Image.resize`` default for RGB images)."""
    out = [np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC)) for f in frames]
    return torch.from_numpy(np.stack(out))


def keyframe_indices(num_frames: int, k: int, strategy: str) -> list[int]:
    """Indices of the keyframes; frame 0 is always first so propagation only runs forward.

    uniform: round(linspace(0, T-1, k)), duplicates removed (short clips give fewer keyframes).
    first: 0..k-1.
    """
    if num_frames < 1:
        raise ValueError("the video has no frames")
    k = min(k, num_frames)
    if strategy == "first":
        return list(range(k))
    if strategy == "uniform":
        return sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, k)})
    raise ValueError(f"unknown keyframe strategy {strategy!r}; use 'uniform' or 'first'")
