"""Reference predictors that need no model, to read a model's scores against.

python -m train.baselines all-objects --data ROOT --split test --out results.json

``all-objects`` answers every expression with the union of all the clip's annotated objects, for
the actor and for the target: the score of a model that segments every object and has not
learned which one is referred to (the plateau FACTS.md describes). Its results file is scored by
``python -m reviosa evaluate`` like any other.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from reviosa import rle
from reviosa.results import save, track_entry


def all_objects(root: Path, split: str) -> dict:
    """A results dict (``reviosa.results`` layout) predicting every object for both roles."""
    folder = root / split
    meta = json.loads((folder / "meta_expressions.json").read_text())["videos"]
    masks = json.loads((folder / "mask_dict.json").read_text())
    out: dict = {"videos": {}}
    for video, info in meta.items():
        annos = {a for e in info["expressions"].values() for a in e["anno_id"]}
        annos |= {
            a for e in info["expressions"].values() for a in e.get("subject/object", {})
            .get("anno_id", {}).get("object", [])
        }  # fmt: skip
        union = _union([masks[str(a)] for a in sorted(annos)], len(info["frames"]))
        out["videos"][video] = {exp: track_entry(union, union, "all objects") for exp in info["expressions"]}
    return out


def _union(tracks: list[list[dict | None]], frames: int) -> np.ndarray:
    """OR of per-frame RLE tracks: bool (T, H, W)."""
    size = next(tuple(m["size"]) for t in tracks for m in t if m is not None)
    union = np.zeros((frames, *size), dtype=bool)
    for track in tracks:
        for t, m in enumerate(track):
            if m is not None:
                union[t] |= rle.decode(m, size)
    return union


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.baselines", description=__doc__.split("\n")[0])
    parser.add_argument("baseline", choices=["all-objects"])
    parser.add_argument("--data", required=True, help="dataset root (InterRVOS / MeViS layout)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="results JSON to write")
    args = parser.parse_args(argv)
    save(all_objects(Path(args.data), args.split), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
