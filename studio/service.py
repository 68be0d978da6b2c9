"""What one studio request does, without any Gradio: load (once), check, segment, render, export.

``run_request`` is the whole pipeline: validate the expression and the clip against the server's
`Limits`, run ``ReviosaModel.segment`` with attention capture, then draw the overlays and write the
downloads into a fresh temporary folder (one per request, so concurrent users never share a path).
Every error a user can cause comes out as `UserError` with a message that says what to do.

`ModelRegistry` loads each model once and shares it read-only between requests; per-request model
settings (keyframes) go into a per-request view of the model, never into the shared instance.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from studio.limits import Limits

logger = logging.getLogger(__name__)

# progress(fraction in [0, 1], description)
Progress = Callable[[float, str], None]

DEMO_LABEL = "untrained demo weights"
KEYFRAME_STRATEGIES = ("uniform", "first")
MAX_KEYFRAMES = 16  # the MLLM's prompt grows by 256 tokens per keyframe with real weights
# Overlay previews for the frame slider: JPEG, because 300 PNG frames at 640 px would take ~100 MB.
PREVIEW_QUALITY = 90
# Small clips (the 128 px synthetic ones) are enlarged by an integer factor for the preview, nearest
# neighbour so pixels stay sharp: browsers show an image no larger than its own size.
PREVIEW_MIN_SIDE = 384


class UserError(Exception):
    """Something the user can fix (input, settings, model choice); the message says how."""


# --- models ------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model shared read-only by all requests, with the text the UI shows about it."""

    name: str
    model: object  # reviosa.modeling.ReviosaModel
    label: str
    demo: bool = False

    @property
    def builtin(self) -> bool:
        """The shipped built-in model, which only knows the synthetic world (`reviosa.domain`)."""
        from reviosa.domain import is_builtin

        return is_builtin(self.model)


class ModelRegistry:
    """Loads models by name ("builtin", a folder, a hub id) once each; keeps ``max_models`` loaded.

    Concurrent first requests for a model load it once. When the built-in
    model is not installed, "builtin" falls back to a tiny random model labelled as untrained demo
    weights, so the studio still opens and shows every panel.
    """

    def __init__(
        self,
        default: str = "builtin",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_models: int = 2,
    ):
        self.default = default
        self.device = device
        self.dtype = dtype
        self.max_models = max_models
        self._lock = threading.Lock()  # guards the two dicts below
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}

    def default_is_demo(self) -> bool:
        """Whether the default model would be the untrained demo fallback (checked without loading)."""
        from reviosa.hub import BUILTIN_DIR, WEIGHTS_NAME

        return self.default == "builtin" and not (BUILTIN_DIR / WEIGHTS_NAME).is_file()

    def get(self, name: str | None = None) -> LoadedModel:
        key = (name or "").strip() or self.default
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        # Per-name lock: concurrent first requests load a model once, while requests for models
        # already loaded are not held up by a slow load (a hub download can take minutes).
        with loading:
            with self._lock:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key]
            try:
                loaded = self._load(key)
                with self._lock:  # cached before the loading lock goes, so no one loads it twice
                    self._models[key] = loaded
                    while len(self._models) > self.max_models:
                        dropped, _ = self._models.popitem(last=False)
                        logger.info("unloaded model %s (max_models=%d)", dropped, self.max_models)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            return loaded

    def _load(self, name: str) -> LoadedModel:
        from reviosa.hub import BUILTIN_DIR, WEIGHTS_NAME, CheckpointError, from_pretrained

        if name == "builtin" and not (BUILTIN_DIR / WEIGHTS_NAME).is_file():  # as default_is_demo()
            logger.warning("built-in model not installed in %s: using untrained demo weights", BUILTIN_DIR)
            return LoadedModel(name, demo_model().to(self.device, self.dtype), _demo_label(), demo=True)
        started = time.perf_counter()
        try:
            model = from_pretrained(name, device=self.device, dtype=self.dtype)
        except CheckpointError as err:
            advice = (
                "Or choose 'builtin'."
                if "re-download" in str(err).lower()
                else "Re-download it, or choose 'builtin'."
            )
            raise UserError(
                f"The model {name!r} is damaged or does not match ReVIOSa: {_sentence(str(err))} {advice}"
            ) from err
        except (FileNotFoundError, ValueError, OSError) as err:
            raise UserError(f"The model {name!r} could not be loaded: {err}") from err
        logger.info("loaded model %s in %.1f s", name, time.perf_counter() - started)
        label = "built-in model" if name == "builtin" else f"{model.config.name} from {name}"
        return LoadedModel(name, model, label)


