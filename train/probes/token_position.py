"""Does each vision token say where it is? A linear probe of its grid cell, row and quadrant.

python -m train.probes.token_position --mllm checkpoints/stage1/mllm.safetensors [--clips 60]

The LLM reads a vision token's content, not its place: rotary positions only shape attention
scores, and a 1-D offset from the question says little about a cell of a frame block. So an
answer like "top left", or a motion ("moving left") compared over keyframes, needs the token's
own features to carry its position, as a pretrained InternViT's do (absolute position
embeddings). This fits a linear probe (``probe_words.fit_probe``) from the
projected tokens of random stage-1 clips to each token's cell, row and quadrant, and prints
held-out accuracy beside chance.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from train.probes.probe_words import fit_probe
from train.stages import vl_pretrain
from train.stages.clips import Backgrounds, random_clip
from train.stages.common import RECIPE

TRAIN_SHARE = 0.8  # the first frames' tokens fit the probe, the rest score it


def position_probe(tokens: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Held-out accuracy and chance of reading each token's cell, row and quadrant.

    tokens: float (F, T, D), the vision tokens of F frames in raster order on a square grid.
    """
    frames, count, width = tokens.shape
    grid = int(round(count**0.5))
    if grid * grid != count:
        raise ValueError(f"{count} tokens a frame do not make a square grid")
    cell = torch.arange(count).repeat(frames)
    row, col = cell // grid, cell % grid
    quadrant = (row >= grid // 2).long() * 2 + (col >= grid // 2).long()
    x = tokens.reshape(-1, width).float()
    cut = int(TRAIN_SHARE * frames) * count
    return {
        name: (fit_probe(x[:cut], y[:cut], x[cut:], y[cut:], classes)[1], 1 / classes)
        for name, y, classes in (("cell", cell, count), ("row", row, grid), ("quadrant", quadrant, 4))
    }


@torch.no_grad()
def clip_tokens(model, clips: int, seed: int = 5) -> torch.Tensor:
    """Projected vision tokens (4 * clips, T, D) of random 4-keyframe stage-1 clips."""
    rng = np.random.default_rng(seed)
    backgrounds = Backgrounds(rng, model.config.vision.image_size, 16)
    frames = np.concatenate(
        [random_clip(rng, backgrounds, 4, max_stride=9, stride=9).frames for _ in range(clips)]
    )
    return model.vision_tokens(model.processor.mllm_pixels(frames))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.probes.token_position", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--mllm", required=True, help="a stage-1 mllm.safetensors")
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--clips", type=int, default=60)
    args = parser.parse_args(argv)
    model = vl_pretrain.build(args.recipe, [])
    vl_pretrain.load_mllm(model, args.mllm)
    model.eval()
    for name, (acc, chance) in position_probe(clip_tokens(model, args.clips)).items():
        print(f"{name:9s} held-out {acc:.3f}  chance {chance:.3f}")


if __name__ == "__main__":
    main()
