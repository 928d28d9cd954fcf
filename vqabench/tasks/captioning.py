"""Captioning: an image and its reference captions; a generated caption out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vqabench import metrics


@dataclass(frozen=True)
class CaptionSample:
    """One image with its reference captions."""

    id: str
    image: str  # absolute path of the image file
    captions: tuple[str, ...]
    domain: str = "source"


@dataclass
class CaptionBatch:
    ids: list[str]
    images: torch.Tensor  # float [B, 3, H, W] in [0, 1]
    captions: list[list[str]]  # references; training uses one sampled per image
    domains: list[str]
    image_features: torch.Tensor | None = None  # frozen-stem output per image, when cached

    def to(self, device: torch.device) -> CaptionBatch:
        feats = None if self.image_features is None else self.image_features.to(device, non_blocking=True)
        return CaptionBatch(self.ids, self.images.to(device, non_blocking=True), self.captions, self.domains, feats)


def reference_fields(sample: CaptionSample) -> dict[str, Any]:
    return {"id": sample.id, "references": list(sample.captions), "domain": sample.domain}


def score_captioning(records: Sequence[dict[str, Any]], spice: bool = False) -> dict[str, Any]:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE when asked) of stored ``caption`` lines."""
    preds = {r["id"]: r["caption"] for r in records}
    refs = {r["id"]: r["references"] for r in records}
    return dict(metrics.caption_metrics(preds, refs, spice=spice))
