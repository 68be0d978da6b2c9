"""Where the motion lever's grounding phase stands on held-out clips (the validation pool):

1. does the motion head read each object's move from the vision tokens after LLM layer 1?
   (the direction of the mean predicted move over the keyframes, against the true one, for objects
   that move at least a cell; and for the referents of "the object moving up / down / left /
   right");
2. for expressions that name their referent by neither colour nor shape, which object the role
   token's supervised heads (layer 2) attend to most, against the referent, and the pick.

python results/stages/levers/motion/diagnose.py RUN/grounding
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch

from reviosa.hub import from_pretrained
from train.objective import vision_token_states
from train.stages import grounding as G


def main(run: Path) -> None:
    model = from_pretrained(str(run / "model")).float().eval()
    state = torch.load(run / "state.pt", weights_only=False)
    head = torch.nn.Linear(model.config.text.hidden_size, 2)
    head.load_state_dict(state["motion_head"])
    cfg = G.GroundingConfig(two_tokens=True, aml_layer=2, aml_heads=(2, 0, 3, 1), aml=1.0, motion=1.0)
    val = G.build_pool(model, cfg, "val", cfg.val_clips, run / "pool_val.pt")
    aml = G.supervision(cfg)
    direction, named_dir = defaultdict(list), defaultdict(list)
    attend, pick = defaultdict(list), defaultdict(list)
    words = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
    with torch.no_grad():
        for c0 in range(0, len(val), cfg.clips):
            clips = val[c0 : c0 + cfg.clips]
            batch = G.make_batch(model, clips, G.choose(clips, 0, True, None), True)
            fwd = G.forward(model, batch, aml, layer=1)
            layer = vision_token_states(fwd.layer, batch.packed.input_ids, model)  # (C, K, g, g, D)
            prompts = model.prompt_proj(G.role_states(fwd.hidden, batch))
            for c, clip in enumerate(clips):
                moved, valid = G.displacements(clip.cover)  # (N, K, 2)
                pred = head(layer[c])  # (K, g, g, 2)
                w = clip.cover * valid[..., None, None]  # (N, K, g, g)
                pred_obj = (w[..., None] * pred[None]).sum((2, 3)) / w.sum((2, 3)).clamp_min(1e-6)[..., None]
                for n in range(len(moved)):
                    true = (moved[n] * valid[n, :, None]).sum(0)
                    if true.abs().max() >= 1.0:
                        est = (pred_obj[n] * valid[n, :, None]).sum(0)
                        axis = int(true.abs().argmax())
                        direction["moving objects"].append(
                            float(torch.sign(est[axis]) == torch.sign(true[axis]))
                        )
                for text, ctype, actor, _ in clip.expressions:
                    for word, (dy, dx) in words.items():
                        if ctype == "single" and text == f"the object moving {word}":
                            n = actor[0]
                            est = (pred_obj[n] * valid[n, :, None]).sum(0)
                            axis = 0 if dy else 1
                            named_dir[word].append(float(torch.sign(est[axis]) == (dy or dx)))
            for q, ch in enumerate(batch.chosen):
                if G.level_of(ch.text) != "neither":
                    continue
                clip = val[c0 + ch.clip]
                for r, role in enumerate(("actor", "target")):
                    if batch.positions[q, r] < 0:
                        continue
                    rows = fwd.rows[q, r, 0].mean(0)  # (K, g, g) mean over the supervised heads
                    mass = (clip.grid * rows[None]).sum((1, 2, 3))  # (N,)
                    key = f"{ch.caption_type}/{role}"
                    attend[key].append(float(int(mass.argmax()) in ch.roles[r]))
                    cand, right = G.candidates(clip, ch.roles[r])
                    cos = torch.nn.functional.cosine_similarity(prompts[q, r][None], cand, dim=-1)
                    pick[key].append(float(int(cos.argmax()) == right))
    mean = lambda v: f"{sum(v) / max(len(v), 1):.3f} (n={len(v)})"  # noqa: E731
    print("motion head, direction of the mean move on its main axis:")
    for k, v in direction.items():
        print(f"  {k}: {mean(v)}")
    for k, v in named_dir.items():
        print(f"  referents of 'the object moving {k}': {mean(v)}")
    print("expressions naming neither colour nor shape: heads' most-attended object is a referent / pick")
    for k in sorted(attend):
        print(f"  {k}: attend {mean(attend[k])}, pick {mean(pick[k])}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
