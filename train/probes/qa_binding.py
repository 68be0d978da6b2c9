"""Does stage 1's LLM answer about the object a question names, or about the scene?

python -m train.probes.qa_binding --mllm checkpoints/stage1/mllm.safetensors
python -m train.probes.qa_binding --mllm checkpoints/stage3/model   # a later stage's MLLM

On stage 1's 600 held-out questions (the QA phase's own validation draw) this prints, per
question kind, the share answered exactly on clips of one, two and three or more objects (a
one-object clip needs no lookup; answering from the scene at large scores about 1 / objects on
the others), and, per layer and head, the mean share of the answer position's vision attention
that lands on the object asked about (attention spread evenly over the vision tokens would give
the "even" figure). With ``--names``, also whether the answer position knows what the question
named: a linear probe from its state after each layer to the asked object's colour (questions
that name it: all but the colour ones) and shape (all but the shape ones), fitted on 80 % of the
questions of fresh clips, scored on the rest, beside the share of the commonest answer.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from train.probes.probe_words import fit_probe
from train.stages import vl_pretrain
from train.stages.clips import Backgrounds
from train.stages.common import RECIPE, load_parts


def load_any_mllm(model, path: str | Path) -> None:
    """A stage-1 ``mllm.safetensors``, or a later stage's model folder (``model.safetensors``):
    its ``mllm.*`` tensors, strictly, so that what stages 3 and 4 did to stage 1's LLM is measured
    with the same questions."""
    path = Path(path)
    if not path.is_dir():
        vl_pretrain.load_mllm(model, path)
        return
    load_parts({"mllm": model.mllm}, path / "model.safetensors", "MLLM", "train export", others=True)


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
    for part_clips, part_questions, ok, rows, batch in vl_pretrain.scored_chunks(
        model, clips, questions, capture, chunk
    ):
        shares.append(vl_pretrain.binding_loss(rows, batch)[1])
        even.append(vl_pretrain.binding_loss(torch.ones_like(rows), batch)[1][:, 0, 0])
        right = iter(ok.tolist())
        for clip, qs in zip(part_clips, part_questions, strict=True):
            for q in qs:
                cell = tally[(q.kind, min(len(clip.looks), 3))]
                cell[0] += int(next(right))
                cell[1] += 1
    return dict(tally), torch.cat(shares).mean(0), float(torch.cat(even).mean())


@torch.no_grad()
def name_probe(model, clips, questions, chunk: int = 20) -> dict[str, list[tuple[float, float]]]:
    """Per named attribute (colour, shape): (held-out probe accuracy, commonest-class share) of the
    answer position's state after each layer (index 0: the embeddings)."""
    states, looks = [], []
    model.eval()
    for i in range(0, len(clips), chunk):
        part_clips, part_questions = clips[i : i + chunk], questions[i : i + chunk]
        batch = vl_pretrain.make_batch(model, part_clips, part_questions)
        embeds = model.embed(batch.input_ids, batch.pixels, batch.image_index)
        out = model.language_model(
            inputs_embeds=embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            output_hidden_states=True,
        )
        hidden = torch.stack(out.hidden_states, 1)  # (N, NL+1, L, D)
        for c, (clip, qs) in enumerate(zip(part_clips, part_questions, strict=True)):
            for t, q in enumerate(qs):
                states.append(hidden[c, :, int(batch.asked[c, t])].float())
                looks.append((q.kind, clip.looks[q.target]))
    out: dict[str, list[tuple[float, float]]] = {}
    for attr in ("colour", "shape"):
        keep = [i for i, (kind, _look) in enumerate(looks) if kind != attr]
        names = sorted({getattr(looks[i][1], attr) for i in keep})
        y = torch.tensor([names.index(getattr(looks[i][1], attr)) for i in keep])
        x = torch.stack([states[i] for i in keep])  # (M, NL+1, D)
        cut = int(0.8 * len(keep))
        common = float(torch.bincount(y[cut:]).max()) / max(1, len(y) - cut)
        out[attr] = [
            (fit_probe(x[:cut, j], y[:cut], x[cut:, j], y[cut:], len(names))[1], common)
            for j in range(x.shape[1])
        ]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.probes.qa_binding", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--mllm", required=True, help="a stage-1 mllm.safetensors or a model folder")
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--model", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--names",
        type=int,
        default=0,
        metavar="CLIPS",
        help="probe the named attributes on this many fresh clips",
    )
    args = parser.parse_args(argv)
    model = vl_pretrain.build(args.recipe, args.model)
    load_any_mllm(model, args.mllm)
    clips, questions = held_out(vl_pretrain.QAConfig(), model.config.vision.image_size)
    tally, share, even = binding_report(model, clips, questions)
    print("answered exactly, by objects in the clip (1 / 2 / 3+; questions in brackets)")
    for kind in vl_pretrain.KINDS:
        cells = [tally.get((kind, n), [0, 0]) for n in (1, 2, 3)]
        print(f"  {kind:9s}", "  ".join(f"{r / t:.2f} ({t})" if t else "-" for r, t in cells))
    print(f"answer position's vision attention on the asked object, per head (even: {even:.3f})")
    for layer, row in enumerate(share.tolist()):
        print(f"  layer {layer}:", " ".join(f"{x:.3f}" for x in row))
    if args.names:
        cfg = vl_pretrain.QAConfig(questions=8)
        rng = np.random.default_rng([cfg.seed, 2])  # neither the training nor the held-out draw
        fresh = vl_pretrain.draw(rng, Backgrounds(rng, model.config.vision.image_size, 16), cfg, args.names)
        print("the answer position's state reads the named attribute (held-out; commonest answer)")
        for attr, rows in name_probe(model, *fresh).items():
            cells = ", ".join(
                f"after layer {j}: {acc:.2f}" if j else f"embedding: {acc:.2f}"
                for j, (acc, _c) in enumerate(rows)
            )
            print(f"  {attr}: {cells} (commonest {rows[0][1]:.2f})")


if __name__ == "__main__":
    main()
