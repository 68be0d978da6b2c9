"""Benchmark: role-token attention capture vs a plain SDPA forward vs eager ``output_attentions``.

For each geometry (``tiny`` preset, ``1b`` = InternVL2.5-1B with random weights) and number of keyframes,
one fresh worker process builds the model once and runs, interleaved, ``--reps`` times each:

- ``plain``:   SDPA forward of the MLLM backbone (vision tower + projector + Qwen2; no lm_head).
- ``capture``: the same forward inside ``AttentionCapture`` for all layers and heads, plus ``result()``.
- ``eager``:   the reference approach: Qwen2 switched to eager attention with ``output_attentions=True``
               (every (L x L) matrix materialised), rows read from the returned attentions.

All forwards run in float32 under ``torch.no_grad()`` (inference after generation); ``--train`` runs
forward + backward of a scalar loss instead (the captured or eager rows enter the loss). The vision tower stays on
SDPA in every mode, so the comparison isolates the language model.

Time: wall-clock and process CPU time (all threads), each the minimum over the repetitions. The machine
is shared: the minimum is the least disturbed run, and CPU time is less sensitive to other processes
than wall time (waiting for a core costs no CPU time; workers run with ``OMP_WAIT_POLICY=PASSIVE`` so
OpenMP threads do not spin while waiting).
Peak memory: Linux resident set size. The worker starts with ``MALLOC_MMAP_THRESHOLD_=65536`` so every
tensor larger than 64 KiB is its own mmap and goes back to the OS when freed (RSS then follows the live
tensors instead of glibc's cached arenas). Before each forward it calls ``malloc_trim(0)`` and resets
the peak (``echo 5 > /proc/self/clear_refs``); peak memory = ``VmHWM`` after the forward minus ``VmRSS``
before it, i.e. what the forward adds on top of the model and its inputs (outputs included); the minimum
over the repetitions (a first run can carry one-time allocations).

    python bench/bench_attention.py --geometry tiny,1b --keyframes 1,4
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

MODES = ("plain", "capture", "eager")
TEXT_BEFORE, TEXT_AFTER = 24, 12  # tokens around the frames: system prompt, instruction, answer


def _memory_kib() -> dict[str, int]:
    status = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM")}


def _reset_peak() -> int:
    """Return freed heap to the OS, reset the peak RSS, return the current RSS (KiB)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _memory_kib()["VmRSS"]


def _worker(geometry: str, keyframes: int, reps: int, modes: list[str], train: bool, threads: int) -> dict:
    """Build the model once, time and measure each mode; returns {mode: {"s", "cpu", "mib": [...]}}."""
    # Imported here: the parent process only orchestrates and should not hold torch's memory.
    import torch
    from transformers import InternVLForConditionalGeneration

    from reviosa.attention import AttentionCapture, role_positions, vision_positions_from_ids
    from reviosa.config import preset
    from reviosa.modeling import internvl_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = preset(geometry)
    vocab = cfg.text.vocab_size
    # Random-weight geometry: the last ids stand in for the special tokens.
    image_id, img_start, img_end, seg_act, seg_tar = vocab - 1, vocab - 2, vocab - 3, vocab - 4, vocab - 5
    model = InternVLForConditionalGeneration(internvl_config(cfg, image_id)).eval()
    lm = model.model.language_model
    g = cfg.grid

    words = lambda n: torch.randint(0, vocab - 8, (n,)).tolist()  # noqa: E731
    ids = words(TEXT_BEFORE)
    for _ in range(keyframes):
        ids += [img_start] + [image_id] * g * g + [img_end]
    ids += words(TEXT_AFTER) + [seg_act] + words(2) + [seg_tar] + words(2)
    input_ids = torch.tensor([ids])
    attention_mask = torch.ones_like(input_ids)
    size = cfg.vision.image_size
    pixels = torch.randn(keyframes, 3, size, size)
    query = role_positions(input_ids, (seg_act, seg_tar))
    vision = vision_positions_from_ids(input_ids, image_id, g)

    def forward(mode: str) -> None:
        model.set_attn_implementation({"text_config": "eager" if mode == "eager" else "sdpa"})
        capture = (
            AttentionCapture(lm, query, vision, grid=g) if mode == "capture" else contextlib.nullcontext()
        )
        with torch.set_grad_enabled(train), capture:
            out = model.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                pixel_values=pixels,
                use_cache=False,
                output_attentions=mode == "eager",
            )
        loss = out.last_hidden_state.mean()
        if mode == "capture":
            rows = capture.result().rows
            loss = loss + rows.sum()
        elif mode == "eager":
            # Per layer, as the reference reads them: stacking would copy every (L x L) matrix again.
            rows = torch.stack([a[:, :, query[0]][..., vision[0]] for a in out.attentions], 1)
            loss = loss + rows.sum()  # rows: (B, NL, NH, R, N)
        if train:
            loss.backward()
            model.zero_grad(set_to_none=True)

    results: dict[str, dict[str, list[float]]] = {m: {"s": [], "cpu": [], "mib": []} for m in modes}
    # Warm-up (thread pool, lazy imports, first calls): every mode once for cheap geometries; for slow
    # ones a short text-only forward, since a full warm-up would double the run time.
    if reps >= 5:
        for mode in modes:
            forward(mode)
    else:
        with torch.no_grad():
            model.model(input_ids=input_ids[:, :TEXT_BEFORE], use_cache=False)
    for _ in range(reps):
        for mode in modes:
            base = _reset_peak()
            start, start_cpu = time.perf_counter(), time.process_time()
            forward(mode)
            results[mode]["s"].append(time.perf_counter() - start)
            results[mode]["cpu"].append(time.process_time() - start_cpu)
            results[mode]["mib"].append((_memory_kib()["VmHWM"] - base) / 1024)
    results["L"] = len(ids)  # type: ignore[assignment]
    return results


