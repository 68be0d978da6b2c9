"""Capture the attention rows of the role tokens over the vision tokens, without eager attention.

The attention mask loss (AML) and the attention heatmaps need, for some layers and heads, the softmax
attention row of each role query (``[SEG_ACT]``, ``[SEG_TAR]``) over the vision-token keys. Switching the
language model to eager attention with ``output_attentions=True`` materialises every (L x L) matrix
(about 1.7x the time of SDPA for the InternVL2.5-1B geometry and 4 keyframes on CPU, and out of memory
on long video prompts). Here the model keeps its SDPA / flash attention; forward hooks on each selected
layer's ``q_proj`` and ``k_proj`` receive the projections the normal forward computes anyway, and a
pre-hook on ``self_attn`` receives the RoPE tables (cos, sin) and the attention mask the layer gets.
From those, only the R needed query rows are scored against all L keys: O(R * L) per layer instead of
O(L^2), with gradients flowing back into the projections when the caller trains.

Axis letters: B batch, R roles, NL selected layers, NH selected heads, KVH key/value heads, G query heads
per KV head, L tokens, N vision tokens (= K * g * g), K keyframes, g tokens per side of a frame's grid,
hd head dim.

Usage::

    with AttentionCapture(model.model.language_model, query_positions, vision_positions, grid=16) as cap:
        out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask)
    rows = cap.result().rows  # (B, R, NL, NH, K, g, g)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import torch
from einops import rearrange, repeat
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers.models.qwen2.modeling_qwen2 import rotate_half

__all__ = [
    "AttentionCapture",
    "AttentionRows",
    "role_attention_rows",
    "role_positions",
    "vision_positions_from_ids",
]


@dataclass
class AttentionRows:
    """Captured attention of the role queries over the vision keys.

    Attributes:
        rows: float32 (B, R, NL, NH, K, g, g). Softmax probability of each role query over each vision
            key; the softmax runs over all keys the query may see (as in the model), so a row sums to
            ``vision_mass`` <= 1, not to 1. Zero for an absent role (query position -1).
        vision_mass: float32 (B, R, NL, NH). ``rows`` summed over all vision keys.
        layers: the language-model layer index of each NL entry.
        heads: the query-head index of each NH entry.
    """

    rows: torch.Tensor
    vision_mass: torch.Tensor
    layers: tuple[int, ...]
    heads: tuple[int, ...]


def role_attention_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor | None,
    query_positions: torch.Tensor,
    vision_positions: torch.Tensor,
    heads: torch.Tensor,
    head_dim: int,
    scaling: float,
    sliding_window: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention rows of the role queries over the vision keys, for one layer.

    Reproduces Qwen2's eager attention (RoPE, grouped KV heads, scaling, mask, float32 softmax) for the
    R query rows only.

    Args:
        q: (B, L, NHall * hd) output of ``q_proj`` (no RoPE yet).
        k: (B, L, KVH * hd) output of ``k_proj`` (no RoPE yet).
        cos, sin: (B or 1, L, hd) RoPE tables the layer received.
        mask: the mask the layer received: None (pure causal, SDPA / flash skip it when nothing is
            padded), (B or 1, 1, L, L) bool (True = may attend) or additive float (eager), or
            (B, L) key-padding mask (flash attention).
        query_positions: long (B, R), sequence index of each role token, -1 where the role is absent.
        vision_positions: long (B, N), sequence indices of the vision tokens.
        heads: long (NH,), the query heads to return.
        head_dim: hd.
        scaling: the score scale (the module's ``scaling``, hd ** -0.5 for Qwen2).
        sliding_window: the layer's sliding window, applied when the mask does not already hold it.

    Returns:
        rows: float32 (B, R, NH, N); vision_mass: float32 (B, R, NH).
    """
    batch, length = k.shape[:2]
    num_kv_heads = k.shape[-1] // head_dim
    # Absent roles are computed at position 0 and zeroed at the end; masked scores use a finite minimum
    # (as transformers' eager masks do) so no row is all -inf: NaN would leak into the gradients.
    present = query_positions >= 0  # (B, R)
    qpos = query_positions.clamp_min(0)
    cos = cos.float().expand(batch, -1, -1)  # (B, L, hd)
    sin = sin.float().expand(batch, -1, -1)

    q_rows = _gather_rows(q.float(), qpos)  # (B, R, NHall * hd)
    q_rows = rearrange(q_rows, "b r (h d) -> b h r d", d=head_dim)
    q_rows = _rope(q_rows, _gather_rows(cos, qpos), _gather_rows(sin, qpos))  # (B, NHall, R, hd)
    keys = rearrange(k.float(), "b l (h d) -> b h l d", d=head_dim)
    keys = _rope(keys, cos, sin)  # (B, KVH, L, hd)

    # Group the query heads by their KV head instead of repeating the keys (repeat_kv): head h reads
    # KV head h // G, so "(kv g)" with kv outer is Qwen2's head order.
    q_grouped = rearrange(q_rows, "b (kv g) r d -> b kv (g r) d", kv=num_kv_heads)
    scores = torch.matmul(q_grouped, keys.transpose(-1, -2)) * scaling  # (B, KVH, G * R, L)
    scores = rearrange(scores, "b kv (g r) l -> b r (kv g) l", r=qpos.shape[1])  # (B, R, NHall, L)
    scores = scores.index_select(2, heads)  # (B, R, NH, L)

    scores = _apply_mask(scores, mask, qpos, length, sliding_window)
    probs = torch.softmax(scores, dim=-1)  # (B, R, NH, L)
    probs = probs * present[:, :, None, None]

    index = repeat(vision_positions, "b n -> b r h n", r=probs.shape[1], h=probs.shape[2])
    rows = probs.gather(-1, index)  # (B, R, NH, N)
    return rows, rows.sum(-1)


