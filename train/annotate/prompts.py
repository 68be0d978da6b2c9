"""The prompts of the four annotation stages (our wording, after the stage descriptions in the InterRVOS
paper, section "Data annotation pipeline" and appendix D.1).

Each builder returns chat messages ``[{"role": "system" | "user", "content": str}]``; the clients add
the frames to the last user message. Every prompt asks for one JSON object with the schema stated in
the prompt and checked by ``schema.py``. Object data from earlier stages is passed as a JSON block, so
a description can never be read as part of the instructions.

Bump ``PROMPT_VERSION`` when a prompt changes: it is part of the cache key, so cached answers to an
older prompt are not reused.
"""

from __future__ import annotations

import json

__all__ = [
    "PROMPT_VERSION",
    "describe_object",
    "single_expressions",
    "merge_objects",
    "detect_interactions",
    "unidirectional_expressions",
    "bidirectional_expressions",
    "retry_note",
]

PROMPT_VERSION = 1

_SYSTEM = (
    "You write annotations for a referring video object segmentation dataset. You only report what "
    "the frames show or what the given data states. Answer with exactly one JSON object that follows "
    "the requested schema: no prose, no markdown, no code fences."
)

_PHRASE_RULES = (
    "Rules for every referring expression:\n"
    "- a noun phrase that picks out the object(s), not a sentence: 'brown dog running to the left', "
    "not 'The dog is running to the left.';\n"
    "- no pronouns such as 'it', 'they' or 'their';\n"
    "- keep the facts of the input, add none;\n"
    "- never mention outlines, labels, numbers in brackets or highlighting;\n"
    "- at most 30 words, plain words and ordinary punctuation only."
)


def _messages(user: str) -> list[dict]:
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def _data_block(data) -> str:
    return "Data (JSON):\n" + json.dumps(data, ensure_ascii=False, indent=1)


def _label_list(labels) -> str:
    return ", ".join(f"[{label}]" for label in sorted(labels))


def describe_object(label: int, num_frames: int, category: str | None) -> list[dict]:
    """Stage 1 (vision, one object highlighted on ``num_frames`` sampled frames)."""
    hint = (
        f'The annotator says the object is a "{category}"; use this only to recognise it.'
        if category
        else "Its class is not given; name it yourself."
    )
    user = (
        f"Stage 1: describe one object.\n"
        f"The {num_frames} images are frames sampled in time order from one video. One object is "
        f"highlighted in every frame: it is tinted, outlined in colour and tagged with the label [{label}]. "
        f"{hint}\n"
        "Describe only that object:\n"
        "- its appearance: class, colour, shape, texture, size, clothing or parts that are visible;\n"
        "- its motion over the frames: where it moves, how, and what it does; if it stays still or "
        "barely moves, say so; never attribute the motion of other objects or the camera to it.\n"
        "Do not mention other objects, the outline, the tint or the label, and state nothing that "
        "cannot be seen (names, intentions, feelings).\n"
        "Schema:\n"
        '{"label": <the label, a number>, "category": "<class name, 1-3 words, e.g. person, dog, cup>", '
        '"appearance": "<one sentence on its appearance>", '
        '"motion": "<one sentence on its motion>"}'
    )
    return _messages(user)


def single_expressions(appearance: str, motion: str, category: str) -> list[dict]:
    """Stage 2 (text): three referring expressions for one object from its stage 1 description."""
    user = (
        "Stage 2: referring expressions for one object.\n"
        "Rewrite the object's description as three referring expressions:\n"
        '- "appearance": appearance only;\n'
        '- "motion": motion only, naming the object by a neutral word such as "object" or its class '
        "and no appearance;\n"
        '- "all": appearance and motion together.\n'
        f"{_PHRASE_RULES}\n"
        f"{_data_block({'category': category, 'appearance': appearance, 'motion': motion})}\n"
        'Schema: {"appearance": "<expression>", "motion": "<expression>", "all": "<expression>"}'
    )
    return _messages(user)


def merge_objects(objects: dict[int, dict]) -> list[dict]:
    """Stage 2 (text): which objects share one motion and can be referred to together.

    ``objects`` maps label -> ``{"category", "motion"}``.
    """
    data = {f"[{label}]": {"category": o["category"], "motion": o["motion"]} for label, o in objects.items()}
    user = (
        "Stage 2: group objects that move alike.\n"
        "Given the class and motion of each object of one video, find groups of two or more objects "
        "that (1) belong to the same or a similar class, (2) show the same clear, active motion "
        "(walking together, spinning, waving, moving to the left...) and (3) are each the main "
        "subject of their own motion description. Do not group objects that are still or barely "
        "move, objects that only interact with the same thing, or objects of different classes. "
        "For each group write one referring expression for the whole group with a plural class "
        "noun ('people walking side by side', 'cups sliding to the right').\n"
        f"{_PHRASE_RULES}\n"
        f"Valid labels: {_label_list(objects)}.\n"
        f"{_data_block(data)}\n"
        'Schema: {"groups": [{"labels": [<label>, <label>, ...], "expression": "<expression>"}]}; '
        'an object is in at most one group; answer {"groups": []} when no objects should be grouped.'
    )
    return _messages(user)


