"""Importers: a tiny ReVIOSa written out in each foreign layout (inverse key maps) and read back.

No network: the fixtures are built from the documented key patterns (reviosa/importers/keymaps.py)
and a foreign config.json in the remote-code InternVL layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from reviosa import importers
from reviosa.config import ReviosaConfig, SamConfig, preset, tiny_config
from reviosa.hub import CheckpointError, from_pretrained
from reviosa.importers import keymaps, sources
from reviosa.importers.vocab import EMBED, LM_HEAD, rename_tokens
from reviosa.modeling import ReviosaModel, parameters_on_meta

# How each foreign tokenizer names the tiny tokenizer's two role tokens. Plain InternVL2.5 has no
# role tokens: there they become two ordinary InternVL tokens, and the importer must add ours.
TOKEN_NAMES = {
    "internvl": {"[SEG_ACT]": "<ref>", "[SEG_TAR]": "</ref>"},
    "sa2va": {"[SEG_ACT]": "[SEG]", "[SEG_TAR]": "<p>"},
    "reviosa-ref": {"[SEG_ACT]": "[SEG]", "[SEG_TAR]": "[SEG_OBJ]"},
}
MODEL_TYPES = {"internvl": "internvl_chat", "sa2va": "sa2va_chat", "reviosa-ref": "reviosa_chat"}


class NotATensor:
    """A pickled object a weights-only load must refuse."""


# --- fixture builders --------------------------------------------------------------------------------


def foreign_config(config: ReviosaConfig, model_type: str) -> dict:
    """config.json in the remote-code InternVL layout (fields as in OpenGVLab/InternVL2_5-1B)."""
    v, t = config.vision, config.text
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": model_type,
        "downsample_ratio": config.downsample_ratio,
        "force_image_size": v.image_size,
        "select_layer": -1,
        "ps_version": "v2",
        "template": "internvl2_5",
        "tie_word_embeddings": False,
        "vision_config": {
            "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_act": "gelu",
            "hidden_size": v.hidden_size, "num_hidden_layers": v.num_hidden_layers,
            "num_attention_heads": v.num_attention_heads, "intermediate_size": v.intermediate_size,
            "image_size": v.image_size, "patch_size": v.patch_size, "qkv_bias": True,
            "qk_normalization": False, "norm_type": "layer_norm", "layer_norm_eps": 1e-6,
        },
        "llm_config": {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
            "hidden_size": t.hidden_size, "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
            "intermediate_size": t.intermediate_size, "vocab_size": t.vocab_size, "rope_theta": t.rope_theta,
            "max_position_embeddings": t.max_position_embeddings, "rms_norm_eps": t.rms_norm_eps,
            "tie_word_embeddings": False, "use_sliding_window": False,
            "rope_scaling": {"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"},
        },
    }  # fmt: skip


def write_foreign(model: ReviosaModel, fmt: str, directory: Path, shards: int = 1) -> Path:
    """Write ``model`` as a ``fmt`` HF folder: weights (optionally sharded), config.json, tokenizer."""
    directory.mkdir(parents=True)
    keymap = importers.FORMATS[fmt].keymap
    state = keymap.to_foreign(model.state_dict())
    if shards == 1:
        save_file(state, str(directory / "model.safetensors"))
    else:
        keys = sorted(state)
        weight_map = {}
        for i in range(shards):
            name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: state[k].contiguous() for k in keys[i::shards]}
            save_file(part, str(directory / name))
            weight_map.update(dict.fromkeys(part, name))
        (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(foreign_config(model.config, MODEL_TYPES[fmt])))
    rename_tokens(model.tokenizer, TOKEN_NAMES[fmt]).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def source(tiny_tokenizer) -> ReviosaModel:
    """Tiny random model whose embedding rows equal its tokenizer (as real InternVL2.5 / Sa2VA)."""
    cfg = tiny_config()
    cfg.text.vocab_size = len(tiny_tokenizer)
    torch.manual_seed(7)
    model = ReviosaModel(cfg, tiny_tokenizer).eval()
    with torch.no_grad():  # layer scales and norms start at constants: make every tensor distinctive
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.fixture(scope="module")
def folders(source, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("foreign")
    out = {fmt: write_foreign(source, fmt, root / fmt) for fmt in ("sa2va", "reviosa-ref")}
    out["internvl"] = write_foreign(source, "internvl", root / "internvl", shards=2)
    torch.save({"model": source.sam.state_dict()}, root / "sam2.pt")
    out["sam2"] = root / "sam2.pt"
    return out


def tiny_sam() -> SamConfig:
    return tiny_config().sam


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- equality helpers --------------------------------------------------------------------------------


def assert_same_tensors(imported: dict, original: dict, skip: tuple[str, ...] = ()) -> None:
    assert set(imported) == set(original)
    for key, value in original.items():
        if key.startswith(skip):
            continue
        assert imported[key].dtype == value.dtype, key
        assert torch.equal(imported[key], value), key


def assert_mean_rows(imported: dict, original: dict, n: int) -> None:
    """Rows [0, n) carried over exactly; rows [n, ...) are the mean of the original rows."""
    for key in (EMBED, LM_HEAD):
        assert torch.equal(imported[key][:n], original[key])
        mean = original[key].mean(0)
        for row in imported[key][n:]:
            torch.testing.assert_close(row, mean)


def mllm_states(model: ReviosaModel, expression: str = "person walking a dog") -> torch.Tensor:
    """Last-layer hidden states for a prompt with two frames (the same ids in every imported tokenizer)."""
    gen = torch.Generator().manual_seed(0)
    size = model.config.vision.image_size
    ids = torch.tensor([model.processor.prompt_ids(expression, 2)])
    with torch.no_grad():
        embeds = model.embed(ids, torch.randn(2, 3, size, size, generator=gen))
        return model.hidden_states(embeds, torch.ones_like(ids))


def sam_logits(model: ReviosaModel) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    s = model.config.sam.image_size
    prompts = torch.randn(1, 2, model.config.text.hidden_size, generator=gen)
    with torch.no_grad():
        logits, _ = model.decode_frames(torch.randn(1, 1, 3, s, s, generator=gen), model.prompt_proj(prompts))
    return logits


# --- detection ---------------------------------------------------------------------------------------


def test_detect_each_layout(folders, tiny_model_dir):
    assert importers.detect_format(folders["internvl"]) == "internvl"
    assert importers.detect_format(folders["sa2va"]) == "sa2va"
    assert importers.detect_format(folders["reviosa-ref"]) == "reviosa-ref"
    assert importers.detect_format(tiny_model_dir) == "reviosa"


def test_unknown_layout_lists_unknown_keys(tmp_path):
    save_file(
        {"encoder.weight": torch.zeros(2), "mlp1.1.weight": torch.zeros(2)},
        str(tmp_path / "model.safetensors"),
    )
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"1 unknown key.*encoder\.weight"):
        from_pretrained(tmp_path)


# --- round trips -------------------------------------------------------------------------------------


def test_sa2va_gives_the_actor_only_baseline(source, folders):
    model = from_pretrained(folders["sa2va"], sam_config=tiny_sam())
    n = len(source.tokenizer)
    vocab, original = model.tokenizer.get_vocab(), source.tokenizer.get_vocab()
    # [SEG] was renamed in place: same id, so its trained rows carry over; [SEG_TAR] is appended.
    assert vocab["[SEG_ACT]"] == original["[SEG_ACT]"] and "[SEG]" not in vocab
    assert vocab["[SEG_TAR]"] == n and vocab["<p>"] == original["[SEG_TAR]"]
    assert model.config.text.vocab_size == n + 1 and model.config.name.startswith("sa2va-")
    imported, expected = model.state_dict(), source.state_dict()
    assert_same_tensors({k: v for k, v in imported.items() if k not in (EMBED, LM_HEAD)},
                        {k: v for k, v in expected.items() if k not in (EMBED, LM_HEAD)})  # fmt: skip
    assert_mean_rows(imported, expected, n)
    assert torch.equal(mllm_states(model), mllm_states(source))
    assert torch.equal(sam_logits(model), sam_logits(source))


def test_reference_reviosa_round_trips_exactly(source, folders):
    model = importers.load_foreign(folders["reviosa-ref"], sam_config=tiny_sam())
    assert model.tokenizer.get_vocab()["[SEG_TAR]"] == source.tokenizer.get_vocab()["[SEG_TAR]"]
    assert len(model.tokenizer) == len(source.tokenizer)
    assert_same_tensors(model.state_dict(), source.state_dict())
    assert model.processor.ids == source.processor.ids
    assert torch.equal(sam_logits(model), sam_logits(source))


def test_build_from_internvl_and_sam2_parts(source, folders):
    model = importers.build_from_parts(folders["internvl"], folders["sam2"], sam_config=tiny_sam(), seed=3)
    n = len(source.tokenizer)
    vocab = model.tokenizer.get_vocab()
    assert (vocab["[SEG_ACT]"], vocab["[SEG_TAR]"]) == (n, n + 1)
    assert model.config.text.vocab_size == n + 2
    imported, expected = model.state_dict(), source.state_dict()
    same = [k for k in expected if k not in (EMBED, LM_HEAD) and not k.startswith("prompt_proj.")]
    assert_same_tensors({k: imported[k] for k in same}, {k: expected[k] for k in same})
    assert_mean_rows(imported, expected, n)
    # The prompt MLP is new (seeded): reproducible, and not the source's.
    again = importers.build_from_parts(folders["internvl"], folders["sam2"], sam_config=tiny_sam(), seed=3)
    assert torch.equal(model.prompt_proj[0].weight, again.prompt_proj[0].weight)
    assert not torch.equal(model.prompt_proj[0].weight, source.prompt_proj[0].weight)
    assert torch.equal(mllm_states(model), mllm_states(source))


def test_internvl_needs_a_sam2_checkpoint(folders):
    with pytest.raises(ValueError, match="--sam2"):
        from_pretrained(folders["internvl"])
    with pytest.raises(ValueError, match="only for 'internvl'"):
        importers.load_foreign(folders["sa2va"], sam2=folders["sam2"], sam_config=tiny_sam())


def test_convert_cli_writes_a_native_folder(source, folders, tmp_path, monkeypatch):
    from reviosa.cli import convert

    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    out = tmp_path / "converted"
    args = parser.parse_args([str(folders["internvl"]), "--sam2", str(folders["sam2"]), "--out", str(out),
                              "--dtype", "float32"])  # fmt: skip
    # The tiny SAM2 matches no released Hiera size (the CLI derives the config from the keys): pin it.
    original = importers.load_foreign
    monkeypatch.setattr(importers, "load_foreign", lambda *a, **kw: original(*a, **kw, sam_config=tiny_sam()))
    assert convert.run(args) == 0
    assert importers.detect_format(out) == "reviosa"
    loaded = from_pretrained(out)
    built = importers.build_from_parts(folders["internvl"], folders["sam2"], sam_config=tiny_sam())
    assert_same_tensors(loaded.state_dict(), built.state_dict())
    with pytest.raises(ValueError, match="not empty"):
        convert.run(args)


# --- strictness --------------------------------------------------------------------------------------


def _edit_weights(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_extra_key_is_named(folders, tmp_path):
    bad = copy_folder(folders["sa2va"], tmp_path / "extra")
    _edit_weights(
        bad, lambda s: s.update({"vision_model.encoder.layers.0.attn.extra.weight": torch.zeros(1)})
    )
    with pytest.raises(CheckpointError, match=r"unexpected key.*attn\.extra\.weight"):
        importers.load_foreign(bad, "sa2va", sam_config=tiny_sam())
    # A key a rule renames but the model lacks: named in both layouts.
    bad = copy_folder(folders["sa2va"], tmp_path / "layer9")
    _edit_weights(
        bad, lambda s: s.update({"language_model.model.layers.9.mlp.up_proj.weight": torch.zeros(1)})
    )
    with pytest.raises(
        CheckpointError, match=r"unexpected key.*language_model\.layers\.9.*\(language_model\.model"
    ):
        importers.load_foreign(bad, sam_config=tiny_sam())


def test_missing_key_is_named(folders, tmp_path):
    bad = copy_folder(folders["sa2va"], tmp_path / "missing")
    _edit_weights(bad, lambda s: s.pop("mlp1.1.bias"))
    with pytest.raises(
        CheckpointError, match=r"missing key.*multi_modal_projector\.linear_1\.bias \(mlp1\.1\.bias\)"
    ):
        importers.load_foreign(bad, sam_config=tiny_sam())


def test_wrong_shape_is_named(folders, tmp_path):
    bad = copy_folder(folders["sa2va"], tmp_path / "shape")
    _edit_weights(bad, lambda s: s.update({"text_hidden_fcs.2.bias": torch.zeros(3)}))
    with pytest.raises(
        CheckpointError, match=r"wrong shape.*prompt_proj\.2\.bias \(text_hidden_fcs\.2\.bias\): \(3,\)"
    ):
        importers.load_foreign(bad, sam_config=tiny_sam())


def test_tied_embeddings_are_refused(folders, tmp_path):
    bad = copy_folder(folders["sa2va"], tmp_path / "tied")
    config = json.loads((bad / "config.json").read_text())
    config["llm_config"]["tie_word_embeddings"] = True
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="tie_word_embeddings"):
        importers.load_foreign(bad, sam_config=tiny_sam())


def test_sam2_pt_must_hold_plain_tensors(tmp_path):
    torch.save({"model": {"image_encoder.x": NotATensor()}}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        sources.read_sam2_pt(tmp_path / "pickled.pt")
    torch.save({"state_dict": {}}, tmp_path / "layout.pt")
    with pytest.raises(CheckpointError, match="'model'"):
        sources.read_sam2_pt(tmp_path / "layout.pt")


# --- key maps, SAM2 versions, real sizes -------------------------------------------------------------


def test_fused_qkv_splits_in_order():
    fused = torch.arange(12.0).reshape(6, 2)
    mapped = keymaps.INTERNVIT.to_native({"vision_model.encoder.layers.3.attn.qkv.weight": fused})
    prefix = "mllm.model.vision_tower.encoder.layer.3.attention."
    assert torch.equal(mapped.state[prefix + "q_proj.weight"], fused[:2])
    assert torch.equal(mapped.state[prefix + "v_proj.weight"], fused[4:])
    assert torch.equal(
        keymaps.INTERNVIT.to_foreign(mapped.state)["vision_model.encoder.layers.3.attn.qkv.weight"], fused
    )
    assert keymaps.SAM2_SA2VA.foreign_key("sam.memory_encoder.fuser.layers.1.gamma") == (
        "grounding_encoder.sam2_model.memory_encoder.fuser.layers.1.g_weight"
    )


@pytest.mark.parametrize(
    "config_name", ["configs/sam2/sam2_hiera_l.yaml", "configs/sam2.1/sam2.1_hiera_l.yaml"]
)
def test_sam2_version_and_size_from_keys(config_name):
    from reviosa.sam import build_sam

    with parameters_on_meta():
        keys = list(build_sam(SamConfig(config_name=config_name)).state_dict())
    assert sources.sam_config_from_keys(keys).config_name == config_name
    prefixed = [f"grounding_encoder.sam2_model.{k}" for k in keys]
    assert sources.sam_config_from_keys(prefixed, "grounding_encoder.sam2_model.").config_name == config_name


@pytest.mark.parametrize("name", ["1b", "4b"])
def test_config_derived_from_real_internvl_fields(name):
    reference = preset(name)
    raw = foreign_config(reference, "internvl_chat")
    derived = sources.derive_config(sources.ForeignConfig(raw), 151676, SamConfig(), "reviosa", "x")
    assert derived.vision == reference.vision
    assert derived.text == dataclasses.replace(reference.text, vocab_size=151676)
    assert derived.name == f"reviosa-{name}"
    assert derived.attention_supervision == reference.attention_supervision
    raw["llm_config"]["rope_scaling"] = {"type": "yarn", "factor": 4.0}
    with pytest.raises(CheckpointError, match="rope_scaling"):
        sources.derive_config(sources.ForeignConfig(raw), 151676, SamConfig(), "reviosa", "x")
    raw["llm_config"]["architectures"] = ["InternLM2ForCausalLM"]
    with pytest.raises(CheckpointError, match="InternLM2ForCausalLM is not supported"):
        sources.derive_config(sources.ForeignConfig(raw), 151676, SamConfig(), "reviosa", "x")


# Published sizes: InternVL2_5-1B 938M and InternVL2_5-4B 3.71B parameters (Hugging Face model pages,
# safetensors "Model size"); SAM 2 / 2.1 Hiera-L 224.4M (facebookresearch/sam2 README, "Size (M)").
# Cross-check by parts: InternViT-300M 304.0M + projector (4.5M / 12.6M) + untied embeddings and lm_head
# (2 x 151674 x D) + Qwen2.5 non-embedding parameters (0.36B for 0.5B, 2.77B for 3B, Qwen2.5 model cards).
@pytest.mark.parametrize(("name", "mllm_params"), [("1b", 938e6), ("4b", 3.71e9)])
def test_real_presets_match_published_parameter_counts(tiny_tokenizer, name, mllm_params):
    with parameters_on_meta():
        model = ReviosaModel(preset(name), tiny_tokenizer)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.mllm) == pytest.approx(mllm_params, rel=5e-3)
    assert count(model.sam) == pytest.approx(224.4e6, rel=5e-3)


# --- fields derived from a foreign config.json (issue 15, item 7) ------------------------------------


def _derive(raw: dict):
    return sources.derive_config(sources.ForeignConfig(raw), 151676, SamConfig(), "reviosa", "x")


def test_llm_config_resaved_by_transformers_5_derives_the_same_model():
    """transformers 5 moves rope_theta (and rope_scaling) under rope_parameters when it re-saves."""
    from transformers import Qwen2Config

    raw = foreign_config(preset("1b"), "internvl_chat")
    expected = _derive(raw)
    llm = {k: v for k, v in raw["llm_config"].items() if k != "model_type"}
    resaved = Qwen2Config(**llm).to_dict()
    assert "rope_theta" not in resaved and resaved["rope_parameters"]["rope_theta"] == 1_000_000.0
    raw["llm_config"] = resaved
    assert _derive(raw).text == expected.text
    assert _derive(raw).text.rope_theta == 1_000_000.0


def test_rope_theta_absent_or_contradictory_is_an_error_naming_the_field():
    raw = foreign_config(preset("1b"), "internvl_chat")
    del raw["llm_config"]["rope_theta"]
    with pytest.raises(CheckpointError, match=r"neither rope_theta nor rope_parameters\.rope_theta"):
        _derive(raw)
    raw["llm_config"]["rope_theta"] = 10000.0
    raw["llm_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 1_000_000.0}
    with pytest.raises(CheckpointError, match="differ"):
        _derive(raw)
    raw["llm_config"]["rope_theta"] = 1_000_000.0
    raw["llm_config"]["rope_parameters"]["rope_type"] = "yarn"
    del raw["llm_config"]["rope_scaling"]
    with pytest.raises(CheckpointError, match="only none or 'dynamic'"):
        _derive(raw)


def test_absent_vision_fields_take_the_reference_class_defaults():
    """InternVisionConfig's defaults are not ours: no qkv bias, QK norm, RMSNorm."""
    raw = foreign_config(preset("1b"), "internvl_chat")
    for key in ("qkv_bias", "qk_normalization", "norm_type", "layer_norm_eps"):
        del raw["vision_config"][key]
    vision = _derive(raw).vision
    assert (vision.attention_bias, vision.use_qk_norm, vision.norm_type) == (False, True, "rms_norm")
    assert vision.layer_norm_eps == 1e-6


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        ("llm_config", "num_key_value_heads", r"llm_config\.num_key_value_heads is missing"),
        ("llm_config", "hidden_size", r"llm_config\.hidden_size is missing"),
        ("vision_config", "patch_size", r"vision_config\.patch_size is missing"),
        ("llm_config", "architectures", r"llm_config\.architectures is missing"),
        (None, "ps_version", r"absent means the reference's default 'v1'"),
    ],
)
def test_required_fields_fail_loudly(section, key, message):
    raw = foreign_config(preset("1b"), "internvl_chat")
    del (raw[section] if section else raw)[key]
    with pytest.raises(CheckpointError, match=message):
        _derive(raw)


def test_tied_flag_follows_each_reference_config_class():
    """InternVLChatConfig unties whatever the file says; Sa2VA's language model follows llm_config."""
    raw = foreign_config(preset("1b"), "internvl_chat")
    raw["llm_config"]["tie_word_embeddings"] = True
    raw["tie_word_embeddings"] = True
    assert _derive(raw).text.tie_word_embeddings is False
    raw["model_type"] = "sa2va_chat"
    with pytest.raises(CheckpointError, match="tie_word_embeddings is true"):
        _derive(raw)
    raw["llm_config"]["tie_word_embeddings"] = False
    assert _derive(raw).text.tie_word_embeddings is False
