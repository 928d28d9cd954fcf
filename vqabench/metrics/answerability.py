"""Answerability (VizWiz) and selective-prediction metrics.

VizWiz scores answerability with *unanswerable* as the positive class: y = 1 - answerable,
score = 1 - predicted answerability. Hard decisions use score > 0.5, as the official code.

``risk_coverage`` ranks questions by confidence (descending; ties keep input order) and, at
coverage points k / points for k = 1..points, takes the top n_k = ceil(k * N / points)
questions and reports their mean VQA accuracy. AURC is the mean of (1 - accuracy) over those
points, i.e. a right Riemann sum of the risk-coverage curve over the nominal grid k / points;
lower is better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

_THRESHOLD = 0.5


def answerability_metrics(answerable: Sequence[bool], answerable_score: Sequence[float]) -> dict[str, float]:
    """Return {"ap_unanswerable", "accuracy", "f1_unanswerable", "auroc"} with unanswerable positive.

    AP and AUROC are NaN when they are undefined: AP without any unanswerable question,
    AUROC when only one class is present.
    """
    if len(answerable) == 0:
        raise ValueError("answerable must not be empty")
    if len(answerable_score) != len(answerable):
        raise ValueError(f"answerable_score has {len(answerable_score)} items but answerable has {len(answerable)}")
    y = 1 - np.asarray(answerable, dtype=int)
    score = 1.0 - np.asarray(answerable_score, dtype=float)
    if not np.all(np.isfinite(score)):
        raise ValueError("answerable_score must be finite")
    predicted = (score > _THRESHOLD).astype(int)
    has_positive = bool(y.any())
    both_classes = has_positive and not bool(y.all())
    return {
        "ap_unanswerable": float(average_precision_score(y, score)) if has_positive else math.nan,
        "accuracy": float(np.mean(predicted == y)),
        "f1_unanswerable": float(f1_score(y, predicted, zero_division=0)),
        "auroc": float(roc_auc_score(y, score)) if both_classes else math.nan,
    }


def risk_coverage(scores: Sequence[float], confidence: Sequence[float], points: int = 20) -> dict[str, Any]:
    """Return {"coverage", "risk_accuracy", "aurc"}: accuracy of the most confident fraction per coverage.

    ``coverage`` holds the realised fractions n_k / N, ``risk_accuracy`` the mean of ``scores``
    over those questions, and ``aurc`` the mean of (1 - accuracy) over the points.
    """
    if len(scores) == 0:
        raise ValueError("scores must not be empty")
    if len(confidence) != len(scores):
        raise ValueError(f"confidence has {len(confidence)} items but scores has {len(scores)}")
    if points < 1:
        raise ValueError(f"points must be at least 1, got {points}")
    n = len(scores)
    order = np.argsort(-np.asarray(confidence, dtype=float), kind="stable")
    ranked = np.asarray(scores, dtype=float)[order]
    cumulative = np.cumsum(ranked)
    coverage: list[float] = []
    accuracies: list[float] = []
    for k in range(1, points + 1):
        n_k = -(-k * n // points)
        coverage.append(n_k / n)
        accuracies.append(float(cumulative[n_k - 1] / n_k))
    aurc = float(np.mean([1.0 - a for a in accuracies]))
    return {"coverage": coverage, "risk_accuracy": accuracies, "aurc": aurc}
