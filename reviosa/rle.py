"""COCO run-length encoding of boolean masks, shared by prediction, evaluation and the dataset I/O.

RLE dicts are JSON-ready: ``{"size": [h, w], "counts": str}`` (compressed COCO counts).
"""

from __future__ import annotations

import warnings

import numpy as np
from pycocotools import mask as mask_utils


def encode(mask: np.ndarray) -> dict:
    """Encode one mask.

    Args:
        mask: bool or {0, 1} array of shape (H, W).
    Returns:
        COCO RLE ``{"size": [H, W], "counts": str}``.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode(rle: dict | None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one RLE into a bool (H, W) mask; ``None`` decodes to an empty mask of ``size``."""
    if rle is None:
        if size is None:
            raise ValueError("an empty (null) RLE needs the frame size to decode")
        return np.zeros(size, dtype=bool)
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed COCO RLE, as some annotation tools write
        counts = mask_utils.frPyObjects(rle, *rle["size"])["counts"]
    elif isinstance(counts, str):
        counts = counts.encode("ascii")
    with warnings.catch_warnings():
        # pycocotools' Cython decode trips numpy 2's __array__(copy=...) deprecation on every call;
        # the result is correct, and the warning is theirs to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        mask = mask_utils.decode({"size": list(rle["size"]), "counts": counts}).astype(bool)
    if size is not None and mask.shape != tuple(size):
        raise ValueError(f"RLE of size {mask.shape} where the frame is {tuple(size)}")
    return mask


def encode_track(masks) -> list[dict | None]:
    """Encode a track of (H, W) masks; an all-empty frame becomes ``None`` (the MeViS convention)."""
    return [encode(m) if np.any(m) else None for m in masks]
