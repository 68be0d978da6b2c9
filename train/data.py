"""Training data: clips of an InterRVOS / MeViS split (or the synthetic world) as teacher-forced batches.

One item is one clip with up to E of its expressions (the reference trains 5 expressions per
video sample). Each epoch deals every expression of the split into exactly one item: a video's
expressions are shuffled and cut into chunks of E. Everything random about an item (which
expressions, keyframes, SAM2 frames) is drawn from ``SeedSequence([seed, epoch, index])``, so an
item does not depend on worker processes, on the process that loads it, or on where a run was
resumed.

Axis letters: C clips, B rows (one per expression), R roles (actor, target), K keyframes, F frames
SAM2 decodes, L tokens, g vision-token grid side, S SAM2 input size, h = w = S/4 mask logits size.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from reviosa import sam as sam_ops
from reviosa import tokens
from reviosa.config import ReviosaConfig
from reviosa.data import InterRVOSDataset, Sample
from reviosa.processor import ReviosaProcessor
from train.config import DataConfig

logger = logging.getLogger(__name__)

ACTOR_ONLY = f"Sure, {tokens.SEG_ACT}."
ACTOR_AND_TARGET = f"Sure, {tokens.SEG_ACT} and {tokens.SEG_TAR}."
IGNORE = -100


def answer_for(sample: Sample, two_tokens: bool) -> str:
    """The teacher-forced answer: two role tokens only for unidirectional expressions."""
    if two_tokens and sample.caption_type == "unidirectional":
        return ACTOR_AND_TARGET
    return ACTOR_ONLY


def sample_keyframes(num_frames: int, k: int, how: str, rng: np.random.Generator) -> list[int]:
    """K sorted frame indices. Clips shorter than K repeat frames: every row of a batch must hold
    the same number of vision tokens."""
    if how == "first":
        return [min(i, num_frames - 1) for i in range(k)]
    if num_frames < k:
        return sorted(rng.choice(num_frames, size=k, replace=True).tolist())
    if how == "random":
        return sorted(rng.choice(num_frames, size=k, replace=False).tolist())
    if how == "segments":
        edges = np.linspace(0, num_frames, k + 1)
        lows, highs = np.floor(edges[:-1]).astype(int), np.maximum(np.floor(edges[1:]).astype(int), 1)
        highs = np.maximum(highs, lows + 1)
        return [int(rng.integers(lo, hi)) for lo, hi in zip(lows, highs, strict=True)]
    raise ValueError(f"unknown keyframe sampling {how!r}")


def sample_sam_frames(
    num_frames: int, keyframes: Sequence[int], f: int, on_keyframes: bool, rng: np.random.Generator
) -> list[int]:
    """F frame indices for SAM2: keyframes first (a random subset when F < K), then other frames."""
    pool = list(dict.fromkeys(keyframes)) if on_keyframes else []
    if len(pool) >= f:
        return sorted(rng.choice(pool, size=f, replace=False).tolist())
    rest = [t for t in range(num_frames) if t not in pool]
    need = f - len(pool)
    extra = rng.choice(rest, size=need, replace=len(rest) < need).tolist() if rest else []
    chosen = pool + extra
    while len(chosen) < f:  # a clip with fewer frames than F repeats them
        chosen.append(int(rng.choice(chosen)))
    return sorted(int(t) for t in chosen)


def resize_masks(masks: np.ndarray, size: int, soft: bool = False) -> torch.Tensor:
    """bool (..., H, W) -> float (..., size, size) in {0, 1}: area average, then > 0.5; with
    ``soft`` the average itself (each cell's covered share, in [0, 1]).

    Area rather than nearest for the mask-loss targets: at 4x downsampling nearest drops thin parts.
    """
    lead = masks.shape[:-2]
    x = torch.from_numpy(masks.reshape(-1, 1, *masks.shape[-2:]).astype(np.float32))
    x = F.interpolate(x, size=(size, size), mode="area")
    return (x if soft else (x > 0.5).float()).reshape(*lead, size, size)


def grid_masks(masks: np.ndarray, grid: int) -> torch.Tensor:
    """bool (..., H, W) -> float (..., g, g), nearest (the AML target, FACTS.md)."""
    lead = masks.shape[:-2]
    x = torch.from_numpy(masks.reshape(-1, 1, *masks.shape[-2:]).astype(np.float32))
    return F.interpolate(x, size=(grid, grid), mode="nearest").reshape(*lead, grid, grid)


def coverage(masks: np.ndarray, grid: int) -> torch.Tensor:
    """bool (K, H, W) -> float (K, g, g): the fraction of each grid cell the mask covers (area
    pooling, so the cells on an object's outline count)."""
    x = torch.from_numpy(masks.astype(np.float32))[:, None]
    return F.interpolate(x, size=(grid, grid), mode="area")[:, 0]


class Splits:
    """Several splits read as one training set (e.g. InterRVOS-127K with MeViS): the interface of
    ``InterRVOSDataset`` that training reads."""

    def __init__(self, datasets: Sequence[InterRVOSDataset]):
        if not datasets:
            raise ValueError("no dataset to train on")
        self.datasets = list(datasets)
        self.root = self.datasets[0].root

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def samples(self) -> Iterator[Sample]:
        for d in self.datasets:
            yield from d.samples()

    def sample(self, video_id: str, exp_id: str) -> Sample:
        for d in self.datasets:
            try:
                return d.sample(video_id, exp_id)
            except KeyError:
                continue
        raise KeyError(f"no expression {exp_id!r} in video {video_id!r} of any training split")


@dataclass
class ClipItem:
    """One clip and E of its expressions, ready to collate.

    mllm_pixels: float (K, 3, s, s); sam_pixels: float (F, 3, S, S);
    sequences / labels: E token-id lists (prompt + answer; labels -100 on the prompt);
    masks: float (E, R, F, h, w); grids: float (E, R, K, g, g); present: float (E, R, F);
    role_weight: float (E, R): 1 where the role is supervised; words: E lists of the expression's
    token ids.
    """

    mllm_pixels: torch.Tensor
    sam_pixels: torch.Tensor
    sequences: list[list[int]]
    labels: list[list[int]]
    masks: torch.Tensor
    grids: torch.Tensor
    present: torch.Tensor
    role_weight: torch.Tensor
    keys: list[tuple[str, str]]
    words: list[list[int]]
    keyframes: list[int]
    sam_frames: list[int]


@dataclass
class Batch:
    """Collated clips; rows are expressions, right-padded.

    input_ids / attention_mask / labels: long (B, L); mllm_pixels: float (C*K, 3, s, s), clip-major;
    sam_pixels: float (C, F, 3, S, S); clip_of: long (B,) the clip of each row;
    masks: float (B, R, F, h, w); grids: float (B, R, K, g, g); present: float (B, R, F);
    role_weight: float (B, R); words: long (B, W) each row's expression token ids, right-padded
    with -1.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    mllm_pixels: torch.Tensor
    sam_pixels: torch.Tensor
    clip_of: torch.Tensor
    masks: torch.Tensor
    grids: torch.Tensor
    present: torch.Tensor
    role_weight: torch.Tensor
    keys: list[tuple[str, str]]
    words: torch.Tensor

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        moved = {
            f.name: getattr(self, f.name).to(device)
            if isinstance(getattr(self, f.name), torch.Tensor)
            else getattr(self, f.name)
            for f in fields(self)
        }
        return Batch(**moved)

    def row_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels repeated per row, as ``forward_train`` takes them: float (B*K, 3, s, s), (B, F, 3, S, S)."""
        c = self.sam_pixels.shape[0]
        mllm = self.mllm_pixels.reshape(c, -1, *self.mllm_pixels.shape[1:])[self.clip_of]  # (B, K, 3, s, s)
        return mllm.flatten(0, 1), self.sam_pixels[self.clip_of]


class ClipDataset(Dataset):
    """Items ``(epoch, index)`` of one split: a clip and up to E expressions (see module doc)."""

    def __init__(
        self,
        dataset: InterRVOSDataset | Splits,
        processor: ReviosaProcessor,
        model_config: ReviosaConfig,
        data: DataConfig,
        seed: int,
    ):
        self.dataset = dataset
        self.processor = processor
        self.model_config = model_config
        self.cfg = data
        self.seed = seed
        self.num_keyframes = data.keyframes or model_config.processor.num_keyframes
        # Keyed by split as well: two splits may reuse a video id for different clips.
        groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
        for sample in dataset.samples():
            groups[(str(sample.dataset.root), sample.video_id)].append(sample)
        self.videos = [groups[v] for v in sorted(groups)]
        if not self.videos:
            raise ValueError(f"{dataset.root} holds no expressions to train on")
        e = data.expressions_per_clip
        self.items_per_epoch = sum(-(-len(v) // e) for v in self.videos)

    def __len__(self) -> int:
        return self.items_per_epoch

    def epoch_items(self, epoch: int) -> list[tuple[int, list[int]]]:
        """(video index, expression indices) of each item of ``epoch``, in a fixed order."""
        items = []
        e = self.cfg.expressions_per_clip
        for v, samples in enumerate(self.videos):
            order = np.random.default_rng([self.seed, epoch, v, 1]).permutation(len(samples)).tolist()
            items += [(v, order[i : i + e]) for i in range(0, len(order), e)]
        return items

    def __getitem__(self, key: tuple[int, int]) -> ClipItem:
        epoch, index = key
        video, chosen = self._items(epoch)[index]
        rng = np.random.default_rng([self.seed, epoch, index, 2])
        return self.load_item([self.videos[video][i] for i in chosen], rng)

    def _items(self, epoch: int) -> list[tuple[int, list[int]]]:
        # One epoch's items are reused by every __getitem__ of that epoch.
        cached = getattr(self, "_cache", None)
        if cached is None or cached[0] != epoch:
            self._cache = (epoch, self.epoch_items(epoch))
        return self._cache[1]

    def load_item(self, samples: list[Sample], rng: np.random.Generator) -> ClipItem:
        first = samples[0]
        keyframes = sample_keyframes(first.num_frames, self.num_keyframes, self.cfg.keyframe_sampling, rng)
        sam_frames = sample_sam_frames(
            first.num_frames, keyframes, self.cfg.sam_frames, self.cfg.sam_frames_on_keyframes, rng
        )
        wanted = sorted(set(keyframes) | set(sam_frames))
        where = {t: i for i, t in enumerate(wanted)}
        key_idx, sam_idx = [where[t] for t in keyframes], [where[t] for t in sam_frames]
        frames = first.load_frames(wanted)  # (T', H, W, 3)
        mllm_pixels = self.processor.mllm_pixels(frames[key_idx])
        sam_pixels = sam_ops.preprocess(torch.from_numpy(frames[sam_idx]), self.model_config.sam)

        sequences, labels, role_masks, weights = [], [], [], []
        for sample in samples:
            prompt = self.processor.prompt_ids(sample.expression, len(keyframes))
            answer = self.processor.answer_ids(answer_for(sample, self.cfg.two_tokens))
            sequences.append(prompt + answer)
            labels.append([IGNORE] * len(prompt) + answer)
            actor = sample.actor_masks(wanted)  # (T', H, W)
            target = sample.target_masks(wanted) if self.cfg.two_tokens else None
            weights.append([1.0, 0.0 if target is None else 1.0])
            role_masks.append(np.stack([actor, target if target is not None else np.zeros_like(actor)]))
        masks = np.stack(role_masks)  # (E, R, T', H, W), expression-major
        low_res = self.model_config.sam.image_size // 4
        return ClipItem(
            mllm_pixels=mllm_pixels,
            sam_pixels=sam_pixels,
            sequences=sequences,
            labels=labels,
            masks=resize_masks(masks[:, :, sam_idx], low_res, self.cfg.soft_masks),
            grids=grid_masks(masks[:, :, key_idx], self.model_config.grid),
            present=torch.from_numpy(masks[:, :, sam_idx].any(axis=(-2, -1)).astype(np.float32)),
            role_weight=torch.tensor(weights),
            keys=[(s.video_id, s.exp_id) for s in samples],
            words=[self.processor.expression_ids(s.expression) for s in samples],
            keyframes=keyframes,
            sam_frames=sam_frames,
        )


def right_pad(rows: list[list[int]], value: int) -> torch.Tensor:
    """Token-id lists -> long (N, longest) right-padded with ``value``."""
    out = torch.full((len(rows), max(map(len, rows), default=0)), value, dtype=torch.long)
    for b, ids in enumerate(rows):
        out[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def collate(items: list[ClipItem], pad_id: int) -> Batch:
    """Stack clips; rows (expressions) right-padded to the longest sequence."""
    sequences = [s for item in items for s in item.sequences]
    clip_of = torch.tensor([c for c, item in enumerate(items) for _ in item.sequences], dtype=torch.long)
    input_ids = right_pad(sequences, pad_id)
    label_ids = right_pad([s for item in items for s in item.labels], IGNORE)
    mask = right_pad([[1] * len(s) for s in sequences], 0)
    words = right_pad([w for item in items for w in item.words], -1)
    return Batch(
        input_ids=input_ids,
        attention_mask=mask,
        labels=label_ids,
        mllm_pixels=torch.cat([item.mllm_pixels for item in items]),
        sam_pixels=torch.stack([item.sam_pixels for item in items]),
        clip_of=clip_of,
        masks=torch.cat([item.masks for item in items]),
        grids=torch.cat([item.grids for item in items]),
        present=torch.cat([item.present for item in items]),
        role_weight=torch.cat([item.role_weight for item in items]),
        keys=[k for item in items for k in item.keys],
        words=words,
    )


@dataclass
class Schedule:
    """Which items each (optimizer step, micro-batch, rank) trains on.

    Every epoch has ``steps_per_epoch`` optimizer steps of ``global_clips`` = batch x accumulation
    x world clips (the epoch's leftover items are dropped so that every micro-batch is full, which
    keeps a micro-batch's loss normalisation constant). Rank r of micro-batch m of a step takes the
    r-th slice of that micro-batch's clips: DDP over N processes sees the same global batches as
    one process with N times the batch.
    """

    items_per_epoch: int
    batch_size: int
    accumulation: int
    world: int
    seed: int

    @property
    def global_clips(self) -> int:
        return self.batch_size * self.accumulation * self.world

    @property
    def steps_per_epoch(self) -> int:
        steps = self.items_per_epoch // self.global_clips
        if steps < 1:
            raise ValueError(
                f"an epoch has {self.items_per_epoch} items, fewer than one global batch of {self.global_clips} "
                "clips: lower optim.batch_size / optim.accumulation or add data"
            )
        return steps

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 3]).permutation(self.items_per_epoch)

    def micro_batches(self, step: int, rank: int) -> Iterator[list[tuple[int, int]]]:
        """The (epoch, index) keys of each micro-batch of optimizer step ``step`` for ``rank``."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order = self.order(epoch)
        start = within * self.global_clips
        for m in range(self.accumulation):
            base = start + (m * self.world + rank) * self.batch_size
            yield [(epoch, int(i)) for i in order[base : base + self.batch_size]]
