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

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import torch
from einops import rearrange
from torch import nn
from torch.utils.hooks import RemovableHandle

from reviosa.hooks import this_thread_only

__all__ = [
    "AttentionCapture",
    "AttentionRows",
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


@dataclass
class _SharedTables:
    """Tensors every captured layer of one forward pass reuses (float32 unless noted).

    The decoder hands the same (cos, sin) and mask objects to every layer, so these are built once per
    forward: at the tiny preset's scale the per-layer cost is the number of ops, not their flops.
    Layout (B, KVH, R, G, ...) groups the query heads by their KV head (head h reads KV head h // G, so
    "(kv g)" with kv outer is Qwen2's head order): no repeat_kv, and no copy between the ops.
    """

    q_index: torch.Tensor  # long (B, KVH, R, G * hd), expanded: gathers the role rows from q_proj
    cos_q: torch.Tensor  # (B, 1, R, 1, hd) RoPE cos at the role positions, times the score scale
    sin_q: torch.Tensor  # (B, 1, R, 1, hd) signed RoPE sin at the role positions, times the score scale
    cos_k: torch.Tensor  # (B, L, 1, hd)
    sin_k: torch.Tensor  # (B, L, 1, hd) signed
    rotate: torch.Tensor  # long (hd,): the index permutation of rotate_half
    bias: torch.Tensor  # (B, 1, R, 1, L) additive mask: 0 where the role query may attend, else float32 min
    v_index: torch.Tensor  # long (B, KVH, R, G, N), expanded: gathers the vision columns


def _shared_tables(
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor | None,
    query_positions: torch.Tensor,
    vision_positions: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    scaling: float,
    sliding_window: int | None,
) -> _SharedTables:
    """Build the per-forward tables.

    Args:
        cos, sin: (B or 1, L, hd) RoPE tables the layer received.
        mask: the mask the layer received: None (pure causal: SDPA / flash skip the mask when nothing is
            padded), (B or 1, 1, L, L) bool (True = may attend) or additive float (eager), or (B, L)
            key-padding mask (flash attention).
        query_positions: long (B, R), -1 where the role is absent.
        vision_positions: long (B, N).
        num_heads, num_kv_heads, head_dim: NHall, KVH, hd of the layer.
        scaling: the score scale (the module's ``scaling``, hd ** -0.5 for Qwen2).
        sliding_window: the layer's window, applied when the mask does not already hold it.
    """
    batch, length = vision_positions.shape[0], cos.shape[1]
    groups = num_heads // num_kv_heads
    # Absent roles (-1) are computed at position 0 and zeroed in _finish_rows. Masked scores get a finite
    # minimum (as transformers' eager masks do) so no row is all -inf: NaN would leak into the gradients.
    qpos = query_positions.to(cos.device).clamp_min(0)
    vision_positions = vision_positions.to(cos.device)
    rotate, sign = _rotation(head_dim, cos.device)
    cos_k = cos.float().expand(batch, -1, -1)  # (B, L, hd)
    sin_k = sin.float().expand(batch, -1, -1) * sign
    cos_q, sin_q = _gather_rows(cos_k, qpos) * scaling, _gather_rows(sin_k, qpos) * scaling  # (B, R, hd)
    bias = _mask_bias(mask, qpos, batch, length, sliding_window)  # (B, R, L)
    return _SharedTables(
        q_index=qpos[:, None, :, None].expand(-1, num_kv_heads, -1, groups * head_dim),
        cos_q=cos_q[:, None, :, None],
        sin_q=sin_q[:, None, :, None],
        cos_k=cos_k[:, :, None],
        sin_k=sin_k[:, :, None],
        rotate=rotate,
        bias=bias[:, None, :, None],
        v_index=vision_positions[:, None, None, None].expand(-1, num_kv_heads, qpos.shape[1], groups, -1),
    )


def _layer_rows(q: torch.Tensor, k: torch.Tensor, tables: _SharedTables, head_dim: int) -> torch.Tensor:
    """Raw rows of one layer from its q_proj / k_proj outputs, float32 (B, KVH, R, G, N), all heads."""
    batch, num_kv_heads, num_roles, group_width = tables.q_index.shape
    # Gathering from the (B, KVH, L, G * hd) view puts the role rows straight into the grouped layout.
    q_rows = q.float().reshape(batch, -1, num_kv_heads, group_width).transpose(1, 2).gather(2, tables.q_index)
    q_rows = q_rows.view(batch, num_kv_heads, num_roles, -1, head_dim)  # (B, KVH, R, G, hd)
    q_rows = torch.addcmul(q_rows * tables.cos_q, q_rows.index_select(-1, tables.rotate), tables.sin_q)
    keys = k.float().reshape(batch, -1, num_kv_heads, head_dim)  # (B, L, KVH, hd)
    keys = torch.addcmul(keys * tables.cos_k, keys.index_select(-1, tables.rotate), tables.sin_k)

    # (B, KVH, R * G, hd) @ (B, KVH, hd, L): O(R * NH * L * hd), the only product over the sequence.
    scores = torch.matmul(q_rows.flatten(2, 3), keys.permute(0, 2, 3, 1))
    scores = scores.view(batch, num_kv_heads, num_roles, -1, scores.shape[-1])  # (B, KVH, R, G, L)
    probs = torch.softmax(scores + tables.bias, dim=-1)
    return probs.gather(-1, tables.v_index)  # (B, KVH, R, G, N)


def _finish_rows(
    raw: torch.Tensor, query_positions: torch.Tensor, heads: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked raw rows (NL, B, KVH, R, G, N) -> rows (B, R, NL, NH, N) and vision mass (B, R, NL, NH).

    Done once for all layers, so the per-layer work stays a handful of ops.
    """
    rows = rearrange(raw, "nl b kv r g n -> b r nl (kv g) n")
    if heads is not None:
        rows = rows.index_select(3, heads.to(rows.device))
    present = query_positions.to(rows.device) >= 0  # (B, R)
    if not bool(present.all()):
        rows = rows * present[:, :, None, None, None]
    return rows, rows.sum(-1)


@functools.lru_cache(maxsize=8)
def _rotation(head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Index permutation (hd,) and sign (hd,) with rotate_half(x) = x[..., rotate] * sign.

    transformers' rotate_half(x) is cat(-x[half:], x[:half]); with the sign folded into the sin tables,
    RoPE is x * cos + x[rotate] * sin: the same products and sum as its apply_rotary_pos_emb, exactly.
    """
    half = head_dim // 2
    rotate = torch.cat([torch.arange(half, head_dim), torch.arange(half)]).to(device)
    sign = torch.cat([-torch.ones(half), torch.ones(head_dim - half)]).to(device)
    return rotate, sign


def _gather_rows(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, L, C), positions long (B, R) -> (B, R, C)."""
    return x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1]))


def _mask_bias(
    mask: torch.Tensor | None, qpos: torch.Tensor, batch: int, length: int, sliding_window: int | None
) -> torch.Tensor:
    """Additive float32 mask (B, R, L) for the queries at qpos (B, R), as the layer's attention masks."""
    minimum = torch.finfo(torch.float32).min
    if mask is not None and mask.dim() == 4:
        if mask.shape[-1] != length:
            raise ValueError(f"attention mask covers {mask.shape[-1]} keys, the layer has {length}")
        # Take head 0: transformers' masks broadcast over heads (shape (B, 1, L, L)).
        mask_rows = _gather_rows(mask[:, 0].expand(batch, -1, -1), qpos)  # (B, R, L)
        if mask_rows.dtype != torch.bool:
            # Eager masks are additive (0 or the model dtype's minimum, possibly -inf): keep them finite.
            return mask_rows.float().clamp_min(minimum)
        allowed = mask_rows
    elif mask is None or mask.dim() == 2:
        keys = torch.arange(length, device=qpos.device)
        allowed = keys <= qpos[..., None]  # (B, R, L) causal
        if sliding_window is not None:
            allowed = allowed & (keys > qpos[..., None] - sliding_window)
        if mask is not None:  # flash attention's (B, L) key-padding mask
            allowed = allowed & mask.bool()[:, None, :]
    else:
        raise TypeError(
            f"unsupported attention mask {type(mask).__name__} of shape {getattr(mask, 'shape', None)}; "
            "use attn_implementation 'sdpa', 'eager' or 'flash_attention_2'"
        )
    return torch.where(allowed, 0.0, minimum)


@dataclass
class _LayerState:
    """What the hooks of one layer collect during a forward pass."""

    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    q: torch.Tensor | None = None
    k: torch.Tensor | None = None
    armed: bool = False
    rows: torch.Tensor | None = None  # raw rows (B, KVH, R, G, N), all heads


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
        all_heads = self.heads == tuple(range(num_heads))
        self._heads_index = (
            None if all_heads else torch.tensor(self.heads, dtype=torch.long, device=query_positions.device)
        )
        self._cache: list[tuple[torch.Tensor, torch.Tensor | None, tuple, _SharedTables]] = []
        self._handles: list[RemovableHandle] = []
        self._states: dict[int, _LayerState] = {}

    def __enter__(self) -> AttentionCapture:
        self._states = {i: _LayerState() for i in self.layers}
        self._cache = []
        try:
            for i in self.layers:
                attn = self.language_model.layers[i].self_attn
                # this_thread_only: another request running the same shared model must not feed
                # this capture (reviosa/hooks.py).
                pre = this_thread_only(self._make_pre_hook(i))
                self._handles.append(attn.register_forward_pre_hook(pre, with_kwargs=True))
                for name, proj in (("q", attn.q_proj), ("k", attn.k_proj)):
                    hook = this_thread_only(self._make_proj_hook(i, attn, name))
                    self._handles.append(proj.register_forward_hook(hook))
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
        self._cache = []

    def result(self) -> AttentionRows:
        """The captured rows; raises if a selected layer did not run inside the context."""
        missing = [i for i in self.layers if self._states.get(i, _LayerState()).rows is None]
        if missing:
            raise RuntimeError(f"no attention was captured for layers {missing}: run the forward pass inside")
        raw = torch.stack([self._states[i].rows for i in self.layers])  # (NL, B, KVH, R, G, N)
        rows, mass = _finish_rows(raw, self.query_positions, self._heads_index)  # (B, R, NL, NH, N)
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
            tables = self._tables(attn, state)
            state.rows = _layer_rows(state.q, state.k, tables, attn.head_dim)
        state.q = state.k = state.cos = state.sin = state.mask = None
        state.armed = False

    def _tables(self, attn: nn.Module, state: _LayerState) -> _SharedTables:
        """The shared tables for this layer's (cos, mask, window, scale), built by the first layer."""
        window = getattr(attn, "sliding_window", None)
        # Identity, not equality: the decoder passes the same tensor objects to every layer.
        for cos, mask, key, tables in self._cache:
            if cos is state.cos and mask is state.mask and key == (window, attn.scaling, attn.head_dim):
                return tables
        tables = _shared_tables(
            state.cos, state.sin, state.mask, self.query_positions, self.vision_positions,
            attn.q_proj.out_features // attn.head_dim, attn.k_proj.out_features // attn.head_dim,
            attn.head_dim, attn.scaling, window,
        )  # fmt: skip
        self._cache.append((state.cos, state.mask, (window, attn.scaling, attn.head_dim), tables))
        return tables


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
