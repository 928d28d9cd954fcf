"""Answerability: is a question about an image answerable (VizWiz style); answers where given."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from vqabench import metrics
from vqabench.tasks.qa import QASample, QATask, majority_answer


class AnswerabilityTask(QATask):
    name = "answerability"
    description = "answerability: score that a question can be answered; unanswerable is the positive class"
    prediction_fields = ("answerable_score",)
    primary_metric = "ap_unanswerable"
    metric_names = ("ap_unanswerable", "f1_unanswerable", "auroc", "accuracy")
    columns = (
        ("ap_unanswerable", "AP (unanswerable)"),
        ("auroc", "AUROC"),
        ("f1_unanswerable", "F1 @0.5"),
        ("accuracy", "Acc @0.5"),
        ("vqa_accuracy", "VQA Acc"),
        ("aurc", "AURC"),
    )

    def score(self, lines: Sequence[dict[str, Any]], vqa_mode: str = "vizwiz", **_: Any) -> dict[str, Any]:
        scored = metrics.answerability_metrics(
            [bool(r["answerable"]) for r in lines], [float(r["answerable_score"]) for r in lines]
        )
        # AP and AUROC are NaN (undefined) on a split with one class only; records are strict JSON,
        # so an undefined metric is recorded as null (a table's "–", a gate's NO METRIC).
        out: dict[str, Any] = {k: None if math.isnan(v) else v for k, v in scored.items()}
        if lines and all("answer" in r for r in lines):
            qa = metrics.vqa_accuracy([r["answer"] for r in lines], [r["answers"] for r in lines], mode=vqa_mode)
            out["vqa_accuracy"] = qa["vqa_accuracy"]
            scores = [metrics.vqa_score(r["answer"], r["answers"], mode=vqa_mode) for r in lines]
            # Answer only where the model is most sure the question is answerable.
            out["risk_coverage"] = metrics.risk_coverage(scores, [float(r["answerable_score"]) for r in lines])
            out["aurc"] = out["risk_coverage"]["aurc"]
        return out

    def plots(self, records: Sequence[dict[str, Any]]) -> list[tuple[str, str, Any]]:
        curves = [r for r in records if "risk_coverage" in r["final"].get("test", {})]
        if not curves:
            return []

        def draw(ax: Any) -> None:
            for r in curves:
                rc = r["final"]["test"]["risk_coverage"]
                label = f"{r['model']} (seed {r['seed']}), AURC {rc['aurc']:.3f}"
                ax.plot(rc["coverage"], rc["risk_accuracy"], marker="o", ms=3, label=label)
            ax.set(
                xlabel="coverage (most surely answerable first)",
                ylabel="VQA accuracy of the answered",
                title="Risk-coverage (test)",
            )

        return [("risk-coverage", "VQA accuracy when answering only the most surely answerable questions", draw)]

    def baseline(self, train: Sequence[QASample], data: Any) -> tuple[str, dict[str, Any]]:
        # The prior: every question gets the training rate of answerable questions (AP = positive rate).
        rate = sum(s.answerable for s in train) / max(1, len(train))
        return f"Prior (answerable {rate:.2f})", {"answerable_score": rate, "answer": majority_answer(train)}


TASK = AnswerabilityTask()
