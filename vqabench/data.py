"""Images decoded once into a uint8 tensor store, and batches built from it for each task kind.

The store is a memory-mapped ``.npy`` file in the cache directory, keyed by the image paths, the
dataset revision and the size. On a GPU the whole store moves to the device and batches are
indexed there, so the GPU never waits on a DataLoader; a store too large for that stays on the
host, and each batch's rows are gathered into pinned memory and copied without blocking.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vqabench.images import ImageStore  # noqa: F401  (re-exported: other modules import it from here)
from vqabench.tasks.base import CollateContext, Task


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
    """An iterable of batches over one split; a new shuffle each epoch when ``shuffle``.

    Collation is the task kind's (``Task.collate``); a kind that groups by image keeps the
    questions on one image in one batch, so each image is encoded once per step.
    """

    task: Task
    samples: list[Any]
    batch_size: int
    ctx: CollateContext
    shuffle: bool = False
    seed: int = 0
    epoch: int = 0

    def _groups(self) -> list[list[int]]:
        """Sample indices per batch."""
        order = np.arange(len(self.samples))
        if not self.task.group_by_image:
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
            return [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        by_image: dict[str, list[int]] = {}
        for i, s in enumerate(self.samples):
            by_image.setdefault(self.task.image_of(s), []).append(i)
        images = list(by_image)
        if self.shuffle:
            images = [images[i] for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(images))]
        groups: list[list[int]] = []
        current: list[int] = []
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
            yield self.task.collate([self.samples[i] for i in g], self.ctx)
