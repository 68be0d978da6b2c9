"""The training loop: seeded, AdamW with warm-up + cosine, accumulation, clipping, bf16 autocast on
CUDA, DDP under ``torchrun``, atomic resumable checkpoints, JSONL + TensorBoard logs, periodic
evaluation, export with LoRA merged.

Run directory layout::

    train_config.json         the resolved config
    tokenizer/                the byte-level tokenizer (models trained from scratch)
    log.jsonl                 one record per logged optimizer step (and per evaluation)
    tb/                       TensorBoard scalars
    checkpoints/step_000123/  state.pt (trained tensors, optimizer, scheduler, step) + rng_rank{r}.pt
    checkpoints/latest        name of the newest complete checkpoint
    model/                    the exported model (``from_pretrained`` format), at the end

Resuming reproduces an uninterrupted run: the data of step s depends only on (seed, s), and the
model, optimizer, scheduler and every RNG are restored.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from reviosa.data import InterRVOSDataset
from train.config import CONFIG_NAME, GROUPS, TrainConfig
from train.data import ClipDataset, Schedule, Splits, collate
from train.model import (
    build_model,
    group_of,
    load_checkpoint_state,
    merged_model,
    prepare_trainables,
    state_for_checkpoint,
    trainable_summary,
)
from train.objective import TERMS, TrainStep

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
LOG_NAME = "log.jsonl"


# --- distributed ----------------------------------------------------------------------------------


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """torchrun's environment -> a process group (NCCL on GPUs, gloo on CPU); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = (
        torch.device(f"cuda:{local_rank}")
        if use_cuda
        else torch.device("cpu" if device == "auto" else device)
    )
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        # The other ranks wait at a barrier while rank 0 evaluates: allow long evaluations.
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2))
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev)


def _barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


# --- schedule --------------------------------------------------------------------------------------


