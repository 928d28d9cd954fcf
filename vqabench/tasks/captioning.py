"""Captioning: an image and its reference captions; a generated caption out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vqabench import metrics
from vqabench.tasks.base import Batch, CollateContext, Task, most_common


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

    def baseline(self, train: Sequence[CaptionSample], data: Any) -> tuple[str, dict[str, Any]] | None:
        captions = [c for s in train for c in s.captions]
        if not captions:
            return None
        caption = most_common(sorted(captions))
        return f'Most frequent caption ("{caption}")', {"caption": caption}


TASK = CaptioningTask()
