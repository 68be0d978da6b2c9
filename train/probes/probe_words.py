"""What do the vision tokens say about the referent? Linear probes, and scores by what an
expression names.

python -m train.probes.probe_words probe --model MODEL --data ROOT [--clips 300] [--val-clips 40]
    [--group colour=red,green,... --group shape=circle,...]
python -m train.probes.probe_words tower --model MODEL --data ROOT [--fresh] [--steps 1500] [--group ...]
python -m train.probes.probe_words breakdown --gt ROOT --split test --pred RESULTS.json [--group ...]
python -m train.probes.probe_words roles --gt ROOT --split test --pred RESULTS.json [--group ...]

``probe``: for each expression that names one object (caption type ``single``), the referent at
four sites: its vision tokens (the mean over its keyframe grid cells) at the language model's
input and at its last layer, SAM2's image features pooled under its masks (the example prompt:
what SAM2 sees of it) and the prompt the model makes from ``[SEG_ACT]``. For each word group
(default: the synthetic world's colours and shapes) a linear classifier, fitted on the training
split's referents, reads which of the group's words the expression uses, and is scored on the
validation split's. A group the vision tokens do not carry reads at chance there, and no
attention can then find a referent by it; the prompt can carry the word from the text alone.

``tower``: can the vision tower learn a group at all? It trains the model's vision tower and
projector (``--fresh``: re-initialised) with a linear head on the first group's word, from the
referent's tokens pooled by coverage (the fraction of each grid cell the referent covers, so the
cells on its outline count), and prints the training loss and the validation accuracy as it goes.

``breakdown``: J&F of a results file per caption type and per which group an expression names
first (colour before shape; "neither" for those that name their referents by motion alone).

``roles``: on the expressions with an actor and a target, how often each role's mask lies more on
its own referent than on the other role's (mean IoU over the frames), and how much the two masks
overlap each other, per group named. Near 50 % a model finds the pair but not which is which: the
active and passive forms of one interaction ("a square chasing a circle", "a circle being chased
by a square") then get the same two masks, and Actor and Target J&F come out equal.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reviosa import rle
from reviosa.data import InterRVOSDataset
from reviosa.data.synth_render import COLOURS, SHAPES
from reviosa.evaluation import evaluate_results
from reviosa.hub import from_pretrained
from reviosa.results import load
from train.config import load_config
from train.data import ClipDataset, collate, coverage
from train.objective import forward_batch, language_io, vision_token_states

DEFAULT_GROUPS = {"colour": tuple(COLOURS), "shape": SHAPES}


def named(expression: str, words: tuple[str, ...]) -> str | None:
    """The first of ``words`` the expression uses, a plural ("circles", "crosses") counting."""
    for token in expression.lower().split():
        for word in words:
            if token in (word, word + "s", word + "es"):
                return word
    return None


# Where the probe reads the referent: its vision tokens at the language model's input and last
# layer, SAM2's features pooled under it (the example prompt) and the prompt made from [SEG_ACT].
SITES = ("input", "last", "example", "prompt")


def referent_features(model, clips: ClipDataset, count: int) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """(expression, {site: features}) of the single-object expressions of the first ``count``
    clips whose referent is on a keyframe; per site of SITES a float vector, (D,) for "input" and
    "last", (P,) for "example" and "prompt"."""
    rows = []
    model.eval()
    with torch.no_grad(), language_io(model, inputs=True, last=True) as holder:
        for c in range(min(count, len(clips))):
            batch = collate([clips[(0, c)]], model.processor.ids.pad)
            out = forward_batch(model, batch, example_masks=batch.masks)
            # The vision tokens come before the expression, so every row holds the same states.
            first = vision_token_states(holder["first"][:1], batch.input_ids[:1], model)[0]  # (K, g, g, D)
            last = vision_token_states(holder["last"][:1], batch.input_ids[:1], model)[0]
            for e, (video, exp) in enumerate(batch.keys):
                sample = clips.dataset.sample(video, exp)
                cells = batch.grids[e, 0] > 0.5  # (K, g, g)
                if sample.caption_type == "single" and cells.any():
                    features = {
                        "input": first[cells].mean(0),
                        "last": last[cells].mean(0),
                        "example": out.example.prompts[e, 0],
                        "prompt": out.role_prompts[e, 0],
                    }
                    rows.append((sample.expression, features))
    return rows


def fit_probe(
    x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, classes: int, steps: int = 500
) -> tuple[float, float]:
    """Multinomial logistic regression on standardised features; (train, val) accuracy.

    x: float (N, D); y: long (N,); x_val: float (M, D); y_val: long (M,).
    """
    gen = torch.Generator().manual_seed(0)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_val = (x - mean) / std, (x_val - mean) / std
    linear = torch.nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        linear.weight.normal_(0.0, 0.01, generator=gen)
        linear.bias.zero_()
    opt = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-3)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(linear(x), y).backward()
            opt.step()
    with torch.no_grad():
        acc = (linear(x).argmax(1) == y).float().mean().item()
        acc_val = (linear(x_val).argmax(1) == y_val).float().mean().item()
    return acc, acc_val


def probe_groups(train_rows, val_rows, groups: dict[str, tuple[str, ...]]) -> dict[str, dict]:
    """Per group and site of SITES: train / val accuracy, the val majority-class rate (chance) and
    the numbers of referents."""
    out = {}
    for name, words in groups.items():

        def labelled(rows, words=words):
            return [(words.index(w), features) for text, features in rows if (w := named(text, words))]

        tr, va = labelled(train_rows), labelled(val_rows)
        if len({t[0] for t in tr}) < 2 or not va:
            out[name] = {"skipped": f"{len(tr)} training and {len(va)} val referents name a {name}"}
            continue
        y, y_val = torch.tensor([t[0] for t in tr]), torch.tensor([t[0] for t in va])
        entry = {"train_n": len(tr), "val_n": len(va), "chance": y_val.bincount().max().item() / len(va)}
        for site in SITES:
            x, x_val = torch.stack([t[1][site] for t in tr]), torch.stack([t[1][site] for t in va])
            entry[site] = fit_probe(x, y, x_val, y_val, len(words))
        out[name] = entry
    return out


def tower_examples(model, clips: ClipDataset, count: int, words: tuple[str, ...]) -> list:
    """Per clip with single-object expressions naming one of ``words``: (batch, coverage float
    (N, K, g, g), labels long (N,))."""
    out = []
    for c in range(min(count, len(clips))):
        item = clips[(0, c)]
        covers, labels = [], []
        for video, exp in item.keys:
            sample = clips.dataset.sample(video, exp)
            word = named(sample.expression, words)
            if sample.caption_type != "single" or word is None:
                continue
            cover = coverage(sample.actor_masks(item.keyframes), model.config.grid)
            if cover.sum() > 0:
                covers.append(cover)
                labels.append(words.index(word))
        if covers:
            out.append((collate([item], model.processor.ids.pad), torch.stack(covers), torch.tensor(labels)))
    return out


def region_logits(model, head: torch.nn.Linear, batch, cover: torch.Tensor) -> torch.Tensor:
    """Head logits of the coverage-weighted mean of a clip's vision-token inputs: (N, classes)."""
    embeds = model.embed(batch.input_ids[:1], batch.mllm_pixels)
    tokens = vision_token_states(embeds, batch.input_ids[:1], model)[0]  # (K, g, g, D)
    pooled = torch.einsum("nkyx,kyxd->nd", cover, tokens) / cover.flatten(1).sum(1, keepdim=True)
    return head(pooled)


