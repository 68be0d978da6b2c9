"""ReVIOSa: an InternVL-2.5 MLLM whose [SEG_ACT] / [SEG_TAR] states prompt SAM2.

Inference, by phase (`ReviosaModel.segment`):
    prepare    read the keyframes; tokenise one prompt per expression
    generate   greedy answer per expression ("Sure, [SEG_ACT] and [SEG_TAR].")
    find       positions of the role tokens in each answer (0, 1 or 2 tokens)
    states     one forward over prompt + answer: last-layer hidden state at those positions
               (attention rows of the role tokens captured here when asked)
    decode     shared MLP -> SAM2 prompt; keyframes decoded from it become conditioning frames,
               then SAM2's memory propagates through every frame, streaming
Training (`ReviosaModel.forward_train`): teacher-forced forward, each chosen frame decoded
independently (no memory), logits returned for the losses in ``train/``.

Axis letters: B batch, E expressions, R roles (actor, target), K keyframes, T frames, L tokens,
D hidden, P prompt dim, H/W pixels, S SAM2 input size, g vision-token grid side.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    PreTrainedTokenizerBase,
    Qwen2Config,
)
from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

from reviosa import protocol
from reviosa import sam as sam_ops
from reviosa.config import ReviosaConfig
from reviosa.image import tile_image
from reviosa.processor import ReviosaProcessor, add_role_tokens, keyframe_indices
from reviosa.video import FrameSource, MaskTrack

logger = logging.getLogger(__name__)

Progress = Callable[[str, float], None]


def internvl_config(cfg: ReviosaConfig, image_token_id: int) -> InternVLConfig:
    """transformers' InternVL config for our geometry (no remote code)."""
    v, t = cfg.vision, cfg.text
    vision = InternVLVisionConfig(
        hidden_size=v.hidden_size,
        num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads,
        intermediate_size=v.intermediate_size,
        image_size=[v.image_size, v.image_size],
        patch_size=[v.patch_size, v.patch_size],
        attention_bias=v.attention_bias,
        norm_type=v.norm_type,
        use_qk_norm=v.use_qk_norm,
        layer_norm_eps=v.layer_norm_eps,
        layer_scale_init_value=v.layer_scale_init_value,
    )
    text = Qwen2Config(
        hidden_size=t.hidden_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        intermediate_size=t.intermediate_size,
        vocab_size=t.vocab_size,
        max_position_embeddings=t.max_position_embeddings,
        rms_norm_eps=t.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta},
        tie_word_embeddings=t.tie_word_embeddings,
    )
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        image_seq_length=cfg.tokens_per_frame,
        downsample_ratio=cfg.downsample_ratio,
        projector_hidden_act=cfg.projector_hidden_act,
        tie_word_embeddings=t.tie_word_embeddings,
    )


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create parameters on the meta device (no memory); buffers stay real.

    Used to build real-size models before loading their weights (``load_state_dict(assign=True)``)
    and to count parameters. A plain ``torch.device("meta")`` context cannot build SAM2's Hiera,
    which calls ``.item()`` while constructing.
    """
    original = nn.Module.register_parameter

    def register(module, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


@dataclass
class Prediction:
    """What the model says about one expression on one video.

    actor: bool (T, H, W) track (bit-packed `MaskTrack`; ``np.asarray`` unpacks it); all empty
        when the answer has no [SEG_ACT] (``status == "no_seg_token"``, ``reason`` says why).
    target: bool (T, H, W) track, or None when the answer has no [SEG_TAR].
    actor_scores / target_scores: float (T,) SAM2 object-presence probability per frame.
    attention: the role tokens' attention rows over vision tokens, float (R, NL, NH, K, g, g), and
        their vision mass (R, NL, NH), when captured (``capture_attention=True``).
    """

    expression: str
    answer: str
    answer_tokens: list[str]
    actor: MaskTrack
    target: MaskTrack | None
    actor_scores: np.ndarray
    target_scores: np.ndarray | None
    keyframes: list[int]
    status: Literal["ok", "no_seg_token"] = "ok"
    reason: str | None = None
    attention: object | None = None  # reviosa.attention.AttentionRows for this expression (B = 1)
    timings: dict[str, float] = field(default_factory=dict)
    # The inference protocol that ran, in one line (`reviosa.protocol.describe`), for run summaries.
    protocol: str = ""

    @property
    def has_target(self) -> bool:
        return self.target is not None


@dataclass
class TrainOutput:
    """Outputs of the teacher-forced training path (losses are computed in ``train/``).

    answer_logits: float (N, V) at the N supervised answer positions; answer_targets: long (N,).
    role_states: float (B, R, D) last-layer hidden states at the role tokens (zeros if absent).
    role_present: bool (B, R).
    mask_logits: float (B, R, F, S/4, S/4) SAM2 low-res logits of the F decoded frames.
    object_logits: float (B, R, F) SAM2 object-presence logits.
    attention: AttentionRows (B, R, NL, NH, K, g, g) when capture was asked, else None.
    role_prompts: float (B, R, P) the SAM2 prompts made from the role states.
    example: when ``forward_train`` got example masks, the same decoding prompted by the masks'
        pooled SAM2 features instead of the role states (see ``ExampleDecoding``), else None.
    """

    answer_logits: torch.Tensor
    answer_targets: torch.Tensor
    role_states: torch.Tensor
    role_present: torch.Tensor
    mask_logits: torch.Tensor
    object_logits: torch.Tensor
    attention: object | None = None
    role_prompts: torch.Tensor | None = None
    example: ExampleDecoding | None = None


@dataclass
class ExampleDecoding:
    """SAM2 prompted by an example of the object instead of the language model (training only).

    prompts: float (B, R, P) the mask-weighted mean of SAM2's top-level image features over the
        role's ground-truth masks on the decoded frames; valid: bool (B, R), False where the role's
        masks are empty (its prompt is zeros).
    mask_logits: float (B, R, F, S/4, S/4); object_logits: float (B, R, F).
    """

    prompts: torch.Tensor
    valid: torch.Tensor
    mask_logits: torch.Tensor
    object_logits: torch.Tensor


class ReviosaModel(nn.Module):
    """MLLM (``mllm``), prompt MLP (``prompt_proj``), SAM2 (``sam``).

    Build with `ReviosaModel(config, tokenizer)` (random weights) or load with
    `reviosa.hub.from_pretrained`.
    """

    def __init__(self, config: ReviosaConfig, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        config.validate()
        if config.text.tie_word_embeddings:
            raise ValueError("tied word embeddings are not supported (InternVL2.5 unties them)")
        add_role_tokens(tokenizer)
        if len(tokenizer) > config.text.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but text.vocab_size is {config.text.vocab_size}"
            )
        self.config = config
        self.tokenizer = tokenizer
        self.processor = ReviosaProcessor(tokenizer, config)
        ids = self.processor.ids
        self.mllm = InternVLForConditionalGeneration(internvl_config(config, ids.img_context))
        d = config.text.hidden_size
        # Sa2VA's text_hidden_fcs: Linear(D, D), ReLU, Linear(D, P) (FACTS.md "Projection").
        self.prompt_proj = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, config.prompt_dim))
        self.sam = sam_ops.build_sam(config.sam)
        if self.sam.sam_prompt_embed_dim != config.prompt_dim:
            raise ValueError(f"SAM2 prompt dim {self.sam.sam_prompt_embed_dim} != config.prompt_dim")

    def with_protocol(self, name: str | None = None, **switches) -> ReviosaModel:
        """This model under another inference protocol (`reviosa.protocol.with_protocol`: a preset
        name, "ours", "reference", and/or single switches such as ``keyframe_strategy="uniform"``).

        A shallow copy: every weight and the tokenizer are shared, only the config and processor
        are its own, so a model shared between requests is never modified.
        """
        config = protocol.with_protocol(self.config, name, **switches)
        clone = copy.copy(self)
        clone.config = config
        clone.processor = ReviosaProcessor(self.tokenizer, config)
        return clone

    # --- small accessors -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.prompt_proj[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.prompt_proj[0].weight.dtype

    @property
    def language_model(self) -> nn.Module:
        """The Qwen2 decoder stack (no lm_head)."""
        return self.mllm.model.language_model

    # --- MLLM ------------------------------------------------------------------------------------

    def vision_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The projector's outputs, what the LLM receives for each image block.

        pixel_values: float (N_img, 3, S, S). Returns float (N_img, g*g, D) in raster order.
        """
        return self.mllm.model.get_image_features(
            pixel_values.to(self.device, self.dtype),
            vision_feature_layer=self.mllm.config.vision_feature_layer,
            vision_feature_select_strategy=self.mllm.config.vision_feature_select_strategy,
        ).pooler_output

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the vision features scattered into the <IMG_CONTEXT> slots.

        input_ids: long (B, L); pixel_values: float (N_img, 3, S, S) in prompt order, or None.
        image_index: optional long (N_slots,): the encoded image that fills each image block, in
            prompt order (several prompts showing the same frames encode them once).
        Returns float (B, L, D).
        """
        embeds = self.mllm.get_input_embeddings()(input_ids)
        if pixel_values is None:
            return embeds
        feats = self.vision_tokens(pixel_values)  # (N_img, g*g, D)
        if image_index is not None:
            feats = feats[image_index.to(feats.device)]  # (N_slots, g*g, D)
        slots = input_ids == self.processor.ids.img_context
        if int(slots.sum()) != feats.shape[0] * feats.shape[1]:
            raise ValueError(
                f"{int(slots.sum())} image slots for {feats.shape[0] * feats.shape[1]} image tokens"
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]).to(embeds.dtype))

    @torch.no_grad()
    def generate_answers(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor, logits_processor=None
    ) -> list[list[int]]:
        """Greedy answers for left-padded prompt embeddings (B, L, D); token ids without <|im_end|>.

        ``logits_processor``: optional transformers LogitsProcessorList (constrained decoding).
        """
        ids = self.processor.ids
        out = self.mllm.generate(
            logits_processor=logits_processor,
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            max_new_tokens=self.config.processor.max_new_tokens,
            do_sample=False,
            eos_token_id=ids.im_end,
            pad_token_id=ids.pad,
        )
        answers = []
        for row in out.tolist():
            row = row[: row.index(ids.im_end)] if ids.im_end in row else row
            answers.append([t for t in row if t != ids.pad])
        return answers

    def role_positions(self, answers: Sequence[Sequence[int]], offsets: Sequence[int]) -> torch.Tensor:
        """Position of the first [SEG_ACT] / [SEG_TAR] in each answer, -1 if absent: long (B, R).

        offsets[b] is where answer b starts in the full sequence.
        """
        ids = self.processor.ids
        pos = torch.full((len(answers), 2), -1, dtype=torch.long)
        for b, answer in enumerate(answers):
            for r, tok in enumerate((ids.seg_act, ids.seg_tar)):
                if tok in answer:
                    pos[b, r] = offsets[b] + list(answer).index(tok)
        return pos

    def hidden_states(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        capture: Callable[[], contextlib.AbstractContextManager] | None = None,
    ) -> torch.Tensor:
        """Last-layer hidden states (after the final norm), float (B, L, D)."""
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        with capture() if capture else contextlib.nullcontext():
            out = self.language_model(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            )
        return out.last_hidden_state

    def prompts_from_states(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Project role-token states into SAM2's prompt space.

        hidden: (B, L, D); positions: long (B, R), -1 where absent. Returns (B, R, P); absent roles
        get the projection of a zero state (never used for masks).
        """
        idx = positions.clamp(min=0).to(hidden.device)
        states = torch.gather(hidden, 1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (B, R, D)
        states = states * (positions >= 0).to(hidden.device, hidden.dtype).unsqueeze(-1)
        return self.prompt_proj(states)

    # --- inference -------------------------------------------------------------------------------

    @torch.no_grad()
    def segment(
        self,
        video: FrameSource,
        expressions: Sequence[str],
        capture_attention: bool = False,
        progress: Progress | None = None,
        logits_processor=None,
        num_keyframes: int | None = None,
        keyframe_strategy: str | None = None,
    ) -> list[Prediction]:
        """Segment actor and target for each expression on one video.

        ``num_keyframes`` / ``keyframe_strategy`` override the model config's for this call only
        (the model is shared read-only between requests).
        The video is decoded twice, lazily: once for the keyframes, once while propagating. SAM2
        encodes each frame once for all expressions (their tracks form SAM2's object batch).
        """
        report = progress or (lambda _phase, _frac: None)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        proc = self.config.processor
        keyframes = keyframe_indices(
            video.num_frames, num_keyframes or proc.num_keyframes, keyframe_strategy or proc.keyframe_strategy
        )
        report("decoding keyframes", 0.0)
        key_frames = video.read(keyframes)  # (K, H, W, 3)
        mllm_frames, tiles = self._mllm_images(video, key_frames)
        prompts = [self.processor.prompt_ids(e, len(keyframes), tiles) for e in expressions]
        timings["prepare"] = time.perf_counter() - t0

        report("MLLM: generating the answers", 0.1)
        t0 = time.perf_counter()
        answers, positions, role_prompts, attention = self._answer_and_prompt(
            prompts, mllm_frames, capture_attention, logits_processor, thumbnail_only=tiles > 1
        )
        timings["mllm"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        active = [(e, r) for e in range(len(expressions)) for r in range(2) if positions[e, r] >= 0]
        tracks, scores = self._propagate(video, keyframes, key_frames, role_prompts, active, report)
        timings["propagate"] = time.perf_counter() - t0
        report("done", 1.0)
        return [
            self._prediction(
                e, expr, answers[e], positions[e], tracks, scores, keyframes, attention, timings, video
            )
            for e, expr in enumerate(expressions)
        ]

    def _mllm_images(self, video: FrameSource, key_frames: np.ndarray) -> tuple[np.ndarray, int]:
        """What the MLLM sees, uint8 (N, H, W, 3), and the images per frame block.

        A still image (``video.still``) is tiled when ``processor.max_image_tiles`` > 1, as the
        references tile stills (`reviosa.image`); SAM2 still decodes the one image. Videos: the keyframes.
        """
        max_tiles = self.config.processor.max_image_tiles
        if not getattr(video, "still", False) or max_tiles <= 1:
            return key_frames, 1
        tiles = tile_image(key_frames[0], max_tiles, self.config.vision.image_size)
        return tiles, len(tiles)

    def _answer_and_prompt(
        self, prompts, key_frames: np.ndarray, capture_attention: bool, logits_processor, thumbnail_only=False
    ):
        """Answers, role positions, role prompts and (when captured) attention rows.

        thumbnail_only: a tiled still; its attention rows are those over the last image of the block,
        the thumbnail (the whole image, one g x g grid, as a 1-frame video has).
        """
        batch = self.processor.batch_prompts(prompts)
        input_ids = batch.input_ids.to(self.device)
        mask = batch.attention_mask.to(self.device)
        pixels = self.processor.mllm_pixels(key_frames).to(self.device, self.dtype)  # (K, 3, S, S)
        # Every prompt shows the same K keyframes: encode them once, fill each prompt's blocks.
        image_index = torch.arange(pixels.shape[0]).repeat(len(prompts))  # (E*K,)
        embeds = self.embed(input_ids, pixels, image_index)
        answers = self.generate_answers(embeds, mask, logits_processor)

        # Full sequences prompt + answer, right-padded after the (left-padded) prompt block.
        width = input_ids.shape[1] + max((len(a) for a in answers), default=0)
        full_ids = torch.full(
            (len(prompts), width), self.processor.ids.pad, dtype=torch.long, device=self.device
        )
        full_mask = torch.zeros_like(full_ids)
        full_ids[:, : input_ids.shape[1]] = input_ids
        full_mask[:, : input_ids.shape[1]] = mask
        for b, a in enumerate(answers):
            full_ids[b, input_ids.shape[1] : input_ids.shape[1] + len(a)] = torch.tensor(a, dtype=torch.long)
            full_mask[b, input_ids.shape[1] : input_ids.shape[1] + len(a)] = 1
        positions = self.role_positions(answers, [input_ids.shape[1]] * len(answers))
        full_embeds = torch.cat(
            [embeds, self.mllm.get_input_embeddings()(full_ids[:, input_ids.shape[1] :])], 1
        )

        holder: dict = {}
        capture = (
            self._capture_factory(full_ids, positions, holder, thumbnail_only=thumbnail_only)
            if capture_attention
            else None
        )
        hidden = self.hidden_states(full_embeds, full_mask, capture)
        role_prompts = self.prompts_from_states(hidden, positions)  # (E, R, P)
        return answers, positions, role_prompts, holder.get("rows")

    def _capture_factory(self, input_ids, positions, holder: dict, thumbnail_only: bool = False, **kwargs):
        """A context-manager factory for `hidden_states`: captures the role tokens' attention rows
        (``kwargs``: AttentionCapture's ``layers`` / ``heads``) into ``holder["rows"]``.
        ``thumbnail_only``: over the last g x g vision tokens only (a tiled still's thumbnail)."""
        from reviosa.attention import AttentionCapture, vision_positions_from_ids

        vision = vision_positions_from_ids(input_ids, self.processor.ids.img_context, self.config.grid)
        if thumbnail_only:
            vision = vision[:, -self.config.tokens_per_frame :]

        @contextlib.contextmanager
        def capture():
            cap = AttentionCapture(
                self.language_model, positions.to(self.device), vision, self.config.grid, **kwargs
            )
            with cap:
                yield
            holder["rows"] = cap.result()

        return capture

    def _propagate(self, video, keyframes, key_frames, role_prompts, active, report):
        """Track every active (expression, role) through the clip. Returns tracks and scores."""
        h, w = video.size
        tracks = {key: MaskTrack(video.num_frames, (h, w)) for key in active}
        scores = {key: np.zeros(video.num_frames, dtype=np.float32) for key in active}
        if not active:
            return tracks, scores
        prompt = torch.stack([role_prompts[e, r] for e, r in active]).unsqueeze(1).to(self.dtype)  # (N, 1, P)
        # per_frame: every frame, keyframes included, is decoded from the prompt as in training.
        # memory: keyframes become SAM2's conditioning frames first (it reads all of them while
        # tracking any frame), then the rest is tracked from memory.
        tracker, key_outputs = None, {}
        if self.config.sam.propagation == "memory":
            tracker = sam_ops.MemoryTracker(self.sam, video.num_frames, self.config.sam)
            for t, frame in zip(keyframes, key_frames, strict=True):
                out = tracker.condition(t, self._frame_features(frame, len(active)), prompt)
                key_outputs[t] = self._frame_result(out, (h, w))
        for t, frame in enumerate(video.iter_frames()):
            if t in key_outputs:
                masks, probs = key_outputs.pop(t)
            else:
                feats = self._frame_features(frame, len(active))
                if tracker is None:
                    out = sam_ops.decode_prompted(
                        self.sam, feats, prompt, multimask=self.config.sam.multimask_prompted,
                        overwrite=self.config.sam.object_score_overwrite,
                    )  # fmt: skip
                else:
                    out = tracker.track(t, feats)
                masks, probs = self._frame_result(out, (h, w))
            for n, key in enumerate(active):
                tracks[key][t] = masks[n]
                scores[key][t] = probs[n]
            if t % 8 == 0:
                report(
                    f"propagating masks: frame {t + 1}/{video.num_frames}", 0.3 + 0.7 * t / video.num_frames
                )
        return tracks, scores

    def _frame_features(self, frame: np.ndarray, n: int) -> sam_ops.FrameFeatures:
        """SAM2 features of one uint8 (H, W, 3) frame, shared by the n tracked prompts."""
        pixels = sam_ops.preprocess(torch.from_numpy(frame[None]), self.config.sam).to(
            self.device, self.dtype
        )
        return self._expand(sam_ops.encode_images(self.sam, pixels), n)

    @staticmethod
    def _expand(features: sam_ops.FrameFeatures, n: int) -> sam_ops.FrameFeatures:
        """Share one frame's features across the n tracked prompts (SAM2's object batch)."""
        return sam_ops.FrameFeatures(
            [f.expand(-1, n, -1) for f in features.vision_feats],
            [p.expand(-1, n, -1) for p in features.vision_pos],
            features.feat_sizes,
        )

    def _frame_result(self, out: dict, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Masks at frame size, bool (N, H, W), and object-presence probabilities (N,)."""
        logits = self.frame_logits(out["pred_masks"], size)
        probs = torch.sigmoid(out["object_score_logits"].float()).reshape(-1)
        return (logits[:, 0] > 0).cpu().numpy(), probs.cpu().numpy()

    def frame_logits(self, low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """SAM2's low-res logits (N, 1, S/4, S/4) at frame size (N, 1, H, W), float32.

        ``sam.mask_upsample``: "direct" (one bilinear step) or "via_input" (bilinear to S x S, as
        SAM2's video predictor returns them, then to H x W: the references' two steps).
        """
        x = low_res.float()
        if self.config.sam.mask_upsample == "via_input":
            s = self.config.sam.image_size
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def _prediction(
        self, e, expression, answer, positions, tracks, scores, keyframes, attention, timings, video
    ):
        answer_text = self.processor.decode(answer)
        answer_tokens = self.tokenizer.convert_ids_to_tokens(answer)
        attn = None
        if attention is not None:  # this expression's rows, batch axis kept (B = 1)
            attn = dataclasses.replace(
                attention,
                rows=attention.rows[e : e + 1].cpu(),
                vision_mass=attention.vision_mass[e : e + 1].cpu(),
            )
        common = dict(expression=expression, answer=answer_text, answer_tokens=answer_tokens,
                      keyframes=keyframes, attention=attn, timings=dict(timings),
                      protocol=protocol.describe(self.config))  # fmt: skip
        if positions[0] < 0:
            return Prediction(
                **common,
                actor=MaskTrack(video.num_frames, video.size),
                target=None,
                actor_scores=np.zeros(video.num_frames, dtype=np.float32),
                target_scores=None,
                status="no_seg_token",
                reason=f"the answer {answer_text!r} has no [SEG_ACT] token, so nothing was segmented",
            )
        has_target = positions[1] >= 0
        return Prediction(
            **common,
            actor=tracks[(e, 0)],
            target=tracks[(e, 1)] if has_target else None,
            actor_scores=scores[(e, 0)],
            target_scores=scores[(e, 1)] if has_target else None,
        )

    # --- training --------------------------------------------------------------------------------

    def forward_train(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        mllm_pixels: torch.Tensor,
        sam_pixels: torch.Tensor,
        capture: dict | None = None,
        clip_index: torch.Tensor | None = None,
        decode_absent: bool = True,
        example_masks: torch.Tensor | None = None,
        example_grad: bool = False,
    ) -> TrainOutput:
        """Teacher-forced forward for the losses.

        input_ids / attention_mask / labels: (B, L), right-padded prompt + answer; labels are -100
            outside the answer (the answer's own ids, <|im_end|> included, inside).
        mllm_pixels: float (B*K, 3, S, S), sample-major, K keyframes each.
        sam_pixels: float (B, F, 3, S_sam, S_sam): the frames to decode for the mask losses.
        capture: None, or kwargs for AttentionCapture (``layers``, ``heads``) to capture rows.
        clip_index: optional long (B,): rows are expressions of C clips, row b showing clip
            clip_index[b]; then mllm_pixels is (C*K, 3, S, S) and sam_pixels (C, F, 3, S_sam, S_sam),
            and both encoders run once per clip instead of once per row (same outputs).
        decode_absent: False skips SAM2 for roles whose token is not in the row (their mask and
            object logits are zeros), which no loss reads.
        example_masks: optional float (B, R, F, h, w) ground-truth masks of the decoded frames;
            given, the frames are also decoded from prompts pooled under them (``TrainOutput.example``).
        example_grad: let the example decoding's gradient reach SAM2's encoder through the pooled
            prompts; off, the decoder gets them as fixed inputs, so the encoder cannot shape its
            features to suit the prompts rather than the decoder learning to follow them.
        """
        image_index = None
        if clip_index is not None:
            k = mllm_pixels.shape[0] // sam_pixels.shape[0]
            image_index = (clip_index[:, None] * k + torch.arange(k, device=clip_index.device)).flatten()
        embeds = self.embed(input_ids, mllm_pixels, image_index)
        ids = self.processor.ids
        present = torch.stack([(input_ids == ids.seg_act).any(1), (input_ids == ids.seg_tar).any(1)], 1)
        positions = torch.stack(
            [_first_index(input_ids, ids.seg_act), _first_index(input_ids, ids.seg_tar)], 1
        )  # (B, R)
        holder: dict = {}
        factory = None
        if capture is not None:
            factory = self._capture_factory(input_ids, positions, holder, **capture)
        hidden = self.hidden_states(embeds, attention_mask, factory)  # (B, L, D)

        # Next-token prediction: the state at i predicts token i+1.
        shift_labels = labels[:, 1:]
        supervised = shift_labels != -100
        answer_logits = self.mllm.lm_head(hidden[:, :-1][supervised])
        role_prompts = self.prompts_from_states(hidden, positions)  # (B, R, P)
        roles = None if decode_absent else present
        feats = self.encode_frames(sam_pixels)
        f = sam_pixels.shape[1]
        mask_logits, object_logits = self.decode_encoded(feats, f, role_prompts, clip_index, roles)
        example = None
        if example_masks is not None:
            pooled, valid = self.example_prompts(feats, example_masks, clip_index)
            given = pooled if example_grad else pooled.detach()
            example = ExampleDecoding(pooled, valid, *self.decode_encoded(feats, f, given, clip_index, valid))
        states = torch.gather(
            hidden, 1, positions.clamp(min=0).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        )
        return TrainOutput(
            answer_logits=answer_logits,
            answer_targets=shift_labels[supervised],
            role_states=states * present.unsqueeze(-1).to(states.dtype),
            role_present=present,
            mask_logits=mask_logits,
            object_logits=object_logits,
            attention=holder.get("rows"),
            role_prompts=role_prompts,
            example=example,
        )

    def decode_frames(
        self,
        sam_pixels: torch.Tensor,
        prompts: torch.Tensor,
        clip_index: torch.Tensor | None = None,
        roles: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode each frame independently from each role prompt (no memory).

        sam_pixels: (B, F, 3, S, S); prompts: (B, R, P). With clip_index (B,), sam_pixels is
        (C, F, 3, S, S) and row b decodes the frames of clip clip_index[b] (encoded once per clip).
        roles: optional bool (B, R): decode only these (row, role) pairs; the others get zero logits.
        Returns mask logits (B, R, F, S/4, S/4) and object logits (B, R, F).
        """
        feats = self.encode_frames(sam_pixels)
        return self.decode_encoded(feats, sam_pixels.shape[1], prompts, clip_index, roles)

    def encode_frames(self, sam_pixels: torch.Tensor) -> sam_ops.FrameFeatures:
        """SAM2 image features of (N, F, 3, S, S) frames, batch N*F (frame-minor)."""
        encoder_trains = any(p.requires_grad for p in self.sam.image_encoder.parameters())
        with torch.set_grad_enabled(encoder_trains and torch.is_grad_enabled()):
            return sam_ops.encode_images(self.sam, sam_pixels.flatten(0, 1))

    @staticmethod
    def _frame_slots(n: int, f: int, clip_index: torch.Tensor | None, device) -> torch.Tensor:
        """Index of each row's f frames in ``encode_frames``' batch: long (B, F)."""
        clips = clip_index.to(device) if clip_index is not None else torch.arange(n, device=device)
        return clips[:, None] * f + torch.arange(f, device=device)

    def decode_encoded(
        self,
        feats: sam_ops.FrameFeatures,
        f: int,
        prompts: torch.Tensor,
        clip_index: torch.Tensor | None = None,
        roles: torch.Tensor | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``decode_frames`` on features from ``encode_frames`` (f frames per clip or row).

        points: optional SAM2 clicks with the prompts (training probes, ``train.probes.probe_sam``):
        coordinates float (B, R, F, P, 2) in input pixels and labels long (B, R, F, P).
        """
        b, r = prompts.shape[:2]
        # One gather per feature level puts each decoded (row, frame, role) in SAM2's batch, order
        # (B, F, R): the frame's encoding, shared by the roles (and by the rows of one clip).
        frames = self._frame_slots(b, f, clip_index, prompts.device)  # (B, F)
        index = frames[:, :, None].expand(b, f, r).reshape(-1)  # (B*F*R,)
        prompt = prompts.unsqueeze(1).expand(b, f, r, -1).reshape(b * f * r, 1, -1)
        clicks = None
        if points is not None:  # (B, R, F, ...) -> SAM2's (B*F*R, ...) order
            clicks = tuple(x.transpose(1, 2).reshape(b * f * r, *x.shape[3:]) for x in points)
        keep = None
        if roles is not None:
            keep = roles.to(index.device)[:, None, :].expand(b, f, r).reshape(-1).nonzero()[:, 0]  # (N,)
            index, prompt = index[keep], prompt[keep]
            clicks = None if clicks is None else tuple(x[keep] for x in clicks)
        feats = sam_ops.FrameFeatures(
            [x.index_select(1, index) for x in feats.vision_feats],
            [x.index_select(1, index) for x in feats.vision_pos],
            feats.feat_sizes,
        )
        out = sam_ops.decode_prompted(self.sam, feats, prompt, points=clicks)
        raw, scores = out["raw_masks"][:, 0], out["object_score_logits"][:, 0]  # (N, h, w), (N,)
        if keep is not None:  # back to every (B, F, R) slot, zeros where nothing was decoded
            raw = raw.new_zeros(b * f * r, *raw.shape[1:]).index_copy(0, keep, raw)
            scores = scores.new_zeros(b * f * r).index_copy(0, keep, scores)
        logits = raw.reshape(b, f, r, *raw.shape[-2:]).transpose(1, 2)
        objects = scores.reshape(b, f, r).transpose(1, 2)
        return logits, objects

    def example_prompts(
        self, feats: sam_ops.FrameFeatures, masks: torch.Tensor, clip_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts made from an example of each object: SAM2's top-level image features averaged
        over its masks on all the decoded frames, weighted by the mask's cover of each feature cell.

        feats: from ``encode_frames``; masks: float (B, R, F, h, w) with h, w multiples of the
        feature grid. Returns prompts (B, R, C) and valid bool (B, R) (False: empty masks, zeros).
        """
        b, f = masks.shape[0], masks.shape[2]
        gy, gx = feats.feat_sizes[-1]
        top = feats.vision_feats[-1]  # (gy*gx, N*F, C), SAM2's sequence-first layout
        frames = self._frame_slots(b, f, clip_index, top.device)  # (B, F)
        per_frame = top.index_select(1, frames.reshape(-1)).reshape(gy * gx, b, f, -1)
        return sam_ops.pooled_under_masks(per_frame, masks, (gy, gx))


def _first_index(input_ids: torch.Tensor, token: int) -> torch.Tensor:
    """Position of the first ``token`` in each row, -1 if absent: long (B,)."""
    hit = input_ids == token
    first = hit.float().argmax(1)
    return torch.where(hit.any(1), first, torch.full_like(first, -1))
