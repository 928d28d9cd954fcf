"""Metric descriptors and the registry of every scalar metric key the metric functions return.

Keys are snake_case and stable: result files, the leaderboard and the regression gate store
and look them up by these names. Values are unrounded fractions (multiply by 100 only for
display); CIDEr is the one unbounded score (CIDEr-D is scaled by 10).

=========================  =====================================  ==========
key                        returned by                            better
=========================  =====================================  ==========
vqa_accuracy               vqa_accuracy, majority_baseline        higher
accuracy                   accuracy, answerability_metrics        higher
weighted_precision         weighted_prf                           higher
weighted_recall            weighted_prf                           higher
weighted_f1                weighted_prf                           higher
ap_unanswerable            answerability_metrics                  higher
f1_unanswerable            answerability_metrics                  higher
auroc                      answerability_metrics                  higher
aurc                       risk_coverage                          lower
top1                       zero_shot_metrics                      higher
top5                       zero_shot_metrics                      higher
mean_per_class_recall      zero_shot_metrics                      higher
bleu_1                     caption_metrics                        higher
bleu_2                     caption_metrics                        higher
bleu_3                     caption_metrics                        higher
bleu_4                     caption_metrics                        higher
meteor                     caption_metrics (meteor=True)          higher
rouge_l                    caption_metrics                        higher
cider                      caption_metrics                        higher
spice                      caption_metrics (spice=True)           higher
clipscore                  ClipScorer.score                       higher
refclipscore               ClipScorer.score (with references)     higher
=========================  =====================================  ==========

Keys that are not scalar metrics: ``per_question_type`` and ``per_answer_type`` (dicts of
``vqa_accuracy`` by type), ``coverage`` and ``risk_accuracy`` (the risk-coverage curve),
``answer`` (the majority-baseline answer) and ``clipscore_model`` (which CLIP scored).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """A named scalar metric and the direction in which it improves."""

    name: str
    higher_is_better: bool = True
    description: str = ""


def _registry(*metrics: Metric) -> dict[str, Metric]:
    names = [m.name for m in metrics]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate metric names: {duplicates}")
    return {m.name: m for m in metrics}


METRICS: dict[str, Metric] = _registry(
    Metric("vqa_accuracy", description="Official VQA consensus accuracy, min(1, matches / 3)"),
    Metric("accuracy", description="Fraction of exact matches"),
    Metric("weighted_precision", description="Support-weighted precision over answer classes"),
    Metric("weighted_recall", description="Support-weighted recall over answer classes"),
    Metric("weighted_f1", description="Support-weighted F1 over answer classes"),
    Metric("ap_unanswerable", description="Average precision, unanswerable as positive class"),
    Metric("f1_unanswerable", description="F1 at threshold 0.5, unanswerable as positive class"),
    Metric("auroc", description="ROC AUC, unanswerable as positive class"),
    Metric("aurc", higher_is_better=False, description="Area under the risk-coverage curve, mean of (1 - accuracy)"),
    Metric("top1", description="Zero-shot top-1 accuracy"),
    Metric("top5", description="Zero-shot top-5 accuracy (needs at least 5 classes)"),
    Metric("mean_per_class_recall", description="Recall averaged over classes present"),
    Metric("bleu_1", description="Corpus BLEU-1 (pycocoevalcap, closest reference length)"),
    Metric("bleu_2", description="Corpus BLEU-2 (pycocoevalcap, closest reference length)"),
    Metric("bleu_3", description="Corpus BLEU-3 (pycocoevalcap, closest reference length)"),
    Metric("bleu_4", description="Corpus BLEU-4 (pycocoevalcap, closest reference length)"),
    Metric("meteor", description="METEOR 1.5 (pycocoevalcap)"),
    Metric("rouge_l", description="ROUGE-L with beta 1.2 (pycocoevalcap)"),
    Metric("cider", description="CIDEr-D, x10 scale, unbounded (pycocoevalcap)"),
    Metric("spice", description="SPICE F-score (pycocoevalcap, optional)"),
    Metric("clipscore", description="CLIP-S = 2.5 * max(cos, 0), Hessel et al. 2021"),
    Metric("refclipscore", description="Harmonic mean of CLIP-S and max reference cosine"),
)


def get_metric(name: str) -> Metric:
    """Return the registered metric called ``name``; an unknown name raises KeyError with suggestions."""
    try:
        return METRICS[name]
    except KeyError:
        close = difflib.get_close_matches(name, METRICS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown metric {name!r}{hint}") from None
