"""The four-stage annotation pipeline (InterRVOS paper, "Data annotation pipeline" and appendix D.1).

Given a video and a mask track per object (the paper pre-computes them with SAM2):

1. **objects** (vision, one call per object): the object highlighted alone on sampled frames ->
   class, appearance, motion;
2. **expressions** (text): per object, appearance-only / motion-only / combined referring
   expressions (caption type ``single``); one call per video grouping objects that share a motion
   into one expression (``multi``);
3. **interactions** (vision, one call per video): every object labelled -> unidirectional
   interactions (initiators, receivers) and bidirectional ones (participants);
4. **interaction expressions** (text, one call per interaction): class- and appearance-level
   expressions; for a unidirectional interaction one with each side as the subject (active, passive:
   ``unidirectional`` with actor and target), for a bidirectional one an expression for the union
   (``bidirectional``).

Every answer is validated (``schema.py``); a rejected answer is asked again up to ``retries`` times,
then recorded as a failure of that unit (object, group, interaction), and the run goes on. Answers are
cached in ``WORK_DIR/VIDEO/stageN_*.json`` after each unit, so a re-run (or a run resumed after an
interruption) asks only for what is missing. The output is written by ``reviosa.data.write_dataset``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from reviosa.data import ExpressionSpec, ObjectTrack, VideoRecord, write_dataset
from train.annotate import prompts, schema
from train.annotate.client import ChatClient
from train.annotate.inputs import FrameSequence, VideoInput

logger = logging.getLogger(__name__)

__all__ = ["AnnotateConfig", "Annotator", "StageCache", "STAGE_FILES", "build_expressions", "sample_indices"]

STAGE_FILES = {
    1: "stage1_objects.json",
    2: "stage2_expressions.json",
    3: "stage3_interactions.json",
    4: "stage4_interaction_expressions.json",
}
VIDEO_FILE = "video.json"
SUMMARY_FILE = "summary.json"


@dataclass
class AnnotateConfig:
    """Pipeline settings."""

    frames: int = 4  # frames sampled per vision prompt (the paper does not say; 4 = a training sample)
    retries: int = 2  # extra attempts after a rejected answer, then the unit is recorded as failed
    max_side: int = 768  # frames are downscaled to this longest side before drawing (token cost)
    retry_failed: bool = False  # ask again for units that failed in an earlier run
    progress: bool = True  # tqdm bar over videos

    def __post_init__(self):
        if self.frames < 1:
            raise ValueError(f"--frames must be >= 1, got {self.frames}")
        if self.retries < 0:
            raise ValueError(f"--retries must be >= 0, got {self.retries}")
        if self.max_side < 64:
            raise ValueError(f"--max-side must be >= 64, got {self.max_side}")

    def cache_key(self) -> dict:
        """Settings that change what a model sees: a change invalidates the cached answers."""
        return {"frames": self.frames, "max_side": self.max_side, "prompt_version": prompts.PROMPT_VERSION}


@dataclass
class Job:
    """One question to a model: ``build`` makes (messages, images) when the answer is not cached;
    ``validate`` turns the parsed JSON into the cached result."""

    client: ChatClient
    build: Callable[[], tuple[list[dict], list[np.ndarray]]]
    validate: Callable[[dict], object]


@dataclass
class RunStats:
    """Counters of one run (summed over videos)."""

    calls: int = 0  # requests sent, retries included
    asked: int = 0  # units asked in this run
    cached: int = 0  # units answered from the cache
    failures: list[dict] = field(default_factory=list)


class StageCache:
    """The answers for one video: ``folder/video.json`` (fingerprint, labels) and one JSON file per
    stage, ``{"units": {KEY: {"ok": true, "result": ...} | {"ok": false, "error": ...}}}``.

    A cache made for other masks or other prompt settings (fingerprint mismatch) is cleared.
    """

    def __init__(self, folder: Path, fingerprint: dict):
        self.folder = folder
        info = self._read(folder / VIDEO_FILE)
        if info is not None and info.get("fingerprint") != fingerprint:
            logger.warning(
                "%s: masks or prompt settings changed since the cached run; starting over", folder.name
            )
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._write(folder / VIDEO_FILE, {"fingerprint": fingerprint})

    @staticmethod
    def _read(path: Path) -> dict | None:
        if not path.is_file():
            return None
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            # A damaged cache file costs its answers again, never the run.
            logger.warning("unreadable cache file %s; its units will be asked again", path)
            return None

    @staticmethod
    def _write(path: Path, data: dict) -> None:
        tmp = path.with_suffix(".tmp")  # write then rename: an interrupted write never leaves half a file
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
        tmp.replace(path)

    def load(self, stage: int) -> dict:
        data = self._read(self.folder / STAGE_FILES[stage])
        return data if isinstance(data, dict) and isinstance(data.get("units"), dict) else {"units": {}}

    def save(self, stage: int, state: dict) -> None:
        self._write(self.folder / STAGE_FILES[stage], state)


# ------------------------------------------------------------------------------------------ frames


def sample_indices(candidates: np.ndarray, k: int) -> list[int]:
    """``k`` indices spread uniformly over ``candidates`` (sorted ints), first and last included."""
    if len(candidates) <= k:
        return [int(i) for i in candidates]
    picks = np.linspace(0, len(candidates) - 1, k).round().astype(int)
    return sorted({int(candidates[p]) for p in picks})


def _resize(frame: np.ndarray, masks: list[np.ndarray], max_side: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Downscale a frame (bilinear) and its masks (nearest) so that max(H, W) <= max_side."""
    from PIL import Image

    height, width = frame.shape[:2]
    if max(height, width) <= max_side:
        return frame, masks
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL takes (W, H)
    small = np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))
    small_masks = [
        np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0 for m in masks
    ]
    return small, small_masks