def _gather_rows(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, L, C), positions long (B, R) -> (B, R, C)."""
    return x.gather(1, repeat(positions, "b r -> b r c", c=x.shape[-1]))


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Qwen2's rotary embedding (``apply_rotary_pos_emb`` for one tensor): x (B, H, P, hd), cos/sin (B, P, hd).

    ``apply_rotary_pos_emb`` rotates q and k with the same positions; here q is rotated at R positions
    and k at L, so the same formula is applied per tensor with transformers' ``rotate_half``.
    """
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def _apply_mask(
    scores: torch.Tensor,
    mask: torch.Tensor | None,
    qpos: torch.Tensor,
    length: int,
    sliding_window: int | None,
) -> torch.Tensor:
    """Mask the scores (B, R, NH, L) of the queries at qpos (B, R) the way the layer's attention does."""
    minimum = torch.finfo(scores.dtype).min
    keys = torch.arange(length, device=scores.device)
    if mask is not None and mask.dim() == 4:
        if mask.shape[-1] != length:
            raise ValueError(f"attention mask covers {mask.shape[-1]} keys, the layer has {length}")
        # Take head 0: transformers' masks broadcast over heads (shape (B, 1, L, L)).
        mask_rows = _gather_rows(mask[:, 0].expand(scores.shape[0], -1, -1), qpos)  # (B, R, L)
        if mask_rows.dtype == torch.bool:
            return scores.masked_fill(~mask_rows[:, :, None], minimum)
        # Eager masks are additive (0 or the dtype's minimum); clamp so their sum stays finite.
        return (scores + mask_rows[:, :, None].float()).clamp_min(minimum)
    if mask is not None and mask.dim() != 2:
        raise TypeError(
            f"unsupported attention mask {type(mask).__name__} of shape {getattr(mask, 'shape', None)}; "
            "use attn_implementation 'sdpa', 'eager' or 'flash_attention_2'"
        )
    allowed = keys <= qpos[..., None]  # (B, R, L) causal
    if sliding_window is not None:
        allowed = allowed & (keys > qpos[..., None] - sliding_window)
    if mask is not None:  # flash attention's (B, L) key-padding mask
        allowed = allowed & mask.bool()[:, None, :]
    return scores.masked_fill(~allowed[:, :, None], minimum)


@dataclass
class _LayerState:
    """What the hooks of one layer collect during a forward pass."""

    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    q: torch.Tensor | None = None
    k: torch.Tensor | None = None
    armed: bool = False
    rows: torch.Tensor | None = None  # (B, R, NH, N)
    mass: torch.Tensor | None = None  # (B, R, NH)


