"""Images decoded once into a uint8 tensor store, and batches built from it for each task kind.

The store is a memory-mapped ``.npy`` file in the cache directory, keyed by the image paths, the
dataset revision and the size. On a GPU the whole store moves to the device and batches are
indexed there, so the GPU never waits on a DataLoader; a store too large for that stays on the
host, and each batch's rows are gathered into pinned memory and copied without blocking.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vqabench.tasks import TaskKind
from vqabench.tasks.captioning import CaptionBatch, CaptionSample
from vqabench.tasks.qa import QABatch, QASample
from vqabench.tasks.zeroshot import ImageBatch, ImageSample
from vqabench.transfer import rows_to, to_device


def _decode(path: str, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}; re-prepare the dataset (vqabench data prepare)") from None


class ImageStore:
    """uint8 images [N, 3, S, S], one row per distinct image path."""

    def __init__(self, paths: Sequence[str], array: np.ndarray | torch.Tensor) -> None:
        self.paths = list(paths)
        self.row = {p: i for i, p in enumerate(self.paths)}
        self.images = torch.from_numpy(np.asarray(array)) if isinstance(array, np.ndarray) else array

    @classmethod
    def build(
        cls, paths: Sequence[str], size: int, cache_dir: Path | None, revision: str, progress: bool = False
    ) -> ImageStore:
        """Decode and resize every image once; reuse the cached store when it exists."""
        paths = list(dict.fromkeys(paths))
        key = hashlib.sha256(f"{revision}|{size}|".encode() + "\n".join(paths).encode()).hexdigest()[:20]
        target = cache_dir / "images" / f"{key}-{size}px.npy" if cache_dir else None
        if target is not None and target.exists():
            arr = np.load(target, mmap_mode="c")  # copy-on-write: torch needs a writable array
            if arr.shape == (len(paths), 3, size, size):
                return cls(paths, arr)
        out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            results = pool.map(lambda p: _decode(p, size), paths, chunksize=64)
            for i, img in enumerate(
                tqdm(results, total=len(paths), desc=f"decode {size}px", unit="img", disable=not progress)
            ):
                out[i] = img
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                np.save(fh, out)
            os.replace(tmp, target)
        return cls(paths, out)

    def to(self, device: torch.device) -> ImageStore:
        return ImageStore(self.paths, self.images.to(device))

    def place(self, device: torch.device) -> ImageStore:
        """On the GPU when it takes under half its free memory (batches then never cross the bus)."""
        if device.type != "cuda":
            return self
        free, _ = torch.cuda.mem_get_info(device)
        return self.to(device) if self.images.nelement() * self.images.element_size() < free // 2 else self

    def gather(self, paths: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
        """Float images in [0, 1] for the given paths, on ``device`` (default: the store's).

        Rows cross to the GPU as uint8, a quarter of the bytes, and become floats there.
        """
        rows = [self.row[p] for p in paths]
        return rows_to(self.images, rows, device or self.images.device).float().div_(255)


def limit_samples(samples: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded random sample of at most ``limit`` samples, stratified by question type if any."""
    if limit is None or limit >= len(samples):
        return list(samples)
    rng = np.random.default_rng(seed)
    strata: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        strata.setdefault(getattr(s, "question_type", "") or "", []).append(i)
    chosen: list[int] = []
    # Proportional allocation with largest remainders, so the total is exactly ``limit``.
    quotas = {k: limit * len(v) / len(samples) for k, v in strata.items()}
    take = {k: int(q) for k, q in quotas.items()}
    for k in sorted(quotas, key=lambda k: quotas[k] - take[k], reverse=True)[: limit - sum(take.values())]:
        take[k] += 1
    for k in sorted(strata):
        idx = strata[k]
        chosen.extend(rng.choice(idx, size=min(take[k], len(idx)), replace=False).tolist())
    return [samples[i] for i in sorted(chosen)]


@dataclass
class Batches:
    """An iterable of batches over one split; a new shuffle each epoch when ``shuffle``."""

    kind: TaskKind
    samples: list[Any]
    store: ImageStore
    batch_size: int
    shuffle: bool = False
    seed: int = 0
    answer_index: dict[str, int] | None = None
    features: Any = None  # a vqabench.features.FeatureStore when the model's stem is cached
    epoch: int = 0
    # Where batches are built: on a GPU every tensor of a batch arrives without a host sync.
    device: torch.device | None = None

    def _groups(self) -> list[list[int]]:
        """Sample indices per batch; questions on one image stay together (one encode per image)."""
        order = np.arange(len(self.samples))
        if self.kind not in (TaskKind.VQA, TaskKind.ANSWERABILITY):
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
            return [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        by_image: dict[str, list[int]] = {}
        for i, s in enumerate(self.samples):
            by_image.setdefault(s.image, []).append(i)
        images = list(by_image)
        if self.shuffle:
            images = [images[i] for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(images))]
        groups, current = [], []
        for img in images:
            qs = by_image[img]
            for start in range(0, len(qs), self.batch_size):  # an image with more questions than a batch is split
                chunk = qs[start : start + self.batch_size]
                if current and len(current) + len(chunk) > self.batch_size:
                    groups.append(current)
                    current = []
                current.extend(chunk)
        if current:
            groups.append(current)
        return groups

    def __len__(self) -> int:
        return len(self._groups())

    def __iter__(self) -> Iterator[Any]:
        groups = self._groups()
        self.epoch += 1
        for g in groups:
            yield self._collate([self.samples[i] for i in g])

    def _images(self, paths: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pixels, or (with the feature cache) a placeholder plus the cached stem features."""
        if self.features is None:
            return self.store.gather(paths, self.device), None
        return torch.empty(len(paths), 0, device=self.device), self.features.gather(paths, self.device)

    def _tensor(self, values: list[Any], dtype: torch.dtype) -> torch.Tensor:
        t = torch.tensor(values, dtype=dtype)
        return t if self.device is None else to_device(t, self.device)

    def _collate(self, samples: list[Any]) -> Any:
        if self.kind in (TaskKind.VQA, TaskKind.ANSWERABILITY):
            unique = list(dict.fromkeys(s.image for s in samples))
            pos = {p: i for i, p in enumerate(unique)}
            images, feats = self._images(unique)
            index = self.answer_index or {}
            return QABatch(
                ids=[s.id for s in samples],
                images=images,
                image_index=self._tensor([pos[s.image] for s in samples], torch.long),
                questions=[s.question for s in samples],
                labels=self._tensor([index.get(s.answers[0], -1) for s in samples], torch.long),
                answerable=self._tensor([1.0 if s.answerable else 0.0 for s in samples], torch.float32),
                question_types=[s.question_type for s in samples],
                image_features=feats,
            )
        images, feats = self._images([s.image for s in samples])
        if self.kind is TaskKind.ZEROSHOT:
            return ImageBatch(
                [s.id for s in samples], images, self._tensor([s.label for s in samples], torch.long), feats
            )
        return CaptionBatch(
            [s.id for s in samples], images, [list(s.captions) for s in samples], [s.domain for s in samples], feats
        )


def image_paths(samples: Sequence[QASample | ImageSample | CaptionSample]) -> list[str]:
    return [s.image for s in samples]
