"""A small byte-level BPE tokenizer for models trained from scratch (tests, the built-in model).

Real checkpoints bring their own (Qwen2) tokenizer. Byte-level means any text a user types has a
representation, even words the built-in model never saw; it then simply knows little about them.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from reviosa import tokens

# Words every prompt and answer uses; merged first so that they become single tokens.
BASE_CORPUS = [
    "Please segment the object.",
    "Sure, [SEG_ACT].",
    "Sure, [SEG_ACT] and [SEG_TAR].",
    "user assistant system",
]


def build_tokenizer(corpus: Iterable[str] = (), vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus`` (plus the prompt words) with all control tokens.

    Deterministic for a given corpus order. ``vocab_size`` counts the 256 byte symbols, the
    merges and the control tokens.
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(tokens.CONTROL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([*BASE_CORPUS, *corpus], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=tokens.IM_END,
        pad_token=tokens.PAD,
        additional_special_tokens=[t for t in tokens.CONTROL_TOKENS if t not in (tokens.IM_END, tokens.PAD)],
    )