class AttentionCapture:
    """Context manager that records role-token attention rows over vision tokens during one forward pass.

    Hooks are registered on ``__enter__`` and always removed on ``__exit__`` (also on exceptions). Run
    exactly one forward pass of the full sequence (prompt and answer, no KV cache content) inside the
    context, then read ``result()``. Gradients flow into the model when ``keep_grad`` and grad mode are
    on, so the attention mask loss can train on the rows. Under gradient checkpointing the recomputed
    forward is not captured again (the rows from the first pass are the ones in the graph), and backward
    may run after the context has closed. With ``use_reentrant=True`` checkpointing the layers run without
    autograd, so the rows would carry no gradient: keep transformers' default (non-reentrant).

    Supports Qwen2-style attention with SDPA, eager or flash attention; batches with right or left
    padding (taken from the mask the model builds from its ``attention_mask``: padded keys get zero
    probability). All batch items must have the same number of vision tokens N.

    Args:
        language_model: the decoder stack (``Qwen2Model``: ``.layers[i].self_attn`` with ``q_proj``,
            ``k_proj``, ``head_dim``, ``scaling``), e.g. ``model.model.language_model``.
        query_positions: long (B, R), sequence index of each role token; -1 marks an absent role (e.g. no
            ``[SEG_TAR]``), whose rows and mass are returned as zeros.
        vision_positions: long (B, N), sequence indices of the vision tokens, N = K * g * g, frame-major
            and row-major (y, x) within a frame, which is InternVL's token order after pixel shuffle.
        grid: g, vision tokens per side of one frame.
        layers: layer indices to capture (default: all).
        heads: query-head indices to capture (default: all).
        keep_grad: if False, rows are computed without autograd (cheaper when only visualising).
    """

    def __init__(
        self,
        language_model: nn.Module,
        query_positions: torch.Tensor,
        vision_positions: torch.Tensor,
        grid: int,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        keep_grad: bool = True,
    ) -> None:
        decoder_layers = language_model.layers
        first = decoder_layers[0].self_attn
        num_heads = first.q_proj.out_features // first.head_dim
        self.layers = tuple(range(len(decoder_layers))) if layers is None else tuple(int(i) for i in layers)
        self.heads = tuple(range(num_heads)) if heads is None else tuple(int(h) for h in heads)
        _check_indices("layer", self.layers, len(decoder_layers))
        _check_indices("head", self.heads, num_heads)
        if query_positions.dim() != 2 or vision_positions.dim() != 2:
            raise ValueError(
                f"query_positions must be (B, R) and vision_positions (B, N); got "
                f"{tuple(query_positions.shape)} and {tuple(vision_positions.shape)}"
            )
        if query_positions.shape[0] != vision_positions.shape[0]:
            raise ValueError("query_positions and vision_positions disagree on the batch size")
        if vision_positions.shape[1] == 0 or vision_positions.shape[1] % (grid * grid):
            raise ValueError(
                f"{vision_positions.shape[1]} vision positions are not a positive multiple of {grid}x{grid}"
            )
        self.language_model = language_model
        self.query_positions = query_positions.long()
        self.vision_positions = vision_positions.long()
        self.grid = grid
        self.keep_grad = keep_grad
        self._heads_index = torch.tensor(self.heads, dtype=torch.long, device=query_positions.device)
        self._handles: list[RemovableHandle] = []
        self._states: dict[int, _LayerState] = {}

    def __enter__(self) -> AttentionCapture:
        self._states = {i: _LayerState() for i in self.layers}
        try:
            for i in self.layers:
                attn = self.language_model.layers[i].self_attn
                self._handles.append(attn.register_forward_pre_hook(self._make_pre_hook(i), with_kwargs=True))
                self._handles.append(attn.q_proj.register_forward_hook(self._make_proj_hook(i, attn, "q")))
                self._handles.append(attn.k_proj.register_forward_hook(self._make_proj_hook(i, attn, "k")))
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._remove_hooks()
        for state in self._states.values():
            # Drop the references to the projections so their memory can go.
            state.q = state.k = state.cos = state.sin = state.mask = None

    def result(self) -> AttentionRows:
        """The captured rows; raises if a selected layer did not run inside the context."""
        missing = [i for i in self.layers if self._states.get(i, _LayerState()).rows is None]
        if missing:
            raise RuntimeError(f"no attention was captured for layers {missing}: run the forward pass inside")
        rows = torch.stack([self._states[i].rows for i in self.layers], dim=2)  # (B, R, NL, NH, N)
        mass = torch.stack([self._states[i].mass for i in self.layers], dim=2)  # (B, R, NL, NH)
        rows = rearrange(rows, "b r nl nh (k y x) -> b r nl nh k y x", y=self.grid, x=self.grid)
        return AttentionRows(rows=rows, vision_mass=mass, layers=self.layers, heads=self.heads)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _make_pre_hook(self, layer: int):
        state = self._states[layer]

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            # Gradient checkpointing re-runs the layer during backward (when backward is called inside
            # the context); the rows of the first pass are the ones in the graph, so skip.
            if torch._C._current_graph_task_id() != -1:
                state.armed = False
                return
            if state.rows is not None:
                raise RuntimeError(
                    f"layer {layer} ran twice inside one AttentionCapture: capture one forward pass per context"
                )
            cache = kwargs.get("past_key_values")
            if cache is not None and cache.get_seq_length(layer) > 0:
                raise RuntimeError(
                    "AttentionCapture needs the whole sequence in one forward pass, not an incremental "
                    "decoding step: run a fresh forward (no past_key_values) after generation"
                )
            position_embeddings = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
            state.cos, state.sin = position_embeddings
            state.mask = kwargs.get("attention_mask", args[2] if len(args) > 2 else None)
            state.armed = True

        return pre_hook

    def _make_proj_hook(self, layer: int, attn: nn.Module, name: str):
        state = self._states[layer]

        def proj_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not state.armed:
                return
            setattr(state, name, output)
            if state.q is not None and state.k is not None:
                self._compute(layer, attn, state)

        return proj_hook

    def _compute(self, layer: int, attn: nn.Module, state: _LayerState) -> None:
        # Non-reentrant gradient checkpointing (transformers' default) counts the tensors autograd saves
        # inside a checkpointed layer and expects the same count when it recomputes the layer in
        # backward, where these hooks may be gone. Identity saved-tensor hooks take precedence over the
        # checkpoint's, so the few small tensors saved here are kept as usual and not counted.
        with (
            torch.set_grad_enabled(self.keep_grad and torch.is_grad_enabled()),
            torch.autograd.graph.saved_tensors_hooks(_identity, _identity),
        ):
            state.rows, state.mass = role_attention_rows(
                q=state.q,
                k=state.k,
                cos=state.cos,
                sin=state.sin,
                mask=state.mask,
                query_positions=self.query_positions,
                vision_positions=self.vision_positions,
                heads=self._heads_index,
                head_dim=attn.head_dim,
                scaling=attn.scaling,
                sliding_window=getattr(attn, "sliding_window", None),
            )
        state.q = state.k = state.cos = state.sin = state.mask = None
        state.armed = False


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _check_indices(kind: str, indices: tuple[int, ...], size: int) -> None:
    bad = [i for i in indices if not 0 <= i < size]
    if bad or not indices or len(set(indices)) != len(indices):
        raise ValueError(f"{kind} indices {list(indices)} must be distinct and in [0, {size})")


