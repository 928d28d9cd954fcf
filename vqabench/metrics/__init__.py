"""Metric functions for vqabench; every scalar key they return is registered in ``METRICS``.

Names are re-exported lazily so that ``vqabench.metrics.base`` (the registry the leaderboard and
the regression gate read) imports without torch, scikit-learn or pycocoevalcap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "METRICS": "base",
    "Metric": "base",
    "get_metric": "base",
    "normalize_answer": "vqa",
    "vqa_score": "vqa",
    "vqa_accuracy": "vqa",
    "accuracy": "classification",
    "weighted_prf": "classification",
    "prediction_distribution": "classification",
    "majority_baseline": "classification",
    "answerability_metrics": "answerability",
    "risk_coverage": "answerability",
    "zero_shot_metrics": "zeroshot",
    "class_embeddings": "zeroshot",
    "zero_shot_logits": "zeroshot",
    "caption_metrics": "captioning",
    "clip_score": "clipscore",
    "ref_clip_score": "clipscore",
    "ClipScorer": "clipscore",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from vqabench.metrics.answerability import answerability_metrics, risk_coverage
    from vqabench.metrics.base import METRICS, Metric, get_metric
    from vqabench.metrics.captioning import caption_metrics
    from vqabench.metrics.classification import (
        accuracy,
        majority_baseline,
        prediction_distribution,
        weighted_prf,
    )
    from vqabench.metrics.clipscore import ClipScorer, clip_score, ref_clip_score
    from vqabench.metrics.vqa import normalize_answer, vqa_accuracy, vqa_score
    from vqabench.metrics.zeroshot import class_embeddings, zero_shot_logits, zero_shot_metrics


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
