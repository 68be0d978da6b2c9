"""Foreign checkpoint formats: detection, strict import into a `ReviosaModel`, and build-from-parts.

Formats (``python -m reviosa convert --format``):
    reviosa      our own folder (config.json with ``format_version``); loaded by `reviosa.hub`
    internvl     InternVL2.5 remote-code checkpoint (OpenGVLab/InternVL2_5-1B, -4B) + a Meta SAM2 .pt:
                 an untrained ReVIOSa (new role tokens mean-initialised, prompt MLP random)
    sa2va        Sa2VA HF checkpoint (ByteDance/Sa2VA-1B, -4B): the actor-only baseline; [SEG] -> [SEG_ACT],
                 [SEG_TAR] added
    reviosa-ref  the reference ReVIOSa HF layout (Sa2VA's, plus [SEG_OBJ]): [SEG_OBJ] -> [SEG_TAR]
Detection reads config.json and the safetensors headers only; a layout matching none raises
CheckpointError listing the keys no format knows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from reviosa import protocol
from reviosa.config import CONFIG_NAME, SamConfig
from reviosa.hub import CheckpointError, check_state
from reviosa.importers import keymaps, sources, vocab
from reviosa.modeling import ReviosaModel, parameters_on_meta

logger = logging.getLogger(__name__)

NATIVE = "reviosa"


@dataclass(frozen=True)
class Format:
    """One foreign layout: its key map, token renames, and whether SAM2 comes from a separate file."""

    name: str
    description: str
    keymap: keymaps.KeyMap
    renames: dict[str, str]
    family: str  # name prefix of the imported model
    sam_prefix: str | None  # where SAM2 sits in the checkpoint; None: a Meta .pt is needed

    @property
    def sam_keymap(self) -> keymaps.KeyMap:
        return keymaps.SAM2_META if self.sam_prefix is None else keymaps.SAM2_SA2VA


FORMATS: dict[str, Format] = {
    "internvl": Format(
        "internvl", "InternVL2.5 remote-code checkpoint (+ a Meta SAM2 .pt)", keymaps.INTERNVL, {},
        "reviosa", None,
    ),
    "sa2va": Format(
        "sa2va", "Sa2VA HF checkpoint (actor-only baseline)", keymaps.SA2VA, {"[SEG]": "[SEG_ACT]"},
        "sa2va", "grounding_encoder.sam2_model.",
    ),
    "reviosa-ref": Format(
        "reviosa-ref", "reference ReVIOSa HF checkpoint", keymaps.SA2VA,
        {"[SEG]": "[SEG_ACT]", "[SEG_OBJ]": "[SEG_TAR]"}, "reviosa", "grounding_encoder.sam2_model.",
    ),
}  # fmt: skip
FORMAT_NAMES = (NATIVE, *FORMATS)

_TOKENIZER_FILES = ("tokenizer_config.json", "added_tokens.json", "special_tokens_map.json", "tokenizer.json")


# --- detection ---------------------------------------------------------------------------------------


def detect_format(directory: str | Path) -> str:
    """Name of the layout in ``directory`` (one of FORMAT_NAMES); reads config.json and headers only."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"no {CONFIG_NAME} in {directory}: not a ReVIOSa model folder nor a known foreign checkpoint"
        )
    config = sources.read_json(directory / CONFIG_NAME)
    if "format_version" in config:
        return NATIVE
    keys = set(sources.read_shapes(sources.weight_files(directory)))
    unknown = sorted(k for k in keys if not keymaps.SA2VA.matches(k))
    if unknown:
        raise CheckpointError(
            f"{directory} matches no known checkpoint format ({', '.join(FORMAT_NAMES)}): "
            f"{len(unknown)} unknown key(s): {unknown[:20]}"
        )
    if not any(k.startswith(("grounding_encoder.", "text_hidden_fcs.")) for k in keys):
        return "internvl"
    if config.get("model_type") == "reviosa_chat" or _mentions(directory, "[SEG_OBJ]"):
        return "reviosa-ref"
    return "sa2va"


def _mentions(directory: Path, token: str) -> bool:
    """Whether a tokenizer file of ``directory`` names ``token`` (as a JSON string)."""
    needle = f'"{token}"'
    return any(
        needle in (directory / n).read_text(errors="ignore")
        for n in _TOKENIZER_FILES
        if (directory / n).is_file()
    )


# --- import ------------------------------------------------------------------------------------------


