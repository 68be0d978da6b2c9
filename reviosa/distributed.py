"""``predict --dataset`` and ``evaluate`` across processes and machines (``torchrun``), one merged result.

A launcher (``torchrun --nproc_per_node N``, multi-node alike) sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; without them everything runs as one process, as before. Videos are the unit of work:
`shard_videos` deals them to ranks by cost (frames x expressions), deterministically, so a rerun with
the same world size gives every rank the same videos.

Prediction: each rank writes its own part file ``OUT.parts/rank-R-of-N.json`` after every video (the
resume point); after a barrier rank 0 merges ``OUT`` and every part into ``OUT`` in the dataset's order
and removes the parts. A rerun, with any world size, skips what ``OUT`` and any part already hold.
The merged file is byte-identical to a single process's (`ordered_results`), so ``OUT`` and its
parts must be on a filesystem that every rank sees.

Evaluation: each rank scores the expressions of its videos; rank 0 gathers them (gloo) and
aggregates them in the dataset's order, as one process does.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

logger = logging.getLogger(__name__)

# The barrier waits for the slowest rank's whole shard: torch's default (30 min) is too short for a
# large validation set; REVIOSA_DIST_TIMEOUT_MIN overrides it.
DEFAULT_TIMEOUT_MIN = 24 * 60
PARTS_SUFFIX = ".parts"


@dataclass(frozen=True)
class World:
    """This process's place among the launched ones (torchrun's environment variables)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(env: Mapping[str, str] = os.environ) -> World:
    """The `World` torchrun describes in ``env``; one process when WORLD_SIZE is unset."""

    def number(name: str, default: int) -> int:
        value = env.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"environment variable {name}={value!r} is not an integer") from None

    size = number("WORLD_SIZE", 1)
    rank = number("RANK", 0)
    local_rank = number("LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise ValueError(
            f"RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local_rank} do not describe a rank: "
            "launch with torchrun, or unset them to run one process"
        )
    return World(rank=rank, size=size, local_rank=local_rank)


def device_for(device: str, world: World) -> str:
    """Each rank's device: a bare ``cuda`` becomes ``cuda:LOCAL_RANK``; anything else is kept."""
    if world.distributed and device == "cuda":
        return f"cuda:{world.local_rank}"
    return device


def timeout() -> timedelta:
    raw = os.environ.get("REVIOSA_DIST_TIMEOUT_MIN", str(DEFAULT_TIMEOUT_MIN))
    try:
        minutes = float(raw)
    except ValueError:
        raise ValueError(f"REVIOSA_DIST_TIMEOUT_MIN={raw!r} is not a number of minutes") from None
    return timedelta(minutes=minutes)


@contextmanager
def process_group(world: World) -> Iterator[None]:
    """A gloo process group for barriers and gathers (CPU tensors only, whatever the model's device)."""
    if not world.distributed:
        yield
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise ValueError(
                f"WORLD_SIZE={world.size} but {' and '.join(missing)} unset: launch with torchrun"
            )
        dist.init_process_group("gloo", rank=world.rank, world_size=world.size, timeout=timeout())
    try:
        yield
    finally:
        if owned:
            dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def gather(obj, world: World) -> list | None:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; None on the other ranks."""
    if not world.distributed:
        return [obj]
    import torch.distributed as dist

    out = [None] * world.size if world.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


# ------------------------------------------------------------------------------------------- sharding


def video_costs(samples: Iterable) -> dict[str, int]:
    """Work per video, in dataset order: frames x expressions (SAM2 tracks every frame per expression)."""
    costs: dict[str, int] = {}
    for s in samples:
        costs[s.video_id] = costs.get(s.video_id, 0) + s.num_frames
    return costs


def shard_videos(costs: Mapping[str, int], size: int) -> list[set[str]]:
    """Deal videos to ``size`` ranks: largest first, each to the least loaded rank (ties: lower rank).

    Depends only on the costs and ids, never on the input's order, so every rank computes the same
    shards. Returns one set of video ids per rank.
    """
    loads = [0] * size
    shards: list[set[str]] = [set() for _ in range(size)]
    for video_id in sorted(costs, key=lambda v: (-costs[v], v)):
        rank = min(range(size), key=lambda r: (loads[r], r))
        shards[rank].add(video_id)
        loads[rank] += costs[video_id]
    return shards


def my_samples(samples: list, world: World) -> list:
    """The samples of this rank's videos, in dataset order."""
    if not world.distributed:
        return list(samples)
    mine = shard_videos(video_costs(samples), world.size)[world.rank]
    return [s for s in samples if s.video_id in mine]


