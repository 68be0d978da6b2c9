"""Datasets: the InterRVOS / MeViS / Ref-YouTube-VOS layout (read and write) and the synthetic world.

Importing this package is cheap (numpy only); the generator lives in ``reviosa.data.synth``.
"""

from reviosa.data.interrvos import (
    CAPTION_TYPES,
    INTERACTION_TYPES,
    DatasetError,
    ExpressionSpec,
    InterRVOSDataset,
    ObjectTrack,
    Sample,
    VideoRecord,
    resolve_split_dir,
    write_dataset,
)

__all__ = [
    "CAPTION_TYPES",
    "INTERACTION_TYPES",
    "DatasetError",
    "ExpressionSpec",
    "InterRVOSDataset",
    "ObjectTrack",
    "Sample",
    "VideoRecord",
    "resolve_split_dir",
    "write_dataset",
]