def _run_worker(args: argparse.Namespace, geometry: str, keyframes: int) -> dict:
    reps = args.reps or (20 if geometry == "tiny" else 2)
    command = [
        sys.executable,
        __file__,
        "--worker",
        f"{geometry}:{keyframes}:{reps}",
        "--modes",
        ",".join(args.modes),
        "--threads",
        str(args.threads),
    ] + (["--train"] if args.train else [])
    # Passive OpenMP waiting: on a shared machine, spinning threads would bill other processes' turns
    # to the CPU time measured here.
    env = dict(
        os.environ,
        MALLOC_MMAP_THRESHOLD_="65536",
        OMP_NUM_THREADS=str(args.threads),
        OMP_WAIT_POLICY="PASSIVE",
    )
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"worker {geometry} K={keyframes} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(rows: list[tuple[str, int, dict]], modes: list[str]) -> str:
    head = "| geometry | K | L | mode | wall ms | CPU ms | peak MiB | wall / plain | CPU / plain | memory / plain |"
    lines = [head, "|" + "---|" * 10]
    for geometry, keyframes, res in rows:
        plain = res.get("plain")
        for mode in modes:
            wall, cpu, mib = min(res[mode]["s"]), min(res[mode]["cpu"]), min(res[mode]["mib"])
            ratios = (
                (wall / min(plain["s"]), cpu / min(plain["cpu"]), mib / min(plain["mib"]))
                if plain
                else (float("nan"),) * 3
            )
            lines.append(
                f"| {geometry} | {keyframes} | {res['L']} | {mode} | {wall * 1e3:.1f} | {cpu * 1e3:.1f} | {mib:.1f} | "
                + " | ".join(f"{r:.3f}" for r in ratios)
                + " |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--geometry", default="tiny,1b", help="comma-separated presets: tiny, 1b, 4b")
    parser.add_argument("--keyframes", default="1,4", help="comma-separated keyframe counts K")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    parser.add_argument("--reps", type=int, default=0, help="repetitions per mode (default: tiny 20, else 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine has 2 cores)")
    parser.add_argument("--train", action="store_true", help="forward + backward instead of no_grad forward")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.modes = args.modes.split(",")
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}")

    if args.worker:
        geometry, keyframes, reps = args.worker.split(":")
        res = _worker(geometry, int(keyframes), int(reps), args.modes, args.train, args.threads)
        print(json.dumps(res))
        return

    rows = []
    for geometry in args.geometry.split(","):
        for keyframes in map(int, args.keyframes.split(",")):
            res = _run_worker(args, geometry, keyframes)
            rows.append((geometry, keyframes, res))
            print(f"done {geometry} K={keyframes}: " + json.dumps(res), file=sys.stderr, flush=True)
    kind = "forward + backward" if args.train else "no_grad forward"
    print(f"{kind}, float32, {args.threads} threads; times and peaks = min over repetitions")
    print(_table(rows, args.modes))


if __name__ == "__main__":
    main()