def vision_positions_from_ids(input_ids: torch.Tensor, image_token_id: int, grid: int) -> torch.Tensor:
    """Sequence indices of the vision tokens.

    Args:
        input_ids: long (B, L).
        image_token_id: id of the ``<IMG_CONTEXT>`` token.
        grid: g, tokens per side of one frame.

    Returns:
        long (B, N), N = K * g * g, in sequence order (frame-major, row-major within a frame).

    Raises:
        ValueError: if the batch items hold different numbers of vision tokens or not whole frames.
    """
    is_vision = input_ids == image_token_id  # (B, L)
    counts = is_vision.sum(1)
    if counts.numel() == 0 or bool((counts != counts[0]).any()):
        raise ValueError(f"each batch item needs the same number of vision tokens, got {counts.tolist()}")
    count = int(counts[0])
    if count == 0 or count % (grid * grid):
        raise ValueError(f"{count} vision tokens are not a positive whole number of {grid}x{grid} frames")
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return positions[is_vision].view(input_ids.shape[0], count)


def role_positions(input_ids: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """Sequence index of the first occurrence of each role token, -1 where it does not occur.

    The prompt never contains the role tokens (the processor keeps them out of user text), so the first
    occurrence is the one in the answer.

    Args:
        input_ids: long (B, L).
        token_ids: R token ids, e.g. (id of ``[SEG_ACT]``, id of ``[SEG_TAR]``).

    Returns:
        long (B, R).
    """
    ids = torch.as_tensor(list(token_ids), device=input_ids.device)
    hits = input_ids[:, None, :] == ids[None, :, None]  # (B, R, L)
    first = hits.int().argmax(-1)  # argmax returns the first maximum
    return torch.where(hits.any(-1), first, torch.full_like(first, -1))
