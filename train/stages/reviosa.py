"""Stage 4: ReVIOSa, from the stage-3 Sa2VA: ``[SEG_ACT]`` / ``[SEG_TAR]`` and the attention mask
loss on the heads the selection protocol picks on stage 3 (the paper's Figure 6).

python -m train.stages.reviosa --stage3 runs/stage3 --out runs/stage4
    [--recipe train/recipes/stages.yaml] [--steps 600] [--samples 200] [--set key=value ...]
    [--grounding-steps N [--motion W] [--roles W] [--role-query W] [--neither-weight W]]

First ``train select-heads`` on the stage-3 model over its validation split (the layer whose
``[SEG_ACT]`` attends most to the vision tokens, then its top 4 heads; OUT/heads/); with
``--grounding-steps``, the grounding phase (``train.stages.grounding``: both role tokens taught to
pick their referents, AML on those heads, and the dense terms given) into OUT/grounding; then the
recipe fine-tunes the stage-3 model (or the grounding phase's export; ``model.kind:
pretrained``) with two role tokens and AML on those heads, the same parts frozen as in stage 3, on
the same training clips. Its export (OUT/model) is the built-in candidate, scored by ``predict
--dataset`` + ``evaluate`` (``scripts/reproduce_builtin.sh``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import torch

from train import report
from train.stages import finetune, grounding
from train.stages.common import RECIPE

logger = logging.getLogger(__name__)


def pick_heads(stage3: Path, out: Path, samples: int, top_k: int = 4) -> tuple[int, list[int]]:
    """The selection protocol on the stage-3 model (cached in OUT/heads/selection.json)."""
    path = out / "heads" / "selection.json"
    if not path.is_file():
        from reviosa.data import InterRVOSDataset
        from reviosa.hub import from_pretrained
        from train.select_heads import choose_samples, save_figures, select_heads

        model = from_pretrained(str(stage3 / "model"))
        dataset = InterRVOSDataset(stage3 / "data", split="val")
        selection = select_heads(model, choose_samples(dataset, samples), top_k=top_k)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(selection.to_json(), indent=2) + "\n")
        save_figures(selection, path.parent)
    chosen = json.loads(path.read_text())
    return int(chosen["layer"]), [int(h) for h in chosen["heads"]]


def sets(stage3: Path, layer: int, heads: list[int], steps: int, start: Path | None = None) -> list[str]:
    """The stage's fields: two role tokens and AML on ``layer`` / ``heads``, fine-tuning stage 3's
    model or ``start`` (the grounding phase's export), on stage 3's clips."""
    return [
        "model.kind=pretrained",
        f"model.path={start or stage3 / 'model'}",
        f"data.root={stage3 / 'data'}",
        "data.two_tokens=true",
        "loss.aml=1",
        "loss.object=1",
        f"attention.layer={layer}",
        f"attention.heads={heads}",
        f"optim.max_steps={steps}",
        f"stages=[{{start: 0.0, lr_scale: {finetune.FROZEN}}}]",
    ]


def grounding_argv(args: argparse.Namespace, layer: int, heads: list[int]) -> list[str]:
    """The grounding phase's command line: from stage 3's export, both role tokens, AML on the
    chosen layer and heads, stage 3's clip pools when it has them, the dense terms given."""
    stage3 = Path(args.stage3)
    dense = [
        f"--{name.replace('_', '-')}={getattr(args, name)}"
        for name in (*grounding.DENSE_TERMS, "vision_lr_scale", "neither_weight")
    ]
    return ["--init", str(stage3 / "model"), "--recipe", args.recipe, "--two-tokens", "--aml", "1",
            "--aml-layer", str(layer), "--aml-heads", *map(str, heads), "--pool-from", str(stage3 / "grounding"),
            *dense, "--out", str(Path(args.out) / "grounding"), "--steps", str(args.grounding_steps), "--resume"]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.stages.reviosa", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stage3", required=True, help="stage-3 run directory (model/, data/)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument(
        "--grounding-steps", type=int, default=0,
        help="first the grounding phase (two role tokens, AML on the chosen heads) into OUT/grounding",
    )  # fmt: skip
    for term in grounding.DENSE_TERMS:
        parser.add_argument(
            f"--{term.replace('_', '-')}", type=float, default=0.0,
            help=f"weight of the grounding phase's {term} term (train.stages.grounding; 0: off)",
        )  # fmt: skip
    parser.add_argument(
        "--vision-lr-scale", type=float, default=0.0,
        help="the grounding phase trains the MLLM's vision tower at this scale of its lr (0: frozen)",
    )  # fmt: skip
    parser.add_argument(
        "--neither-weight", type=float, default=1.0,
        help="the grounding phase draws turns naming neither colour nor shape this many times as likely",
    )  # fmt: skip
    parser.add_argument("--samples", type=int, default=200, help="validation expressions for select-heads")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe field")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--report", default=str(report.REPORT_DIR), help="stages' report folder ('': none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stage3, out = Path(args.stage3), Path(args.out)
    finetune.ensure_data(args.recipe, stage3)
    layer, heads = pick_heads(stage3, out, args.samples)
    logger.info("AML on layer %d, heads %s (selected on stage 3)", layer, heads)
    start = None
    if args.grounding_steps:
        grounding.main(grounding_argv(args, layer, heads))
        start = out / "grounding" / grounding.MODEL
    cfg = finetune.stage_config(args.recipe, [*sets(stage3, layer, heads, args.steps, start), *args.set])
    # float16, as stage 3 (the built-in model is this export, copied)
    metrics, wall = finetune.run(cfg, out, args.resume, export_dtype=torch.float16)
    if args.report:
        command = "python -m train.stages.reviosa " + shlex.join(sys.argv[1:] if argv is None else argv)
        figures = {k: v for k, v in metrics.items() if k.endswith("JF") or k == "token_accuracy"}
        notes = (f"AML layer {layer}, heads {heads} (select-heads on stage 3, `{out / 'heads'}`); "
                 f"{cfg.optim.max_steps} steps; model exported to `{out / 'model'}`.")  # fmt: skip
        gate = [report.Gate("validation RVOS J&F (written down)", metrics.get("rvos_JF", 0.0), 0.0)]
        report.write_section("reviosa", "Stage 4: ReVIOSa ([SEG_ACT] / [SEG_TAR] + AML)", command, wall, gate,
                             figures, notes, Path(args.report))  # fmt: skip
        report.assemble(Path(args.report))
    print(f"stage 4 model: {out / 'model'}")


if __name__ == "__main__":
    main()
