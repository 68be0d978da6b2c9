"""Does SAM2 follow its prompt? Diagnostics for a model trained from scratch.

python -m train.diagnose --model MODEL --data ROOT [--split val] [--clips 8] [--config RECIPE]

On the first clips of a split, decoded as in training (each frame from its prompt), it prints:
- the mean IoU with the ground truth of masks prompted by the role states ("llm") and by the
  example prompts pooled under the ground truth ("example", ``ReviosaModel.example_prompts``);
- the IoU between the actor and target masks of one expression (the truth's is 0: a decoder that
  follows its prompt gives two different masks);
- how much the mask logits move when the example prompts are replaced by zeros, by random vectors
  ten times larger, or by another row's prompts (a decoder that ignores its prompt barely moves).
"""

from __future__ import annotations

import argparse

import torch

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
    with torch.no_grad():
        for c in range(min(count, len(clips))):
            b = collate([clips[(0, c)]], model.processor.ids.pad)
            out = model.forward_train(
                b.input_ids, b.attention_mask, b.labels, b.mllm_pixels, b.sam_pixels,
                clip_index=b.clip_of, decode_absent=False, example_masks=b.masks,
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.diagnose", description=__doc__.split("\n")[0])
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
