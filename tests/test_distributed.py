"""``predict --dataset`` and ``evaluate`` under torchrun (2 CPU processes on gloo) against one process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from reviosa import distributed
from reviosa.distributed import World

# Videos of the test dataset and how many expressions each keeps: unequal, so the shards are too.
KEEP = {0: 3, 1: 1, 2: 2}


def run(*args, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m reviosa ARGS``, or the same under ``torchrun --standalone --nproc_per_node N``."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), "-m", "reviosa", *map(str, args)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"}
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    """Three synthetic clips with 3, 1 and 2 expressions (one unidirectional where there is one)."""
    from reviosa.data.synth import generate_split

    root = tmp_path_factory.mktemp("dist") / "world"
    generate_split(root, "test", clips=len(KEEP), seed=5, size=64, frames=(6, 6))
    meta_path = root / "test" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    for i, video in enumerate(meta["videos"].values()):
        exps = video["expressions"]
        ids = sorted(exps, key=lambda e: (exps[e]["caption_type"] != "unidirectional", int(e)))[: KEEP[i]]
        video["expressions"] = {e: exps[e] for e in sorted(ids, key=int)}
    meta_path.write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def single(world_dir, tmp_path_factory):
    """The results file of one process (the built-in model)."""
    out = tmp_path_factory.mktemp("single") / "results.json"
    run("predict", "--dataset", world_dir, "--split", "test", "--out", out)
    return out


def test_world_from_env_and_devices():
    assert distributed.world_from_env({}) == World(0, 1, 0)
    world = distributed.world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert world == World(3, 4, 1) and world.distributed and not world.is_main
    assert distributed.device_for("cuda", world) == "cuda:1"
    assert distributed.device_for("cuda:0", world) == "cuda:0"  # an explicit choice stays
    assert distributed.device_for("cuda", World()) == "cuda"
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"WORLD_SIZE": "two"}):
        with pytest.raises(ValueError, match="WORLD_SIZE|RANK"):
            distributed.world_from_env(bad)


def test_shards_cover_every_video_once_balanced_whatever_the_order():
    rng = random.Random(0)
    costs = {f"v{i:03d}": rng.randint(1, 200) for i in range(101)}
    shards = distributed.shard_videos(costs, 8)
    assert sorted(v for s in shards for v in s) == sorted(costs)
    loads = [sum(costs[v] for v in s) for s in shards]
    # Largest-first greedy: no rank ends more than one video's cost above the least loaded one.
    assert max(loads) - min(loads) <= max(costs.values())
    shuffled = dict(rng.sample(list(costs.items()), len(costs)))
    assert distributed.shard_videos(shuffled, 8) == shards


def test_torchrun_predict_is_byte_identical_to_one_process(world_dir, single, tmp_path):
    data = json.loads(single.read_text())
    entries = [e for v in data["videos"].values() for e in v.values()]
    assert len(entries) == sum(KEEP.values())
    # Not a vacuous comparison: the built-in model segments something and emits [SEG_TAR] somewhere.
    assert any(e["target"] is not None for e in entries)
    assert any(rle is not None for e in entries for rle in e["actor"])
    out = tmp_path / "results.json"
    proc = run("predict", "--dataset", world_dir, "--split", "test", "--out", out, nproc=2)
    assert f"wrote {out}: {len(entries)} expressions (0 already done)" in proc.stdout
    assert out.read_bytes() == single.read_bytes()
    assert not distributed.parts_dir(out).exists()  # merged, then removed


def test_torchrun_predict_resumes_from_the_part_files_of_an_interrupted_run(world_dir, single, tmp_path):
    """An interrupted run leaves part files (written atomically after each video): a rerun keeps them."""
    from reviosa.data import InterRVOSDataset

    data = json.loads(single.read_text())
    samples = list(InterRVOSDataset(world_dir, split="test").samples())
    shards = distributed.shard_videos(distributed.video_costs(samples), 2)
    out = tmp_path / "results.json"
    # Rank 1 had finished its first video when the run stopped; rank 0 had finished nothing.
    kept_video = sorted(shards[1])[0]
    kept = {"videos": {kept_video: json.loads(json.dumps(data["videos"][kept_video]))}}
    for entry in kept["videos"][kept_video].values():
        entry["answer"] = "kept from the part file"  # recomputing would overwrite this
    part = distributed.part_path(out, World(rank=1, size=2))
    part.parent.mkdir()
    part.write_text(json.dumps(kept))
    proc = run("predict", "--dataset", world_dir, "--split", "test", "--out", out, nproc=2)
    n_kept = len(kept["videos"][kept_video])
    assert f"({n_kept} already done)" in proc.stdout
    merged = json.loads(out.read_text())
    assert merged["videos"][kept_video] == kept["videos"][kept_video]
    expected = {**data["videos"], kept_video: kept["videos"][kept_video]}
    assert merged["videos"] == expected and list(merged["videos"]) == list(data["videos"])
    assert not part.parent.exists()


def test_torchrun_evaluate_saves_the_scores_of_one_process(world_dir, single, tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    common = ["evaluate", "--gt", world_dir, "--split", "test", "--pred", single, "--per-expression"]
    first = run(*common, "--json", one, "--workers", "2")
    second = run(*common, "--json", two, "--workers", "1", nproc=2)
    assert two.read_bytes() == one.read_bytes()
    scores = json.loads(two.read_text())
    assert scores["counts"]["expressions"] == sum(KEEP.values()) and scores["rvos"]["count"] > 0
    # Rank 0 alone prints: one table, the same as one process's.
    assert second.stdout.count("InterRVOS-Actor") == first.stdout.count("InterRVOS-Actor")


def test_one_video_under_torchrun_and_unseen_parts_are_refused_clearly(monkeypatch, tmp_path, capsys):
    from reviosa.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["predict", str(tmp_path / "clip.mp4"), "a dog"]) == 2
    assert "run one video in one process" in capsys.readouterr().err
    # Rank 1 wrote its part on a disk rank 0 does not see: no merge, and the message says why.
    out = tmp_path / "results.json"
    part = distributed.part_path(out, World(rank=0, size=2))
    part.parent.mkdir()
    part.write_text('{"videos": {}}')
    with pytest.raises(FileNotFoundError, match="rank-1-of-2.json.*filesystem every node shares"):
        distributed.collect_parts(out, World(rank=0, size=2), lambda p: json.loads(p.read_text()))
