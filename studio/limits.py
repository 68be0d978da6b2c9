"""Server-side caps on what one request may ask of the studio.

The caps protect a shared server (a Space, a lab machine) from one upload taking all its memory or
time. They reduce work where that keeps the result meaningful (long clips are strided, large frames
downscaled, each with a notice) and refuse only with a reason that says what to change.

Every cap can be set by an environment variable (``REVIOSA_MAX_FRAMES=600``, useful on a Space,
where the command line is fixed) or by the app's command-line flags, which win over the environment.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass

from reviosa import caps

ENV_PREFIX = "REVIOSA_"


@dataclass(frozen=True)
class Limits:
    """Caps applied to every request; the user's own settings may only tighten them."""

    # Clips longer than this are refused: decoding alone would hold a worker for minutes. 10 minutes
    # of 30 fps video is 18,000 frames, which striding down to max_frames would mostly throw away.
    max_duration_s: float = 600.0
    # Frames the model processes; longer clips are strided uniformly to fit (notice shown). The
    # numbers shared with the CLI come from reviosa.caps, where the reasons for them are.
    max_frames: int = caps.MAX_FRAMES
    # Longer frame side after decoding; larger frames are downscaled (notice shown).
    max_side: int = caps.MAX_SIDE
    # Largest upload accepted by the web server (Gradio's max_file_size), in megabytes.
    max_upload_mb: int = 200
    # Longest expression in characters; the model's own limit applies too (the smaller wins).
    max_expression_chars: int = caps.MAX_EXPRESSION_CHARS
    # Requests the queue runs at once; the model instance is shared by all of them.
    concurrency: int = 2
    # Models kept loaded at once (least recently used is dropped first).
    max_models: int = 2
    # Whether users may type a local folder or a hub id; a public Space may want only the default.
    allow_model_choice: bool = True

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and value <= 0:
                raise ValueError(f"limit {f.name} must be positive, got {value}")

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> Limits:
        """Defaults, then ``REVIOSA_<FIELD>`` variables, then ``overrides`` that are not None."""
        env = os.environ if env is None else env
        values = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _parse(name: str, kind: str, raw: str):
    try:
        if kind == "bool":
            if raw.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.strip().lower() in ("1", "true", "yes")
        return int(raw) if kind == "int" else float(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from None


def add_limit_arguments(parser) -> None:
    """One argparse flag per cap (``--max-frames 600``); None means environment or built-in default."""
    for f in dataclasses.fields(Limits):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=functools.partial(_parse, f.name, f.type),
            default=None,
            metavar="yes|no" if f.type == "bool" else f.type.upper(),
            help=f"default {f.default} (env {ENV_PREFIX}{f.name.upper()})",
        )


def limits_from_args(args) -> Limits:
    return Limits.from_env(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)})