def _demo_label() -> str:
    return (
        f"{DEMO_LABEL}: the built-in model is not installed, so a tiny random model stands in. "
        "Its answers and masks are meaningless; it only shows how the studio works."
    )


def demo_model():
    """A tiny random ReVIOSa (the test preset) with a tokenizer over the synthetic world's words."""
    from reviosa.config import tiny_config
    from reviosa.modeling import ReviosaModel
    from reviosa.tokenizer import build_tokenizer

    try:
        from reviosa.data.synth import expression_corpus

        corpus = expression_corpus()
    except ImportError:
        corpus = []
    config = tiny_config()
    config.name = "reviosa-demo-untrained"
    # A fixed seed makes the demo reproducible without touching the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tokenizer = build_tokenizer(corpus, vocab_size=config.text.vocab_size - 32)
        return ReviosaModel(config, tokenizer).eval()


# --- options and results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """What the user may tune per request (None = the model's or the server's default)."""

    keyframes: int | None = None
    keyframe_strategy: str | None = None
    stride: int = 1
    max_frames: int | None = None
    max_side: int | None = None
    alpha: float = 0.45  # overlay fill opacity


@dataclass
class AttentionView:
    """The role tokens' attention captured during the run: all the attention tab needs, no second pass.

    rows: float32 (R, NL, NH, K, g, g); keyframe_images: uint8 (K, H, W, 3).
    """

    rows: np.ndarray
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    keyframes: list[int]
    keyframe_images: np.ndarray
    roles_present: tuple[bool, bool]
    supervised_layer: int | None
    supervised_heads: tuple[int, ...]

    @property
    def supervised(self) -> list[tuple[int, int]]:
        if self.supervised_layer is None:
            return []
        return [(self.supervised_layer, h) for h in self.supervised_heads]


@dataclass
class RunResult:
    """Everything one request produced; kept per user in ``gr.State``."""

    out_dir: Path
    overlay_mp4: Path
    masks_zip: Path
    results_json: Path
    frame_paths: list[Path]
    expression: str
    answer: str
    token_spans: list[tuple[str, str | None]]  # answer pieces, labelled "actor" / "target" at role tokens
    status: str
    reason: str | None
    model_label: str
    demo_model: bool
    num_frames: int
    fps: float
    size: tuple[int, int]
    actor_frames: int  # frames where the actor mask is not empty
    target_frames: int | None  # same for the target; None without [SEG_TAR]
    notices: list[str] = field(default_factory=list)
    # Set when the built-in model ran on a clip outside its synthetic world: the masks mean nothing.
    warning: str | None = None
    attention: AttentionView | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # What the Fix & export tab re-decodes: the clip as the run read it (reviosa.video.VideoFile, lazy,
    # same stride and size caps) and the model's registry name.
    video: object | None = None
    model_name: str | None = None

    @property
    def downloads(self) -> list[str]:
        return [str(self.overlay_mp4), str(self.masks_zip), str(self.results_json)]


# --- the pipeline --------------------------------------------------------------------------------------


