"""Validation of the model's JSON answers, one validator per stage.

Every answer is untrusted text: it is parsed as JSON, checked field by field, and turned into plain
dicts that the pipeline caches and assembles. An answer is rejected (``AnswerError``) when it is not
JSON, has the wrong types, names an object label that is not in the video, or carries text that no
referring expression needs: control characters, markup, absurd lengths, or instructions aimed at a
model ("ignore the previous instructions..."). Rejected answers are retried by the pipeline.

Labels are the numbers drawn on the frames (0, 1, ...); an answer may write them as ``2``, ``"2"`` or
``"[2]"``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Collection

__all__ = [
    "AnswerError",
    "MAX_ANSWER_CHARS",
    "parse_json",
    "validate_object_description",
    "validate_single_expressions",
    "validate_groups",
    "validate_interactions",
    "validate_unidirectional_expressions",
    "validate_bidirectional_expressions",
]

# A well-formed answer of any stage is well under 4k characters; 20k leaves room for verbose models
# and stops a runaway answer before json.loads.
MAX_ANSWER_CHARS = 20_000
MAX_DESCRIPTION_CHARS = 600  # stage 1 sentences and stage 3 interaction descriptions
MAX_EXPRESSION_CHARS = 240  # referring expressions: InterRVOS-127K's are phrases of 3-30 words
MAX_EXPRESSION_WORDS = 40
MAX_CATEGORY_CHARS = 40
MAX_INTERACTIONS = 16
INTERACTION_KINDS = ("bidirectional", "unidirectional")

# Markup and code characters: a referring phrase never needs them, an injected payload often does.
_FORBIDDEN_CHARS = set("<>{}`\\|$#@*=~^")
_LABEL_MARK = re.compile(r"\[\s*(\d{1,4})\s*\]")
_LABEL_VALUE = re.compile(r"^\s*\[?\s*(\d{1,4})\s*\]?\s*$")
_CATEGORY = re.compile(r"^[A-Za-z][A-Za-z '\-]*$")
# Phrases addressed to a model rather than describing a video.
_INJECTION = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\b(ignore|disregard|forget|override)\b.{0,40}\b(instruction|prompt|rule|direction|above|previous)",
        r"\b(system|developer|assistant)\s+(prompt|message|instruction)",
        r"\byou\s+are\s+(now\s+)?(an?|the)\s+(ai|assistant|language\s+model|chatbot)",
        r"\bas\s+an\s+ai\b",
        r"\bjailbreak",
        r"https?://|www\.",
    )
]


class AnswerError(ValueError):
    """A model answer that fails validation; the message says what to fix (and is sent back on retry)."""


def _short(value, limit: int = 60) -> str:
    """repr() cut to ``limit`` characters: errors must never carry a hostile 100k-character payload."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def parse_json(text: str) -> dict:
    """Parse an answer into a JSON object; tolerates a ```json fence or prose around one object."""
    if not isinstance(text, str):
        raise AnswerError(f"expected text, got {type(text).__name__}")
    if len(text) > MAX_ANSWER_CHARS:
        raise AnswerError(f"answer of {len(text)} characters (limit {MAX_ANSWER_CHARS})")
    body = text.strip()
    fence = re.match(r"^```[A-Za-z]*\s*(.*?)\s*```$", body, re.DOTALL)
    if fence:
        body = fence.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        start, end = body.find("{"), body.rfind("}")
        if start < 0 or end <= start:
            raise AnswerError("the answer holds no JSON object") from None
        try:
            data = json.loads(body[start : end + 1])
        except json.JSONDecodeError as err:
            raise AnswerError(f"invalid JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(data, dict):
        raise AnswerError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _field(data: dict, key: str, where: str):
    if key not in data:
        raise AnswerError(f"{where}: missing key {key!r}")
    return data[key]


def clean_text(value, where: str, max_chars: int, allow_labels: Collection[int] | None = None) -> str:
    """A validated, whitespace-normalised string.

    Args:
        value: the answer's field.
        where: field name for error messages.
        max_chars: length limit after normalisation.
        allow_labels: None forbids bracketed labels like ``[2]`` (a referring expression must name
            objects in words); a collection allows exactly those labels (stage 3 descriptions).
    """
    if not isinstance(value, str):
        raise AnswerError(f"{where}: expected a string, got {type(value).__name__}")
    if len(value) > 4 * max_chars:
        raise AnswerError(f"{where}: {len(value)} characters (limit {max_chars})")
    for char in value:
        # Newlines and tabs are harmless layout; other control / format characters (NUL, escape,
        # bidi overrides, zero-width joiners) hide content from a human reviewer.
        if char not in "\n\r\t" and unicodedata.category(char) in ("Cc", "Cf", "Co", "Cs"):
            raise AnswerError(f"{where}: control character U+{ord(char):04X}")
    text = " ".join(value.split())
    if not text:
        raise AnswerError(f"{where}: empty")
    if len(text) > max_chars:
        raise AnswerError(f"{where}: {len(text)} characters (limit {max_chars})")
    bad = sorted(set(text) & _FORBIDDEN_CHARS)
    if bad:
        raise AnswerError(f"{where}: forbidden characters {''.join(bad)!r}")
    for pattern in _INJECTION:
        if pattern.search(text):
            raise AnswerError(f"{where}: text addressed to a model, not a description: {_short(text)}")
    marks = [int(m) for m in _LABEL_MARK.findall(text)]
    if allow_labels is None and marks:
        raise AnswerError(f"{where}: object labels {marks} left in a referring expression; name the objects")
    unknown = sorted(set(marks) - set(allow_labels or ()))
    if allow_labels is not None and unknown:
        raise AnswerError(f"{where}: unknown object labels {unknown} (valid: {sorted(allow_labels)})")
    return text


def _expression(value, where: str) -> str:
    text = clean_text(value, where, MAX_EXPRESSION_CHARS)
    if len(text.split()) > MAX_EXPRESSION_WORDS:
        raise AnswerError(
            f"{where}: {len(text.split())} words (limit {MAX_EXPRESSION_WORDS}); write a phrase"
        )
    return text


def parse_label(value, allowed: Collection[int], where: str) -> int:
    """One object label from an answer, checked against the labels drawn on the frames."""
    if isinstance(value, bool):  # bool is an int subclass; True is not label 1
        raise AnswerError(f"{where}: expected an object label, got {value!r}")
    if isinstance(value, int):
        label = value
    elif isinstance(value, str) and _LABEL_VALUE.match(value):
        label = int(_LABEL_VALUE.match(value).group(1))
    else:
        raise AnswerError(f'{where}: expected an object label like 0 or "[0]", got {_short(value)}')
    if label not in allowed:
        raise AnswerError(f"{where}: unknown object label {label} (valid: {sorted(allowed)})")
    return label


def _labels(value, allowed: Collection[int], where: str, min_count: int) -> list[int]:
    if not isinstance(value, list):
        raise AnswerError(f"{where}: expected a list of labels, got {type(value).__name__}")
    labels = [parse_label(v, allowed, f"{where}[{k}]") for k, v in enumerate(value)]
    if len(set(labels)) != len(labels):
        raise AnswerError(f"{where}: repeated labels {labels}")
    if len(labels) < min_count:
        raise AnswerError(f"{where}: needs at least {min_count} labels, got {labels}")
    return sorted(labels)


# ----------------------------------------------------------------------------------------- stages


def validate_object_description(data: dict, label: int) -> dict:
    """Stage 1: ``{"category", "appearance", "motion"}`` of the highlighted object ``label``."""
    if "label" in data and parse_label(data["label"], range(10_000), "label") != label:
        raise AnswerError(
            f"label: the highlighted object is [{label}], the answer describes {data['label']!r}"
        )
    category = clean_text(_field(data, "category", "stage 1"), "category", MAX_CATEGORY_CHARS)
    if not _CATEGORY.match(category) or len(category.split()) > 4:
        raise AnswerError(f"category: expected a class name of 1-4 words, got {_short(category)}")
    return {
        "category": category.lower(),
        "appearance": clean_text(_field(data, "appearance", "stage 1"), "appearance", MAX_DESCRIPTION_CHARS),
        "motion": clean_text(_field(data, "motion", "stage 1"), "motion", MAX_DESCRIPTION_CHARS),
    }


def validate_single_expressions(data: dict) -> dict:
    """Stage 2 (one object): ``{"appearance", "motion", "all"}`` referring expressions."""
    return {key: _expression(_field(data, key, "stage 2"), key) for key in ("appearance", "motion", "all")}


def validate_groups(data: dict, allowed: Collection[int]) -> list[dict]:
    """Stage 2 (merge): ``{"groups": [{"labels": [>= 2 labels], "expression": str}]}``; each object in at
    most one group."""
    groups = _field(data, "groups", "stage 2 merge")
    if not isinstance(groups, list):
        raise AnswerError(f"groups: expected a list, got {type(groups).__name__}")
    if len(groups) > max(1, len(allowed) // 2):
        raise AnswerError(f"groups: {len(groups)} groups for {len(allowed)} objects")
    out, seen = [], set()
    for k, group in enumerate(groups):
        if not isinstance(group, dict):
            raise AnswerError(f"groups[{k}]: expected an object, got {type(group).__name__}")
        labels = _labels(_field(group, "labels", f"groups[{k}]"), allowed, f"groups[{k}].labels", 2)
        if seen & set(labels):
            raise AnswerError(f"groups[{k}].labels: {sorted(seen & set(labels))} already in another group")
        seen |= set(labels)
        expression = _expression(_field(group, "expression", f"groups[{k}]"), f"groups[{k}].expression")
        out.append({"labels": labels, "expression": expression})
    return out


def validate_interactions(data: dict, allowed: Collection[int]) -> list[dict]:
    """Stage 3: ``{"interactions": [...]}``, each ``{"type": "unidirectional", "initiators": [...],
    "receivers": [...], "description"}`` or ``{"type": "bidirectional", "participants": [...],
    "description"}``; an empty list means no interaction."""
    items = _field(data, "interactions", "stage 3")
    if not isinstance(items, list):
        raise AnswerError(f"interactions: expected a list, got {type(items).__name__}")
    if len(items) > MAX_INTERACTIONS:
        raise AnswerError(f"interactions: {len(items)} entries (limit {MAX_INTERACTIONS})")
    out, seen = [], set()
    for k, item in enumerate(items):
        where = f"interactions[{k}]"
        if not isinstance(item, dict):
            raise AnswerError(f"{where}: expected an object, got {type(item).__name__}")
        kind = _field(item, "type", where)
        if kind not in INTERACTION_KINDS:
            raise AnswerError(f"{where}.type: expected one of {INTERACTION_KINDS}, got {_short(kind)}")
        description = clean_text(
            _field(item, "description", where), f"{where}.description", MAX_DESCRIPTION_CHARS, allowed
        )
        if kind == "unidirectional":
            initiators = _labels(_field(item, "initiators", where), allowed, f"{where}.initiators", 1)
            receivers = _labels(_field(item, "receivers", where), allowed, f"{where}.receivers", 1)
            if set(initiators) & set(receivers):
                raise AnswerError(f"{where}: {sorted(set(initiators) & set(receivers))} on both sides")
            entry = {"type": kind, "initiators": initiators, "receivers": receivers}
        else:
            participants = _labels(_field(item, "participants", where), allowed, f"{where}.participants", 2)
            entry = {"type": kind, "participants": participants}
        key = json.dumps(entry, sort_keys=True)
        if key in seen:  # the same relation listed twice adds no expression
            continue
        seen.add(key)
        out.append({**entry, "description": description})
    return out


def _levels(data, where: str) -> dict:
    if not isinstance(data, dict):
        raise AnswerError(f"{where}: expected an object, got {type(data).__name__}")
    return {
        key: _expression(_field(data, key, where), f"{where}.{key}")
        for key in ("class_level", "appearance_level")
    }


def validate_unidirectional_expressions(data: dict) -> dict:
    """Stage 4 (unidirectional): ``{"active": {"class_level", "appearance_level"}, "passive": {...}}``;
    active has the initiators as subject, passive the receivers."""
    return {key: _levels(_field(data, key, "stage 4"), key) for key in ("active", "passive")}


def validate_bidirectional_expressions(data: dict) -> dict:
    """Stage 4 (bidirectional): ``{"class_level", "appearance_level"}``."""
    return _levels(data, "stage 4")
