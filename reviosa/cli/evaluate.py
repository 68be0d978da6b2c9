"""``python -m reviosa evaluate``: J, F, J&F of a results JSON for InterRVOS-Actor, -Target and RVOS.

Under ``torchrun --nproc_per_node N`` each rank scores its share of the videos and rank 0 prints and
saves the merged scores, identical to one process's (`reviosa.distributed`).
"""

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

    from reviosa import distributed
    from reviosa.data import InterRVOSDataset
    from reviosa.results import load as load_results

    pred_path = Path(args.pred)
    if not pred_path.is_file():
        raise FileNotFoundError(f"results file {pred_path} does not exist")
    results = load_results(pred_path)
    dataset = InterRVOSDataset(args.gt, split=args.split)
    world = distributed.world_from_env()
    with distributed.process_group(world):
        scores = _sharded_scores(dataset, results, args.workers, world)
    if scores is None:  # not rank 0: rank 0 prints and saves the merged scores
        return 0
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


def _sharded_scores(dataset, results: dict, workers: int, world):
    """This rank scores its videos' expressions; rank 0 returns everyone's merged, the others None.

    One process takes the same path (one shard), so both aggregate in dataset order.
    """
    from reviosa import distributed
    from reviosa.evaluation import evaluate_results

    mine = distributed.my_samples(list(dataset.samples()), world)
    videos = results["videos"]
    own = {s.video_id for s in mine}
    if world.is_main:  # predictions of videos the dataset lacks: rank 0 reports them, once
        own |= set(videos) - set(dataset.video_ids)
    part = evaluate_results(
        distributed.ShardView(mine), {"videos": {v: videos[v] for v in videos if v in own}}, workers=workers
    )
    parts = distributed.gather(part, world)
    return None if parts is None else distributed.merge_scores(dataset, parts)