def run_request(
    loaded: LoadedModel,
    video_path: str | Path | None,
    expression: str | None,
    options: RunOptions,
    limits: Limits,
    progress: Progress | None = None,
    logits_processor=None,
) -> RunResult:
    """Segment ``expression`` in the clip and write overlay video, frame previews, masks zip, RLE JSON.

    ``logits_processor`` forces answers in tests (``reviosa.generation.force_answers``); the UI never
    sets it. Raises UserError for anything the user can fix.
    """
    report = progress or (lambda _frac, _desc: None)
    model = loaded.model
    keyframes = keyframe_options(model, options)
    text = check_expression(expression, limits, model)
    report(0.0, "decoding: opening the clip")
    video, notices = open_video(video_path, options, limits)
    started = time.perf_counter()
    # The model is shared read-only: its hooks act per thread (reviosa/hooks.py), so concurrent
    # requests run side by side, up to the queue's concurrency limit.
    (pred,) = model.segment(
        video,
        [text],
        capture_attention=True,
        progress=lambda phase, frac: report(0.05 + 0.8 * frac, _phase_text(phase)),
        logits_processor=logits_processor,
        **keyframes,
    )
    timings = {**pred.timings, "model_total": time.perf_counter() - started}
    out_dir = Path(tempfile.mkdtemp(prefix="reviosa-studio-"))
    started = time.perf_counter()
    rendered = render_outputs(video, pred, out_dir, options.alpha, report)
    keyframe_images = rendered.pop("keyframe_images")
    timings["rendering"] = time.perf_counter() - started
    warning = outside_world_warning(loaded, keyframe_images)
    report(1.0, "done")
    return RunResult(
        out_dir=out_dir,
        **rendered,
        expression=text,
        answer=pred.answer,
        token_spans=token_spans(model.tokenizer, pred.answer_tokens),
        status=pred.status,
        reason=pred.reason,
        model_label=loaded.label,
        demo_model=loaded.demo,
        num_frames=video.num_frames,
        fps=float(video.fps),
        size=tuple(video.size),
        actor_frames=int((pred.actor.areas() > 0).sum()),
        target_frames=None if pred.target is None else int((pred.target.areas() > 0).sum()),
        notices=[*notices, f"`{pred.protocol}`"],  # the protocol that ran (code span: shown verbatim)
        warning=warning,
        attention=attention_view(pred, model.config, keyframe_images),
        timings=timings,
        video=video,
        model_name=loaded.name,
    )


HOW_TO_LOAD = (
    "For real footage, load a real checkpoint: type its folder or hub id in the Model box (e.g. a ReVIOSa-1B "
    "made with `python -m reviosa convert`, docs/checkpoints.md), or start the studio with `--model`."
)


def outside_world_warning(loaded: LoadedModel, keyframe_images: np.ndarray) -> str | None:
    """The warning for the built-in model on a clip outside its world, by `reviosa.domain`'s rule.

    keyframe_images: uint8 (K, H, W, 3), the frames the MLLM saw.
    """
    from reviosa.domain import builtin_warning, outside_world

    if not loaded.builtin:
        return None
    reason = outside_world(keyframe_images)
    return None if reason is None else builtin_warning(reason, HOW_TO_LOAD)


def _phase_text(phase: str) -> str:
    """The model's phase names, prefixed with the issue's four phases for the progress bar."""
    if phase.startswith("propagating"):
        return f"propagation: {phase}"
    if phase.startswith("decoding"):
        return phase
    if phase == "done":
        return "rendering: drawing the overlays"
    return phase


def keyframe_options(model, options: RunOptions) -> dict:
    """This request's keyframe count and choice, checked, as ``segment()`` arguments.

    They go to ``segment()`` per call; the shared model's config is never written.
    """
    proc = model.config.processor
    k = options.keyframes or proc.num_keyframes
    strategy = options.keyframe_strategy or proc.keyframe_strategy
    if not 1 <= k <= MAX_KEYFRAMES:
        raise UserError(f"Keyframes must be between 1 and {MAX_KEYFRAMES}; got {k}.")
    if strategy not in KEYFRAME_STRATEGIES:
        raise UserError(f"Keyframe choice must be one of {', '.join(KEYFRAME_STRATEGIES)}; got {strategy!r}.")
    return {"num_keyframes": k, "keyframe_strategy": strategy}


def check_expression(expression: str | None, limits: Limits, model) -> str:
    from reviosa.caps import expression_limit
    from reviosa.processor import clean_expression

    max_chars = expression_limit(model, limits.max_expression_chars)
    try:
        return clean_expression(expression or "", max_chars)
    except ValueError as err:
        raise UserError(_sentence(str(err))) from err


