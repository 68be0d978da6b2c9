"""What stages 3-5 share: a ``train fit`` run of the stages' recipe over earlier stages' files,
its validation J&F, and its section of the report."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from train.config import TrainConfig, load_config
from train.loop import LOG_NAME, Trainer, ensure_synth, export_run

# The paper freezes the InternViT and the SAM2 image encoder; ours also keeps SAM2's memory
# modules as stage 2 left them (a loop that decodes frames one by one never trains the memory, it
# could only drift). The projector (InternVL's MLP) trains, with the recipe's words term: stage 3
# on the third-phase SAM2, 500 steps, with it frozen kept the role prompt's mask Dice at 0.54 and
# scored validation Actor / RVOS J&F 34.5 / 35.3; trained, the Dice fell to 0.45 from step 300 on
# and the scores were 36.4 / 37.1 (docs/training.md). A 0 lr freezes a group (train.config.Stage).
FROZEN = "{vision: 0, sam_encoder: 0, sam_other: 0}"


def stage_config(recipe: str, sets: list[str]) -> TrainConfig:
    """The recipe with the stage's fields set, then the caller's (later ones win)."""
    return load_config(recipe, sets)


def run(
    cfg: TrainConfig, out: Path, resume: bool, export_dtype: torch.dtype | None = None
) -> tuple[dict, float]:
    """Train (or finish) the run in ``out``; its last validation metrics and its training time
    (seconds, every step the log holds: a finished run asked again reports the time it took).
    A finished run (``out/model`` exported) is not trained again. ``export_dtype`` (e.g. float16,
    to commit the model at half the size) rewrites the export of a run trained by this call."""
    if not (out / "model" / "model.safetensors").is_file():
        resume = resume or (out / "checkpoints").is_dir()
        Trainer(cfg, out, resume=resume).fit()
        if export_dtype is not None:
            export_run(out, out / "model", dtype=export_dtype)
    return last_eval(out), step_seconds(out)


def _records(out: Path) -> list[dict]:
    path = out / LOG_NAME
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def last_eval(out: Path) -> dict:
    """The newest evaluation record of a run's log (an empty dict when it has none)."""
    evals = [r["eval"] for r in _records(out) if "eval" in r]
    return evals[-1] if evals else {}


def step_seconds(out: Path) -> float:
    """Seconds of the run's steps (the log's ``time_s``: checkpoint writes and in-run validations
    count in the step after them, the validation at the end does not)."""
    return float(sum(r.get("time_s", 0.0) for r in _records(out) if "eval" not in r))


def ensure_data(recipe: str, stage3: Path) -> None:
    """Render the recipe's synthetic train and val splits into ``stage3/data`` unless they are
    there: a fresh clone has stage 3's model but not its data (deterministic from the recipe's
    seed, so the clips are the ones stage 3 trained on)."""
    ensure_synth(stage3 / "data", stage_config(recipe, []).data.synth, with_val=True)
