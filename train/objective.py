"""One teacher-forced forward pass and its losses, as a module (so that DDP can wrap it).

total = L_seg + lambda_AML * L_AML + lambda_text * L_text (+ the optional terms), each term a sum
over rows divided by the nominal rows of a micro-batch (see ``train.losses``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from einops import rearrange
from torch import nn

from reviosa.attention import vision_positions_from_ids
from reviosa.modeling import ReviosaModel, TrainOutput
from train import losses
from train.config import LOSS_TERMS, LossConfig
from train.data import Batch

TERMS = LOSS_TERMS


def loss_terms(
    out: TrainOutput,
    batch: Batch,
    cfg: LossConfig,
    vision_states: torch.Tensor | None,
    vision_inputs: torch.Tensor | None = None,
    embedding: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Unweighted loss terms, each a sum over rows (float scalars); terms with weight 0 are left out.

    vision_states / vision_inputs: float (B, K, g, g, D) last-layer states and inputs of the
    vision tokens (for ``grounding`` / ``words``); embedding: float (V, D) the input embedding.
    """
    weight = batch.role_weight
    seg = losses.seg_loss(out.mask_logits, batch.masks, weight)
    terms = {"mask_ce": seg.ce, "mask_dice": seg.dice}
    if cfg.text:
        rows = losses.supervised_rows(batch.labels)
        terms["text"] = losses.text_ce(out.answer_logits, out.answer_targets, rows, batch.rows)
    if cfg.aml:
        terms["aml"] = losses.attention_mask_loss(out.attention.rows, batch.grids, weight)
    if cfg.object:
        terms["object"] = losses.object_loss(out.object_logits, batch.present, weight)
    if cfg.grounding:
        terms["grounding"] = losses.grounding_loss(
            out.role_states, vision_states, batch.grids, weight, cfg.grounding_scale, cfg.grounding_mode
        )
    if cfg.words:
        terms["words"] = losses.region_words_loss(
            vision_inputs, batch.grids, embedding, batch.words, weight, cfg.words_scale
        )
    if cfg.hard_negative:
        terms["hard_negative"] = losses.hard_negative_loss(
            out.mask_logits, batch.masks, batch.clip_of, weight
        )
    if out.example is not None:
        valid = weight * out.example.valid.to(weight.dtype)
        if cfg.example:
            ex = losses.seg_loss(out.example.mask_logits, batch.masks, valid)
            terms["example"] = ex.total(cfg.mask_ce, cfg.mask_dice)
            if cfg.hard_negative:
                terms["example"] = terms["example"] + cfg.hard_negative * losses.hard_negative_loss(
                    out.example.mask_logits, batch.masks, batch.clip_of, valid
                )
        if cfg.distill:
            terms["distill"] = losses.distill_loss(out.role_prompts, out.example.prompts, valid)
        if cfg.contrast:
            terms["contrast"] = losses.prompt_contrast_loss(
                out.role_prompts, out.example.prompts, batch.masks, batch.clip_of, valid, cfg.contrast_scale
            )
        if cfg.role_pair:
            terms["role_pair"] = losses.role_pair_loss(
                out.role_prompts, out.example.prompts, batch.masks, valid, cfg.contrast_scale
            )
    return terms


def weighted_total(
    terms: dict[str, torch.Tensor], cfg: LossConfig, scale: dict[str, float] | None = None
) -> torch.Tensor:
    """Sum of the terms by their config weights, each times ``scale[name]`` (a stage's loss_scale)."""
    scale = scale or {}
    # Each term's weight is the LossConfig field of the same name (LOSS_TERMS).
    return sum(getattr(cfg, name) * scale.get(name, 1.0) * value for name, value in terms.items())


