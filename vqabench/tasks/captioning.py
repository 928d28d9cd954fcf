"""Captioning: an image and its reference captions; a generated caption out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vqabench import metrics
from vqabench.tasks.base import Batch, CollateContext, Task


@dataclass(frozen=True)
class CaptionSample:
    """One image with its reference captions."""

    id: str
    image: str  # absolute path of the image file
    captions: tuple[str, ...]
    domain: str = "source"


@dataclass
class CaptionBatch(Batch):
    ids: list[str]
    images: torch.Tensor  # float [B, 3, H, W] in [0, 1]
    captions: list[list[str]]  # references; training uses one sampled per image
    domains: list[str]
    image_features: torch.Tensor | None = None  # frozen-stem output per image, when cached


class CaptioningTask(Task):
    name = "captioning"
    description = "captioning: a generated caption, BLEU / METEOR / ROUGE-L / CIDEr"
    sample_type = CaptionSample
    prediction_fields = ("caption",)
    primary_metric = "cider"
    metric_names = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")
    columns = (
        ("bleu_1", "BLEU-1"),
        ("bleu_4", "BLEU-4"),
        ("meteor", "METEOR"),
        ("rouge_l", "ROUGE-L"),
        ("cider", "CIDEr"),
        ("clipscore", "CLIP-S"),
        ("refclipscore", "RefCLIP-S"),
    )

    def fixture(self, images: list[str]) -> dict[str, Any]:
        samples = [CaptionSample(f"c{i}", images[i % len(images)], ("a red square", "a square")) for i in range(4)]
        return {"splits": {"train": samples, "val": samples, "test": samples}}

    def collate(self, samples: list[CaptionSample], ctx: CollateContext) -> CaptionBatch:
        images, feats = ctx.images([s.image for s in samples])
        return CaptionBatch(
            [s.id for s in samples], images, [list(s.captions) for s in samples], [s.domain for s in samples], feats
        )

    def reference_fields(self, sample: CaptionSample) -> dict[str, Any]:
        return {"id": sample.id, "references": list(sample.captions), "domain": sample.domain}

    def score(self, lines: Sequence[dict[str, Any]], spice: bool = False, **_: Any) -> dict[str, Any]:
        preds = {r["id"]: r["caption"] for r in lines}
        refs = {r["id"]: r["references"] for r in lines}
        return dict(metrics.caption_metrics(preds, refs, spice=spice))

    run_score_prefixes = ("clipscore", "refclipscore")

    def sections(self, records: Sequence[dict[str, Any]]) -> list[str]:
        # Report 003's checkpoint-selection, decoding and parameter tables; report 004's per-split one.
        from vqabench.tasks import caption_tables as t

        return [
            *t.selections_table(records),
            *t.decoding_table(records),
            *t.parameters_table(records),
            *t.splits_table(records),
        ]

    def run_scores(
        self, samples: Sequence[Any], lines: Sequence[dict[str, Any]], opts: Any, device: Any
    ) -> dict[str, Any]:
        # CLIPScore / RefCLIPScore with the CLIP that ``--clipscore ARCH@WEIGHTS`` names.
        if not getattr(opts, "clipscore", None):
            return {}
        from vqabench.evaluate import clipscore

        return clipscore(opts.clipscore, samples, lines, device)

    def rescore_options(self, spice: bool = False) -> dict[str, Any]:
        return {"spice": spice}

    # The baseline ranks at most this many distinct training captions (the most frequent ones, grouped
    # ignoring case and punctuation). Mini-CLEVR's quick training split has 3,691, all ranked in about
    # 1.2 s with the Java tokenizer's start; 5,000 candidates against COCO's 25,000 validation references
    # take about 7 s. Set it lower on a subclass or the task object for a cheaper, coarser baseline.
    baseline_candidates = 5000

    def baseline(self, train: Sequence[CaptionSample], data: Any) -> tuple[str, dict[str, Any]] | None:
        """The single training caption with the highest CIDEr-D against the validation references when it
        is predicted for every validation image (the training references when there is no ``val`` split).

        CIDEr-D as pycocoevalcap computes it (PTB tokens, idf over the scored references), ranked over the
        ``baseline_candidates`` most frequent training captions by ``vqabench.metrics.cider_rank``.
        """
        from vqabench.metrics.cider_rank import best_constant_caption

        captions = [c for s in train for c in s.captions]
        scored = (getattr(data, "splits", None) or {}).get("val") or train
        references = [s.captions for s in scored if s.captions]
        best = best_constant_caption(captions, references, self.baseline_candidates)
        if best is None:
            return None
        return f'Best single training caption ("{best.caption}")', {"caption": best.caption}


TASK = CaptioningTask()
