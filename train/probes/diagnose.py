"""Does SAM2 follow its prompt? Diagnostics for a model trained from scratch.

python -m train.probes.diagnose --model MODEL --data ROOT [--split val] [--clips 8] [--config RECIPE]

On the first clips of a split, decoded as in training (each frame from its prompt), it prints:
- the mean IoU with the ground truth of masks prompted by the role states ("llm") and by the
  example prompts pooled under the ground truth ("example", ``ReviosaModel.example_prompts``);
- the IoU between the actor and target masks of one expression (the truth's is 0: a decoder that
  follows its prompt gives two different masks);
- how much the mask logits move when the example prompts are replaced by zeros, by random vectors
  ten times larger, or by another row's prompts (a decoder that ignores its prompt barely moves);
- where the link from the language model to the prompt loses the referent (``link_stats``): the
  share of the supervised heads' vision attention on the referent (beside the referent's share of
  the vision tokens, what uniform attention scores), the distill relative error of the role
  prompts, and how often a role prompt is nearer (cosine) its own example prompt than the other
  role's.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from reviosa.data import InterRVOSDataset
from reviosa.evaluation import iou
from reviosa.hub import from_pretrained
from train.config import load_config
from train.data import ClipDataset, collate


def diagnose(model, clips: ClipDataset, count: int, seed: int = 0) -> dict[str, float]:
    """The statistics above, averaged over ``count`` clips."""
    gen = torch.Generator().manual_seed(seed)
    sums: dict[str, list[float]] = {}

    def add(key: str, values) -> None:
        sums.setdefault(key, []).extend(values)

    model.eval()
    sup = model.config.attention_supervision
    capture = None if sup is None else {"layers": [sup.layer], "heads": list(sup.heads)}
    with torch.no_grad():
        for c in range(min(count, len(clips))):
            b = collate([clips[(0, c)]], model.processor.ids.pad)
            out = model.forward_train(
                b.input_ids, b.attention_mask, b.labels, b.mllm_pixels, b.sam_pixels,
                clip_index=b.clip_of, decode_absent=False, example_masks=b.masks, capture=capture,
            )  # fmt: skip
            # numpy for reviosa.evaluation.iou (bool (..., H, W) -> per frame, both empty -> 1)
            gt = (b.masks > 0.5).numpy()
            weighted, both = (b.role_weight > 0).numpy(), (b.role_weight[:, 1] > 0).numpy()
            for name, logits in (("llm", out.mask_logits), ("example", out.example.mask_logits)):
                pred = (logits > 0).numpy()
                add(f"{name}_iou", iou(pred, gt).mean(-1)[weighted].tolist())
                add(f"{name}_actor_vs_target_iou", iou(pred[both, 0], pred[both, 1]).mean(-1).tolist())
            add("truth_actor_vs_target_iou", iou(gt[both, 0], gt[both, 1]).mean(-1).tolist())
            add_prompt_sensitivity(model, b, out.example, gen, add)
            valid = (b.role_weight > 0) & out.example.valid
            rows = None if out.attention is None else out.attention.rows
            for key, values in link_stats(
                rows, b.grids, out.role_prompts, out.example.prompts, valid
            ).items():
                add(key, values)
    return {k: sum(v) / max(1, len(v)) for k, v in sums.items()}


def add_prompt_sensitivity(model, batch, example, gen: torch.Generator, add) -> None:
    """Max |change| of the mask logits and the fraction of flipped pixels under other prompts."""
    feats = model.encode_frames(batch.sam_pixels)
    f = batch.sam_pixels.shape[1]
    p = example.prompts
    base, _ = model.decode_encoded(feats, f, p, batch.clip_of)
    others = {
        "zeros": torch.zeros_like(p),
        "random_x10": 10
        * p.norm(dim=-1, keepdim=True).mean()
        * torch.randn(p.shape, generator=gen)
        / p.shape[-1] ** 0.5,
        "other_row": p.roll(1, dims=0),
    }
    for name, q in others.items():
        out, _ = model.decode_encoded(feats, f, q, batch.clip_of)
        add(f"{name}_max_logit_change", [(out - base).abs().max().item()])
        add(f"{name}_flipped_fraction", [((out > 0) != (base > 0)).float().mean().item()])


def link_stats(
    rows: torch.Tensor | None,
    grids: torch.Tensor,
    prompts: torch.Tensor,
    examples: torch.Tensor,
    valid: torch.Tensor,
) -> dict[str, list[float]]:
    """Per-(row, role) values of the link statistics (see the module docstring).

    rows: float (B, R, NL, NH, K, g, g) captured attention, or None (no attention statistics);
    grids: float (B, R, K, g, g) referent masks on the token grid; prompts, examples: float (B, R, P)
    role and example prompts; valid: bool (B, R) roles with a referent.
    """
    stats: dict[str, list[float]] = {}
    area = grids.flatten(2).sum(-1)  # (B, R)
    seen = valid & (area > 0)
    if rows is not None:
        on = (rows * grids[:, :, None, None]).flatten(4).sum(-1)  # (B, R, NL, NH)
        share = on / rows.flatten(4).sum(-1).clamp_min(1e-12)
        stats["attention_on_referent"] = share.mean((2, 3))[seen].tolist()
        stats["referent_token_share"] = (area / grids[0, 0].numel())[seen].tolist()
    err = (prompts - examples).pow(2).sum(-1) / examples.pow(2).sum(-1).clamp_min(1e-6)
    stats["distill_relative_error"] = err[valid].tolist()
    both = valid.all(-1)  # (B,) rows with an actor and a target
    p, e = F.normalize(prompts[both], dim=-1), F.normalize(examples[both], dim=-1)  # (N, 2, P)
    cos = torch.einsum("nrp,nsp->nrs", p, e)  # prompt of role r against the example of role s
    own, other = cos.diagonal(dim1=1, dim2=2), cos.flip(-1).diagonal(dim1=1, dim2=2)  # (N, 2)
    stats["prompt_nearer_own_example"] = (own > other).flatten().float().tolist()
    stats["llm_actor_target_prompt_cos"] = (p[:, 0] * p[:, 1]).sum(-1).tolist()
    stats["example_actor_target_prompt_cos"] = (e[:, 0] * e[:, 1]).sum(-1).tolist()
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.probes.diagnose", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", required=True, help="model folder or name")
    parser.add_argument("--data", required=True, help="dataset root (InterRVOS / MeViS layout)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--config", default="train/recipes/builtin.yaml", help="clip sampling settings")
    args = parser.parse_args(argv)
    model = from_pretrained(args.model)
    cfg = load_config(args.config, [])
    clips = ClipDataset(
        InterRVOSDataset(args.data, args.split), model.processor, model.config, cfg.data, cfg.seed
    )
    for key, value in diagnose(model, clips, args.clips).items():
        print(f"{key:32s} {value:.4f}")


if __name__ == "__main__":
    main()
