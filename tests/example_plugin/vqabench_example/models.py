"""Example models that exercise the core's mechanisms, each as a plugin would write it.

- ``example-bow-soft``: the bag-of-words model trained on soft targets from every human answer.
- ``example-staged``: two stages. Stage "head" trains the head on a frozen random projection
  of the pooled image; stage "adapt" adds a low-rank adapter beside that projection
  (``begin_stage``) and trains it with the head, under step decay. The cacheable stem changes
  between the stages (projection output, then pooled pixels), so the feature cache follows.
- ``example-dann``: two training streams (labelled ``train``, unlabelled ``target_train``); a
  domain classifier behind a gradient-reversal layer whose weight follows the training progress,
  lambda(p) = 2 / (1 + exp(-10 p)) - 1 (Ganin and Lempitsky, 2015).
- ``example-caption``: a captioner that picks a training caption; its recipe keeps a checkpoint
  per selection metric (``keep_best``), it has a prediction variant and draws a figure.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vqabench.config import EvalConfig, Stage, TrainConfig
from vqabench.layers import GradReverse, reversal_weight
from vqabench.model import Stem, TaskModel
from vqabench.tasks.base import Streams
from vqabench_example import BagOfWords, BowConfig


def soft_recipe() -> TrainConfig:
    return TrainConfig(epochs=6, batch_size=16, warmup_epochs=1, lrs={"head": 0.05}, targets="soft", augment=())


@dataclass(frozen=True)
class StagedConfig:
    hidden: int = 32
    buckets: int = 64
    image_size: int = 16
    pooled_size: int = 8
    proj: int = 32  # width of the frozen random projection of the pooled image
    adapter_rank: int = 4
    dropout: float = 0.2
    step_delay: float = 0.0  # seconds slept per training step (lets a test kill a run mid-stage)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            batch_size=16,
            warmup_epochs=0.5,
            stages=(
                Stage("head", epochs=3, lrs={"head": 0.05}),
                Stage("adapt", epochs=4, lrs={"adapter": 0.02, "head": 0.01}, schedule="step", step_every=2),
            ),
            step_gamma=0.5,
            report_epochs=(),
        )
    )


class LowRank(nn.Module):
    """x -> B(A(x)), B zero-initialised so the adapted model starts as the unadapted one."""

    def __init__(self, dim_in: int, dim_out: int, rank: int) -> None:
        super().__init__()
        self.a = nn.Linear(dim_in, rank, bias=False)
        self.b = nn.Linear(rank, dim_out, bias=False)
        nn.init.zeros_(self.b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


class StagedBow(BagOfWords):
    """Pooled pixels -> frozen random projection (+ adapter from stage 2) and question words -> MLP."""

    def __init__(self, cfg: StagedConfig, vocab: list[str]) -> None:
        nn.Module.__init__(self)
        self.cfg, self.vocab, self.image_size, self.kind = cfg, vocab, cfg.image_size, "vqa"
        pooled = 3 * cfg.pooled_size**2
        self.proj = nn.Linear(pooled, cfg.proj).requires_grad_(False)
        self.adapter: LowRank | None = None
        self.mlp = nn.Sequential(
            nn.Linear(cfg.proj + cfg.buckets, cfg.hidden),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, len(vocab)),
        )
        self.weights = "random frozen projection; head, then low-rank adapter + head"

    def begin_stage(self, stage: Stage) -> None:
        if stage.name == "adapt" and self.adapter is None:
            self.adapter = LowRank(self.proj.in_features, self.proj.out_features, self.cfg.adapter_rank)
            self.adapter.to(self.proj.weight.device)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"head": list(self.mlp.parameters())}
        if self.adapter is not None:
            groups["adapter"] = list(self.adapter.parameters())
        return groups

    def _front(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self._pool(images)
        # Without the adapter the whole projection is frozen, so its output is the cacheable stem;
        # the adapter reads the projection's input, so from stage 2 only the pooling is.
        return pooled if self.adapter is not None else self.proj(pooled)

    def image_stem(self) -> Stem:
        if self.adapter is None:
            key = f"avgpool-{self.cfg.pooled_size}-proj-{float(self.proj.weight.sum()):.6f}"
            return Stem("avg-pool + frozen projection", key, self._front)
        return Stem(f"avg-pool {self.cfg.pooled_size}px", f"avgpool-{self.cfg.pooled_size}", self._front)

    def forward(self, batch: Any) -> torch.Tensor:
        front = batch.image_features if batch.image_features is not None else self._front(batch.images)
        img = front if self.adapter is None else self.proj(front) + self.adapter(front)
        img = img[batch.image_index]
        return self.mlp(torch.cat([img, self._bow(batch.questions, img.device)], dim=1))

    def loss(self, batch: Any) -> torch.Tensor:
        if self.cfg.step_delay:
            time.sleep(self.cfg.step_delay)
        return nn.functional.cross_entropy(self(batch), batch.labels, ignore_index=-1)


@dataclass(frozen=True)
class DannConfig:
    hidden: int = 32
    buckets: int = 64
    image_size: int = 16
    pooled_size: int = 8
    domain_weight: float = 1.0
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=6,
            batch_size=16,
            warmup_epochs=1,
            lrs={"head": 0.05, "domain": 0.05},
            streams=("train", "target_train"),
            report_epochs=(),
        )
    )
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(splits=("val", "test", "target_test")))


class DannBow(BagOfWords):
    """The bag-of-words model plus a domain classifier on its pooled image features."""

    def __init__(self, cfg: DannConfig, vocab: list[str]) -> None:
        super().__init__(BowConfig(cfg.hidden, cfg.buckets, cfg.image_size, cfg.pooled_size), vocab)
        self.dcfg = cfg
        self.domain = nn.Sequential(nn.Linear(3 * cfg.pooled_size**2, 16), nn.ReLU(), nn.Linear(16, 1))
        self.weights = "random init; domain-adversarial (gradient reversal)"
        self.reversal_weights: list[float] = []  # the weight of every step, for inspection

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"head": list(self.mlp.parameters()), "domain": list(self.domain.parameters())}

    def _domain_logits(self, batch: Any, weight: float) -> torch.Tensor:
        pooled = batch.image_features if batch.image_features is not None else self._pool(batch.images)
        return self.domain(GradReverse.apply(pooled, weight)).squeeze(1)

    def loss(self, batch: Any) -> torch.Tensor:
        if not isinstance(batch, Streams):  # validation loss: the labelled task alone
            return super().loss(batch)
        source, target = batch["train"], batch["target_train"]
        task = super().loss(source)
        weight = reversal_weight(self.progress)
        self.reversal_weights.append(weight)
        # One domain prediction per distinct image of each stream (source 0, target 1).
        src, tgt = self._domain_logits(source, weight), self._domain_logits(target, weight)
        logits = torch.cat([src, tgt])
        labels = torch.cat([torch.zeros_like(src), torch.ones_like(tgt)])
        return task + self.dcfg.domain_weight * nn.functional.binary_cross_entropy_with_logits(logits, labels)


@dataclass(frozen=True)
class RetrievalCaptionConfig:
    image_size: int = 16
    pooled_size: int = 4
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=4,
            batch_size=16,
            warmup_epochs=0,
            lrs={"head": 0.1},
            best_metric="cider",
            keep_best=("val_loss", "cider", "clipscore"),
            report_epochs=(),
            augment=(),
        )
    )


class RetrievalCaptioner(TaskModel):
    """Captioning by choosing one of the training captions: a linear classifier over them.

    Its one prediction variant, "runner-up", answers with the second-ranked caption; its figure
    is the pooled image of the first test sample, saved as a PNG.
    """

    weights = "random init; linear caption classifier trained"
    default_variant = "top-1"

    def __init__(self, cfg: RetrievalCaptionConfig, captions: list[str]) -> None:
        super().__init__()
        self.cfg, self.captions, self.image_size = cfg, captions, cfg.image_size
        self.index = {c: i for i, c in enumerate(captions)}
        self.head = nn.Linear(3 * cfg.pooled_size**2, len(captions))
        self.rank = 0  # which ranked caption predict returns

    def _logits(self, batch: Any) -> torch.Tensor:
        return self.head(nn.functional.adaptive_avg_pool2d(batch.images, self.cfg.pooled_size).flatten(1))

    def loss(self, batch: Any) -> torch.Tensor:
        targets = torch.tensor([self.index.get(refs[0], -1) for refs in batch.captions], device=batch.images.device)
        return nn.functional.cross_entropy(self._logits(batch), targets, ignore_index=-1)

    def eval_variants(self) -> tuple[str, ...]:
        return ("runner-up",)

    def use_variant(self, name: str | None) -> None:
        if name not in (None, "runner-up"):
            super().use_variant(name)
        self.rank = 1 if name == "runner-up" else 0

    def predict(self, batch: Any) -> list[dict[str, Any]]:
        ranked = self._logits(batch).argsort(dim=1, descending=True)[:, self.rank]
        return [{"caption": self.captions[i]} for i in ranked.tolist()]

    def figures(self, samples: list[Any], lines: list[dict[str, Any]], batch_of: Any, out: Any) -> list[dict[str, str]]:
        from PIL import Image

        batch = batch_of(samples[:1])
        pixels = (batch.images[0].permute(1, 2, 0).clamp(0, 1) * 255).byte().cpu().numpy()
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(out / f"{batch.ids[0]}.png")
        return [{"title": f"image {batch.ids[0]}", "file": f"{batch.ids[0]}.png"}]
