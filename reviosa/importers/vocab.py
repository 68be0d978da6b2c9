"""Role tokens of imported checkpoints: rename the foreign ones, add what is missing, size the embeddings.

Renaming (Sa2VA's ``[SEG]`` -> ``[SEG_ACT]``, the reference's ``[SEG_OBJ]`` -> ``[SEG_TAR]``) keeps the
token's id, so its trained embedding and lm_head rows carry over untouched and no second token with
the same rows exists. (Adding ``[SEG_ACT]`` and copying ``[SEG]``'s rows instead would leave two tokens
with identical lm_head rows: greedy decoding would tie them and could emit the old name.)

Tokens still missing (``[SEG_ACT]`` / ``[SEG_TAR]`` for a plain InternVL2.5, ``[SEG_TAR]`` for Sa2VA)
are appended; their embedding and lm_head rows start at the mean of the existing rows. The mean keeps
the new input embedding inside the distribution the LLM was trained on, and makes the new token's
logit the average logit, far below the argmax: an untrained Sa2VA baseline thus keeps answering with
one role token (actor only) until training teaches it the target token (Hewitt, "Initializing New
Word Embeddings for Pretrained Language Models", 2021).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from reviosa.hub import CheckpointError
from reviosa.processor import add_role_tokens

logger = logging.getLogger(__name__)

EMBED = "mllm.model.language_model.embed_tokens.weight"
LM_HEAD = "mllm.lm_head.weight"


def rename_tokens(tokenizer: PreTrainedTokenizerBase, renames: dict[str, str]) -> PreTrainedTokenizerBase:
    """A copy of ``tokenizer`` where each token ``old`` is called ``new``, with the same id.

    Works on the saved JSON files (tokenizer.json, tokenizer_config.json, special-token maps): every
    string equal to ``old`` (a value or a key) becomes ``new``, then the tokenizer is read back.
    Raises CheckpointError when ``old`` is absent or ``new`` already exists.
    """
    vocab = tokenizer.get_vocab()
    missing = [old for old in renames if old not in vocab]
    taken = [new for new in renames.values() if new in vocab]
    if missing or taken:
        raise CheckpointError(f"cannot rename tokens {renames}: absent {missing}, already present {taken}")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for path in Path(tmp).glob("*.json"):
            data = json.loads(path.read_text())
            path.write_text(json.dumps(_rename(data, renames), ensure_ascii=False))
        renamed = AutoTokenizer.from_pretrained(tmp)
    new_vocab = renamed.get_vocab()
    for old, new in renames.items():
        if new_vocab.get(new) != vocab[old] or old in new_vocab:
            raise CheckpointError(f"renaming {old} to {new} did not keep id {vocab[old]}")
    return renamed


def _rename(data: Any, renames: dict[str, str]) -> Any:
    if isinstance(data, str):
        return renames.get(data, data)
    if isinstance(data, list):
        return [_rename(x, renames) for x in data]
    if isinstance(data, dict):
        return {renames.get(k, k): _rename(v, renames) for k, v in data.items()}
    return data


def add_missing_role_tokens(state: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Register missing control tokens and give each a mean-initialised embedding and lm_head row.

    ``state`` (native keys) is updated in place; returns the ids of the tokens added. Rows beyond the
    current matrices are appended; an added id inside them (a padded, never-used row) is overwritten.
    """
    before = set(tokenizer.get_vocab())
    add_role_tokens(tokenizer)
    vocab = tokenizer.get_vocab()
    added = sorted(vocab[t] for t in set(vocab) - before)
    if not added:
        return []
    rows = state[EMBED].shape[0]
    if state[LM_HEAD].shape[0] != rows:
        raise CheckpointError(
            f"{EMBED} has {rows} rows but {LM_HEAD} has {state[LM_HEAD].shape[0]}: not a valid checkpoint"
        )
    size = max(rows, max(added) + 1)
    for key in (EMBED, LM_HEAD):
        state[key] = _with_mean_rows(state[key], added, size)
    logger.info("added tokens %s (ids %s) with mean-initialised rows", sorted(set(vocab) - before), added)
    return added


def _with_mean_rows(matrix: torch.Tensor, ids: list[int], size: int) -> torch.Tensor:
    """(V, D) -> (size, D) with rows ``ids`` set to the mean of the original V rows (computed in float32)."""
    mean = matrix.float().mean(0).to(matrix.dtype)
    out = (
        torch.cat([matrix, mean.expand(size - matrix.shape[0], -1)], 0)
        if size > matrix.shape[0]
        else matrix.clone()
    )
    out[ids] = mean
    return out.contiguous()
