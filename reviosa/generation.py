"""Constrained decoding: make the model give a chosen answer.

Useful to pin the answer form (e.g. force "Sure, [SEG_ACT]." to run an actor-only baseline, or
"Sure, [SEG_ACT] and [SEG_TAR]." to inspect both roles) and to exercise both mask paths of a model
whose language side has not been trained.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList


class ForceAnswer(LogitsProcessor):
    """Greedy decoding emits exactly ``rows[b]`` for batch row b (then follows the model).

    With ``inputs_embeds`` (as `ReviosaModel.segment` calls generate), the ids passed to a logits
    processor are only the ones generated so far, so their count is the step.
    """

    def __init__(self, rows: list[list[int]]):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1]
        out = scores.clone()
        for b, row in enumerate(self.rows):
            if step < len(row):
                out[b] = torch.finfo(scores.dtype).min
                out[b, row[step]] = 0.0
        return out


def force_answers(model, answers: list[str]) -> LogitsProcessorList:
    """A logits processor list for ``model.segment(..., logits_processor=...)``, one answer per expression."""
    return LogitsProcessorList([ForceAnswer([model.processor.answer_ids(a) for a in answers])])
