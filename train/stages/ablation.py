"""Stage 5: the paper's Table 4, as the paper runs it: the four variants fine-tuned from the same
stage-3 checkpoint, several seeds each, mean and spread.

python -m train.stages.ablation --stage3 runs/stage3 --stage4 runs/stage4 --out runs/stage5
    [--seeds 1 2 3] [--steps 600] [--test-clips 30] [--test-seed 1]

Variants (``train.ablation_table.VARIANTS``): one ``[SEG]`` token, + AML, + two tokens, both
(= stage 4's recipe). Each is stage 4's run with its switches and seed, AML on the heads stage 4
selected (OUT/../stage4/heads), scored on one generated test split with ``predict --dataset`` +
``evaluate``. Writes OUT/{variant}/seed{S}.json (scores), OUT/stage3.sha256 (the stage-3 model
they come from: scores of another one stop the run), OUT/ablation.md (the table) and its section
of the report. A gain smaller than the spread between seeds is no gain.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from train import report
from train.ablation_table import VARIANTS
from train.stages import finetune
from train.stages import reviosa as stage4
from train.stages.common import RECIPE

BENCHES = ("actor", "target", "rvos")


ORIGIN = "stage3.sha256"  # in OUT: which stage-3 model the scores there were trained from


def check_origin(out: Path, stage3: Path) -> None:
    """Refuse to go on from scores trained from another stage-3 model (a stage 3 trained again
    leaves the committed scores of the old one in OUT); record the model's digest otherwise."""
    digest = hashlib.sha256((stage3 / "model" / "model.safetensors").read_bytes()).hexdigest()
    recorded = out / ORIGIN
    scored = [path for path in out.glob("*/seed*.json") if path.stem[4:].isdigit()]
    known = recorded.read_text().strip() if recorded.is_file() else None
    if scored and known != digest:
        why = "another stage-3 model" if known else "a stage-3 model it cannot tell (no stage3.sha256)"
        raise SystemExit(
            f"{out} holds {len(scored)} scores trained from {why}: move them away (or give a new --out) "
            f"to run the ablation from {stage3}"
        )
    out.mkdir(parents=True, exist_ok=True)
    recorded.write_text(digest + "\n")


def variant_sets(two_tokens: bool, aml: bool, seed: int) -> list[str]:
    return [f"data.two_tokens={str(two_tokens).lower()}", f"loss.aml={1 if aml else 0}", f"seed={seed}"]


def score(model_dir: Path, test_root: Path, out_json: Path) -> dict:
    """``predict --dataset`` then ``evaluate`` on the test split, as a user would run them."""
    if not out_json.is_file():
        results = out_json.with_suffix(".results.json")
        py = [sys.executable, "-m", "reviosa"]
        subprocess.run([*py, "predict", "--dataset", str(test_root), "--split", "test", "--model", str(model_dir),
                        "--out", str(results)], check=True)  # fmt: skip
        subprocess.run([*py, "evaluate", "--gt", str(test_root), "--split", "test", "--pred", str(results),
                        "--json", str(out_json)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return json.loads(out_json.read_text())


def summarise(scores: dict[str, list[dict]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per variant and benchmark, (mean, standard deviation over seeds) of J&F.

    A one-token variant gets no Target: it has no [SEG_TAR], so evaluate scores its targets as
    empty (0), which is no figure of the variant.
    """
    two_tokens = {name: two for name, two, _aml in VARIANTS}
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name, runs in scores.items():
        out[name] = {}
        for bench in BENCHES:
            if bench == "target" and not two_tokens[name]:
                continue
            values = [r[bench]["JF"] for r in runs if r.get(bench)]
            if values:
                out[name][bench] = (
                    float(np.mean(values)),
                    float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                )
    return out


def table(summary: dict[str, dict[str, tuple[float, float]]], seeds: int) -> str:
    lines = [
        f"| | [SEG_ACT] [SEG_TAR] | AML | Actor J&F | Target J&F | RVOS J&F |  (mean ± sd over {seeds} seeds)",
        "|---|---|---|---|---|---|",
    ]
    for i, (name, two, aml) in enumerate(VARIANTS):
        cells = []
        for bench in BENCHES:
            m = summary.get(name, {}).get(bench)
            cells.append("-" if m is None else f"{m[0]:.1f} ± {m[1]:.1f}")
        lines.append(f"| ({('i', 'ii', 'iii', 'iv')[i]}) {name} | {'yes' if two else 'no'} | {'yes' if aml else 'no'} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def report_figures(summary: dict[str, dict[str, tuple[float, float]]]) -> dict[str, float]:
    """The report's mean J&F per variant and benchmark."""
    return {
        f"{name} {bench} J&F mean": v[0] for name, benches in summary.items() for bench, v in benches.items()
    }


def run_count_note(trained: int, runs: int) -> str:
    """What the wall time covers: a resumed ablation reads committed scores back instead of training."""
    if trained == runs:
        return f"The wall time covers all {runs} runs."
    return (f"The wall time covers the {trained} runs trained by this invocation; the other "
            f"{runs - trained} were scored earlier and read back.")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.stages.ablation", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stage3", required=True)
    parser.add_argument("--stage4", required=True, help="stage-4 run directory (its heads/ selection)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--test-clips", type=int, default=30)
    parser.add_argument("--test-seed", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe field")
    parser.add_argument("--report", default=str(report.REPORT_DIR), help="stages' report folder ('': none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    stage3, out = Path(args.stage3), Path(args.out)
    check_origin(out, stage3)
    finetune.ensure_data(args.recipe, stage3)
    layer, heads = stage4.pick_heads(stage3, Path(args.stage4), samples=200)
    test = out / f"test_seed{args.test_seed}"
    if not (test / "test").is_dir():
        subprocess.run([sys.executable, "-m", "reviosa", "synth", "--out", str(test), "--split", "test",
                        "--clips", str(args.test_clips), "--seed", str(args.test_seed)], check=True)  # fmt: skip
    scores: dict[str, list[dict]] = {}
    trained = 0
    # Seed by seed, so a session that stops midway leaves whole rows of seeds to compare.
    for seed in args.seeds:
        for name, two, aml in VARIANTS:
            run, scored = out / name / f"seed{seed}", out / name / f"seed{seed}.json"
            if scored.is_file():  # committed scores: a later session goes on with the runs left
                scores.setdefault(name, []).append(json.loads(scored.read_text()))
                continue
            sets = [*stage4.sets(stage3, layer, heads, args.steps), *variant_sets(two, aml, seed), *args.set]
            cfg = finetune.stage_config(args.recipe, sets + ["eval.clips=0", "eval.at_end=false"])
            finetune.run(cfg, run, resume=False)
            trained += 1
            scores.setdefault(name, []).append(score(run / "model", test, scored))
    summary = summarise(scores)
    text = table(summary, len(args.seeds))
    (out / "ablation.md").write_text(text + "\n")
    print(text)
    if args.report:
        command = "python -m train.stages.ablation " + shlex.join(sys.argv[1:] if argv is None else argv)
        figures = report_figures(summary)
        notes = f"Test split: seed {args.test_seed}, {args.test_clips} clips.\n\n{text}"
        notes = f"{run_count_note(trained, len(args.seeds) * len(VARIANTS))}\n\n{notes}"
        report.write_section("ablation", "Stage 5: Table 4 (four variants from stage 3)", command,
                             time.perf_counter() - t0, [], figures, notes, Path(args.report))  # fmt: skip
        report.assemble(Path(args.report))


if __name__ == "__main__":
    main()