def detect_interactions(labels: list[int], categories: dict[int, str], num_frames: int) -> list[dict]:
    """Stage 3 (vision, every object outlined and labelled on ``num_frames`` sampled frames)."""
    known = {f"[{label}]": categories[label] for label in labels if categories.get(label)}
    user = (
        "Stage 3: find interactions between objects.\n"
        f"The {num_frames} images are frames sampled in time order from one video. Every object is "
        f"outlined in its own colour and tagged with its label. Valid labels: {_label_list(labels)}; "
        "never use any other label.\n"
        f"Object classes, as a prior only (decide from what the frames show): {json.dumps(known)}.\n"
        "List every interaction that is visible between labelled objects:\n"
        '- "unidirectional": one side acts on the other (pushing, chasing, holding, feeding, leaning '
        'on); give the "initiators" (who acts) and the "receivers" (who is acted on);\n'
        '- "bidirectional": the objects take part equally (dancing together, talking to each other, '
        'bumping into each other); give the "participants".\n'
        "Several objects may share a side when they act or are acted on together. Write a short "
        "description of each interaction that names the objects by their labels, e.g. "
        '"[0] is pushing [2]". Report only what is visible, not intentions or relationships.\n'
        "Schema:\n"
        '{"interactions": [{"type": "unidirectional", "initiators": [<label>, ...], '
        '"receivers": [<label>, ...], "description": "<sentence>"}, '
        '{"type": "bidirectional", "participants": [<label>, <label>, ...], "description": "<sentence>"}]}\n'
        'Answer {"interactions": []} when no objects interact.'
    )
    return _messages(user)


def _objects_block(objects: dict[int, dict]) -> dict:
    return {
        f"[{label}]": {"category": o["category"], "appearance": o["appearance"]}
        for label, o in objects.items()
    }


def unidirectional_expressions(
    description: str, initiators: list[int], receivers: list[int], objects: dict[int, dict]
) -> list[dict]:
    """Stage 4 (text): class- and appearance-level expressions with each side as the subject.

    ``objects`` maps each involved label -> ``{"category", "appearance"}``.
    """
    data = {
        "interaction": description,
        "initiators": [f"[{i}]" for i in initiators],
        "receivers": [f"[{i}]" for i in receivers],
        "objects": _objects_block(objects),
    }
    user = (
        "Stage 4: referring expressions for a one-way interaction.\n"
        "The initiators act on the receivers. Write referring expressions in which the labels are "
        "replaced by words that identify the objects:\n"
        '- "active": the initiators are the grammatical subject, e.g. "person pushing a cart";\n'
        '- "passive": the receivers are the grammatical subject, e.g. "cart pushed by a person";\n'
        'each at two levels: "class_level" names objects by class only; "appearance_level" adds just '
        "enough appearance from the data to tell them apart, e.g. "
        '"man in a red jacket pushing a blue cart". Follow the initiator / receiver roles, not the '
        "word order of the description.\n"
        f"{_PHRASE_RULES}\n"
        f"{_data_block(data)}\n"
        'Schema: {"active": {"class_level": "<expression>", "appearance_level": "<expression>"}, '
        '"passive": {"class_level": "<expression>", "appearance_level": "<expression>"}}'
    )
    return _messages(user)


def bidirectional_expressions(
    description: str, participants: list[int], objects: dict[int, dict]
) -> list[dict]:
    """Stage 4 (text): class- and appearance-level expressions for a mutual interaction."""
    data = {
        "interaction": description,
        "participants": [f"[{i}]" for i in participants],
        "objects": _objects_block(objects),
    }
    user = (
        "Stage 4: referring expressions for a mutual interaction.\n"
        "Replace the labels in the interaction by words that identify the objects, in one referring "
        "expression that refers to all participants together:\n"
        '- "class_level": classes only; a plural is fine when the classes agree, e.g. '
        '"people dancing with each other";\n'
        '- "appearance_level": with just enough appearance from the data to tell them apart, e.g. '
        '"man in a white shirt sparring with a woman in black".\n'
        f"{_PHRASE_RULES}\n"
        f"{_data_block(data)}\n"
        'Schema: {"class_level": "<expression>", "appearance_level": "<expression>"}'
    )
    return _messages(user)


def retry_note(messages: list[dict], error: str) -> list[dict]:
    """The same request with a note on what was wrong with the previous answer (not the answer itself:
    a hostile answer must not be echoed back into the next prompt)."""
    note = (
        f"Your previous answer was rejected: {error[:300]}. "
        "Answer again with one JSON object that follows the schema exactly."
    )
    return [*messages[:-1], {"role": "user", "content": messages[-1]["content"] + "\n\n" + note}]