def render_views(
    video: VideoInput, labelled: list, indices: list[int], highlight: int | None, max_side: int
) -> list[np.ndarray]:
    """Frames at ``indices`` with the labelled objects drawn by ``viz.annotate.label_objects``:
    ``highlight`` = i shows object i alone (stage 1), None shows all (stage 3)."""
    from viz.annotate import label_objects

    frames = video.frames.read(indices)  # (K, H, W, 3)
    views = []
    for frame, t in zip(frames, indices, strict=True):
        frame, masks = _resize(frame, [obj.masks[t] for obj in labelled], max_side)
        views.append(label_objects(frame, masks, [str(k) for k in range(len(labelled))], highlight=highlight))
    return views


# -------------------------------------------------------------------------------------- expressions


def build_expressions(
    label_to_id: dict[int, int],
    singles: dict[int, dict],
    groups: list[dict],
    interactions: list[tuple[dict, dict]],
) -> list[ExpressionSpec]:
    """Turn validated stage 2 and 4 results into expressions over object ids (duplicates dropped).

    Args:
        label_to_id: drawn label -> object id.
        singles: label -> ``{"appearance", "motion", "all"}`` (stage 2).
        groups: ``[{"labels", "expression"}]`` (stage 2 merge).
        interactions: (stage 3 interaction, its stage 4 expressions) pairs.
    """
    out: list[ExpressionSpec] = []
    seen = set()

    def add(text: str, caption_type: str, subject: list[int], obj: Sequence[int] = ()) -> None:
        spec = ExpressionSpec(
            text, caption_type, sorted(label_to_id[i] for i in subject), sorted(label_to_id[i] for i in obj)
        )
        key = (text.lower(), caption_type, tuple(spec.subject), tuple(spec.object))
        if key not in seen:
            seen.add(key)
            out.append(spec)

    for label, exprs in sorted(singles.items()):
        for kind in ("all", "appearance", "motion"):
            add(exprs[kind], "single", [label])
    for group in groups:
        add(group["expression"], "multi", group["labels"])
    for interaction, exprs in interactions:
        if interaction["type"] == "unidirectional":
            # active: "X pushing Y" -> actor X (initiators), target Y; passive: "Y pushed by X" -> actor Y.
            for level in ("class_level", "appearance_level"):
                add(
                    exprs["active"][level],
                    "unidirectional",
                    interaction["initiators"],
                    interaction["receivers"],
                )
                add(
                    exprs["passive"][level],
                    "unidirectional",
                    interaction["receivers"],
                    interaction["initiators"],
                )
        else:
            for level in ("class_level", "appearance_level"):
                add(exprs[level], "bidirectional", interaction["participants"])
    return out


# ------------------------------------------------------------------------------------------ pipeline


def _text_only(make_prompt: Callable[..., list[dict]], *args) -> tuple[list[dict], list[np.ndarray]]:
    """A text-stage job's request: the prompt and no images."""
    return make_prompt(*args), []


