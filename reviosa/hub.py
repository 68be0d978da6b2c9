"""One loading entry point, strict: ``from_pretrained(dir | hub id | "builtin")`` and ``save_pretrained``.

A ReVIOSa folder holds ``config.json`` (`ReviosaConfig`), ``model.safetensors`` and the tokenizer
files. Loading raises `CheckpointError` naming every missing or unexpected key; nothing is
unpickled (safetensors only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from reviosa.config import CONFIG_NAME, ReviosaConfig, SamConfig
from reviosa.modeling import ReviosaModel, parameters_on_meta

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
# Names users may pass instead of a path or hub id.
KNOWN_MODELS = {"builtin": BUILTIN_DIR}


class CheckpointError(ValueError):
    """A checkpoint that does not match the model it claims to be."""


def save_pretrained(model: ReviosaModel, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write config, weights (safetensors) and tokenizer to ``directory``.

    ``dtype`` stores floating-point tensors in that type (e.g. float16 for a half-size download);
    `from_pretrained` casts to the dtype asked for when loading.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory)
    state = {k: _stored(v, dtype) for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "reviosa", "name": model.config.name})
    model.tokenizer.save_pretrained(str(directory))
    return directory


def _stored(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    tensor = tensor.detach().cpu()
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.contiguous()


def resolve(name_or_path: str | Path | None) -> Path:
    """A local folder for a model name: None / "builtin", an existing folder, or a hub id."""
    if name_or_path is None:
        name_or_path = "builtin"
    if str(name_or_path) in KNOWN_MODELS:
        path = KNOWN_MODELS[str(name_or_path)]
        if not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"the built-in model is missing from {path}; reinstall ReVIOSa Studio or pass --model"
            )
        return path
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} is a file; pass the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
        return path
    if str(name_or_path).count("/") != 1:
        raise FileNotFoundError(
            f"no model folder {path} (and {name_or_path!r} is not a hub id like 'org/name')"
        )
    return _download(str(name_or_path))


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
        )
    except Exception as err:  # the hub client raises many types (offline, 404, auth, timeouts)
        raise FileNotFoundError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: {err}). "
            "Check the id and your connection, or download the model elsewhere and pass its folder."
        ) from err


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a damaged file raises CheckpointError."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); re-download it") from err


def check_state(
    expected: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    source: str,
    describe: Callable[[str], str] = str,
) -> None:
    """Raise CheckpointError naming missing, unexpected and wrongly shaped tensors (20 of each).

    expected: the model's state dict; state: the checkpoint's, in the model's key names;
    describe: how a key is named in the message (importers add the foreign name).
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{describe(k)}: {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {[describe(k) for k in missing[:20]]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {[describe(k) for k in unexpected[:20]]}")
    if shapes:
        parts.append(f"{len(shapes)} tensor(s) of the wrong shape: {shapes[:20]}")
    if parts:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(parts))


def from_pretrained(
    name_or_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    format: str | None = None,
    sam2: str | Path | None = None,
    sam_config: SamConfig | None = None,
) -> ReviosaModel:
    """Load a ReVIOSa model strictly. Parameters are created on the meta device and replaced by
    the checkpoint's tensors, so a real-size model is never initialised at random first.

    ``format``: None detects the layout (our own, or a foreign one: "internvl", "sa2va",
    "reviosa-ref"; see `reviosa.importers`), logging which it found. ``sam2`` (a Meta SAM2 .pt) and
    ``sam_config`` only apply to foreign layouts.
    """
    from transformers import AutoTokenizer

    directory = resolve(name_or_path)
    if format != "reviosa":
        from reviosa import importers

        found = format or importers.detect_format(directory)
        if found != "reviosa":
            model = importers.load_foreign(directory, found, sam2=sam2, sam_config=sam_config)
            return model.to(device=device, dtype=dtype).eval()
    config = ReviosaConfig.load(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read the tokenizer in {directory}: {err}") from err
    with parameters_on_meta():
        model = ReviosaModel(config, tokenizer)
    state = load_state(weights)
    check_state(model.state_dict(), state, str(weights))
    model.load_state_dict(state, strict=True, assign=True)
    logger.info("loaded %s (%s) from %s", config.name, _count(model), directory)
    return model.to(device=device, dtype=dtype).eval()


def _count(model: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"
