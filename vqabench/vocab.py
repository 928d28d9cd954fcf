"""Answer vocabularies and training targets from every human answer.

Rules, documented once here and named in records:

- **Vocabulary** (``answer_vocabulary``): ``all`` keeps every answer given in the training split;
  ``top`` keeps the ``top_k`` most frequent with at least ``min_count`` occurrences. Answers are
  counted over every human answer of every training question, ordered by frequency (ties
  alphabetical), so index 0 is the most frequent answer. ``confident`` (report 002, VizWiz) takes
  one answer per training question, the most frequent among those given with confidence "yes"
  (ties: the one given first; a question without one gives none), ordered by how many questions
  gave it (ties alphabetical).
- **Hard target** (``hard_label``): the most common in-vocabulary answer among a question's human
  answers; ties go to the answer earlier in the vocabulary (the more frequent over training).
  -1 when no answer is in the vocabulary (the loss then ignores the question).
- **Soft targets** (``soft_scores``): every vocabulary answer that occurs among the human answers,
  scored exactly as the official VQA metric would score it as a prediction (min(1, matches / 3)
  averaged over the ten leave-one-out subsets); every other answer scores 0.
- **Coverage** (``coverage``): the fraction of questions whose best achievable score with this
  vocabulary is 1, i.e. the accuracy ceiling of a classifier over it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from vqabench.metrics import vqa_score


def answer_vocabulary(
    samples: Sequence[Any], rule: str = "all", top_k: int | None = None, min_count: int = 1
) -> list[str]:
    """The answer vocabulary of the training ``samples`` by ``rule`` ("all", "top" or "confident")."""
    if rule == "confident":
        counts = Counter(a for s in samples if (a := confident_answer(s)) is not None)
        return sorted(counts, key=lambda a: (-counts[a], a))
    counts = Counter(a for s in samples for a in s.answers)
    ordered = sorted(counts, key=lambda a: (-counts[a], a))
    if rule == "all":
        return ordered
    if rule == "top":
        kept = [a for a in ordered if counts[a] >= min_count]
        return kept[:top_k] if top_k else kept
    raise ValueError(f"unknown vocabulary rule {rule!r}; choose all, top or confident")


def confident_answer(sample: Any) -> str | None:
    """The most frequent of a question's answers given with confidence "yes" (ties: first given)."""
    confidences = getattr(sample, "answer_confidences", ()) or ()
    sure = [a for a, c in zip(sample.answers, confidences) if c == "yes"]
    if not sure:
        return None
    counts = Counter(sure)
    return max(dict.fromkeys(sure), key=lambda a: counts[a])  # max keeps the first of equal counts


def describe_rule(rule: str = "all", top_k: int | None = None, min_count: int = 1) -> str:
    """The rule as a record shows it."""
    if rule == "all":
        return "all training answers"
    if rule == "confident":
        return 'per training question its most frequent answer given with confidence "yes" (report 002)'
    return f"top {top_k or 'all'} training answers with count >= {min_count}"


class AnswerTargets:
    """Hard and soft targets over one vocabulary, memoised per distinct answer set."""

    def __init__(self, vocab: Sequence[str], mode: str = "vqa") -> None:
        self.vocab = list(vocab)
        self.index = {a: i for i, a in enumerate(self.vocab)}
        self.mode = mode
        self._hard: dict[tuple[str, ...], int] = {}
        self._soft: dict[tuple[str, ...], list[tuple[int, float]]] = {}

    def __len__(self) -> int:
        return len(self.vocab)

    def hard(self, answers: Sequence[str]) -> int:
        """The hard target (see the module docstring); -1 when no answer is in the vocabulary."""
        if len(answers) == 1:
            return self.index.get(answers[0], -1)
        key = tuple(answers)
        if key not in self._hard:
            counts = Counter(a for a in answers if a in self.index)
            self._hard[key] = self.index[min(counts, key=lambda a: (-counts[a], self.index[a]))] if counts else -1
        return self._hard[key]

    def soft(self, answers: Sequence[str]) -> list[tuple[int, float]]:
        """(vocabulary index, official VQA score) of each in-vocabulary answer scoring above 0."""
        key = tuple(answers)
        if key not in self._soft:
            out = []
            for a in dict.fromkeys(answers):
                if a in self.index:
                    score = vqa_score(a, list(answers), mode=self.mode)
                    if score > 0:
                        out.append((self.index[a], float(score)))
            self._soft[key] = out
        return self._soft[key]


def coverage(samples: Sequence[Any], vocab: Sequence[str], mode: str = "vqa") -> float | None:
    """Fraction of ``samples`` whose best achievable VQA score with ``vocab`` is 1."""
    if not samples:
        return None
    targets = AnswerTargets(vocab, mode)
    full = sum(1 for s in samples if any(v >= 1.0 - 1e-9 for _, v in targets.soft(s.answers)))
    return full / len(samples)