class Annotator:
    """Runs the four stages over videos, caching answers under ``work_dir``.

    Args:
        vision_client: answers stages 1 and 3 (frames attached); the paper uses GPT-4o.
        text_client: answers stages 2 and 4 (text only); the paper uses LLaMA-3.1-70B. Default: the
            vision client.
        work_dir: cache folder, one sub-folder per video.
        config: pipeline settings.
    """

    def __init__(
        self,
        vision_client: ChatClient,
        work_dir: str | Path,
        config: AnnotateConfig | None = None,
        text_client: ChatClient | None = None,
    ):
        self.vision = vision_client
        self.text = text_client or vision_client
        self.work_dir = Path(work_dir)
        self.config = config or AnnotateConfig()
        self.stats = RunStats()

    # ------------------------------------------------------------------ asking

    def _ask(self, job: Job, where: str) -> dict:
        """Ask until the answer validates or the attempts run out; never raises for a bad answer."""
        messages, images = job.build()
        error, rejection = "", None
        attempts = self.config.retries + 1
        for attempt in range(1, attempts + 1):
            # After a rejected answer the model is told why; after a transport error it gets the same request.
            request = messages if rejection is None else prompts.retry_note(messages, rejection)
            self.stats.calls += 1
            try:
                answer = job.client.complete(request, images)
            except Exception as err:  # noqa: BLE001 - any client failure is one failed attempt, not a crash
                error = f"client: {type(err).__name__}: {str(err)[:300]}"
                logger.warning("%s: attempt %d/%d: %s", where, attempt, attempts, error)
                continue
            try:
                return {"ok": True, "result": job.validate(schema.parse_json(answer)), "attempts": attempt}
            except schema.AnswerError as err:
                rejection = str(err)
                error = f"rejected: {rejection}"
                logger.warning("%s: attempt %d/%d rejected: %s", where, attempt, attempts, rejection)
        return {"ok": False, "error": error, "attempts": attempts}

    def _stage(self, cache: StageCache, video_id: str, stage: int, jobs: dict[str, Job]) -> dict[str, object]:
        """Answer every job of a stage (from the cache when possible); returns key -> result for the units
        that succeeded. Failures are counted in the run's stats."""
        state = cache.load(stage)
        units = state["units"]
        for key, job in jobs.items():
            record = units.get(key)
            if record is not None and (record.get("ok") or not self.config.retry_failed):
                self.stats.cached += 1
                continue
            self.stats.asked += 1
            units[key] = self._ask(job, f"{video_id} stage {stage} {key}")
            cache.save(stage, state)  # after every unit: an interruption loses at most one answer
        state["complete"] = True
        cache.save(stage, state)
        for key in jobs:
            if not units[key].get("ok"):
                self.stats.failures.append(
                    {"video": video_id, "stage": stage, "unit": key, "error": units[key].get("error", ""),
                     "attempts": units[key].get("attempts", 0)}
                )  # fmt: skip
        return {key: units[key]["result"] for key in jobs if units[key].get("ok")}

    # ------------------------------------------------------------------ stages

    def _stage1(self, cache, video: VideoInput, labelled: list) -> dict[int, dict]:
        jobs = {}
        for label, obj in enumerate(labelled):

            def build(label=label, obj=obj):
                indices = sample_indices(obj.visible_frames(), self.config.frames)
                views = render_views(video, labelled, indices, label, self.config.max_side)
                return prompts.describe_object(label, len(views), obj.category), views

            def validate(data, label=label, obj=obj):
                result = schema.validate_object_description(data, label)
                # A class name given with the masks beats the model's guess (it is ground truth).
                return {**result, "category": obj.category.lower()} if obj.category else result

            jobs[f"object {label}"] = Job(self.vision, build, validate)
        results = self._stage(cache, video.video_id, 1, jobs)
        return {int(key.split()[1]): value for key, value in results.items()}

    def _stage2(
        self, cache, video: VideoInput, described: dict[int, dict]
    ) -> tuple[dict[int, dict], list[dict]]:
        jobs = {}
        for label, info in described.items():
            build = partial(
                _text_only, prompts.single_expressions, info["appearance"], info["motion"], info["category"]
            )
            jobs[f"object {label}"] = Job(self.text, build, schema.validate_single_expressions)
        if len(described) >= 2:
            # Keyed by the objects offered: a different set (after --retry-failed) is a different question.
            key = "merge " + ",".join(str(label) for label in sorted(described))
            jobs[key] = Job(
                self.text,
                partial(_text_only, prompts.merge_objects, described),
                lambda data: schema.validate_groups(data, set(described)),
            )
        results = self._stage(cache, video.video_id, 2, jobs)
        singles = {int(k.split()[1]): v for k, v in results.items() if k.startswith("object ")}
        groups = next((v for k, v in results.items() if k.startswith("merge ")), [])
        return singles, groups

    def _stage3(self, cache, video: VideoInput, labelled: list, described: dict[int, dict]) -> list[dict]:
        if len(labelled) < 2:
            return []  # one object cannot interact with another
        labels = list(range(len(labelled)))
        categories = {label: info["category"] for label, info in described.items()}

        def build():
            visible = np.flatnonzero(sum((obj.masks.areas() > 0).astype(int) for obj in labelled) >= 2)
            candidates = visible if len(visible) else np.arange(video.num_frames)
            indices = sample_indices(candidates, self.config.frames)
            views = render_views(video, labelled, indices, None, self.config.max_side)
            return prompts.detect_interactions(labels, categories, len(views)), views

        job = Job(self.vision, build, lambda data: schema.validate_interactions(data, set(labels)))
        results = self._stage(cache, video.video_id, 3, {"interactions": job})
        return results.get("interactions", [])

    def _stage4(
        self, cache, video: VideoInput, interactions: list[dict], described: dict[int, dict]
    ) -> list[tuple[dict, dict]]:
        def objects_of(labels):
            # An object whose stage 1 failed still has a label; the model gets what is known.
            return {
                i: described.get(i, {"category": "object", "appearance": "not described"}) for i in labels
            }

        jobs, keys = {}, []
        for k, item in enumerate(interactions):
            if item["type"] == "unidirectional":
                key = f"interaction {k} {item['initiators']}->{item['receivers']}"
                build = partial(
                    _text_only,
                    prompts.unidirectional_expressions,
                    item["description"],
                    item["initiators"],
                    item["receivers"],
                    objects_of(item["initiators"] + item["receivers"]),
                )
                jobs[key] = Job(self.text, build, schema.validate_unidirectional_expressions)
            else:
                key = f"interaction {k} {item['participants']}"
                build = partial(
                    _text_only,
                    prompts.bidirectional_expressions,
                    item["description"],
                    item["participants"],
                    objects_of(item["participants"]),
                )
                jobs[key] = Job(self.text, build, schema.validate_bidirectional_expressions)
            keys.append(key)
        results = self._stage(cache, video.video_id, 4, jobs)
        return [(item, results[key]) for item, key in zip(interactions, keys, strict=True) if key in results]

    # ------------------------------------------------------------------ videos

    def annotate_video(self, video: VideoInput) -> list[ExpressionSpec]:
        """Run stages 1-4 on one video; returns its expressions (over ``obj_id``)."""
        labelled = [obj for obj in video.objects if len(obj.visible_frames())]
        hidden = [obj.obj_id for obj in video.objects if not len(obj.visible_frames())]
        if hidden:
            logger.warning(
                "%s: objects %s have empty masks in every frame; not annotated", video.video_id, hidden
            )
        label_to_id = {label: obj.obj_id for label, obj in enumerate(labelled)}
        fingerprint = {"masks": video.fingerprint(), **self.config.cache_key(), "labels": label_to_id}
        cache = StageCache(self.work_dir / video.video_id, json.loads(json.dumps(fingerprint)))
        described = self._stage1(cache, video, labelled)
        singles, groups = self._stage2(cache, video, described)
        interactions = self._stage3(cache, video, labelled, described)
        expressions = self._stage4(cache, video, interactions, described)
        return build_expressions(label_to_id, singles, groups, expressions)

    def _records(self, videos: Iterable[VideoInput], produced: dict) -> Iterator[VideoRecord]:
        bar = None
        if self.config.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=len(videos) if hasattr(videos, "__len__") else None, desc="annotate", unit="video"
            )
        try:
            for video in videos:
                expressions = self.annotate_video(video)
                produced["videos"] += 1
                produced["expressions"].update(e.caption_type for e in expressions)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        expressions=sum(produced["expressions"].values()), failed=len(self.stats.failures)
                    )
                if not expressions:
                    produced["empty"].append(video.video_id)
                    continue
                objects = [ObjectTrack(obj.obj_id, obj.masks) for obj in video.objects]
                yield VideoRecord(
                    video.video_id, FrameSequence(video.frames), objects, expressions, video.frame_names
                )
        finally:
            if bar is not None:
                bar.close()

    def run(self, videos: Iterable[VideoInput], split_dir: str | Path) -> dict:
        """Annotate ``videos`` and write them to ``split_dir`` in the InterRVOS layout (videos without any
        expression are left out). Returns the summary, also saved to ``work_dir/summary.json``."""
        self.stats = RunStats()
        produced = {"videos": 0, "expressions": Counter(), "empty": []}
        written = write_dataset(split_dir, self._records(videos, produced))
        summary = {
            "output": str(split_dir),
            "work_dir": str(self.work_dir),
            "videos": {
                "annotated": produced["videos"],
                "written": written["videos"],
                "without_expressions": produced["empty"],
            },
            "expressions": {
                "total": written["expressions"],
                **{k: produced["expressions"][k] for k in sorted(produced["expressions"])},
            },
            "units": {
                "asked": self.stats.asked,
                "from_cache": self.stats.cached,
                "failed": len(self.stats.failures),
            },
            "requests": self.stats.calls,
            "failures": self.stats.failures,
            "config": asdict(self.config),
        }
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.work_dir / SUMMARY_FILE, "w") as f:
            json.dump(summary, f, indent=1)
        logger.info(
            "annotated %d videos: %d expressions, %d units failed, %d requests",
            produced["videos"], written["expressions"], len(self.stats.failures), self.stats.calls,
        )  # fmt: skip
        return summary