class TrainStep(nn.Module):
    """Wraps the trained module (the model or its peft wrapper); ``forward(batch)`` returns the
    loss to back-propagate and the detached per-row sums of each term (for logging)."""

    def __init__(self, wrapper: nn.Module, loss: LossConfig, nominal_rows: int, bf16: bool):
        super().__init__()
        self.wrapper = wrapper
        self.loss_cfg = loss
        self.nominal_rows = nominal_rows
        self.bf16 = bf16
        self.loss_scale: dict[str, float] = {}  # the current stage's, set by the loop each step

    @property
    def model(self) -> ReviosaModel:
        inner = self.wrapper
        # peft's PeftModel -> LoraModel -> the ReviosaModel (LoRA layers injected in place).
        while not isinstance(inner, ReviosaModel):
            inner = inner.base_model.model if hasattr(inner, "base_model") else inner.model
        return inner

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = self.model
        sup = model.config.attention_supervision
        capture = None
        if self.loss_cfg.aml:
            if sup is None:
                raise ValueError(
                    "loss.aml > 0 needs attention layer / heads (config 'attention' or select-heads)"
                )
            capture = {"layers": [sup.layer], "heads": list(sup.heads)}
        use_bf16 = self.bf16 and batch.input_ids.device.type == "cuda"
        with (
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16),
            # the words term reads the vision tokens' inputs, the grounding term their last states
            language_io(
                model, inputs=bool(self.loss_cfg.words), last=bool(self.loss_cfg.grounding)
            ) as hidden,
        ):
            out = forward_batch(
                model,
                batch,
                capture=capture,
                example_masks=batch.masks if self._needs_examples else None,
                example_grad=self.loss_cfg.example_grad,
            )
        vision = inputs = embedding = None
        if self.loss_cfg.grounding:
            vision = vision_token_states(hidden["last"], batch.input_ids, model)
        if self.loss_cfg.words:
            inputs = vision_token_states(hidden["first"], batch.input_ids, model)
            # Fixed targets for this term: trained by it too, the shape words' rows drifted together
            # toward what the vision tokens shared (a tied run read shape at chance on val, 17 %,
            # at step 400), which leaves no gradient that tells shapes apart.
            embedding = model.mllm.get_input_embeddings().weight.detach()
        terms = loss_terms(out, batch, self.loss_cfg, vision, inputs, embedding)
        total = weighted_total(terms, self.loss_cfg, self.loss_scale) / self.nominal_rows
        return total, {k: v.detach() for k, v in terms.items()}

    @property
    def _needs_examples(self) -> bool:
        cfg = self.loss_cfg
        return bool(cfg.example or cfg.distill or cfg.contrast or cfg.role_pair)


def forward_batch(model: ReviosaModel, batch: Batch, **kwargs) -> TrainOutput:
    """``model.forward_train`` on a collated batch: pixels encoded once per clip (``clip_index``),
    absent roles not decoded (no loss reads their masks, e.g. no ``[SEG_TAR]``)."""
    return model.forward_train(
        batch.input_ids,
        batch.attention_mask,
        batch.labels,
        batch.mllm_pixels,
        batch.sam_pixels,
        clip_index=batch.clip_of,
        decode_absent=False,
        **kwargs,
    )


@contextlib.contextmanager
def language_io(model: ReviosaModel, inputs: bool, last: bool) -> Iterator[dict]:
    """Catch the language model's input embeddings (``holder["first"]``) and last hidden states
    (``holder["last"]``), float (B, L, D), of its forward passes inside the block."""
    holder: dict = {}
    handles = []
    if inputs:

        def pre_hook(_module, _args, kwargs):
            holder["first"] = kwargs["inputs_embeds"]

        handles.append(model.language_model.register_forward_pre_hook(pre_hook, with_kwargs=True))
    if last:

        def hook(_module, _inputs, output):
            holder["last"] = output.last_hidden_state

        handles.append(model.language_model.register_forward_hook(hook))
    try:
        yield holder
    finally:
        for handle in handles:
            handle.remove()


def vision_token_states(hidden: torch.Tensor, input_ids: torch.Tensor, model: ReviosaModel) -> torch.Tensor:
    """The vision tokens' slice of per-token states (inputs or a layer's): (B, L, D) -> (B, K, g, g, D)."""
    g = model.config.grid
    positions = vision_positions_from_ids(input_ids, model.processor.ids.img_context, g)  # (B, N)
    states = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (B, N, D)
    return rearrange(states, "b (k y x) d -> b k y x d", y=g, x=g)
