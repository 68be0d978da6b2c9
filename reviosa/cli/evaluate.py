"""``python -m reviosa evaluate``: J, F, J&F of a results JSON for InterRVOS-Actor, -Target and RVOS."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gt", required=True, help="dataset root or split folder (meta_expressions.json ...)"
    )
    parser.add_argument("--split", help="split under --gt (e.g. val); optional when --gt is a split folder")
    parser.add_argument("--pred", required=True, help="results JSON written by `predict --dataset`")
    parser.add_argument("--json", help="save the scores here (keys actor, target, rvos: J, F, JF in percent)")
    parser.add_argument("--workers", type=int, default=2, help="processes scoring expressions in parallel")
    parser.add_argument("--per-expression", action="store_true", help="also save every expression's J and F")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from reviosa.data import InterRVOSDataset
    from reviosa.evaluation import evaluate_results
    from reviosa.results import load as load_results

    pred_path = Path(args.pred)
    if not pred_path.is_file():
        raise FileNotFoundError(f"results file {pred_path} does not exist")
    results = load_results(pred_path)
    dataset = InterRVOSDataset(args.gt, split=args.split)
    scores = evaluate_results(dataset, results, workers=args.workers)
    print(scores.table(name=pred_path.stem))
    print()
    print(scores.type_table())
    if scores.missing:
        print(
            f"\n{len(scores.missing)} of {len(dataset)} expressions had no prediction and were scored as empty masks"
        )
    if scores.no_target:
        print(
            f"{len(scores.no_target)} unidirectional expressions had no target ([SEG_TAR]) and were scored as empty"
        )
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(scores.to_json(per_expression=args.per_expression), indent=2))
        print(f"scores saved to {out}")
    return 0
