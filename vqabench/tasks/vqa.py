"""Classification VQA: a question about an image, an answer from a vocabulary out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vqabench import metrics
from vqabench.tasks.qa import QASample, QATask, majority_answer


class VQATask(QATask):
    name = "vqa"
    description = "classification VQA: answer from a vocabulary, official VQA accuracy"
    prediction_fields = ("answer",)
    primary_metric = "vqa_accuracy"
    metric_names = ("vqa_accuracy", "weighted_precision", "weighted_recall", "weighted_f1")
    columns = (("vqa_accuracy", "Test Acc"),)
    answer_type_prefix = "acc_answer_type/"
    type_prefix = "acc/"

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
        # A dataset without question (or answer) types (VizWiz has no question types) gets no such keys.
        out.update({f"acc/{t}": v for t, v in sorted(result["per_question_type"].items()) if t})
        out.update({f"acc_answer_type/{t}": v for t, v in sorted(result["per_answer_type"].items()) if t})
        # Weighted P/R/F1 compare against the consensus answer, as report 001 does.
        out.update(metrics.weighted_prf([QASample("", "", "", tuple(a)).consensus for a in refs], preds))
        out["prediction_distribution"] = metrics.prediction_distribution(preds, top=10)
        if lines and all("confidence" in r for r in lines):
            scores = [metrics.vqa_score(p, a, mode=vqa_mode) for p, a in zip(preds, refs)]
            out["risk_coverage"] = metrics.risk_coverage(scores, [r["confidence"] for r in lines])
            out["aurc"] = out["risk_coverage"]["aurc"]
        return out

    def columns_for(self, records: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
        """Test accuracy, then accuracy per answer type (report 001 and 002: yes/no, number, other, ...)."""
        types = sorted(
            {k for r in records for k in r["final"].get("test", {}) if k.startswith(self.answer_type_prefix)}
        )
        return [*self.columns, *((k, f"Acc [{k[len(self.answer_type_prefix) :]}]") for k in types)]

    def sections(self, records: Sequence[dict[str, Any]]) -> list[str]:
        """Report 001's per-model "Metrics | Values" table and its prediction distribution (table II),
        one collapsible block per model (lowest seed), for models whose records carry the weighted
        metrics; two-stage recipes add the validation accuracy after each stage (tables VIII, IX)."""
        shown: dict[str, dict[str, Any]] = {}
        for r in sorted(records, key=lambda r: r.get("seed", 0)):
            if "weighted_f1" in r["final"].get("test", {}):
                shown.setdefault(r["model"], r)
        lines: list[str] = []
        for model, r in sorted(shown.items(), key=lambda kv: (-kv[1]["final"]["test"]["vqa_accuracy"], kv[0])):
            lines += _metrics_block(model, r)
        return lines

    def baseline(self, train: Sequence[QASample], data: Any) -> tuple[str, dict[str, Any]]:
        answer = majority_answer(train)
        # A constant confidence, so the baseline's risk-coverage (aurc) never uses the model's own.
        return f'Majority answer ("{answer}")', {"answer": answer, "confidence": 1.0}


TASK = VQATask()


def _metrics_block(model: str, r: dict[str, Any]) -> list[str]:
    test = r["final"]["test"]
    best = next((h.get("val", {}) for h in r.get("history", []) if h["epoch"] == r.get("best_epoch")), {})
    seconds = (r.get("timing") or {}).get("epoch_seconds") or []
    rows = [
        ("Accuracy (validation, best epoch)", _fmt(best.get("vqa_accuracy"))),
        ("Accuracy (training sample, best epoch)", _fmt(best.get("train_vqa_accuracy"))),
        ("Accuracy (test)", _fmt(test.get("vqa_accuracy"))),
        ("Precision (test, weighted)", _fmt(test.get("weighted_precision"))),
        ("Recall (test, weighted)", _fmt(test.get("weighted_recall"))),
        ("F1-score (test, weighted)", _fmt(test.get("weighted_f1"))),
    ]
    rows += [
        (f"Accuracy (validation) after stage {s['name']}", _fmt(s.get("val", {}).get("vqa_accuracy")))
        for s in r.get("stages") or []
        if len(r.get("stages") or []) > 1
    ]
    rows += [
        ("Time per epoch", f"{sum(seconds) / len(seconds):.1f} s" if seconds else "–"),
        ("Total time", f"{r['timing']['total_seconds']:.1f} s"),
    ]
    dist = test.get("prediction_distribution") or []
    name = r["display_name"] + (f" [{model.split('@', 1)[1]}]" if "@" in model else "")
    lines = [
        f"<details><summary>{name}: metrics and prediction distribution (seed {r['seed']})</summary>",
        "",
        "| Metrics | Values |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        "| Predicted answer (test) | Count |",
        "| --- | --- |",
        *(f"| {a} | {n} |" for a, n in dist),
        "",
        "</details>",
        "",
    ]
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"