def open_video(path: str | Path | None, options: RunOptions, limits: Limits):
    """Open the clip lazily within the caps (a jpg / png / webp: a one-frame clip).
    Returns (VideoFile or StillImage, notices for the user)."""
    from reviosa.caps import reduction_notices
    from reviosa.image import is_image_path
    from reviosa.video import VideoLimits

    if not path:
        raise UserError(
            "Upload a clip (mp4, webm, mov, avi, mkv or gif) or an image (jpg, png, webp), or pick an example first."
        )
    path = Path(path)
    if path.is_file() and path.stat().st_size > limits.max_upload_bytes:
        raise UserError(
            f"{path.name} is {path.stat().st_size / 2**20:.0f} MB; the limit is {limits.max_upload_mb} MB. "
            "Trim or compress the clip."
        )
    if not is_image_path(path):
        _check_duration(probe_duration(path), path.name, limits)
    caps = VideoLimits(
        max_frames=min(options.max_frames or limits.max_frames, limits.max_frames),
        stride=max(1, int(options.stride or 1)),
        max_side=min(options.max_side or limits.max_side, limits.max_side),
    )
    video = _video_file(path, caps)
    _check_duration(video.source_frames / max(video.fps_source, 1e-6), path.name, limits)
    notices = reduction_notices(
        video,
        frames_hint="Set a smaller stride or frame cap under Advanced, or trim the clip, to control which "
        "frames are kept.",
        side_hint="The masks are at the reduced size.",
    )
    return video, notices


def _video_file(path: Path, caps):
    """`VideoFile` (or `StillImage` for a jpg / png / webp) with its errors as `UserError`s: the file's
    own name (never the server's folder)."""
    from reviosa.image import open_media

    try:
        return open_media(path, caps)
    except FileNotFoundError as err:
        raise UserError(f"{path.name} is no longer on the server; upload it again.") from err
    except ValueError as err:  # VideoError, and the image reader's errors, name the file only
        message = str(err)
        # A message that opens with the file's name keeps its case ("zero.mp4 is an empty file").
        raise UserError(
            f"{message if message.startswith(path.name) else _sentence(message)} Then upload it."
        ) from err


# (container extension, codec) pairs chromium, Firefox and Safari all play in a <video> element.
_BROWSER_PLAYABLE = {(".mp4", "h264"), (".m4v", "h264"), (".mov", "h264"), (".webm", "vp8"), (".webm", "vp9")}


def browser_preview(path: str | Path, limits: Limits, out_dir: Path) -> Path | None:
    """A clip the browser can play for the upload's preview: the file itself when browsers play it,
    else (avi, gif, mkv, other codecs) an H.264 mp4 of the frames the model will see (the server's
    frame and resolution caps applied), written to ``out_dir`` under the clip's own name.

    The model always runs on the uploaded file, never on this preview. Raises UserError like a run.
    A still image is checked the same way and gets no video preview (None).
    """
    import av

    from reviosa.image import is_image_path
    from reviosa.video import VideoLimits
    from viz.video import write_mp4

    path = Path(path)
    video = _video_file(path, VideoLimits(max_frames=limits.max_frames, max_side=limits.max_side))
    if is_image_path(path):
        return None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        playable = (path.suffix.lower(), stream.codec_context.name) in _BROWSER_PLAYABLE and (
            stream.codec_context.format is None or stream.codec_context.format.name == "yuv420p"
        )
    if playable:
        return path
    return write_mp4(out_dir / f"{path.stem}.mp4", video.iter_frames(), video.fps)


def probe_duration(path: Path) -> float | None:
    """Duration in seconds from the container header (no decoding); None when it is not known."""
    import av

    try:
        with av.open(str(path)) as container:
            if container.duration:
                return container.duration / av.time_base
            stream = container.streams.video[0] if container.streams.video else None
            if stream is not None and stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
    except (av.error.FFmpegError, OSError):
        return None  # VideoFile reports unreadable files with the full explanation
    return None


def _check_duration(seconds: float | None, name: str, limits: Limits) -> None:
    if seconds is not None and seconds > limits.max_duration_s:
        raise UserError(
            f"{name} is {seconds:.0f} s long; this server accepts clips up to {limits.max_duration_s:.0f} s. "
            "Trim the clip to the part with the interaction and upload it again."
        )


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "."


# --- rendering -------------------------------------------------------------------------------------------


