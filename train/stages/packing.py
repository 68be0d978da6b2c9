"""Several turns about one clip in one language-model row.

A row holds the clip's prompt prefix (its keyframes' image blocks) once, then each turn (a user
prompt and the answer) in turn. Every turn attends the prefix and itself only, at the positions it
would have alone after the prefix, so a row scores exactly as one row per turn while the clip's
hundreds of vision tokens go through the language model once (``tests/test_stages.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Turn:
    """Token ids of one turn: the user's prompt up to the assistant's opening, and the answer
    (closed by <|im_end|>), which is what the labels supervise."""

    prompt: list[int]
    answer: list[int]


@dataclass
class Packed:
    """input_ids long (C, L) right-padded; attention_mask bool (C, 1, L, L), True where a query may
    attend a key; position_ids long (C, L); labels long (C, L), -100 but on the answers; turn long
    (C, L): the turn (numbered over the batch, row by row) each position belongs to, -1 on the
    prefix and padding; row long (Q,): each turn's row; answer_start long (Q,): where each turn's
    answer starts in its row; asked long (Q,): each turn's last prompt position (the one that
    predicts the answer's first token)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    turn: torch.Tensor
    row: torch.Tensor
    answer_start: torch.Tensor
    asked: torch.Tensor


def pack(prefix: list[int], rows: list[list[Turn]], pad: int) -> Packed:
    """One row per list of turns, each after the same ``prefix``."""
    built, row_of, starts, asked = [], [], [], []
    for r, turns in enumerate(rows):
        ids, lab, local, pos = list(prefix), [-100] * len(prefix), [0] * len(prefix), list(range(len(prefix)))
        for t, turn in enumerate(turns, start=1):
            asked.append(len(ids) + len(turn.prompt) - 1)
            starts.append(len(ids) + len(turn.prompt))
            row_of.append(r)
            ids += turn.prompt + turn.answer
            lab += [-100] * len(turn.prompt) + turn.answer
            local += [t] * (len(turn.prompt) + len(turn.answer))
            pos += range(len(prefix), len(prefix) + len(turn.prompt) + len(turn.answer))
        built.append((ids, lab, local, pos))
    width = max(len(b[0]) for b in built)
    n = len(built)
    ids = torch.full((n, width), pad, dtype=torch.long)
    lab = torch.full((n, width), -100, dtype=torch.long)
    local = torch.full((n, width), -1, dtype=torch.long)  # -1: padding
    pos = torch.zeros((n, width), dtype=torch.long)
    for i, (r, lb, tr, ps) in enumerate(built):
        ids[i, : len(r)], lab[i, : len(r)] = torch.tensor(r), torch.tensor(lb)
        local[i, : len(r)], pos[i, : len(r)] = torch.tensor(tr), torch.tensor(ps)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = (local[:, :, None] == local[:, None, :]) & (local[:, :, None] >= 0)
    mask = causal & (same | (local[:, None, :] == 0)) | torch.eye(width, dtype=torch.bool)  # pads: themselves
    first = torch.tensor([0] + [len(t) for t in rows]).cumsum(0)[:-1]  # each row's first turn
    turn = torch.where(local > 0, local - 1 + first[:, None], -1)
    return Packed(
        ids, mask[:, None], pos, lab, turn, torch.tensor(row_of), torch.tensor(starts), torch.tensor(asked)
    )
