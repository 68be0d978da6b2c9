"""Does stage 1's LLM answer about the object a question names, or about the scene?

python -m train.probes.qa_binding --mllm checkpoints/stage1/mllm.safetensors

On stage 1's 600 held-out questions (the QA phase's own validation draw) this prints, per
question kind, the share answered exactly on clips of one, two and three or more objects (a
one-object clip needs no lookup; answering from the scene at large scores about 1 / objects on
the others), and, per layer and head, the mean share of the answer position's vision attention
that lands on the object asked about (attention spread evenly over the vision tokens would give
the "even" figure; spread evenly over the clip's objects, about 1 / objects).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

from train.stages import vl_pretrain
from train.stages.clips import Backgrounds
from train.stages.common import RECIPE


def held_out(cfg: vl_pretrain.QAConfig, size: int):
    """The QA phase's validation clips and questions (same seed, same draw)."""
    rng = np.random.default_rng([cfg.seed, 1])
    return vl_pretrain.draw(rng, Backgrounds(rng, size, 16), cfg, cfg.val_clips, cfg.val_questions)


@torch.no_grad()
def binding_report(model, clips, questions, chunk: int = 20) -> tuple[dict, torch.Tensor, float]:
    """Accuracy per (kind, objects: 1, 2, 3 = three or more) as [right, total]; the asked
    object's attention share per layer and head (NL, NH); the share under even attention."""
    layers = model.config.text.num_hidden_layers
    heads = model.config.text.num_attention_heads
    capture = {"layers": list(range(layers)), "heads": list(range(heads))}
    tally: dict = defaultdict(lambda: [0, 0])
    shares, even = [], []
    model.eval()
    for i in range(0, len(clips), chunk):
        part_clips, part_questions = clips[i : i + chunk], questions[i : i + chunk]
        batch = vl_pretrain.make_batch(model, part_clips, part_questions)
        logits, rows = vl_pretrain.answer_logits(model, batch, capture)
        shares.append(vl_pretrain.binding_loss(rows, batch)[1])
        even.append(vl_pretrain.binding_loss(torch.ones_like(rows), batch)[1][:, 0, 0])
        right = iter(vl_pretrain.answers_right(logits, batch).tolist())
        for clip, qs in zip(part_clips, part_questions, strict=True):
            for q in qs:
                cell = tally[(q.kind, min(len(clip.looks), 3))]
                cell[0] += int(next(right))
                cell[1] += 1
    return dict(tally), torch.cat(shares).mean(0), float(torch.cat(even).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.probes.qa_binding", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--mllm", required=True, help="a stage-1 mllm.safetensors")
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--model", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    model = vl_pretrain.build(args.recipe, args.model)
    vl_pretrain.load_mllm(model, args.mllm)
    clips, questions = held_out(vl_pretrain.QAConfig(), model.config.vision.image_size)
    tally, share, even = binding_report(model, clips, questions)
    print("answered exactly, by objects in the clip (1 / 2 / 3+; questions in brackets)")
    for kind in vl_pretrain.KINDS:
        cells = [tally.get((kind, n), [0, 0]) for n in (1, 2, 3)]
        print(f"  {kind:9s}", "  ".join(f"{r / t:.2f} ({t})" if t else "-" for r, t in cells))
    print(f"answer position's vision attention on the asked object, per head (even: {even:.3f})")
    for layer, row in enumerate(share.tolist()):
        print(f"  layer {layer}:", " ".join(f"{x:.3f}" for x in row))


if __name__ == "__main__":
    main()