class ShardView:
    """The expressions of some samples of a dataset: what `reviosa.evaluation.evaluate_results` reads."""

    def __init__(self, samples: list):
        self._samples = list(samples)

    def __len__(self) -> int:
        return len(self._samples)

    def samples(self) -> Iterator:
        return iter(self._samples)


# ----------------------------------------------------------------------------------- results files


def parts_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + PARTS_SUFFIX)


def part_path(out: str | Path, world: World) -> Path:
    return parts_dir(out) / f"rank-{world.rank}-of-{world.size}.json"


def existing_parts(out: str | Path) -> list[Path]:
    """Part files left by any run (any world size), in a fixed order."""
    folder = parts_dir(out)
    return sorted(folder.glob("rank-*-of-*.json")) if folder.is_dir() else []


def merge_results(files: Iterable[dict]) -> dict:
    """One results dict from several (later files win on the same expression)."""
    merged: dict = {"videos": {}}
    for data in files:
        for video_id, entries in data["videos"].items():
            merged["videos"].setdefault(video_id, {}).update(entries)
    return merged


def ordered_results(data: dict, samples: Iterable) -> dict:
    """``data`` with videos and expressions in dataset order (what one fresh process writes), then any
    predictions the dataset does not list, in their own order (kept: they are the user's)."""
    videos = data["videos"]
    out: dict = {}
    for s in samples:
        entry = videos.get(s.video_id, {}).get(s.exp_id)
        if entry is not None:
            out.setdefault(s.video_id, {})[s.exp_id] = entry
    for video_id, entries in videos.items():
        for exp_id, entry in entries.items():
            if exp_id not in out.get(video_id, {}):
                out.setdefault(video_id, {})[exp_id] = entry
    return {**{k: v for k, v in data.items() if k != "videos"}, "videos": out}


def collect_parts(out: str | Path, world: World, load: Callable[[Path], dict]) -> dict:
    """Rank 0, after the barrier: ``out`` and every part file merged (not yet ordered).

    Raises when a rank of this run left no part file: its filesystem is not the one rank 0 sees.
    """
    expected = {part_path(out, World(rank=r, size=world.size)) for r in range(world.size)}
    found = existing_parts(out)
    absent = sorted(str(p) for p in expected - set(found))
    if absent:
        raise FileNotFoundError(
            f"rank 0 cannot see the part files {absent}: put --out on a filesystem every node shares "
            "(the parts stay where each rank wrote them; rerun to merge)"
        )
    return merge_results([load(out), *(load(p) for p in found)])


def remove_parts(out: str | Path) -> None:
    shutil.rmtree(parts_dir(out), ignore_errors=True)


# ---------------------------------------------------------------------------------------- evaluation


def merge_scores(dataset, parts: list):
    """One `reviosa.evaluation.Scores` from every rank's (each over its own videos' expressions).

    Expressions are put back in dataset order before aggregating, with the aggregation one process
    uses, so the means are summed in the same order and the numbers are identical to the last bit.
    """
    from reviosa import evaluation

    order = [(s.video_id, s.exp_id) for s in dataset.samples()]
    per_expression: dict = {}
    missing, no_target = set(), set()
    for part in parts:
        per_expression.update(part.per_expression)
        missing.update(part.missing)
        no_target.update(part.no_target)
    return evaluation._aggregate(
        dataset,
        {key: per_expression[key] for key in order if key in per_expression},
        sum(part.frames for part in parts),
        [key for key in order if key in missing],
        [key for key in order if key in no_target],
    )
