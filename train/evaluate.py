"""Periodic evaluation during training: the inference path (``ReviosaModel.segment``, propagating as
the model config says) on the first clips of a validation split, scored with ``reviosa.evaluation``."""

from __future__ import annotations

import logging

import torch

from reviosa.data import InterRVOSDataset
from reviosa.modeling import ReviosaModel

logger = logging.getLogger(__name__)


class _Subset:
    """The samples of the first ``clips`` videos, with the interface ``evaluate_results`` reads."""

    def __init__(self, dataset: InterRVOSDataset, clips: int):
        keep = set(dataset.video_ids[:clips])
        self._samples = [s for s in dataset.samples() if s.video_id in keep]

    def samples(self):
        return iter(self._samples)


def predict_results(model: ReviosaModel, samples, batch: int = 8) -> dict:
    """The results dict of ``predict --dataset`` for these samples (consecutive per video)."""
    from reviosa.results import predict_videos

    return {"videos": dict(predict_videos(model, samples, batch))}


def evaluate(model: ReviosaModel, dataset: InterRVOSDataset, clips: int) -> dict[str, float]:
    """J, F, J&F (percent) of InterRVOS-Actor / -Target / RVOS on the first ``clips`` videos."""
    from reviosa.evaluation import evaluate_results

    subset = _Subset(dataset, clips)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            res = predict_results(model, list(subset.samples()))
    finally:
        model.train(was_training)
    scores = evaluate_results(subset, res, workers=1)
    metrics = {}
    for bench in ("actor", "target", "rvos"):
        m = getattr(scores, bench)
        if m is not None:
            metrics.update({f"{bench}_J": m.J, f"{bench}_F": m.F, f"{bench}_JF": m.JF})
    answers = [e.get("answer", "") for v in res["videos"].values() for e in v.values()]
    samples = list(subset.samples())
    right = sum(
        (s.caption_type == "unidirectional") == ("[SEG_TAR]" in a)
        for s, a in zip(samples, answers, strict=True)
    )
    metrics["token_accuracy"] = 100.0 * right / max(1, len(samples))
    return metrics
