"""AttentionCapture against the reference: eager attention with ``output_attentions=True``."""

from __future__ import annotations

import pytest
import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig, Qwen2Config

from reviosa.attention import AttentionCapture, role_positions, vision_positions_from_ids

torch.set_num_threads(1)

VOCAB = 100
PAD, IMG_START, IMG_END, SEG_ACT, SEG_TAR, IMAGE = 0, 90, 91, 92, 93, 99
GRID = 4  # (32 px / patch 4) * downsample 0.5
TOL = 1e-5


def build_model(**text_overrides) -> InternVLForConditionalGeneration:
    """Tiny random InternVL: 2-layer ViT (32 px, patch 4), 3-layer Qwen2 (4 heads, 2 KV heads)."""
    torch.manual_seed(0)
    vision = InternVLVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=[32, 32],
        patch_size=[4, 4],
    )
    text = Qwen2Config(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=VOCAB,
        pad_token_id=PAD,
        **text_overrides,
    )
    config = InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE, downsample_ratio=0.5
    )
    model = InternVLForConditionalGeneration(config).eval()
    # Larger query/key weights (std 0.02 by default) make the attention peaked, so the comparison is not
    # between near-uniform rows.
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.normal_(std=0.15)
            layer.self_attn.k_proj.weight.normal_(std=0.15)
    return model


@pytest.fixture(scope="module")
def model() -> InternVLForConditionalGeneration:
    return build_model()


def sequence(frames: int, roles: tuple[int, ...], text: int = 3, seed: int = 0) -> list[int]:
    """[text] + frames x (<img> + g*g image tokens + </img>) + [text, role, text, ...]."""
    rng = torch.Generator().manual_seed(seed)
    words = lambda n: torch.randint(1, 80, (n,), generator=rng).tolist()  # noqa: E731
    ids = words(text)
    for _ in range(frames):
        ids += [IMG_START] + [IMAGE] * GRID * GRID + [IMG_END]
    for role in roles:
        ids += words(text) + [role]
    return ids + words(2)


