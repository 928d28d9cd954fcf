"""The feature cache: a frozen image stem's outputs, computed once and reused across epochs,
runs and models.

Keyed by a hash of (stem key = weights and preprocessing, dataset revision, image size, image
list); written to a temporary file and renamed, so a killed computation leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqabench.data import ImageStore
from vqabench.evaluate import autocast
from vqabench.model import Stem
from vqabench.transfer import rows_to, to_device

# Above this many bytes in float32 the cache is kept in float16 (activation maps of ViT / ResNet).
_FP16_ABOVE = 2 * 1024**3


class FeatureStore:
    """Stem outputs [N, ...] in the row order of an ImageStore."""

    def __init__(self, paths: Sequence[str], features: torch.Tensor) -> None:
        self.paths = list(paths)
        self.row = {p: i for i, p in enumerate(self.paths)}
        self.features = features

    def gather(self, paths: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
        rows = [self.row[p] for p in paths]
        return rows_to(self.features, rows, device or self.features.device).float()

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        stem: Stem,
        store: ImageStore,
        cache_dir: Path | None,
        revision: str,
        device: torch.device,
        precision: str = "auto",
        batch_size: int = 256,
    ) -> tuple[FeatureStore, bool]:
        """Load the cached features or compute them; returns (store, whether it was a cache hit)."""
        size = store.images.shape[-1]
        key = hashlib.sha256(f"{stem.key}|{revision}|{size}|".encode() + "\n".join(store.paths).encode()).hexdigest()[
            :24
        ]
        target = cache_dir / "features" / f"{key}.npy" if cache_dir else None
        if target is not None and target.exists():
            arr = np.load(target, mmap_mode="c")
            if arr.shape[0] == len(store.paths):
                return cls(store.paths, torch.from_numpy(arr).to(device)), True
        chunks = []
        for start in range(0, len(store.paths), batch_size):
            images = to_device(store.images[start : start + batch_size], device).float().div_(255)
            with autocast(device, precision):
                chunks.append(stem.encode(images).float())
        feats = torch.cat(chunks)
        if feats.numel() * 4 > _FP16_ABOVE:
            feats = feats.half()
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                np.save(fh, feats.cpu().numpy())
            os.replace(tmp, target)
        return cls(store.paths, feats), False


def clear(cache_dir: Path, what: str = "features") -> list[Path]:
    """Delete one part of the cache ("features", "images", "data" or "all"); return what went."""
    parts = {
        "features": ["features"],
        "images": ["images"],
        "all": [p.name for p in cache_dir.iterdir()] if cache_dir.exists() else [],
    }
    if what == "data":
        names = (
            [p.name for p in cache_dir.iterdir() if p.name not in ("features", "images")] if cache_dir.exists() else []
        )
    elif what in parts:
        names = parts[what]
    else:
        raise ValueError(f"unknown cache part {what!r}; choose features, images, data or all")
    removed = []
    for name in names:
        path = cache_dir / name
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path)
    return removed


def cache_for(
    model: Any,
    store: ImageStore,
    augment: list[str],
    cache_dir: Path | None,
    disabled: bool,
    revision: str,
    device: torch.device,
    precision: str,
) -> tuple[FeatureStore | None, dict[str, Any]]:
    """The model's cached stem features when its stem is frozen and the input not augmented,
    with a note for the result record saying what was cached or why not."""
    stem = model.image_stem()
    note: dict[str, Any] = {"image": None, "text": model.text_cache_info(), "off": None}
    if stem is None:
        note["off"] = "no frozen image stem"
    elif disabled:
        note["off"] = "--no-cache"
    elif augment:
        note["off"] = f"augmentation on ({', '.join(augment)})"
    else:
        features, hit = FeatureStore.build(stem, store, cache_dir, revision, device, precision)
        note["image"] = f"{stem.name} ({'cache hit' if hit else 'computed'})"
        return features, note
    return None, note