def render_outputs(video, pred, out_dir: Path, alpha: float, report: Progress) -> dict:
    """Overlay mp4, per-frame JPEG previews, masks zip and RLE JSON in ``out_dir``.

    One decoding pass draws the overlays, writes the previews and keeps the keyframes (for the
    attention tab); the masks are read from the bit-packed tracks frame by frame.
    """
    from reviosa import results
    from reviosa.tokens import ROLES
    from viz.overlay import draw_legend, overlay_frame
    from viz.video import masks_to_png_zip, write_mp4

    (out_dir / "frames").mkdir()
    segmented = pred.status == "ok"
    roles = ROLES[: (2 if pred.target is not None else 1)] if segmented else ()
    scale = preview_scale(video.size)
    keyset = set(pred.keyframes)
    keyframe_images: dict[int, np.ndarray] = {}
    frame_paths: list[Path] = []

    def overlays():
        for t, frame in enumerate(video.iter_frames()):
            if t in keyset:
                keyframe_images[t] = frame
            actor = pred.actor[t] if segmented else None
            target = pred.target[t] if segmented and pred.target is not None else None
            # The legend is drawn on the enlarged picture, so it is sized for the frame as seen.
            image = draw_legend(
                _enlarge(overlay_frame(frame, actor, target, alpha=alpha, legend=False), scale), roles
            )
            frame_paths.append(out_dir / "frames" / f"{t:05d}.jpg")
            Image.fromarray(image).save(frame_paths[-1], quality=PREVIEW_QUALITY)
            if t % 8 == 0:
                report(0.86 + 0.1 * t / video.num_frames, f"rendering: frame {t + 1}/{video.num_frames}")
            yield image

    overlay_mp4 = write_mp4(out_dir / "overlay.mp4", overlays(), video.fps)
    report(0.97, "rendering: masks zip and RLE JSON")
    masks_zip = masks_to_png_zip(out_dir / "masks.zip", pred.actor, pred.target)
    # Same layout as `python -m reviosa predict` on one video: the file stem is the video id.
    data = {"videos": {Path(video.path).stem: {"0": results.entry(pred)}}}
    results_json = results.save(data, out_dir / "results.json")
    return {
        "overlay_mp4": overlay_mp4,
        "masks_zip": masks_zip,
        "results_json": results_json,
        "frame_paths": frame_paths,
        "keyframe_images": np.stack([keyframe_images[t] for t in pred.keyframes]),
    }


def preview_scale(size: tuple[int, int]) -> int:
    """Integer enlargement of small clips' overlays (128 px -> 3x): browsers show a video or image no
    larger than its own size, and the legend must be drawn at the size it is seen."""
    return max(1, PREVIEW_MIN_SIDE // max(size))


def _enlarge(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement (pixels stay sharp): uint8 (H, W, 3) -> (H * scale, W * scale, 3)."""
    return image if scale == 1 else image.repeat(scale, axis=0).repeat(scale, axis=1)


def token_spans(tokenizer, tokens: list[str | None]) -> list[tuple[str, str | None]]:
    """Answer tokens as readable pieces, the role tokens labelled with their role."""
    from reviosa.tokens import ROLE_TOKENS, ROLES

    roles = dict(zip(ROLE_TOKENS, ROLES, strict=True))
    spans = []
    for tok in tokens:
        if tok is None:  # an id beyond the tokenizer (untrained models sample the padded vocabulary rows)
            spans.append(("<unknown id>", None))
        else:
            spans.append((tok if tok in roles else tokenizer.convert_tokens_to_string([tok]), roles.get(tok)))
    return spans


def attention_view(pred, config, keyframe_images: np.ndarray) -> AttentionView | None:
    if pred.attention is None:
        return None
    rows = pred.attention.rows[0].float().numpy()  # (R, NL, NH, K, g, g)
    sup = config.attention_supervision
    return AttentionView(
        rows=rows,
        layers=tuple(pred.attention.layers),
        heads=tuple(pred.attention.heads),
        keyframes=list(pred.keyframes),
        keyframe_images=keyframe_images,
        roles_present=(pred.status == "ok", pred.target is not None),
        supervised_layer=None if sup is None else sup.layer,
        supervised_heads=() if sup is None else tuple(sup.heads),
    )
