"""Stage 3: Sa2VA, the single-``[SEG]`` model from stages 1 and 2, fine-tuned on RVOS.

python -m train.stages.sa2va --stage1 runs/stage1 --stage2 runs/stage2 --out runs/stage3
    [--recipe train/recipes/stages.yaml] [--steps 600] [--set key=value ...] [--resume]

The model is the recipe's, its MLLM loaded from stage 1 (``model.mllm_init``, with its tokenizer)
and its SAM2 from stage 2 (``model.sam_init``). As in the paper, the vision tower and the SAM2
image encoder stay frozen (and with them SAM2's memory modules); the language model, the
projector (InternVL's MLP), the prompt MLP and the mask decoder train, on every caption type of
the synthetic world, with one role token: every answer is ``Sure, [SEG_ACT].``
(``data.two_tokens: false``), no AML. Losses: segmentation (CE x2 + Dice x0.5) + text + SAM2's
presence term + the recipe's prompt terms (the words term among them trains the projector). The
gate is written down, not a threshold: validation RVOS J&F through the inference path (memory
propagation).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from train import report
from train.stages import finetune
from train.stages.common import RECIPE
from train.stages.sam_pretrain import WEIGHTS as SAM_WEIGHTS
from train.stages.vl_pretrain import MLLM


def sets(stage1: str, stage2: str, steps: int, grounded: str = "") -> list[str]:
    """The stage's fields: the model from stage 1's MLLM and stage 2's SAM2, or (``grounded``) the
    whole model its grounding phase exported (``train.stages.grounding``)."""
    start = (
        ["model.kind=pretrained", f"model.path={grounded}"]
        if grounded
        else [f"model.mllm_init={Path(stage1) / MLLM}", f"model.sam_init={Path(stage2) / SAM_WEIGHTS}"]
    )
    return [
        *start,
        "data.two_tokens=false",
        "loss.aml=0",
        "loss.object=1",
        f"optim.max_steps={steps}",
        f"stages=[{{start: 0.0, lr_scale: {finetune.FROZEN}}}]",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.stages.sa2va", description=__doc__.split("\n")[0])
    parser.add_argument("--stage1", default="", help="stage-1 folder (mllm.safetensors, tokenizer/)")
    parser.add_argument("--stage2", default="", help="stage-2 folder (sam.safetensors)")
    parser.add_argument(
        "--grounded", default="", help="the grounding phase's model folder, instead of --stage1 / --stage2"
    )
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument(
        "--grounding-steps", type=int, default=0,
        help="first the grounding phase (train.stages.grounding) for this many steps, into OUT/grounding",
    )  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe field")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--report", default=str(report.REPORT_DIR), help="stages' report folder ('': none)")
    args = parser.parse_args(argv)
    if not args.grounded and not (args.stage1 and args.stage2):
        parser.error("give --stage1 and --stage2, or --grounded")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    if args.grounding_steps and not args.grounded:
        from train.stages import grounding

        phase = ["--stage1", args.stage1, "--stage2", args.stage2, "--recipe", args.recipe]
        grounding.main(
            [*phase, "--out", str(out / "grounding"), "--steps", str(args.grounding_steps), "--resume"]
        )
        args.grounded = str(out / "grounding" / grounding.MODEL)
    cfg = finetune.stage_config(
        args.recipe, [*sets(args.stage1, args.stage2, args.steps, args.grounded), *args.set]
    )
    # float16: the model is committed (checkpoints/stage3/model) and stage 4 loads it as float32
    metrics, wall = finetune.run(cfg, out, args.resume, export_dtype=torch.float16)
    if args.report:
        command = "python -m train.stages.sa2va " + shlex.join(sys.argv[1:] if argv is None else argv)
        figures = {k: v for k, v in metrics.items() if k.startswith(("actor", "rvos", "token"))}
        notes = (f"{cfg.optim.max_steps} steps; validation on the first {cfg.eval.clips} val clips; "
                 f"model exported to `{out / 'model'}`. The gate is RVOS J&F, written down.")  # fmt: skip
        gate = [report.Gate("validation RVOS J&F (written down)", metrics.get("rvos_JF", 0.0), 0.0)]
        report.write_section("sa2va", "Stage 3: Sa2VA (single [SEG])", command, wall, gate, figures, notes,
                             Path(args.report))  # fmt: skip
        report.assemble(Path(args.report))
    print(f"stage 3 model: {out / 'model'}")


if __name__ == "__main__":
    main()
