"""Zero-shot classification: an image and its class label; class names and prompt templates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vqabench import metrics


@dataclass(frozen=True)
class ImageSample:
    """One labelled image."""

    id: str
    image: str  # absolute path of the image file
    label: int  # index into TaskData.class_names


@dataclass
class ImageBatch:
    ids: list[str]
    images: torch.Tensor  # float [B, 3, H, W] in [0, 1]
    labels: torch.Tensor  # long [B]
    image_features: torch.Tensor | None = None  # frozen-stem output per image, when cached

    def to(self, device: torch.device) -> ImageBatch:
        feats = None if self.image_features is None else self.image_features.to(device, non_blocking=True)
        return ImageBatch(
            self.ids, self.images.to(device, non_blocking=True), self.labels.to(device, non_blocking=True), feats
        )


def reference_fields(sample: ImageSample) -> dict[str, Any]:
    return {"id": sample.id, "label": sample.label}


def score_zeroshot(records: Sequence[dict[str, Any]], num_classes: int) -> dict[str, Any]:
    """Top-1, top-5 and mean per-class recall from stored ``logits`` lines."""
    logits = np.asarray([r["logits"] for r in records], dtype=np.float64).reshape(len(records), num_classes)
    return dict(metrics.zero_shot_metrics(logits, [int(r["label"]) for r in records]))
