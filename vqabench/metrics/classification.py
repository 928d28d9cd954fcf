"""Answer-classification metrics: accuracy, weighted P/R/F1, answer distribution, majority baseline."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

from sklearn.metrics import precision_recall_fscore_support

from vqabench.metrics.vqa import vqa_accuracy


def _check_pair(y_true: Sequence, y_pred: Sequence) -> None:
    if len(y_true) == 0:
        raise ValueError("y_true must not be empty")
    if len(y_pred) != len(y_true):
        raise ValueError(f"y_pred has {len(y_pred)} items but y_true has {len(y_true)}")


def weighted_prf(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> dict[str, float]:
    """Return support-weighted precision, recall and F1 over classes (scikit-learn, zero_division=0)."""
    _check_pair(y_true, y_pred)
    precision, recall, f1, _ = precision_recall_fscore_support(
        list(y_true), list(y_pred), average="weighted", zero_division=0
    )
    return {
        "weighted_precision": float(precision),
        "weighted_recall": float(recall),
        "weighted_f1": float(f1),
    }


def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Return the fraction of positions where the prediction equals the label exactly."""
    _check_pair(y_true, y_pred)
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def prediction_distribution(predictions: Sequence[str], top: int = 10) -> list[tuple[str, int]]:
    """Return the ``top`` most frequent predictions with counts, most common first, ties by string."""
    if len(predictions) == 0:
        raise ValueError("predictions must not be empty")
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    counts = Counter(predictions)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]


def majority_baseline(
    train_answers: Sequence[str],
    eval_answers: Sequence[Sequence[str]],
    mode: str = "vqa",
) -> dict[str, Any]:
    """Return {"answer", "vqa_accuracy"}: the most frequent training answer scored on every eval question."""
    if len(train_answers) == 0:
        raise ValueError("train_answers must not be empty")
    if len(eval_answers) == 0:
        raise ValueError("eval_answers must not be empty")
    answer = prediction_distribution(train_answers, top=1)[0][0]
    result = vqa_accuracy([answer] * len(eval_answers), eval_answers, mode=mode)
    return {"answer": answer, "vqa_accuracy": result["vqa_accuracy"]}
