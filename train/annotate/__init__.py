"""Automatic InterRVOS annotation: turn videos with object mask tracks into training data.

The four stages of the InterRVOS paper's pipeline (object descriptions, referring expressions,
interactions, interaction expressions) asked of any OpenAI-compatible chat endpoint or a local
transformers model, validated, cached per video and stage, and written in the InterRVOS layout.
See ``docs/annotate.md``; command line: ``python -m train.annotate --help``.
"""

from train.annotate.client import ChatClient, ChatClientError, OpenAIChatClient, TransformersChatClient
from train.annotate.inputs import (
    InputSet,
    ObjectInput,
    VideoInput,
    array_input,
    from_dataset,
    from_folder,
    open_input,
)
from train.annotate.pipeline import AnnotateConfig, Annotator, build_expressions

__all__ = [
    "AnnotateConfig",
    "Annotator",
    "ChatClient",
    "ChatClientError",
    "InputSet",
    "ObjectInput",
    "OpenAIChatClient",
    "TransformersChatClient",
    "VideoInput",
    "array_input",
    "build_expressions",
    "from_dataset",
    "from_folder",
    "open_input",
]
