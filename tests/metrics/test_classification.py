import random

import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from vqabench.metrics.classification import (
    accuracy,
    majority_baseline,
    prediction_distribution,
    weighted_prf,
)


def test_weighted_prf_by_hand():
    # a: P 1/2, R 1/2, F 1/2, support 2; b: P 1/2, R 1, F 2/3, support 1; c: never predicted, 0.
    result = weighted_prf(["a", "a", "b", "c"], ["a", "b", "b", "a"])
    assert result["weighted_precision"] == pytest.approx((2 * 0.5 + 0.5 + 0) / 4)
    assert result["weighted_recall"] == pytest.approx((2 * 0.5 + 1 + 0) / 4)
    assert result["weighted_f1"] == pytest.approx((2 * 0.5 + 2 / 3 + 0) / 4)


def test_weighted_prf_and_accuracy_match_sklearn_on_random_labels():
    rng = random.Random(1)
    labels = ["yes", "no", "2", "red", "blue", "dog"]
    for _ in range(20):
        y_true = [rng.choice(labels) for _ in range(50)]
        y_pred = [rng.choice(labels[:4]) for _ in range(50)]
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="weighted", zero_division=0)
        result = weighted_prf(y_true, y_pred)
        assert result == pytest.approx({"weighted_precision": p, "weighted_recall": r, "weighted_f1": f})
        assert accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred))


def test_accuracy_by_hand():
    assert accuracy(["a", "a", "b", "c"], ["a", "b", "b", "a"]) == 0.5


def test_prediction_distribution_most_common_first_ties_by_string():
    predictions = ["b", "a", "b", "c", "a", "d", "e", "e", "e"]
    assert prediction_distribution(predictions) == [("e", 3), ("a", 2), ("b", 2), ("c", 1), ("d", 1)]
    assert prediction_distribution(predictions, top=2) == [("e", 3), ("a", 2)]


def test_majority_baseline_scores_the_most_frequent_training_answer():
    result = majority_baseline(
        ["yes", "no", "yes", "2"],
        [["yes"] * 10, ["no"] * 10, ["yes"] * 3 + ["no"] * 7],
    )
    assert result["answer"] == "yes"
    assert result["vqa_accuracy"] == pytest.approx((1.0 + 0.0 + 0.9) / 3)


def test_majority_baseline_breaks_ties_by_string_and_honours_mode():
    assert majority_baseline(["yes", "no"], [["no"] * 10])["answer"] == "no"
    vizwiz = majority_baseline(["Yes."], [["Yes."] * 9 + ["no"]], mode="vizwiz")
    assert vizwiz["vqa_accuracy"] == 0.0  # the prediction is normalised to "yes", references are not


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: weighted_prf([], []), "y_true"),
        (lambda: weighted_prf(["a"], ["a", "b"]), "y_pred"),
        (lambda: accuracy([], []), "y_true"),
        (lambda: accuracy(["a", "b"], ["a"]), "y_pred"),
        (lambda: prediction_distribution([]), "predictions"),
        (lambda: prediction_distribution(["a"], top=0), "top"),
        (lambda: majority_baseline([], [["a"]]), "train_answers"),
        (lambda: majority_baseline(["a"], []), "eval_answers"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
