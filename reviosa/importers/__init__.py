"""Importers for foreign checkpoints: InternVL2.5 (+ Meta SAM2), Sa2VA, the reference ReVIOSa layout.

``reviosa.hub.from_pretrained`` detects these layouts and calls `load_foreign`; ``python -m reviosa
convert`` writes them out in our own format. See docs/checkpoints.md.
"""

from reviosa.importers.formats import FORMAT_NAMES, FORMATS, build_from_parts, detect_format, load_foreign

__all__ = ["FORMATS", "FORMAT_NAMES", "build_from_parts", "detect_format", "load_foreign"]
