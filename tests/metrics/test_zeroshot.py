import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from vqabench.metrics.zeroshot import class_embeddings, zero_shot_logits, zero_shot_metrics

LOGITS = np.array(
    [
        [3, 1, 2, 0, 0, 0],  # label 0: top-1 hit
        [0, 5, 1, 0, 0, 0],  # label 2: second, a top-5 hit only
        [1, 2, 3, 4, 5, 6],  # label 0: last, missed
        [6, 5, 4, 3, 2, 1],  # label 5: last, missed
    ],
    dtype=float,
)
LABELS = [0, 2, 0, 5]


def test_zero_shot_metrics_by_hand():
    result = zero_shot_metrics(LOGITS, LABELS)
    assert result["top1"] == 0.25
    assert result["top5"] == 0.5
    # Class 0 recall 1/2, class 2 recall 0, class 5 recall 0; classes 1, 3, 4 are absent.
    assert result["mean_per_class_recall"] == pytest.approx(0.5 / 3)


def test_mean_per_class_recall_matches_sklearn_balanced_accuracy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(200, 7))
    labels = rng.integers(0, 6, size=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that class 6 is predicted but never true
        expected = balanced_accuracy_score(labels, logits.argmax(axis=1))
    assert zero_shot_metrics(logits, labels)["mean_per_class_recall"] == pytest.approx(expected)


def test_top5_is_omitted_with_fewer_than_five_classes():
    result = zero_shot_metrics(np.array([[0.1, 0.9], [0.8, 0.2]]), [1, 1])
    assert "top5" not in result
    assert result == {"top1": 0.5, "mean_per_class_recall": 0.5}


@pytest.mark.parametrize(
    ("logits", "labels", "name"),
    [
        (np.zeros((0, 3)), [], "logits"),
        (np.zeros(3), [0], "logits"),
        (np.zeros((2, 3)), [0], "labels"),
        (np.zeros((2, 3)), [0, 3], "labels"),
    ],
)
def test_zero_shot_metrics_bad_input(logits, labels, name):
    with pytest.raises(ValueError, match=name):
        zero_shot_metrics(logits, labels)


TOY_TEXT = {
    "a cat": [3.0, 4.0],
    "the cat": [1.0, 0.0],
    "a dog": [0.0, 2.0],
    "the dog": [7.0, 0.0],
}


def toy_encode_text(prompts):
    toy_encode_text.calls.append(list(prompts))
    return torch.tensor([TOY_TEXT[p] for p in prompts])


toy_encode_text.calls = []


def test_class_embeddings_normalise_each_prompt_before_averaging():
    toy_encode_text.calls.clear()
    matrix = class_embeddings(toy_encode_text, ["cat", "dog"], ["a {}", "the {}"])
    assert toy_encode_text.calls == [["a cat", "the cat"], ["a dog", "the dog"]]
    # cat: mean of (0.6, 0.8) and (1, 0) is (0.8, 0.4); without the first normalisation it would be (2, 2).
    expected = torch.tensor([[0.8, 0.4], [0.5, 0.5]])
    expected = expected / expected.norm(dim=-1, keepdim=True)
    assert torch.allclose(matrix, expected)
    assert matrix.shape == (2, 2)


def test_zero_shot_logits_are_scaled_cosines():
    classes = torch.tensor([[0.8, 0.4], [0.5, 0.5]])
    classes = classes / classes.norm(dim=-1, keepdim=True)
    logits = zero_shot_logits(torch.tensor([[2.0, 0.0], [0.0, 3.0]]), classes)
    expected = 100 * torch.tensor([[0.8, 0.5], [0.4, 0.5]]) / torch.tensor([[0.8, 0.4], [0.5, 0.5]]).norm(dim=-1)
    assert torch.allclose(logits, expected)
    assert torch.allclose(zero_shot_logits(torch.tensor([[1.0, 0.0]]), classes, scale=1.0), classes[:, 0][None])


def test_class_embeddings_and_logits_bad_input():
    with pytest.raises(ValueError, match="class_names"):
        class_embeddings(toy_encode_text, [], ["a {}"])
    with pytest.raises(ValueError, match="templates"):
        class_embeddings(toy_encode_text, ["cat"], [])
    with pytest.raises(ValueError, match="class_matrix"):
        zero_shot_logits(torch.zeros(2, 3), torch.zeros(4, 2))
