"""What the installed model's SAM2 gives from a perfect prompt: each role's example prompt (SAM2's
own features pooled under the true masks of the keyframes) in place of the role prompt, decoded and
tracked through the memory exactly as `predict` does. Scored by the usual `evaluate` / breakdown.

    python results/stages/levers/oracle/oracle.py --model checkpoints/stage4/model \
        --dataset runs/val_clips40_seed0 --split val --out runs/oracle/val_seed0.results.json

The gap between this and `predict`'s scores is what the role prompt costs (picking the wrong object
or a worse prompt for the right one); what this scores below 100 is SAM2's own cap.
"""

from __future__ import annotations

import argparse

import torch

from reviosa import results
from reviosa import sam as sam_ops
from reviosa.data import InterRVOSDataset
from reviosa.hub import from_pretrained


def oracle_prompts(model, sample, keyframes, key_frames) -> torch.Tensor:
    """float (1, 2, P): the actor's and target's example prompts over the keyframes (zeros: none)."""
    feats = [model._frame_features(frame, 1) for frame in key_frames]
    top = torch.stack([f.vision_feats[-1][:, 0] for f in feats], 1).unsqueeze(1)  # (gy*gx, 1, K, C)
    actor = torch.from_numpy(sample.actor_masks(keyframes)).float()  # (K, H, W)
    target = sample.target_masks(keyframes)
    target = torch.zeros_like(actor) if target is None else torch.from_numpy(target).float()
    masks = torch.stack([actor, target]).unsqueeze(0)  # (1, 2, K, H, W)
    prompts, _ = sam_ops.pooled_under_masks(top, masks, feats[0].feat_sizes[-1])
    return prompts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    model = from_pretrained(args.model)
    original = model._propagate
    current = {}

    def propagate(video, keyframes, key_frames, role_prompts, active, report):
        given = oracle_prompts(model, current["sample"], keyframes, key_frames).to(role_prompts)
        return original(video, keyframes, key_frames, given, active, report)

    model._propagate = propagate
    done = results.load(args.out)
    for sample in InterRVOSDataset(args.dataset, split=args.split).samples():
        if sample.exp_id in done["videos"].get(sample.video_id, {}):
            continue
        current["sample"] = sample
        for video_id, entries in results.predict_videos(model, [sample], 1):
            done["videos"].setdefault(video_id, {}).update(entries)
        results.save(done, args.out)


if __name__ == "__main__":
    with torch.no_grad():
        main()
