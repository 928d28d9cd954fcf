"""Classification VQA and answerability: samples, batches and scoring.

Both kinds share one sample type: answerability only adds the ``answerable`` flag (VizWiz style),
and a classification-VQA dataset keeps only answerable questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vqabench import metrics


@dataclass(frozen=True)
class QASample:
    """One question about one image with its human answers."""

    id: str
    image: str  # absolute path of the image file
    question: str
    answers: tuple[str, ...]  # one for synthetic data, ten for VQA v2 / VizWiz
    question_type: str = ""
    answer_type: str = ""
    answerable: bool = True


@dataclass
class QABatch:
    """A batch of questions; each distinct image appears once in ``images``.

    ``image_index[i]`` is the row of ``images`` that question ``i`` is about, so a model encodes
    every image once per step however many of its questions the batch holds.
    """

    ids: list[str]
    images: torch.Tensor  # float [U, 3, H, W] in [0, 1], augmented when training
    image_index: torch.Tensor  # long [B]
    questions: list[str]
    labels: torch.Tensor  # long [B]: index into the answer vocabulary, -1 when out of vocabulary
    answerable: torch.Tensor  # float [B]: 1.0 answerable, 0.0 not
    question_types: list[str]
    # Output of the model's frozen image stem per row of ``images``, when the feature cache is on.
    image_features: torch.Tensor | None = None

    def to(self, device: torch.device) -> QABatch:
        return QABatch(
            ids=self.ids,
            images=self.images.to(device, non_blocking=True),
            image_index=self.image_index.to(device, non_blocking=True),
            questions=self.questions,
            labels=self.labels.to(device, non_blocking=True),
            answerable=self.answerable.to(device, non_blocking=True),
            question_types=self.question_types,
            image_features=None if self.image_features is None else self.image_features.to(device, non_blocking=True),
        )


def majority_answer(samples: Sequence[QASample]) -> str:
    """The most common first human answer of the training samples (ties: alphabetical)."""
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.answers[0]] = counts.get(s.answers[0], 0) + 1
    return min(counts, key=lambda a: (-counts[a], a))


def reference_fields(sample: QASample) -> dict[str, Any]:
    """What a stored prediction line keeps of its sample, so it can be re-scored alone."""
    return {
        "id": sample.id,
        "question": sample.question,
        "answers": list(sample.answers),
        "question_type": sample.question_type,
        "answer_type": sample.answer_type,
        "answerable": sample.answerable,
    }


def score_vqa(records: Sequence[dict[str, Any]], mode: str = "vqa") -> dict[str, Any]:
    """Metrics of classification VQA from stored prediction lines (``answer`` vs ``answers``)."""
    preds = [r["answer"] for r in records]
    refs = [r["answers"] for r in records]
    result = metrics.vqa_accuracy(
        preds,
        refs,
        question_types=[r.get("question_type", "") for r in records],
        answer_types=[r.get("answer_type", "") for r in records],
        mode=mode,
    )
    out: dict[str, Any] = {"vqa_accuracy": result["vqa_accuracy"]}
    out.update({f"acc/{t}": v for t, v in sorted(result["per_question_type"].items())})
    out.update({f"acc_answer_type/{t}": v for t, v in sorted(result["per_answer_type"].items())})
    # Weighted P/R/F1 compare against the first (consensus) answer, as report 001 does.
    out.update(metrics.weighted_prf([r[0] for r in refs], preds))
    out["prediction_distribution"] = metrics.prediction_distribution(preds, top=10)
    if all("confidence" in r for r in records) and records:
        scores = [metrics.vqa_score(p, a, mode=mode) for p, a in zip(preds, refs)]
        out["risk_coverage"] = metrics.risk_coverage(scores, [r["confidence"] for r in records])
        out["aurc"] = out["risk_coverage"]["aurc"]
    return out


def score_answerability(records: Sequence[dict[str, Any]], mode: str = "vizwiz") -> dict[str, Any]:
    """Answerability metrics (unanswerable = positive class), plus VQA accuracy when answers exist."""
    out: dict[str, Any] = dict(
        metrics.answerability_metrics(
            [bool(r["answerable"]) for r in records], [float(r["answerable_score"]) for r in records]
        )
    )
    if records and all("answer" in r for r in records):
        qa = metrics.vqa_accuracy([r["answer"] for r in records], [r["answers"] for r in records], mode=mode)
        out["vqa_accuracy"] = qa["vqa_accuracy"]
        scores = [metrics.vqa_score(r["answer"], r["answers"], mode=mode) for r in records]
        # Answer only where the model is most sure the question is answerable.
        out["risk_coverage"] = metrics.risk_coverage(scores, [float(r["answerable_score"]) for r in records])
        out["aurc"] = out["risk_coverage"]["aurc"]
    return out
