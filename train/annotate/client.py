"""Model clients for the annotation pipeline: one protocol, two back ends.

* ``OpenAIChatClient``: any server speaking the OpenAI chat-completions protocol (OpenAI, vLLM, SGLang,
  llama.cpp server, Ollama, LM Studio...), over the standard library's HTTP client; frames travel as
  base64 PNG data URLs in ``image_url`` content parts.
* ``TransformersChatClient``: a local vision-language model through transformers'
  ``AutoProcessor`` + ``AutoModelForImageTextToText`` (imported on first use).

A client returns the answer text; parsing and validation are the pipeline's job. Transport problems
raise ``ChatClientError`` so the pipeline can count them as a failed attempt instead of crashing.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ChatClient", "ChatClientError", "OpenAIChatClient", "TransformersChatClient", "png_data_url"]

# Enough for the longest stage answer (stage 3 with many interactions) several times over.
DEFAULT_MAX_TOKENS = 1024


class ChatClientError(RuntimeError):
    """The model could not be asked (connection, HTTP status, malformed protocol response)."""


class ChatClient(Protocol):
    """What the pipeline needs of a model: one chat turn with optional images."""

    def complete(self, messages: list[dict], images: Sequence[np.ndarray] = ()) -> str:
        """Answer ``messages`` (``[{"role", "content": str}]``); ``images`` (uint8 (H, W, 3) RGB)
        belong to the last user message, in order. Returns the answer text."""
        ...


def png_data_url(image: np.ndarray) -> str:
    """uint8 (H, W, 3) -> ``data:image/png;base64,...`` (PNG: lossless, so thin contours and label
    digits survive)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class OpenAIChatClient:
    """A chat-completions endpoint.

    Args:
        base_url: the API root, e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1``;
            requests go to ``{base_url}/chat/completions``.
        model: the model name the server expects.
        api_key: sent as a bearer token when given (never logged).
        timeout: seconds per request.
        temperature: sampling temperature; 0 for repeatable annotations.
        json_mode: ask for ``response_format={"type": "json_object"}`` (not every server supports it).
        max_tokens: answer length limit.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        temperature: float = 0.0,
        json_mode: bool = False,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"--base-url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ValueError("a model name is needed (--model or REVIOSA_ANNOTATE_MODEL)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._api_key = api_key
        self.timeout = timeout
        self.temperature = temperature
        self.json_mode = json_mode
        self.max_tokens = max_tokens

    def __repr__(self) -> str:
        return f"OpenAIChatClient(url={self.url!r}, model={self.model!r})"

    def payload(self, messages: list[dict], images: Sequence[np.ndarray] = ()) -> dict:
        """The request body; images become ``image_url`` parts after the last user message's text."""
        body_messages = [dict(m) for m in messages]
        if images:
            last = max(i for i, m in enumerate(body_messages) if m["role"] == "user")
            parts = [{"type": "text", "text": body_messages[last]["content"]}]
            parts += [{"type": "image_url", "image_url": {"url": png_data_url(im)}} for im in images]
            body_messages[last]["content"] = parts
        body = {
            "model": self.model,
            "messages": body_messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def complete(self, messages: list[dict], images: Sequence[np.ndarray] = ()) -> str:
        data = json.dumps(self.payload(messages, images)).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read(500).decode("utf-8", "replace")
            raise ChatClientError(f"{self.url}: HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise ChatClientError(f"{self.url}: {err}") from None
        return _answer_text(raw)


def _answer_text(raw: bytes) -> str:
    """``choices[0].message.content`` of a chat-completions response."""
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ChatClientError(f"not a chat-completions response: {raw[:200]!r}") from None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise ChatClientError(f"answer content is {type(content).__name__}, not text")
    return content


class TransformersChatClient:
    """A local vision-language model (any ``AutoModelForImageTextToText`` with a chat template:
    Qwen2.5-VL, InternVL-HF, Gemma 3, SmolVLM...).

    The model loads on the first ``complete`` call, so building the client is free and the pipeline can
    be configured without torch. Greedy decoding, for repeatable annotations.
    """

    def __init__(self, model_id_or_path: str, device: str = "cpu", max_new_tokens: int = DEFAULT_MAX_TOKENS):
        self.model_id_or_path = model_id_or_path
        self.device = device
        self.max_new_tokens = max_new_tokens
        self._processor = None
        self._model = None

    def __repr__(self) -> str:
        return f"TransformersChatClient({self.model_id_or_path!r}, device={self.device!r})"

    @staticmethod
    def build_messages(messages: list[dict], images: Sequence[np.ndarray] = ()) -> list[dict]:
        """transformers' chat format: content as typed parts, images as PIL images before the text of
        the last user message (the order most VLM chat templates are trained on)."""
        from PIL import Image

        out = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]
        if images:
            last = max(i for i, m in enumerate(out) if m["role"] == "user")
            pictures = [
                {"type": "image", "image": Image.fromarray(np.asarray(im, np.uint8))} for im in images
            ]
            out[last]["content"] = pictures + out[last]["content"]
        return out

    def _load(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        logger.info("loading %s on %s", self.model_id_or_path, self.device)
        self._processor = AutoProcessor.from_pretrained(self.model_id_or_path)
        self._model = (
            AutoModelForImageTextToText.from_pretrained(self.model_id_or_path).to(self.device).eval()
        )

    def complete(self, messages: list[dict], images: Sequence[np.ndarray] = ()) -> str:
        import torch

        if self._model is None:
            self._load()
        inputs = self._processor.apply_chat_template(
            self.build_messages(messages, images),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            output = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        return self._processor.decode(new_tokens, skip_special_tokens=True)
