"""CLIPScore and RefCLIPScore (Hessel et al. 2021), following jmhessel/clipscore.

CLIP-S = w * max(cos(image, caption), 0) with w = 2.5. RefCLIP-S is the harmonic mean of CLIP-S
and the maximum cosine between the caption and its references; as in the reference code that
second term is neither clipped nor scaled. Captions and references are encoded with the prefix
"A photo depicts ". The paper used OpenAI ViT-B/32, so results record which CLIP scored them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

PREFIX = "A photo depicts "
W = 2.5


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    # Zero rows stay zero, like sklearn.preprocessing.normalize in the reference code.
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def _as_matrix(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {arr.shape}")
    return arr


def clip_score(image_features: Any, caption_features: Any, w: float = W) -> np.ndarray:
    """Return per-sample CLIP-S, ``w * max(cos(image_i, caption_i), 0)``, as an [N] array."""
    images = _as_matrix("image_features", image_features)
    captions = _as_matrix("caption_features", caption_features)
    if images.shape != captions.shape:
        raise ValueError(f"caption_features has shape {captions.shape} but image_features has {images.shape}")
    cosine = np.sum(_normalize_rows(images) * _normalize_rows(captions), axis=1)
    return w * np.clip(cosine, 0, None)


def ref_clip_score(
    image_features: Any,
    caption_features: Any,
    reference_features: Sequence[Any],
    w: float = W,
) -> np.ndarray:
    """Return per-sample RefCLIP-S: harmonic mean of CLIP-S and the max caption-reference cosine.

    ``reference_features[i]`` is an [R_i, D] array for sample i. Where both terms sum to 0 the
    score is 0 (the reference code would divide by zero).
    """
    image_text = clip_score(image_features, caption_features, w)
    captions = _normalize_rows(_as_matrix("caption_features", caption_features))
    if len(reference_features) != len(captions):
        raise ValueError(
            f"reference_features has {len(reference_features)} items but caption_features has {len(captions)} rows"
        )
    text_text = np.empty(len(captions))
    for i, refs in enumerate(reference_features):
        refs = _normalize_rows(_as_matrix(f"reference_features[{i}]", refs))
        if refs.shape[1] != captions.shape[1]:
            raise ValueError(
                f"reference_features[{i}] has dimension {refs.shape[1]} but caption_features has {captions.shape[1]}"
            )
        text_text[i] = np.max(refs @ captions[i])
    denominator = image_text + text_text
    safe = np.where(denominator == 0, 1.0, denominator)
    return np.where(denominator == 0, 0.0, 2 * image_text * text_text / safe)


class ClipScorer:
    """Computes CLIPScore with one open_clip model and records the model's ``name`` with the result."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Any], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        name: str,
        batch_size: int = 64,
    ) -> None:
        if not name:
            raise ValueError("name must say which CLIP computes the score, e.g. 'ViT-B-32/openai'")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def image_features(self, images: Sequence[Any]) -> np.ndarray:
        """Return [N, D] image embeddings of ``images`` (anything ``preprocess`` accepts, e.g. PIL)."""
        self.model.eval()
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start : start + self.batch_size]])
            chunks.append(self.model.encode_image(batch.to(self._device())).float().cpu().numpy())
        return np.concatenate(chunks)

    @torch.inference_mode()
    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        """Return [N, D] embeddings of ``texts``, each prefixed with "A photo depicts "."""
        self.model.eval()
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer([PREFIX + t for t in texts[start : start + self.batch_size]])
            chunks.append(self.model.encode_text(tokens.to(self._device())).float().cpu().numpy())
        return np.concatenate(chunks)

    def score(
        self,
        images: Sequence[Any],
        captions: Sequence[str],
        references: Sequence[Sequence[str]] | None = None,
        each: bool = False,
    ) -> dict[str, Any]:
        """Return {"clipscore", "clipscore_model"}, plus "refclipscore" when references are given,
        and "clipscore_each" (a list: each caption's own CLIP-S) when ``each``."""
        if len(images) == 0:
            raise ValueError("images must not be empty")
        if len(captions) != len(images):
            raise ValueError(f"captions has {len(captions)} items but images has {len(images)}")
        if references is not None:
            if len(references) != len(images):
                raise ValueError(f"references has {len(references)} items but images has {len(images)}")
            for i, refs in enumerate(references):
                if isinstance(refs, str) or len(refs) == 0:
                    raise ValueError(f"references[{i}] must be a non-empty sequence of strings")
        image_feats = self.image_features(images)
        caption_feats = self.text_features(captions)
        scores = clip_score(image_feats, caption_feats)
        result: dict[str, Any] = {"clipscore": float(np.mean(scores))}
        if each:
            result["clipscore_each"] = [float(x) for x in scores]
        if references is not None:
            flat = self.text_features([r for refs in references for r in refs])
            bounds = np.cumsum([0] + [len(refs) for refs in references])
            per_sample = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            result["refclipscore"] = float(np.mean(ref_clip_score(image_feats, caption_feats, per_sample)))
        result["clipscore_model"] = self.name
        return result