def batch(seqs: list[list[int]], left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to one length (right by default); returns input_ids and attention_mask, both (B, L)."""
    length = max(map(len, seqs))
    ids = torch.full((len(seqs), length), PAD)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, seq in enumerate(seqs):
        span = slice(length - len(seq), length) if left else slice(0, len(seq))
        ids[i, span] = torch.tensor(seq)
        mask[i, span] = 1
    return ids, mask


def set_text_attention(model: InternVLForConditionalGeneration, implementation: str) -> None:
    model.set_attn_implementation({"text_config": implementation})


def captured(model, ids, mask, pixels, implementation="sdpa", position_ids=None, **kwargs):
    """Rows and mass from AttentionCapture around a forward with the given text attention."""
    set_text_attention(model, implementation)
    query = role_positions(ids, (SEG_ACT, SEG_TAR))
    vision = vision_positions_from_ids(ids, IMAGE, GRID)
    with AttentionCapture(model.model.language_model, query, vision, grid=GRID, **kwargs) as capture:
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels, position_ids=position_ids)
    return capture.result()


def eager_rows(model, ids, mask, pixels, position_ids=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference rows (B, R, NL, NH, K, g, g) and mass (B, R, NL, NH) from the full eager attentions."""
    set_text_attention(model, "eager")
    out = model(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=pixels,
        position_ids=position_ids,
        output_attentions=True,
    )
    attentions = torch.stack(out.attentions, dim=1)  # (B, NL, NH, L, L)
    query = role_positions(ids, (SEG_ACT, SEG_TAR))
    vision = vision_positions_from_ids(ids, IMAGE, GRID)
    rows = []
    for b in range(ids.shape[0]):
        per_role = []
        for q in query[b].tolist():
            if q < 0:
                per_role.append(torch.zeros_like(attentions[b, :, :, 0, vision[b]]))
            else:
                per_role.append(attentions[b, :, :, q, vision[b]])  # (NL, NH, N)
        rows.append(torch.stack(per_role))
    rows = torch.stack(rows)  # (B, R, NL, NH, N)
    mass = rows.sum(-1)
    return rows.unflatten(-1, (-1, GRID, GRID)), mass


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_rows_match_eager_all_layers_heads(model, implementation):
    ids, mask = batch([sequence(3, (SEG_ACT, SEG_TAR))])
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = captured(model, ids, mask, pixels, implementation)
        want_rows, want_mass = eager_rows(model, ids, mask, pixels)
    assert got.rows.shape == (1, 2, 3, 4, 3, GRID, GRID)
    assert got.layers == (0, 1, 2) and got.heads == (0, 1, 2, 3)
    torch.testing.assert_close(got.rows, want_rows, atol=TOL, rtol=0)
    torch.testing.assert_close(got.vision_mass, want_mass, atol=TOL, rtol=0)
    # Not renormalised over the vision keys, and not degenerate.
    assert bool((got.vision_mass < 1 - 1e-3).all()) and bool((got.vision_mass > 1e-3).all())
    assert got.rows.amax() > 5 * got.rows.mean()


def test_absent_role_gives_zero_rows(model):
    ids, mask = batch([sequence(2, (SEG_ACT,))])
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = captured(model, ids, mask, pixels)
        want_rows, _ = eager_rows(model, ids, mask, pixels)
    assert bool((got.rows[:, 1] == 0).all()) and bool((got.vision_mass[:, 1] == 0).all())
    torch.testing.assert_close(got.rows, want_rows, atol=TOL, rtol=0)


@pytest.mark.parametrize("left", [False, True], ids=["right_padding", "left_padding"])
def test_padded_batch_matches_eager(model, left):
    seqs = [sequence(2, (SEG_ACT, SEG_TAR), text=2, seed=1), sequence(2, (SEG_ACT,), text=6, seed=2)]
    ids, mask = batch(seqs, left=left)
    assert bool((mask == 0).any())
    # Positions count real tokens only, so each item sees the RoPE phases it would see alone.
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        got = captured(model, ids, mask, pixels, position_ids=position_ids)
        want_rows, want_mass = eager_rows(model, ids, mask, pixels, position_ids=position_ids)
    torch.testing.assert_close(got.rows, want_rows, atol=TOL, rtol=0)
    torch.testing.assert_close(got.vision_mass, want_mass, atol=TOL, rtol=0)
    # Each item alone gives the same rows: padded keys carry no probability.
    for b, seq in enumerate(seqs):
        alone_ids, alone_mask = batch([seq])
        with torch.no_grad():
            alone = captured(model, alone_ids, alone_mask, pixels[2 * b : 2 * b + 2])
        torch.testing.assert_close(got.rows[b : b + 1], alone.rows, atol=TOL, rtol=0)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_sliding_window_layers_match_eager(implementation):
    # Layers 1 and 2 slide over 24 keys: the role queries no longer see the first frames.
    model = build_model(use_sliding_window=True, sliding_window=24, max_window_layers=1)
    assert model.model.language_model.layers[2].self_attn.sliding_window == 24
    ids, mask = batch([sequence(3, (SEG_ACT, SEG_TAR))])
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = captured(model, ids, mask, pixels, implementation)
        want_rows, _ = eager_rows(model, ids, mask, pixels)
    torch.testing.assert_close(got.rows, want_rows, atol=TOL, rtol=0)
    assert bool((got.rows[:, :, 1:, :, 0] == 0).all()) and bool((got.rows[:, :, 0, :, 0] > 0).all())


def test_layer_and_head_subset(model):
    ids, mask = batch([sequence(2, (SEG_ACT, SEG_TAR))])
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = captured(model, ids, mask, pixels, layers=[2, 0], heads=[3, 1])
        want_rows, _ = eager_rows(model, ids, mask, pixels)
    assert got.layers == (2, 0) and got.heads == (3, 1)
    torch.testing.assert_close(got.rows, want_rows[:, :, [2, 0]][:, :, :, [3, 1]], atol=TOL, rtol=0)


def grads(model) -> dict[str, torch.Tensor]:
    """Gradients of the language model's q/k projections and the token embeddings."""
    names = ("q_proj.weight", "k_proj.weight", "q_proj.bias", "embed_tokens.weight")
    out = {
        name: param.grad.clone()
        for name, param in model.model.language_model.named_parameters()
        if name.endswith(names)
    }
    model.zero_grad(set_to_none=True)
    return out


def test_gradients_match_eager(model):
    ids, mask = batch([sequence(3, (SEG_ACT, SEG_TAR), seed=3), sequence(3, (SEG_ACT,), text=5, seed=4)])
    pixels = torch.randn(6, 3, 32, 32)
    weights = torch.rand(2, 2, 3, 4, 3, GRID, GRID)
    model.zero_grad(set_to_none=True)

    got = captured(model, ids, mask, pixels)
    assert got.rows.requires_grad
    (got.rows * weights).sum().backward()
    got_grads = grads(model)

    want_rows, _ = eager_rows(model, ids, mask, pixels)
    (want_rows * weights).sum().backward()
    want_grads = grads(model)

    assert len(got_grads) == 3 * 3 + 1
    for name, want in want_grads.items():
        assert want.abs().max() > 0, name
        torch.testing.assert_close(got_grads[name], want, atol=TOL, rtol=1e-4, msg=name)


def test_keep_grad_false_detaches_rows(model):
    ids, mask = batch([sequence(1, (SEG_ACT, SEG_TAR))])
    pixels = torch.randn(1, 3, 32, 32)
    kept = captured(model, ids, mask, pixels)
    detached = captured(model, ids, mask, pixels, keep_grad=False)
    assert kept.rows.requires_grad and not detached.rows.requires_grad
    torch.testing.assert_close(detached.rows, kept.rows.detach(), atol=0, rtol=0)


@pytest.mark.parametrize("backward_inside", [False, True], ids=["backward_after_exit", "backward_inside"])
def test_gradient_checkpointing_keeps_gradients(model, backward_inside):
    ids, mask = batch([sequence(2, (SEG_ACT, SEG_TAR), seed=5)])
    query = role_positions(ids, (SEG_ACT, SEG_TAR))
    vision = vision_positions_from_ids(ids, IMAGE, GRID)
    pixels = torch.randn(2, 3, 32, 32)
    weights = torch.rand(1, 2, 3, 4, 2, GRID, GRID)
    model.zero_grad(set_to_none=True)
    plain = captured(model, ids, mask, pixels)
    (plain.rows * weights).sum().backward()
    want = grads(model)

    model.activation_checkpointing_enable()
    model.train()  # transformers only checkpoints in training mode; the tiny model has no dropout
    try:
        with AttentionCapture(model.model.language_model, query, vision, grid=GRID) as capture:
            model(input_ids=ids, attention_mask=mask, pixel_values=pixels, use_cache=False)
            rows = capture.result().rows
            if backward_inside:  # the recomputed layers run under the hooks
                (rows * weights).sum().backward()
        if not backward_inside:
            (rows * weights).sum().backward()
        got = grads(model)
    finally:
        model.activation_checkpointing_disable()
        model.eval()
    torch.testing.assert_close(rows, plain.rows, atol=TOL, rtol=0)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=TOL, rtol=1e-4, msg=name)


