"""Zero-shot classification with CLIP-family models (openai/CLIP notebook, CLIP_benchmark)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

_TOP_K = 5


def zero_shot_metrics(logits: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
    """Return {"top1", "top5", "mean_per_class_recall"}; "top5" is omitted when there are fewer than 5 classes.

    Mean per-class recall averages over the classes present in ``labels`` (scikit-learn's
    balanced accuracy, as CLIP_benchmark reports it).
    """
    scores = np.asarray(logits)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"logits must be a non-empty [N, C] array, got shape {scores.shape}")
    targets = np.asarray(labels)
    if targets.shape != (scores.shape[0],):
        raise ValueError(f"labels has {targets.size} items but logits has {scores.shape[0]} rows")
    n_classes = scores.shape[1]
    if targets.min() < 0 or targets.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}) to index the logits columns")
    # A stable sort makes ties resolve to the lower class index, like argmax.
    ranked = np.argsort(-scores, axis=1, kind="stable")
    predicted = ranked[:, 0]
    result = {"top1": float(np.mean(predicted == targets))}
    if n_classes >= _TOP_K:
        result["top5"] = float(np.mean((ranked[:, :_TOP_K] == targets[:, None]).any(axis=1)))
    recalls = [float(np.mean(predicted[targets == c] == c)) for c in np.unique(targets)]
    result["mean_per_class_recall"] = float(np.mean(recalls))
    return result


def attribute_accuracy(logits: np.ndarray, labels: Sequence[int], values: Sequence[str]) -> float:
    """Return the fraction of rows whose predicted class has the same attribute value as the true class.

    ``values[c]`` is the attribute value (e.g. the colour) of class ``c``. The predicted class is
    the argmax of a row; ties go to the lower class index, as in ``zero_shot_metrics``.
    """
    scores = np.asarray(logits)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"logits must be a non-empty [N, C] array, got shape {scores.shape}")
    targets = np.asarray(labels)
    if targets.shape != (scores.shape[0],):
        raise ValueError(f"labels has {targets.size} items but logits has {scores.shape[0]} rows")
    if len(values) != scores.shape[1]:
        raise ValueError(f"values has {len(values)} items but logits has {scores.shape[1]} classes")
    if targets.min() < 0 or targets.max() >= scores.shape[1]:
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}) to index the logits columns")
    predicted = np.argmax(scores, axis=1)
    return float(np.mean([values[p] == values[t] for p, t in zip(predicted, targets)]))


def class_embeddings(
    encode_text: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
) -> torch.Tensor:
    """Return the [C, D] unit-norm class matrix: per class, the normalised mean of normalised prompt embeddings.

    Each template holds one ``{}`` that ``template.format(name)`` fills with the class name.
    """
    if len(class_names) == 0:
        raise ValueError("class_names must not be empty")
    if len(templates) == 0:
        raise ValueError("templates must not be empty")
    rows = []
    for name in class_names:
        prompts = [template.format(name) for template in templates]
        features = F.normalize(encode_text(prompts).float(), dim=-1)
        rows.append(F.normalize(features.mean(dim=0), dim=-1))
    return torch.stack(rows)


def zero_shot_logits(image_features: torch.Tensor, class_matrix: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """Return [N, C] logits: ``scale`` times the cosine of each image with each class embedding."""
    if image_features.ndim != 2 or class_matrix.ndim != 2:
        raise ValueError("image_features and class_matrix must both be 2-D [rows, D] tensors")
    if image_features.shape[1] != class_matrix.shape[1]:
        raise ValueError(
            f"image_features has dimension {image_features.shape[1]} but class_matrix has {class_matrix.shape[1]}"
        )
    images = F.normalize(image_features.float(), dim=-1)
    classes = F.normalize(class_matrix.float(), dim=-1)
    return scale * images @ classes.T
