"""Question answering samples and batches, shared by classification VQA and answerability.

Every human answer is kept (ten for VQA v2 and VizWiz, with their confidences where the dataset
has them). Training targets come from them by a documented rule (``vqabench.vocab``): a hard
label or soft scores; the consensus answer drives the majority baseline and weighted P/R/F1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vqabench.tasks.base import Batch, CollateContext, Task, most_common


@dataclass(frozen=True)
class QASample:
    """One question about one image with its human answers."""

    id: str
    image: str  # absolute path of the image file
    question: str
    answers: tuple[str, ...]  # every human answer: one for synthetic data, ten for VQA v2 / VizWiz
    question_type: str = ""
    answer_type: str = ""
    answerable: bool = True
    answer_confidences: tuple[str, ...] = ()  # "yes" / "maybe" / "no" per answer, where given

    @property
    def consensus(self) -> str:
        """The most common human answer; ties go to the answer given first."""
        return most_common(self.answers)


@dataclass
class QABatch(Batch):
    """A batch of questions; each distinct image appears once in ``images``.

    ``image_index[i]`` is the row of ``images`` that question ``i`` is about, so a model encodes
    every image once per step however many of its questions the batch holds.
    """

    ids: list[str]
    images: torch.Tensor  # float [U, 3, H, W] in [0, 1], augmented when training
    image_index: torch.Tensor  # long [B]
    questions: list[str]
    labels: torch.Tensor  # long [B]: the hard target's vocabulary index, -1 when none is in vocabulary
    answerable: torch.Tensor  # float [B]: 1.0 answerable, 0.0 not
    question_types: list[str]
    answer_types: list[str]
    # Output of the model's frozen image stem per row of ``images``, when the feature cache is on.
    image_features: torch.Tensor | None = None
    # Soft targets [B, V] (train.targets = "soft"): each answer scored as the VQA metric would.
    soft_labels: torch.Tensor | None = None
    # Cached text-stem output per question (and its token mask), when the model has a text stem.
    text_features: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None


def collate_qa(samples: list[QASample], ctx: CollateContext) -> QABatch:
    """Questions of a batch with their distinct images encoded once, and their targets."""
    unique = list(dict.fromkeys(s.image for s in samples))
    pos = {p: i for i, p in enumerate(unique)}
    images, feats = ctx.images(unique)
    answers = ctx.answers
    soft = None
    if ctx.targets == "soft" and answers is not None:
        rows, cols, vals = [], [], []
        for i, s in enumerate(samples):
            for j, v in answers.soft(s.answers):
                rows.append(i)
                cols.append(j)
                vals.append(v)
        soft = torch.zeros(len(samples), len(answers))
        if vals:
            soft[torch.tensor(rows), torch.tensor(cols)] = torch.tensor(vals)
        soft = soft if ctx.device is None else soft.to(ctx.device, non_blocking=True)
    questions = [s.question for s in samples]
    text, mask = ctx.texts(questions)
    return QABatch(
        ids=[s.id for s in samples],
        images=images,
        image_index=ctx.tensor([pos[s.image] for s in samples], torch.long),
        questions=questions,
        labels=ctx.tensor([answers.hard(s.answers) if answers is not None else -1 for s in samples], torch.long),
        answerable=ctx.tensor([1.0 if s.answerable else 0.0 for s in samples], torch.float32),
        question_types=[s.question_type for s in samples],
        answer_types=[s.answer_type for s in samples],
        image_features=feats,
        soft_labels=soft,
        text_features=text,
        text_mask=mask,
    )


def qa_reference_fields(sample: QASample) -> dict[str, Any]:
    """What a stored prediction line keeps of its sample, so it can be re-scored alone."""
    return {
        "id": sample.id,
        "question": sample.question,
        "answers": list(sample.answers),
        "question_type": sample.question_type,
        "answer_type": sample.answer_type,
        "answerable": sample.answerable,
    }


def majority_answer(samples: Sequence[QASample]) -> str:
    """The most common consensus answer of the training samples (ties: alphabetical)."""
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.consensus] = counts.get(s.consensus, 0) + 1
    return min(counts, key=lambda a: (-counts[a], a))


def check_answers(data: Any) -> None:
    """Every question has a question string and a non-empty tuple of string answers.

    Answers read from JSON may be numbers ("how many?": 2) or null; targets, vocabularies and
    the VQA metric compare strings, so such an answer would never match anything and would fail,
    if at all, deep inside scoring. Raise naming the dataset, split, sample and field instead.
    """
    for split, samples in data.splits.items():
        unlabelled = split in data.unlabelled  # a challenge's test set: no answers to check
        for s in samples:
            where = f"dataset {data.dataset!r} ({data.kind}): split {split!r}, sample {s.id!r}"
            if not isinstance(s.question, str):
                raise ValueError(f"{where}: field 'question' is a {type(s.question).__name__}, not a string")
            answers = s.answers
            if isinstance(answers, str) or not isinstance(answers, (tuple, list)):
                raise ValueError(
                    f"{where}: field 'answers' must be a tuple of strings, got {type(answers).__name__} {answers!r}"
                )
            if not answers and not unlabelled:
                raise ValueError(f"{where}: field 'answers' is empty; every question needs at least one answer")
            for i, answer in enumerate(answers):
                if not isinstance(answer, str):
                    raise ValueError(
                        f"{where}: field 'answers[{i}]' is a {type(answer).__name__} ({answer!r}), not a string; "
                        f"the dataset's loader must give answers as strings (e.g. str(answer))"
                    )


def check_vocab(data: Any) -> None:
    """A question-answering dataset gives a non-empty answer vocabulary of strings without repeats."""
    vocab = data.answer_vocab or []
    if not vocab:
        raise ValueError(f"dataset {data.dataset!r} ({data.kind}) gives no answer vocabulary (TaskData.answer_vocab)")
    wrong = [a for a in vocab if not isinstance(a, str)]
    if wrong:
        raise ValueError(
            f"dataset {data.dataset!r} ({data.kind}): answer_vocab holds a {type(wrong[0]).__name__} "
            f"({wrong[0]!r}); answers are strings"
        )
    if len(set(vocab)) != len(vocab):
        dup = next(a for a in vocab if vocab.count(a) > 1)
        raise ValueError(f"dataset {data.dataset!r} ({data.kind}): answer {dup!r} appears twice in answer_vocab")


def qa_fixture(images: list[str]) -> dict[str, Any]:
    """Four questions on two images (one unanswerable), ten answers on one of them."""
    rows = [
        ("what color is it?", ("red",) * 8 + ("blue",) * 2, "color", True),
        ("what color is it?", ("blue",), "color", True),
        ("is it red?", ("yes",), "yes/no", True),
        ("is it red?", ("no",), "yes/no", False),
    ]
    samples = [
        QASample(f"q{i}", images[i % len(images)], q, a, t, answerable=ok) for i, (q, a, t, ok) in enumerate(rows)
    ]
    return {"splits": {"train": samples, "val": samples, "test": samples}, "answer_vocab": ["red", "blue", "yes", "no"]}


class QATask(Task):
    """What classification VQA and answerability share: samples, collation, references, checks."""

    sample_type = QASample
    group_by_image = True

    def check_data(self, data: Any) -> None:
        super().check_data(data)
        check_answers(data)
        check_vocab(data)

    def fixture(self, images: list[str]) -> dict[str, Any]:
        return qa_fixture(images)

    def collate(self, samples: list[QASample], ctx: CollateContext) -> QABatch:
        return collate_qa(samples, ctx)

    def reference_fields(self, sample: QASample) -> dict[str, Any]:
        return qa_reference_fields(sample)

    def score_options(self, data: Any) -> dict[str, Any]:
        return {"vqa_mode": data.vqa_mode}