def hook_count(model) -> int:
    count = 0
    for layer in model.model.language_model.layers:
        attn = layer.self_attn
        count += (
            len(attn._forward_pre_hooks) + len(attn.q_proj._forward_hooks) + len(attn.k_proj._forward_hooks)
        )
    return count


def test_hooks_removed_on_exit_and_on_error(model):
    ids, mask = batch([sequence(1, (SEG_ACT,))])
    query = role_positions(ids, (SEG_ACT, SEG_TAR))
    vision = vision_positions_from_ids(ids, IMAGE, GRID)
    before = hook_count(model)
    capture = AttentionCapture(model.model.language_model, query, vision, grid=GRID)
    with capture:
        assert hook_count(model) == before + 3 * 3
    assert hook_count(model) == before
    with pytest.raises(RuntimeError, match="boom"), capture:
        raise RuntimeError("boom")
    assert hook_count(model) == before
    with pytest.raises(RuntimeError, match="no attention was captured"):
        capture.result()


def test_second_forward_in_one_context_raises(model):
    ids, mask = batch([sequence(1, (SEG_ACT,))])
    pixels = torch.randn(1, 3, 32, 32)
    set_text_attention(model, "sdpa")
    query = role_positions(ids, (SEG_ACT, SEG_TAR))
    vision = vision_positions_from_ids(ids, IMAGE, GRID)
    with (
        torch.no_grad(),
        AttentionCapture(model.model.language_model, query, vision, grid=GRID),
    ):
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        with pytest.raises(RuntimeError, match="ran twice"):
            model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    assert hook_count(model) == 0


def test_invalid_arguments(model):
    lm = model.model.language_model
    query, vision = torch.zeros(1, 2, dtype=torch.long), torch.arange(16)[None]
    with pytest.raises(ValueError, match="layer indices"):
        AttentionCapture(lm, query, vision, grid=GRID, layers=[3])
    with pytest.raises(ValueError, match="head indices"):
        AttentionCapture(lm, query, vision, grid=GRID, heads=[0, 0])
    with pytest.raises(ValueError, match="multiple of 4x4"):
        AttentionCapture(lm, query, vision[:, :15], grid=GRID)


def test_role_positions_first_occurrence_and_absent():
    ids = torch.tensor([[5, SEG_ACT, 6, SEG_TAR, SEG_ACT], [SEG_TAR, 1, 2, 3, 4], [1, 2, 3, 4, 5]])
    want = torch.tensor([[1, 3], [-1, 0], [-1, -1]])
    assert torch.equal(role_positions(ids, (SEG_ACT, SEG_TAR)), want)


def test_vision_positions_frame_major():
    ids, _ = batch([sequence(2, (SEG_ACT,), text=3)])
    positions = vision_positions_from_ids(ids, IMAGE, GRID)
    first = 3 + 1  # three text tokens, then <img>
    second = first + GRID * GRID + 2  # skip </img><img>
    want = torch.cat([torch.arange(first, first + 16), torch.arange(second, second + 16)])[None]
    assert torch.equal(positions, want)
    with pytest.raises(ValueError, match="same number"):
        vision_positions_from_ids(torch.tensor([[IMAGE] * 16, [1] * 16]), IMAGE, GRID)
    with pytest.raises(ValueError, match="whole number"):
        vision_positions_from_ids(torch.tensor([[IMAGE] * 12]), IMAGE, GRID)
