"""The ``Task`` interface: everything one task kind defines, in one object.

A kind says what its samples and batches are, how samples become a batch, which fields a
model's predictions carry and which reference fields a stored prediction keeps, how stored
predictions are scored, its primary metric, its baseline and its leaderboard columns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vqabench.metrics.base import METRICS, Metric
from vqabench.transfer import to_device


@dataclass
class CollateContext:
    """What collation needs besides the samples: images or cached features, targets, device."""

    store: Any  # vqabench.images.ImageStore
    features: Any = None  # cached image-stem features (vqabench.features.FeatureStore) or None
    text_features: Any = None  # cached text-stem features (TextFeatureStore) or None
    answers: Any = None  # vqabench.vocab.AnswerTargets over the answer vocabulary (vqa / answerability)
    targets: str = "hard"  # "hard" or "soft" answer targets
    device: torch.device | None = None

    def images(self, paths: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pixels, or (with the feature cache) an empty placeholder plus the cached stem features."""
        if self.features is None:
            return self.store.gather(paths, self.device), None
        return torch.empty(len(paths), 0, device=self.device), self.features.gather(paths, self.device)

    def texts(self, strings: list[str]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Cached text-stem features and mask of ``strings``, or (None, None) without a text cache."""
        if self.text_features is None:
            return None, None
        return self.text_features.gather(strings, self.device)

    def tensor(self, values: list[Any], dtype: torch.dtype) -> torch.Tensor:
        t = torch.tensor(values, dtype=dtype)
        return t if self.device is None else to_device(t, self.device)


class Batch:
    """The protocol the engine relies on: move to a device, count samples and images, map images.

    Built-in batches are dataclasses with ``ids``, ``images`` and optional cached features.
    """

    ids: list[str]
    images: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        """A copy with every tensor on ``device`` (copied without blocking)."""
        out = type(self).__new__(type(self))
        for name, value in vars(self).items():
            setattr(out, name, value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value)
        return out

    @property
    def num_samples(self) -> int:
        return len(self.ids)

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    def map_images(self, fn: Any) -> None:
        """Apply ``fn`` to the pixel tensor in place (augmentation); a no-op on cached features."""
        if self.images.dim() == 4 and self.images.numel():
            self.images = fn(self.images)


class Streams(dict):
    """Batches of several training streams for one step, by split name (same protocol as a batch)."""

    def to(self, device: torch.device) -> Streams:
        return Streams({k: v.to(device) for k, v in self.items()})

    @property
    def num_samples(self) -> int:
        return sum(b.num_samples for b in self.values())

    @property
    def num_images(self) -> int:
        return sum(b.num_images for b in self.values())

    def map_images(self, fn: Any) -> None:
        for b in self.values():
            b.map_images(fn)


class Task:
    """One task kind. Subclasses set the class attributes and implement ``collate`` and ``score``."""

    name: str = ""
    description: str = ""
    sample_type: type = object
    # Fields every prediction dict of a model must carry (checked on the first batch).
    prediction_fields: tuple[str, ...] = ()
    primary_metric: str = ""
    # Scalar metrics ``score`` returns for any data (a best metric must be one of them, or val_loss);
    # a value may still be null where the split makes it undefined (AP on a single class).
    metric_names: tuple[str, ...] = ()
    # Metrics a kind defines beyond vqabench.metrics.base.METRICS (name -> Metric).
    extra_metrics: dict[str, Metric] = {}
    # Test-split leaderboard columns: (metric key, column title); the primary metric always shows.
    columns: tuple[tuple[str, str], ...] = ()
    # Prefixes of metric keys ``run_scores`` adds (kept as recorded when predictions are rescored).
    run_score_prefixes: tuple[str, ...] = ()
    # Per-type metric keys that get their own columns ("acc/" -> "Acc count", ...).
    type_prefix: str | None = None
    # Questions about one image stay in one batch, so the image is encoded once per step.
    group_by_image: bool = False

    def metric(self, name: str) -> Metric:
        """The metric definition (direction) of ``name``."""
        if name == "val_loss":
            return Metric("val_loss", higher_is_better=False, description="mean loss on the validation split")
        if name in self.extra_metrics:
            return self.extra_metrics[name]
        if name in METRICS:
            return METRICS[name]
        if self.type_prefix and name.startswith(self.type_prefix):
            return METRICS.get(self.primary_metric, Metric(name))
        raise KeyError(f"task kind {self.name!r} does not produce metric {name!r}; it produces: {self.produces()}")

    def produces(self) -> str:
        return ", ".join([*self.metric_names, *self.run_score_prefixes, "val_loss"])

    def columns_for(self, records: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
        """The leaderboard columns (metric key, title) of a table of ``records`` (default: ``columns``)."""
        return list(self.columns)

    def sections(self, records: Sequence[dict[str, Any]]) -> list[str]:
        """Markdown lines the leaderboard adds after the kind's table of ``records`` (default: none)."""
        return []

    def plots(self, records: Sequence[dict[str, Any]]) -> list[tuple[str, str, Any]]:
        """Figures the leaderboard draws for a table of ``records``: (slug, title, draw), where
        ``draw(axes)`` plots onto a matplotlib Axes (default: none)."""
        return []

    def check_best_metric(self, name: str) -> Metric:
        """A checkpoint-selection metric (``train.best_metric``, ``train.keep_best``; default: the
        primary one); fails naming what the kind produces."""
        name = name or self.primary_metric
        run_score = bool(self.run_score_prefixes) and name.startswith(self.run_score_prefixes)
        if name != "val_loss" and name not in self.metric_names and not run_score:
            raise ValueError(
                f"selection metric {name!r} (train.best_metric / train.keep_best) is not produced by task kind "
                f"{self.name!r}; it produces: {self.produces()}"
            )
        return self.metric(name)

    def image_of(self, sample: Any) -> str:
        """The image path of a sample."""
        return sample.image

    def check_data(self, data: Any) -> None:
        """Raise ValueError, naming the dataset, when ``data`` lacks what this kind needs."""
        for split, samples in data.splits.items():
            wrong = next((s for s in samples if not isinstance(s, self.sample_type)), None)
            if wrong is not None:
                raise ValueError(
                    f"dataset {data.dataset!r} ({self.name}): split {split!r} holds a {type(wrong).__name__}; "
                    f"a {self.name} dataset gives {self.sample_type.__name__} samples"
                )
            ids = [s.id for s in samples]
            if len(set(ids)) != len(ids):
                dup = next(i for i in ids if ids.count(i) > 1)
                raise ValueError(f"dataset {data.dataset!r} ({self.name}): split {split!r} repeats sample id {dup!r}")

    def fixture(self, images: list[str]) -> dict[str, Any]:
        """Four samples on the given images, as ``TaskData`` keyword arguments (``splits`` and the
        kind's metadata): the fixture every model of this kind must handle in the contract tests."""
        raise NotImplementedError(f"task kind {self.name!r} gives no contract-test fixture")

    def collate(self, samples: list[Any], ctx: CollateContext) -> Batch:
        raise NotImplementedError

    def reference_fields(self, sample: Any) -> dict[str, Any]:
        """What a stored prediction line keeps of its sample, so it can be re-scored alone."""
        raise NotImplementedError

    def score_options(self, data: Any) -> dict[str, Any]:
        """Keyword arguments of ``score`` that depend on the data (stored in the record)."""
        return {}

    def score(self, lines: Sequence[dict[str, Any]], **options: Any) -> dict[str, Any]:
        """The kind's metrics from stored prediction lines."""
        raise NotImplementedError

    def run_scores(
        self, samples: Sequence[Any], lines: Sequence[dict[str, Any]], opts: Any, device: Any
    ) -> dict[str, Any]:
        """Metrics that need the run itself (its images, a scoring model), added to ``score``'s.

        ``vqabench score`` keeps them as recorded: stored predictions alone cannot recompute them.
        """
        return {}

    def rescore_options(self, spice: bool = False) -> dict[str, Any]:
        """Extra ``score`` options ``vqabench score`` passes (e.g. SPICE for captions)."""
        return {}

    def baseline(self, train: Sequence[Any], data: Any) -> tuple[str, dict[str, Any]] | None:
        """(label, prediction fields) of the kind's trivial baseline, from the training samples.

        The same prediction is scored on every evaluated split; None when there is none.
        """
        return None

    def check_predictions(self, model: Any, preds: list[dict[str, Any]]) -> None:
        missing = [f for f in self.prediction_fields if preds and f not in preds[0]]
        if missing:
            raise RuntimeError(
                f"{type(model).__name__}.predict for task kind {self.name!r} lacks {', '.join(missing)} "
                f"(a {self.name} prediction carries {', '.join(self.prediction_fields)})"
            )


def most_common(values: Sequence[Any]) -> Any:
    """The most frequent value; ties go to the value that occurs first."""
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)
