"""Zero-shot classification: an image and its class label; class names and prompt templates."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vqabench import metrics
from vqabench.tasks.base import Batch, CollateContext, Task


@dataclass(frozen=True)
class ImageSample:
    """One labelled image."""

    id: str
    image: str  # absolute path of the image file
    label: int  # index into TaskData.class_names


@dataclass
class ImageBatch(Batch):
    ids: list[str]
    images: torch.Tensor  # float [B, 3, H, W] in [0, 1]
    labels: torch.Tensor  # long [B]
    image_features: torch.Tensor | None = None  # frozen-stem output per image, when cached


class ZeroShotTask(Task):
    name = "zeroshot"
    description = "zero-shot classification: logits over class names"
    sample_type = ImageSample
    prediction_fields = ("logits",)
    primary_metric = "top1"
    metric_names = ("top1", "mean_per_class_recall")  # top5 too, with at least five classes
    columns = (("top1", "Top-1"), ("top5", "Top-5"), ("mean_per_class_recall", "Mean per-class"))

    def check_data(self, data: Any) -> None:
        super().check_data(data)
        names = data.class_names or []
        if not names or not data.templates:
            raise ValueError(f"dataset {data.dataset!r} (zeroshot) gives no class_names or no prompt templates")
        for split, samples in data.splits.items():
            bad = next((s for s in samples if not 0 <= s.label < len(names)), None)
            if bad is not None:
                raise ValueError(
                    f"dataset {data.dataset!r} (zeroshot): sample {bad.id!r} of split {split!r} has label {bad.label}, "
                    f"outside the {len(names)} class names"
                )

    def fixture(self, images: list[str]) -> dict[str, Any]:
        samples = [ImageSample(f"z{i}", images[i % len(images)], i % 2) for i in range(4)]
        splits = {"train": samples, "val": samples, "test": samples}
        return {"splits": splits, "class_names": ["red", "blue"], "templates": ["a {} image"]}

    def collate(self, samples: list[ImageSample], ctx: CollateContext) -> ImageBatch:
        images, feats = ctx.images([s.image for s in samples])
        return ImageBatch([s.id for s in samples], images, ctx.tensor([s.label for s in samples], torch.long), feats)

    def reference_fields(self, sample: ImageSample) -> dict[str, Any]:
        return {"id": sample.id, "label": sample.label}

    def score_options(self, data: Any) -> dict[str, Any]:
        return {"num_classes": len(data.class_names) if data.class_names else None}

    def score(self, lines: Sequence[dict[str, Any]], num_classes: int | None = None, **_: Any) -> dict[str, Any]:
        num_classes = num_classes or len(lines[0]["logits"])
        logits = np.asarray([r["logits"] for r in lines], dtype=np.float64).reshape(len(lines), num_classes)
        return dict(metrics.zero_shot_metrics(logits, [int(r["label"]) for r in lines]))

    def baseline(self, train: Sequence[ImageSample], data: Any) -> tuple[str, dict[str, Any]] | None:
        if not train or not data.class_names:
            return None
        counts = Counter(s.label for s in train)
        label = min(counts, key=lambda c: (-counts[c], c))
        # Classes ranked by training frequency, so top-5 is the five most frequent classes.
        rank = {c: -(counts.get(c, 0) + (1 if c == label else 0)) for c in range(len(data.class_names))}
        logits = [float(-rank[c]) for c in range(len(data.class_names))]
        return f'Most frequent class ("{data.class_names[label]}")', {"logits": logits}


TASK = ZeroShotTask()
