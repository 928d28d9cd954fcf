"""A task kind registered by a plugin: multiple-choice matching of per-sample candidate texts.

Each sample is an image and a few candidate descriptions, one of them right. A model predicts
the index of its choice; the kind scores the fraction chosen right. Everything the core needs
(collation, prediction fields, scoring, baseline, leaderboard columns) is on ``TASK``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vqabench.metrics.base import Metric
from vqabench.tasks.base import Batch, CollateContext, Task


@dataclass(frozen=True)
class ChoiceSample:
    id: str
    image: str
    candidates: tuple[str, ...]
    answer: int  # index of the right candidate


@dataclass
class ChoiceBatch(Batch):
    ids: list[str]
    images: torch.Tensor
    candidates: list[list[str]]
    answers: torch.Tensor  # long [B]
    image_features: torch.Tensor | None = None


class MultipleChoiceTask(Task):
    name = "multiple-choice"
    description = "pick the right one of a sample's candidate texts"
    sample_type = ChoiceSample
    prediction_fields = ("choice",)
    primary_metric = "mc_accuracy"
    metric_names = ("mc_accuracy",)
    extra_metrics = {"mc_accuracy": Metric("mc_accuracy", description="fraction of samples whose choice is right")}
    columns = (("mc_accuracy", "Accuracy"),)

    def fixture(self, images: list[str]) -> dict[str, Any]:
        candidates = ("a red square", "a blue square")
        samples = [ChoiceSample(f"m{i}", images[i % len(images)], candidates, i % 2) for i in range(4)]
        return {"splits": {"train": samples, "val": samples, "test": samples}}

    def collate(self, samples: list[ChoiceSample], ctx: CollateContext) -> ChoiceBatch:
        images, feats = ctx.images([s.image for s in samples])
        answers = ctx.tensor([s.answer for s in samples], torch.long)
        return ChoiceBatch([s.id for s in samples], images, [list(s.candidates) for s in samples], answers, feats)

    def reference_fields(self, sample: ChoiceSample) -> dict[str, Any]:
        return {"id": sample.id, "candidates": list(sample.candidates), "answer": sample.answer}

    def score(self, lines: Sequence[dict[str, Any]], **_: Any) -> dict[str, Any]:
        return {"mc_accuracy": sum(int(r["choice"]) == int(r["answer"]) for r in lines) / len(lines)}

    def baseline(self, train: Sequence[ChoiceSample], data: Any) -> tuple[str, dict[str, Any]]:
        return "Always the first candidate", {"choice": 0}


TASK = MultipleChoiceTask()