def train_tower(
    model,
    train: list,
    val: list,
    classes: int,
    steps: int,
    clips_per_step: int = 4,
    lr: float = 1e-3,
    every: int = 250,
    fresh: bool = False,
) -> list[dict]:
    """Train the vision tower, the projector and a linear head on ``train`` (``tower_examples``);
    every ``every`` steps a record of the mean training loss and the accuracy on ``val``."""
    torch.manual_seed(0)
    parts = [model.mllm.model.vision_tower, model.mllm.model.multi_modal_projector]
    if fresh:
        for part in parts:
            part.apply(model.mllm._init_weights)
    params = [p for part in parts for p in part.parameters()]
    head = torch.nn.Linear(model.config.text.hidden_size, classes)
    opt = torch.optim.AdamW([*params, *head.parameters()], lr=lr, weight_decay=0.0)
    model.eval()  # no dropout; the parts still train
    records, losses = [], []
    for step in range(steps):
        chosen = [train[(step * clips_per_step + i) % len(train)] for i in range(clips_per_step)]
        loss = sum(F.cross_entropy(region_logits(model, head, b, c), y) for b, c, y in chosen) / len(chosen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % every == 0 or step + 1 == steps:
            with torch.no_grad():
                right = sum((region_logits(model, head, b, c).argmax(1) == y).sum().item() for b, c, y in val)
            total = sum(len(y) for _, _, y in val)
            records.append(
                {"step": step + 1, "loss": sum(losses) / len(losses), "val_accuracy": right / total}
            )
            losses = []
    return records


def breakdown(dataset: InterRVOSDataset, results: dict, groups: dict[str, tuple[str, ...]]) -> dict:
    """Mean J&F (percent) and count per (caption type, first group named, benchmark)."""
    scores = evaluate_results(dataset, results)
    texts = {(s.video_id, s.exp_id): (s.caption_type, s.expression) for s in dataset.samples()}
    cells = defaultdict(list)
    for key, per_bench in scores.per_expression.items():
        caption_type, text = texts[key]
        level = next((g for g, words in groups.items() if named(text, words)), "neither")
        for bench, (j, f) in per_bench.items():
            cells[(caption_type, level, bench)].append((j + f) / 2)
    return {k: (100 * sum(v) / len(v), len(v)) for k, v in sorted(cells.items())}


def track_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the IoU of two bool tracks (T, H, W); a frame where both are empty is 1."""
    inter = (a & b).sum((1, 2))
    union = (a | b).sum((1, 2))
    return float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).mean())


def role_choices(dataset: InterRVOSDataset, results: dict, groups: dict[str, tuple[str, ...]]) -> dict:
    """Per group named first: {"n", "actor", "target" (fraction of expressions whose role mask has
    the higher IoU with its own referent than with the other role's), "overlap" (mean IoU of the
    two predicted masks)}, over the expressions with a target and both roles predicted."""
    videos = results.get("videos", {})
    cells = defaultdict(lambda: defaultdict(list))
    for sample in dataset.samples():
        entry = videos.get(sample.video_id, {}).get(sample.exp_id)
        if not sample.has_target or entry is None or entry.get("target") is None:
            continue
        size = sample.size
        pred = {r: np.stack([rle.decode(m, size) for m in entry[r]]) for r in ("actor", "target")}
        gt = {"actor": sample.actor_masks(), "target": sample.target_masks()}
        level = next((g for g, words in groups.items() if named(sample.expression, words)), "neither")
        cell = cells[level]
        for role, other in (("actor", "target"), ("target", "actor")):
            cell[role].append(track_iou(pred[role], gt[role]) > track_iou(pred[role], gt[other]))
        cell["overlap"].append(track_iou(pred["actor"], pred["target"]))
    return {
        level: {"n": len(c["overlap"]), **{k: float(np.mean(v)) for k, v in c.items()}}
        for level, c in sorted(cells.items())
    }


def parse_groups(specs: list[str] | None) -> dict[str, tuple[str, ...]]:
    if not specs:
        return dict(DEFAULT_GROUPS)
    groups = {}
    for spec in specs:
        name, sep, words = spec.partition("=")
        if not sep or not name or not words.strip(","):
            raise SystemExit(f"--group takes NAME=word,word,...; got {spec!r}")
        groups[name] = tuple(w for w in words.split(",") if w)
    return groups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.probes.probe_words", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe", help="linear probes of the referent's vision tokens")
    p.add_argument("--model", required=True, help="model folder or name")
    p.add_argument("--data", required=True, help="dataset root with train and val splits")
    p.add_argument("--clips", type=int, default=300, help="training-split clips to fit on")
    p.add_argument("--val-clips", type=int, default=40)
    t = sub.add_parser("tower", help="train the vision tower alone on the first group's word")
    t.add_argument("--model", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--fresh", action="store_true", help="re-initialise the tower and the projector")
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--every", type=int, default=250)
    t.add_argument("--clips", type=int, default=400)
    t.add_argument("--val-clips", type=int, default=40)
    b = sub.add_parser("breakdown", help="J&F by caption type and by what an expression names")
    b.add_argument("--gt", required=True)
    b.add_argument("--split", default="test")
    b.add_argument("--pred", required=True, help="results JSON of reviosa predict --dataset")
    r = sub.add_parser("roles", help="does each role's mask lie on its own referent?")
    r.add_argument("--gt", required=True)
    r.add_argument("--split", default="test")
    r.add_argument("--pred", required=True, help="results JSON of reviosa predict --dataset")
    for q in (p, t):
        q.add_argument("--config", default="train/recipes/builtin.yaml", help="clip sampling settings")
    for q in (p, t, b, r):
        q.add_argument("--group", action="append", help="NAME=word,word,... (repeatable)")
    args = parser.parse_args(argv)
    groups = parse_groups(args.group)
    if args.command == "breakdown":
        print_breakdown(breakdown(InterRVOSDataset(args.gt, args.split), load(Path(args.pred)), groups))
        return
    if args.command == "roles":
        print_roles(role_choices(InterRVOSDataset(args.gt, args.split), load(Path(args.pred)), groups))
        return
    model = from_pretrained(args.model)
    cfg = load_config(args.config, [])

    def clips(split: str) -> ClipDataset:
        return ClipDataset(
            InterRVOSDataset(args.data, split), model.processor, model.config, cfg.data, cfg.seed
        )

    if args.command == "tower":
        name, words = next(iter(groups.items())) if args.group else ("shape", DEFAULT_GROUPS["shape"])
        train = tower_examples(model, clips("train"), args.clips, words)
        val = tower_examples(model, clips("val"), args.val_clips, words)
        labels = torch.cat([y for _, _, y in val])
        print(
            f"{name}: {int(sum(len(y) for *_, y in train))} training and {len(labels)} val referents; "
            f"val majority rate {labels.bincount().max().item() / len(labels):.3f}"
        )
        records = train_tower(
            model, train, val, len(words), args.steps, lr=args.lr, every=args.every, fresh=args.fresh
        )
        for r in records:
            print(f"step {r['step']:5d}  train loss {r['loss']:.3f}  val accuracy {r['val_accuracy']:.3f}")
        return
    train_rows = referent_features(model, clips("train"), args.clips)
    print_probes(probe_groups(train_rows, referent_features(model, clips("val"), args.val_clips), groups))


def print_breakdown(table: dict) -> None:
    print(f"{'caption type':16s} {'names':10s} {'benchmark':8s} {'J&F':>6s} {'n':>5s}")
    for (caption_type, level, bench), (jf, n) in table.items():
        print(f"{caption_type:16s} {level:10s} {bench:8s} {jf:6.1f} {n:5d}")


def print_roles(table: dict) -> None:
    print(
        f"{'names':10s} {'n':>5s} {'actor on its own':>17s} {'target on its own':>18s} {'actor-target IoU':>17s}"
    )
    for level, c in table.items():
        print(f"{level:10s} {c['n']:5d} {c['actor']:17.3f} {c['target']:18.3f} {c['overlap']:17.3f}")


def print_probes(table: dict) -> None:
    print(f"{'group':10s} {'site':8s} {'train':>6s} {'val':>6s} {'chance':>6s} {'n':>9s}")
    for name, entry in table.items():
        if "skipped" in entry:
            print(f"{name:10s} skipped: {entry['skipped']}")
            continue
        for site in SITES:
            acc, acc_val = entry[site]
            sizes = f"{entry['train_n']}/{entry['val_n']}"
            print(f"{name:10s} {site:8s} {acc:6.3f} {acc_val:6.3f} {entry['chance']:6.3f} {sizes:>9s}")


if __name__ == "__main__":
    main()
