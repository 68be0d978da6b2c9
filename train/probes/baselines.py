"""Reference predictors that need no model, to read a model's scores against.

python -m train.probes.baselines all-objects --data ROOT --split test --out results.json

``all-objects`` answers every expression with the union of all the clip's annotated objects, for
the actor and for the target: the score of a model that segments every object and has not
learned which one is referred to (the plateau FACTS.md describes). Its results file is scored by
``python -m reviosa evaluate`` like any other.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from reviosa.data import InterRVOSDataset
from reviosa.results import save, track_entry


def all_objects(dataset: InterRVOSDataset) -> dict:
    """A results dict (``reviosa.results`` layout) predicting, for every expression and both roles,
    the union of every actor and target the clip's expressions name."""
    by_video = defaultdict(list)
    for sample in dataset.samples():
        by_video[sample.video_id].append(sample)
    out: dict = {"videos": {}}
    for video, samples in by_video.items():
        union = np.zeros((len(samples[0].frame_names), *samples[0].size), dtype=bool)  # (T, H, W)
        seen: set[tuple[str, ...]] = set()  # expressions share objects: decode each set once
        for s in samples:
            for ids, masks in ((s.actor_ids, s.actor_masks), (s.target_ids, s.target_masks)):
                if ids and ids not in seen:
                    seen.add(ids)
                    union |= masks()
        out["videos"][video] = {s.exp_id: track_entry(union, union, "all objects") for s in samples}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.probes.baselines", description=__doc__.split("\n")[0]
    )
    parser.add_argument("baseline", choices=["all-objects"])
    parser.add_argument("--data", required=True, help="dataset root (InterRVOS / MeViS layout)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="results JSON to write")
    args = parser.parse_args(argv)
    save(all_objects(InterRVOSDataset(Path(args.data), args.split)), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
