"""ReVIOSa: interaction-aware referring video object segmentation (the model and its inference API).

Submodules import what they need; importing this package is free (``reviosa.hub.from_pretrained``
loads a model, ``python -m reviosa`` / ``reviosa`` is the command line).
"""
