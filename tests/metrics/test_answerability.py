import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from vqabench.metrics.answerability import answerability_metrics, risk_coverage


def test_answerability_metrics_by_hand():
    # Unanswerable scores 1 - s: [0.1, 0.6, 0.8, 0.4] for y = [0, 0, 1, 1].
    result = answerability_metrics([True, True, False, False], [0.9, 0.4, 0.2, 0.6])
    # Ranked by score: 0.8 (pos) -> P 1, R 1/2; 0.6 (neg); 0.4 (pos) -> P 2/3, R 1.
    assert result["ap_unanswerable"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # Decisions at > 0.5: [0, 1, 1, 0] against [0, 0, 1, 1].
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["f1_unanswerable"] == pytest.approx(0.5)
    # Three of the four (positive, negative) pairs are ordered correctly.
    assert result["auroc"] == pytest.approx(0.75)


def test_answerability_metrics_match_sklearn_on_random_data():
    rng = np.random.default_rng(2)
    for _ in range(10):
        answerable = rng.random(60) < 0.7
        score = np.clip(answerable * 0.3 + rng.random(60) * 0.7, 0, 1)
        result = answerability_metrics(answerable.tolist(), score.tolist())
        y, s = 1 - answerable.astype(int), 1 - score
        assert result["ap_unanswerable"] == pytest.approx(average_precision_score(y, s))
        assert result["f1_unanswerable"] == pytest.approx(f1_score(y, s > 0.5))
        assert result["auroc"] == pytest.approx(roc_auc_score(y, s))
        assert result["accuracy"] == pytest.approx(np.mean((s > 0.5) == y))


def test_threshold_is_strictly_above_one_half():
    result = answerability_metrics([True, False], [0.5, 0.5])
    assert result["accuracy"] == 0.5  # score 0.5 means "answerable" for both
    assert result["f1_unanswerable"] == 0.0


def test_single_class_gives_nan_instead_of_raising():
    all_answerable = answerability_metrics([True, True], [0.9, 0.2])
    assert math.isnan(all_answerable["auroc"])
    assert math.isnan(all_answerable["ap_unanswerable"])
    assert all_answerable["accuracy"] == 0.5
    all_unanswerable = answerability_metrics([False, False], [0.9, 0.2])
    assert math.isnan(all_unanswerable["auroc"])
    assert all_unanswerable["ap_unanswerable"] == pytest.approx(1.0)


def test_risk_coverage_by_hand():
    # Confidence order: 0.95 (0.3), 0.9 (1), 0.8 (0), 0.2 (1).
    result = risk_coverage([1.0, 0.0, 1.0, 0.3], [0.9, 0.8, 0.2, 0.95], points=4)
    assert result["coverage"] == [0.25, 0.5, 0.75, 1.0]
    assert result["risk_accuracy"] == pytest.approx([0.3, 0.65, 1.3 / 3, 2.3 / 4])
    assert result["aurc"] == pytest.approx((0.7 + 0.35 + 1.7 / 3 + 0.425) / 4)


def test_risk_coverage_rounds_counts_up_and_ends_at_full_coverage():
    result = risk_coverage([1.0, 0.0, 0.0], [3, 2, 1], points=2)
    assert result["coverage"] == pytest.approx([2 / 3, 1.0])
    assert result["risk_accuracy"] == pytest.approx([0.5, 1 / 3])
    many = risk_coverage([1.0, 0.0], [0.1, 0.9], points=20)
    assert len(many["coverage"]) == 20
    assert many["risk_accuracy"][0] == 0.0 and many["risk_accuracy"][-1] == 0.5


def test_risk_coverage_ties_keep_input_order():
    result = risk_coverage([1.0, 0.0], [0.5, 0.5], points=2)
    assert result["risk_accuracy"] == [1.0, 0.5]


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: answerability_metrics([], []), "answerable"),
        (lambda: answerability_metrics([True], [0.1, 0.2]), "answerable_score"),
        (lambda: answerability_metrics([True], [float("nan")]), "answerable_score"),
        (lambda: risk_coverage([], []), "scores"),
        (lambda: risk_coverage([1.0], [0.1, 0.2]), "confidence"),
        (lambda: risk_coverage([1.0], [0.1], points=0), "points"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