def lr_factor(step: int, total: int, warmup_ratio: float, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): linear warm-up, then cosine."""
    warmup = int(math.ceil(warmup_ratio * total))
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def stage_scale(stages, group: str, fraction: float) -> float:
    """lr multiplier of ``group`` from the last stage that has started at ``fraction`` of training."""
    scale = 1.0
    for stage in stages:
        if fraction >= stage.start:
            scale = stage.lr_scale.get(group, 1.0)
    return scale


def stage_loss_scale(stages, fraction: float) -> dict[str, float]:
    """Loss-term multipliers of the last stage that has started at ``fraction`` of training."""
    scale: dict[str, float] = {}
    for stage in stages:
        if fraction >= stage.start:
            scale = dict(stage.loss_scale)
    return scale


# --- RNG -------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- the trainer -----------------------------------------------------------------------------------


class _KeySampler:
    """Batch sampler: the item keys of each micro-batch this rank trains on, from ``start`` on."""

    def __init__(self, schedule: Schedule, rank: int, start: int, stop: int):
        self.schedule, self.rank, self.start, self.stop = schedule, rank, start, stop

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield from self.schedule.micro_batches(step, self.rank)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.schedule.accumulation


class Trainer:
    """Train a ReVIOSa model as ``cfg`` says, in ``run_dir``.

    ``Trainer(cfg, run_dir, resume=True)`` continues from the newest checkpoint there (if any).
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, resume: bool = False):
        cfg.validate()
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist = init_distributed(cfg.device)
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / CONFIG_NAME)
        _barrier(self.dist)
        seed_everything(cfg.seed)

        self.train_data, self.val_data = self._datasets()
        self.model = self._build(_corpus(self.train_data))
        self.prepared = prepare_trainables(self.model, cfg)
        self.prepared.wrapper.to(self.dist.device)
        if cfg.optim.gradient_checkpointing:
            # Non-reentrant: the AML's attention rows keep their gradient (reviosa.attention).
            self.model.language_model.gradient_checkpointing_enable({"use_reentrant": False})
        logger.info("trainable parameters per group: %s", trainable_summary(self.prepared.wrapper))

        self.dataset = ClipDataset(
            self.train_data, self.model.processor, self.model.config, cfg.data, cfg.seed
        )
        self.schedule = Schedule(
            len(self.dataset), cfg.optim.batch_size, cfg.optim.accumulation, self.dist.world, cfg.seed
        )
        self.total_steps = cfg.optim.max_steps or max(
            1, int(math.ceil(cfg.optim.epochs * self.schedule.steps_per_epoch))
        )
        nominal_rows = cfg.optim.batch_size * cfg.data.expressions_per_clip
        self.step_module = TrainStep(self.prepared.wrapper, cfg.loss, nominal_rows, cfg.optim.bf16)
        self.runner = self._ddp(self.step_module)
        self.optimizer, self.scheduler = self._optimizer()
        self.step = 0
        if resume:
            self._resume()
        self._log_file = None
        self._tb = None

    # --- setup ---------------------------------------------------------------------------------

    def _datasets(self) -> tuple[InterRVOSDataset, InterRVOSDataset | None]:
        d = self.cfg.data
        if d.root is None:
            root = self.run_dir / "data"
            if self.dist.main:
                ensure_synth(root, d.synth, with_val=self.cfg.eval.clips > 0)
            _barrier(self.dist)
            train = InterRVOSDataset(root, "train")
            val = InterRVOSDataset(root, "val") if (root / "val").is_dir() else None
            return train, val
        train = train_splits(self.cfg, self.run_dir)
        val = None
        if self.cfg.eval.clips > 0 and d.val_split is not None:
            try:
                val = InterRVOSDataset(d.val_root or d.root, d.val_split)
            except FileNotFoundError as err:
                logger.warning("no validation split, evaluation off: %s", err)
        return train, val

    def _build(self, corpus: list[str]):
        # Rank 0 trains and saves the tokenizer first; the others read it.
        if self.dist.main:
            model = build_model(self.cfg, corpus, self.run_dir)
            _barrier(self.dist)
            return model
        _barrier(self.dist)
        return build_model(self.cfg, corpus, self.run_dir)

    def _ddp(self, module: TrainStep):
        if self.dist.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        # Some trained tensors get no gradient in a given step (SAM2's IoU head and its unused
        # multi-mask outputs always, the target path in an actor-only batch).
        ids = [self.dist.local_rank] if self.dist.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    def _optimizer(self):
        o = self.cfg.optim
        groups: dict[str, list] = {g: [] for g in GROUPS}
        for name, p in self.prepared.wrapper.named_parameters():
            if p.requires_grad:
                groups[group_of(name)].append(p)
        names = [g for g in GROUPS if groups[g]]
        optimizer = torch.optim.AdamW(
            [{"params": groups[g], "name": g} for g in names],
            lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
        )  # fmt: skip
        total, stages = self.total_steps, self.cfg.stages

        def factor(group: str):
            return lambda step: (
                lr_factor(step, total, o.warmup_ratio, o.schedule, o.min_lr_ratio)
                * stage_scale(stages, group, step / total)
            )

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(g) for g in names])
        return optimizer, scheduler

    # --- training --------------------------------------------------------------------------------

    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train until the last step (or until step ``stop_after``); returns this call's step records."""
        stop = self.total_steps if stop_after is None else min(self.total_steps, stop_after)
        records: list[dict] = []
        loader = self._loader(self.step, stop)
        bar = None
        if self.dist.main and self.cfg.log.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc=self.cfg.name, unit="step")
        batches = iter(loader)
        t_last = time.perf_counter()
        while self.step < stop:
            record = self._train_step(batches)
            now = time.perf_counter()
            record["time_s"] = now - t_last
            t_last = now
            self.step += 1
            records.append(record)
            if self.dist.main and (self.step % self.cfg.log.every == 0 or self.step == self.total_steps):
                self._log(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            if self.step % self.cfg.checkpoint.every == 0 or self.step == stop:
                self.save_checkpoint()
            if self.cfg.eval.every and self.step % self.cfg.eval.every == 0:
                self.run_eval()
        if bar is not None:
            bar.close()
        if self.step == self.total_steps and stop_after is None:
            if self.cfg.eval.at_end and not (self.cfg.eval.every and self.step % self.cfg.eval.every == 0):
                self.run_eval()
            if self.dist.main:
                export_run(self.run_dir, self.run_dir / "model")
            _barrier(self.dist)
        self._close_logs()
        return records

    def _loader(self, start: int, stop: int) -> DataLoader:
        from functools import partial

        pad = self.model.processor.ids.pad
        return DataLoader(
            self.dataset,
            batch_sampler=_KeySampler(self.schedule, self.dist.rank, start, stop),
            collate_fn=partial(collate, pad_id=pad),
            num_workers=self.cfg.data.workers,
        )

    def _train_step(self, batches) -> dict:
        o = self.cfg.optim
        sums = {t: 0.0 for t in TERMS}
        loss_sum = torch.zeros((), device=self.dist.device)
        present = set()
        self.step_module.loss_scale = stage_loss_scale(self.cfg.stages, self.step / self.total_steps)
        for m in range(o.accumulation):
            batch = next(batches).to(self.dist.device)
            last = m == o.accumulation - 1
            sync = self.runner.no_sync() if (self.dist.world > 1 and not last) else _null()
            with sync:
                loss, terms = self.runner(batch)
                (loss / o.accumulation).backward()
            loss_sum += loss.detach() / o.accumulation
            for name, value in terms.items():
                sums[name] += float(value) / (self.step_module.nominal_rows * o.accumulation)
                present.add(name)
        params = [p for p in self.prepared.wrapper.parameters() if p.requires_grad]
        clip = o.grad_clip if o.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        skipped = not torch.isfinite(grad_norm)
        if skipped:
            logger.warning("step %d: non-finite gradient norm, update skipped", self.step)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
        self.scheduler.step()
        record = {"step": self.step + 1, "epoch": self.step / self.schedule.steps_per_epoch}
        record["loss"] = self._mean_over_ranks(loss_sum)
        for name in TERMS:
            if name in present:
                record[name] = self._mean_over_ranks(torch.tensor(sums[name], device=self.dist.device))
        record.update(grad_norm=float(grad_norm), lr=max(lrs.values()), skipped=skipped)
        return record

    def _mean_over_ranks(self, value: torch.Tensor) -> float:
        if self.dist.world > 1:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.dist.world
        return float(value)

    # --- evaluation ------------------------------------------------------------------------------

    def run_eval(self) -> dict | None:
        if self.val_data is None or self.cfg.eval.clips <= 0:
            return None
        metrics = None
        if self.dist.main:
            from train.evaluate import evaluate

            metrics = evaluate(self.model, self.val_data, self.cfg.eval.clips)
            self._log({"step": self.step, "eval": metrics})
            logger.info("step %d eval: %s", self.step, {k: round(v, 1) for k, v in metrics.items()})
        _barrier(self.dist)
        return metrics

    # --- logs ----------------------------------------------------------------------------------

    def _log(self, record: dict) -> None:
        if self._log_file is None:
            self._log_file = open(self.run_dir / LOG_NAME, "a")  # noqa: SIM115 (kept open for the run)
        self._log_file.write(json.dumps(record) + "\n")
        self._log_file.flush()
        if self.cfg.log.tensorboard:
            self._tensorboard(record)

    def _tensorboard(self, record: dict) -> None:
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops the events a killed run wrote after the checkpoint resumed from.
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=record["step"])
        step = record["step"]
        if "eval" in record:
            for key, value in record["eval"].items():
                self._tb.add_scalar(f"eval/{key}", value, step)
            return
        for key in ("loss", "lr", "grad_norm", *TERMS):
            if key in record:
                self._tb.add_scalar(f"train/{key}", record[key], step)

    def _close_logs(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # --- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step_N atomically (a temporary folder renamed into place)."""
        folder = self.run_dir / CHECKPOINTS
        name = f"step_{self.step:06d}"
        tmp = folder / f".{name}.tmp"
        if self.dist.main:
            folder.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        _barrier(self.dist)
        torch.save(rng_state(), tmp / f"rng_rank{self.dist.rank}.pt")
        if self.dist.main:
            state = {
                "model": state_for_checkpoint(self.prepared.wrapper, self.cfg.checkpoint.save_frozen),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "world": self.dist.world,
            }
            torch.save(state, tmp / "state.pt")
        _barrier(self.dist)
        if self.dist.main:
            final = folder / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _write_atomic(folder / LATEST, name)
            self._prune(folder)
        _barrier(self.dist)
        return folder / name

    def _prune(self, folder: Path) -> None:
        done = sorted(p for p in folder.glob("step_*") if p.is_dir())
        for old in done[: max(0, len(done) - self.cfg.checkpoint.keep)]:
            shutil.rmtree(old)

    def _resume(self) -> None:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            logger.info("no checkpoint in %s: starting from step 0", self.run_dir)
            if self.dist.main:
                _truncate_log(self.run_dir / LOG_NAME, 0)
            return
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        load_checkpoint_state(self.prepared.wrapper, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        rng_file = path / f"rng_rank{self.dist.rank}.pt"
        if rng_file.is_file() and state.get("world") == self.dist.world:
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            logger.warning(
                "resuming with %d processes from a %s-process run: RNG streams differ",
                self.dist.world,
                state.get("world"),
            )
        if self.dist.main:
            _truncate_log(self.run_dir / LOG_NAME, self.step)
        logger.info("resumed from %s (step %d of %d)", path, self.step, self.total_steps)


# --- helpers -----------------------------------------------------------------------------------------


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    folder = Path(run_dir) / CHECKPOINTS
    pointer = folder / LATEST
    if not pointer.is_file():
        return None
    path = folder / pointer.read_text().strip()
    return path if (path / "state.pt").is_file() else None


def _truncate_log(path: Path, step: int) -> None:
    """Drop records a killed run wrote after ``step`` (they are about to be recomputed)."""
    if not path.is_file():
        return
    kept = [
        line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step
    ]
    _write_atomic(path, "".join(line + "\n" for line in kept))


def train_splits(cfg: TrainConfig, run_dir: Path) -> InterRVOSDataset | Splits:
    """The training split(s) of a config (the synthetic world lives in the run directory)."""
    d = cfg.data
    if d.root is None:
        return InterRVOSDataset(Path(run_dir) / "data", "train")
    main = InterRVOSDataset(d.root, d.split)
    if not d.extra:
        return main
    return Splits([main, *(InterRVOSDataset(e.root, e.split) for e in d.extra)])


def _corpus(dataset: InterRVOSDataset | Splits) -> list[str]:
    """Tokenizer corpus of a from-scratch model: the synthetic world's phrases plus the training
    expressions, sorted (the tokenizer is deterministic for a given corpus order)."""
    from reviosa.data.synth import expression_corpus

    return sorted(set(expression_corpus()) | {s.expression for s in dataset.samples()})


def ensure_synth(root: Path, synth, with_val: bool) -> None:
    from reviosa.data.synth import generate_split

    frames = tuple(synth.frames)
    if not (root / "train" / "meta_expressions.json").is_file():
        generate_split(
            root, "train", synth.clips, seed=synth.seed, size=synth.size, frames=frames, overwrite=True
        )
    if with_val and synth.val_clips > 0 and not (root / "val" / "meta_expressions.json").is_file():
        generate_split(
            root, "val", synth.val_clips, seed=synth.seed, size=synth.size, frames=frames, overwrite=True
        )


# --- export ----------------------------------------------------------------------------------------


def load_run(run_dir: str | Path, device: str = "cpu"):
    """Rebuild a run's model and load its newest checkpoint; returns the `Prepared` model."""
    from train.config import TrainConfig as _TC

    run_dir = Path(run_dir)
    cfg = _TC.from_dict(json.loads((run_dir / CONFIG_NAME).read_text()))
    seed_everything(cfg.seed)
    model = build_model(cfg, _corpus(train_splits(cfg, run_dir)), run_dir)
    prepared = prepare_trainables(model, cfg)
    path = latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir / CHECKPOINTS}")
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    load_checkpoint_state(prepared.wrapper, state["model"])
    prepared.wrapper.to(device)
    return prepared


def export_run(run_dir: str | Path, out: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the newest checkpoint of a run as a ``from_pretrained`` folder, LoRA merged
    (floating-point tensors stored as ``dtype`` when given)."""
    from reviosa.hub import save_pretrained

    prepared = load_run(run_dir)
    model = merged_model(prepared).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    path = save_pretrained(model, out, dtype=dtype)
    logger.info("exported %s to %s", run_dir, path)
    return path
