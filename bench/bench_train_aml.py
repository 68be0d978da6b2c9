"""Training step with the attention mask loss (AML) against the same step without it, side by side.

One fresh worker process builds the MLLM at the chosen geometry (``1b``: InternVL2.5-1B's, random
weights) set up as the training recipe does (vision tower frozen, LoRA r=128 on the language model's
attention projections) and runs, interleaved, ``--reps`` times each, one training step
(forward, backward, AdamW step on the trainable parameters) of a short sequence:

- ``plain``: the loss without AML: next-token cross-entropy on the answer tokens plus a stand-in
  for the mask losses (the [SEG] states' mean square; SAM2 is the same in both and left out);
- ``aml``: the same inside ``AttentionCapture`` for the supervised layer and heads (1B: layer 22,
  heads 5, 7, 10, 11), plus ``train.losses.attention_mask_loss`` of the rows against random
  16x16 grid masks, as ``train.objective`` adds it.

Time: wall and process CPU time, the minimum over the repetitions. Peak memory: what the step adds
to the resident set on top of the model and its inputs (``VmHWM`` after minus ``VmRSS`` before, as
``bench/bench_attention.py`` measures it, heap returned to the OS before each step). Ratios are
``aml`` over ``plain``.

On the 2-core, 24 GiB machine the 1B geometry fits with one keyframe (L = 300 tokens); ``--layers N``
keeps the first N decoder layers (the supervised layer moves to the last kept one) where time is short.

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.bench_train_aml --geometry 1b [--keyframes 1] [--reps 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.bench_attention import _memory_kib, _reset_peak

MODES = ("plain", "aml")
TEXT_BEFORE, ANSWER = 24, 8  # prompt tokens before the frames; answer tokens after them


def _worker(geometry: str, keyframes: int, layers: int, reps: int, rank: int, threads: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import InternVLForConditionalGeneration

    from reviosa.attention import AttentionCapture, role_positions, vision_positions_from_ids
    from reviosa.config import AttentionSupervision, preset
    from reviosa.modeling import internvl_config
    from train.losses import attention_mask_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = preset(geometry)
    sup = cfg.attention_supervision or AttentionSupervision(layer=0, heads=(0,))
    if layers and layers < cfg.text.num_hidden_layers:
        cfg = dataclasses.replace(
            cfg,
            text=dataclasses.replace(cfg.text, num_hidden_layers=layers),
            attention_supervision=dataclasses.replace(sup, layer=layers - 1),
        )
        sup = cfg.attention_supervision
    vocab = cfg.text.vocab_size
    image_id, img_start, img_end, seg_act = vocab - 1, vocab - 2, vocab - 3, vocab - 4
    model = InternVLForConditionalGeneration(internvl_config(cfg, image_id))
    model.set_attn_implementation({"text_config": "sdpa"})
    for p in model.parameters():
        p.requires_grad_(False)
    if rank:
        lora = LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            lora_dropout=0.05,
            target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)",
        )
        model = get_peft_model(model, lora)
        inner = model.base_model.model
    else:  # full fine-tuning of the language model
        inner = model
        for p in inner.model.language_model.parameters():
            p.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=4e-5, weight_decay=0.05)
    lm = inner.model.language_model
    g = cfg.grid

    words = lambda n: torch.randint(0, vocab - 8, (n,)).tolist()  # noqa: E731
    ids = words(TEXT_BEFORE)
    for _ in range(keyframes):
        ids += [img_start] + [image_id] * g * g + [img_end]
    ids += words(4) + [seg_act] + words(ANSWER - 1)
    input_ids = torch.tensor([ids])
    attention_mask = torch.ones_like(input_ids)
    size = cfg.vision.image_size
    pixels = torch.randn(keyframes, 3, size, size)
    query = role_positions(input_ids, (seg_act,))  # (1, 1)
    vision = vision_positions_from_ids(input_ids, image_id, g)
    grids = (torch.rand(1, 1, keyframes, g, g) > 0.7).float()  # (B, R, K, g, g) role masks
    weight = torch.ones(1, 1)
    answer = torch.tensor(ids[-ANSWER:])

    def step(mode: str) -> None:
        capture = (
            AttentionCapture(lm, query, vision, grid=g, layers=[sup.layer], heads=list(sup.heads))
            if mode == "aml"
            else None
        )
        if capture is not None:
            capture.__enter__()
        try:
            out = inner.model(
                input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels, use_cache=False
            )
        finally:
            if capture is not None:
                capture.__exit__(None, None, None)
        hidden = out.last_hidden_state  # (1, L, D)
        logits = inner.lm_head(hidden[0, -ANSWER - 1 : -1])  # (ANSWER, V): the answer tokens only
        loss = torch.nn.functional.cross_entropy(logits.float(), answer)
        loss = loss + hidden[0, query[0, 0]].pow(2).mean()
        if capture is not None:
            loss = loss + attention_mask_loss(capture.result().rows, grids, weight)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for mode in MODES:  # warm-up: first calls, AdamW's state allocated before anything is measured
        step(mode)
    results: dict = {m: {"s": [], "cpu": [], "mib": []} for m in MODES}
    for _ in range(reps):
        for mode in MODES:
            base = _reset_peak()
            start, start_cpu = time.perf_counter(), time.process_time()
            step(mode)
            results[mode]["s"].append(time.perf_counter() - start)
            results[mode]["cpu"].append(time.process_time() - start_cpu)
            results[mode]["mib"].append((_memory_kib()["VmHWM"] - base) / 1024)
    results["L"] = len(ids)
    results["layers"] = cfg.text.num_hidden_layers
    results["supervised"] = [sup.layer, list(sup.heads)]
    results["trainable_m"] = sum(p.numel() for p in trainable) / 1e6
    return results


def run(args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "bench.bench_train_aml", "--worker", "--geometry", args.geometry]
    command += ["--keyframes", str(args.keyframes), "--layers", str(args.layers), "--reps", str(args.reps)]
    command += ["--rank", str(args.rank), "--threads", str(args.threads)]
    root = str(Path(__file__).resolve().parents[1])
    env = dict(
        os.environ,
        MALLOC_MMAP_THRESHOLD_="65536",
        OMP_NUM_THREADS=str(args.threads),
        OMP_WAIT_POLICY="PASSIVE",
        PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, cwd=root)
    if done.returncode:
        raise RuntimeError(f"worker failed:\n{done.stderr[-3000:]}")
    res = json.loads(done.stdout.strip().splitlines()[-1])
    plain, aml = res["plain"], res["aml"]
    ratios = {
        "time": min(aml["s"]) / min(plain["s"]),
        "cpu": min(aml["cpu"]) / min(plain["cpu"]),
        "memory": min(aml["mib"]) / min(plain["mib"]),
    }
    layer, heads = res["supervised"]
    print(
        f"{args.geometry} geometry, {res['layers']} decoder layers, {args.keyframes} keyframe(s), L = {res['L']}, "
        f"LoRA r={args.rank} ({res['trainable_m']:.1f}M trainable), AML on layer {layer} heads {heads}; "
        f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}"
    )
    for mode in MODES:
        r = res[mode]
        print(
            f"  {mode:>5}: {min(r['s']):7.2f} s wall, {min(r['cpu']):7.2f} s CPU, step peak +{min(r['mib']):7.1f} MiB"
        )
    print(
        f"  aml / plain: time {ratios['time']:.3f}x (CPU {ratios['cpu']:.3f}x), memory {ratios['memory']:.3f}x"
    )
    return {**res, "ratios": ratios}


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", default="1b", help="preset: tiny, 1b, 4b")
    parser.add_argument("--keyframes", type=int, default=1)
    parser.add_argument("--layers", type=int, default=0, help="keep the first N decoder layers (0: all)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--rank", type=int, default=128, help="LoRA rank (0: train the whole language model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        res = _worker(args.geometry, args.keyframes, args.layers, args.reps, args.rank, args.threads)
        print(json.dumps(res))
        return None
    return run(args)


if __name__ == "__main__":
    main()