def load_foreign(
    directory: str | Path,
    format: str | None = None,
    sam2: str | Path | None = None,
    sam_config: SamConfig | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> ReviosaModel:
    """Import a foreign checkpoint strictly into a ReviosaModel (eval mode, CPU, ``dtype``).

    format: one of FORMATS, or None to detect. sam2: Meta SAM2 ``.pt`` (required for ``internvl``,
    refused otherwise). sam_config: SAM2 build config; None derives it from the SAM2 keys (Hiera size,
    2.0 vs 2.1). seed: initialises the prompt MLP when the checkpoint has none (``internvl``).
    """
    directory = Path(directory)
    name = format or detect_format(directory)
    if name == NATIVE:
        raise ValueError(f"{directory} is a ReVIOSa folder: load it with reviosa.hub.from_pretrained")
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; choose one of {list(FORMAT_NAMES)}")
    fmt = FORMATS[name]
    logger.info("%s: found a %s checkpoint (%s)", directory, name, fmt.description)

    mapped = _map(fmt.keymap, sources.read_tensors(sources.weight_files(directory)), str(directory))
    state, source = dict(mapped.state), dict(mapped.source)
    if fmt.sam_prefix is None:
        if sam2 is None:
            raise ValueError(
                f"{directory} is an InternVL2.5 checkpoint without SAM2: pass a Meta SAM2 .pt "
                "(python -m reviosa convert SRC --sam2 sam2_hiera_large.pt --out DIR)"
            )
        sam_state = sources.read_sam2_pt(sam2)
        sam_mapped = _map(keymaps.SAM2_META, sam_state, str(sam2))
        state.update(sam_mapped.state)
        source.update({k: f"{sam2}:{v}" for k, v in sam_mapped.source.items()})
        sam_config = sam_config or sources.sam_config_from_keys(sam_state)
    else:
        if sam2 is not None:
            raise ValueError(f"a {name} checkpoint carries its own SAM2; --sam2 is only for 'internvl'")
        sam_config = sam_config or sources.sam_config_from_keys(mapped.source.values(), fmt.sam_prefix)

    tokenizer = _tokenizer(directory, fmt.renames)
    if vocab.EMBED not in state:
        raise CheckpointError(f"{directory}: no token embedding (language_model.model.embed_tokens.weight)")
    vocab.add_missing_role_tokens(state, tokenizer)
    foreign_config = sources.ForeignConfig(sources.read_json(directory / CONFIG_NAME))
    config = sources.derive_config(
        foreign_config, state[vocab.EMBED].shape[0], sam_config, fmt.family, directory.name,
        prompt_dim=sources.sam_prompt_dim(state),
    )  # fmt: skip
    # The reference's inference protocol travels with the imported model (docs/checkpoints.md).
    config = protocol.with_protocol(config, protocol.FORMAT_PROTOCOLS[name])
    with parameters_on_meta():
        model = ReviosaModel(config, tokenizer)
    if fmt.sam_prefix is None:
        state.update(_fresh_prompt_mlp(model, seed))
    _check(model, state, source, fmt)
    model.load_state_dict(state, strict=True, assign=True)
    logger.info("imported %s as %s (%s tokens)", directory, config.name, len(tokenizer))
    return model.to(dtype=dtype).eval()


def build_from_parts(
    internvl: str | Path,
    sam2: str | Path,
    sam_config: SamConfig | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> ReviosaModel:
    """InternVL2.5 folder + Meta SAM2 .pt -> an untrained ReVIOSa, ready for training.

    [SEG_ACT] / [SEG_TAR] are added with mean-initialised rows; the prompt MLP is PyTorch's default
    Linear initialisation (as Sa2VA's text_hidden_fcs), seeded with ``seed``.
    """
    return load_foreign(internvl, "internvl", sam2=sam2, sam_config=sam_config, dtype=dtype, seed=seed)


# --- helpers -----------------------------------------------------------------------------------------


def _map(keymap: keymaps.KeyMap, state: dict[str, torch.Tensor], where: str) -> keymaps.Mapped:
    try:
        mapped = keymap.to_native(state)
    except ValueError as err:
        raise CheckpointError(f"{where}: {err}") from err
    if mapped.unknown:
        raise CheckpointError(
            f"{where}: {len(mapped.unknown)} unexpected key(s) no {keymap.name} rule knows: {mapped.unknown[:20]}"
        )
    return mapped


def _tokenizer(directory: Path, renames: dict[str, str]) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read the tokenizer in {directory}: {err}") from err
    return vocab.rename_tokens(tokenizer, renames) if renames else tokenizer


def _fresh_prompt_mlp(model: ReviosaModel, seed: int) -> dict[str, torch.Tensor]:
    """Random prompt-MLP weights (CPU), shaped as the model's ``prompt_proj``."""
    d, p = model.config.text.hidden_size, model.config.prompt_dim
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, p))
    finally:
        torch.random.set_rng_state(generator_state)
    return {f"prompt_proj.{k}": v.detach() for k, v in mlp.state_dict().items()}


def _check(model: ReviosaModel, state: dict[str, torch.Tensor], source: dict[str, str], fmt: Format) -> None:
    """Missing, unexpected and wrongly shaped tensors, each named in both layouts."""

    def foreign(native: str) -> str:
        name = source.get(native) or fmt.keymap.foreign_key(native) or fmt.sam_keymap.foreign_key(native)
        return f"{native} ({name})" if name else native

    check_state(model.state_dict(), state, f"the {fmt.name} checkpoint", describe=foreign)
