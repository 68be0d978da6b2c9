"""Where the role tokens of "object pushing another object" look and land, on the validation pool:

1. the supervised heads' attention mass (mean over heads) on the one acting and the one acted on,
   per keyframe, by voice and role token;
2. where each role prompt's nearest example prompt lands, by what the expression names: its
   referent, the other side of the interaction, or another object.

python results/stages/levers/roles/diagnose.py GROUNDING_RUN POOL_RUN
(GROUNDING_RUN: a grounding phase's folder with model/; POOL_RUN: a folder with its pool_val.pt)
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reviosa.hub import from_pretrained
from train.stages import grounding as G


def main(run: Path, pools: Path) -> None:
    model = from_pretrained(str(run / "model")).float().eval()
    cfg = G.GroundingConfig(two_tokens=True, aml_layer=2, aml_heads=(2, 0, 3, 1), aml=1.0)
    val = G.build_pool(model, cfg, "val", cfg.val_clips, pools / "pool_val.pt")
    aml = G.supervision(cfg)
    mass, lands = defaultdict(list), Counter()
    with torch.no_grad():
        for c0 in range(0, len(val), cfg.clips):
            clips = val[c0 : c0 + cfg.clips]
            batch = G.make_batch(model, clips, G.choose(clips, 0, True, None), True)
            fwd = G.forward(model, batch, aml)
            prompts = model.prompt_proj(G.role_states(fwd.hidden, batch))
            for t, c in enumerate(batch.chosen):
                if c.caption_type != "unidirectional":
                    continue
                level, voice = G.level_of(c.text), "passive" if G.is_passive(c.text) else "active"
                grid = clips[c.clip].grid  # (N, K, g, g)
                acts, acted_on = (c.roles[0][0], c.roles[1][0])[:: 1 if voice == "active" else -1]
                for r, token in enumerate(("[SEG_ACT]", "[SEG_TAR]")):
                    cand, right = G.candidates(clips[c.clip], c.roles[r])
                    best = int(F.cosine_similarity(prompts[t, r][None].float(), cand, dim=-1).argmax())
                    where = (
                        "referent"
                        if best == right
                        else "other side"
                        if best == c.roles[1 - r][0]
                        else "other"
                    )
                    lands[(level, where)] += 1
                    if level == "neither":
                        heads = fwd.rows[t, r, 0].mean(0)  # (K, g, g)
                        for side, n in (("acting", acts), ("acted on", acted_on)):
                            mass[(voice, token, side)].append((heads * grid[n]).sum((1, 2)).numpy())
    print("attention mass on each side, keyframes 0-3 (expressions naming neither colour nor shape):")
    for key in sorted(mass):
        print("  {:8s} {:10s} on the one {:9s}".format(*key), np.round(np.mean(mass[key], 0), 3))
    print("where the role prompt lands (both role tokens):")
    for level in ("colour", "shape", "neither"):
        total = sum(v for (lv, _), v in lands.items() if lv == level)
        shares = {w: lands[(level, w)] / total for w in ("referent", "other side", "other")}
        print(f"  {level:8s} n={total:3d} " + " ".join(f"{w} {s:.3f}" for w, s in shares.items()))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
