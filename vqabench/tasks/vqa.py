"""Classification VQA: a question about an image, an answer from a vocabulary out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vqabench import metrics
from vqabench.tasks.base import CollateContext, Task
from vqabench.tasks.qa import (
    QABatch,
    QASample,
    check_vocab,
    collate_qa,
    majority_answer,
    qa_fixture,
    qa_reference_fields,
)


class VQATask(Task):
    name = "vqa"
    description = "classification VQA: answer from a vocabulary, official VQA accuracy"
    sample_type = QASample
    prediction_fields = ("answer",)
    primary_metric = "vqa_accuracy"
    metric_names = ("vqa_accuracy", "weighted_precision", "weighted_recall", "weighted_f1")
    columns = (("vqa_accuracy", "Test Acc"),)
    type_prefix = "acc/"
    group_by_image = True

    def check_data(self, data: Any) -> None:
        super().check_data(data)
        check_vocab(data)

    def fixture(self, images: list[str]) -> dict[str, Any]:
        return qa_fixture(images)

    def collate(self, samples: list[QASample], ctx: CollateContext) -> QABatch:
        return collate_qa(samples, ctx)

    def reference_fields(self, sample: QASample) -> dict[str, Any]:
        return qa_reference_fields(sample)

    def score_options(self, data: Any) -> dict[str, Any]:
        return {"vqa_mode": data.vqa_mode}

    def score(self, lines: Sequence[dict[str, Any]], vqa_mode: str = "vqa", **_: Any) -> dict[str, Any]:
        preds = [r["answer"] for r in lines]
        refs = [r["answers"] for r in lines]
        result = metrics.vqa_accuracy(
            preds,
            refs,
            question_types=[r.get("question_type", "") for r in lines],
            answer_types=[r.get("answer_type", "") for r in lines],
            mode=vqa_mode,
        )
        out: dict[str, Any] = {"vqa_accuracy": result["vqa_accuracy"]}
        out.update({f"acc/{t}": v for t, v in sorted(result["per_question_type"].items())})
        out.update({f"acc_answer_type/{t}": v for t, v in sorted(result["per_answer_type"].items())})
        # Weighted P/R/F1 compare against the consensus answer, as report 001 does.
        out.update(metrics.weighted_prf([QASample("", "", "", tuple(a)).consensus for a in refs], preds))
        out["prediction_distribution"] = metrics.prediction_distribution(preds, top=10)
        if lines and all("confidence" in r for r in lines):
            scores = [metrics.vqa_score(p, a, mode=vqa_mode) for p, a in zip(preds, refs)]
            out["risk_coverage"] = metrics.risk_coverage(scores, [r["confidence"] for r in lines])
            out["aurc"] = out["risk_coverage"]["aurc"]
        return out

    def baseline(self, train: Sequence[QASample], data: Any) -> tuple[str, dict[str, Any]]:
        answer = majority_answer(train)
        # A constant confidence, so the baseline's risk-coverage (aurc) never uses the model's own.
        return f'Majority answer ("{answer}")', {"answer": answer, "confidence": 1.0}


TASK = VQATask()
