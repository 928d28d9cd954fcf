"""An example third-party vqabench plugin: the ``example-colors`` dataset and two tiny models.

``example-colors`` draws one coloured square per image and asks about its colour.
``example-bow`` is a trained VQA model (pixels + bag of words); ``example-colorname`` is a
zero-shot classifier that needs no training (it matches the image's mean colour to colour names).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from vqabench.config import TrainConfig
from vqabench.hookspecs import hookimpl
from vqabench.model import Stem, TaskModel
from vqabench.registry import DatasetSpec, ModelSpec
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.captioning import CaptionSample
from vqabench.tasks.qa import QASample
from vqabench.tasks.zeroshot import ImageSample

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30)}


@dataclass(frozen=True)
class ExampleConfig:
    images: int = 48
    image_size: int = 16
    seed: int = 0


def _generate(cfg: ExampleConfig, root: Path) -> None:
    rng = np.random.default_rng(cfg.seed)
    tmp = root.with_name(root.name + ".tmp")
    (tmp / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(cfg.images):
        name = list(COLORS)[i % len(COLORS)]
        arr = np.zeros((cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
        s = int(rng.integers(cfg.image_size // 3, cfg.image_size))
        y, x = rng.integers(0, cfg.image_size - s + 1, size=2)
        arr[y : y + s, x : x + s] = COLORS[name]
        Image.fromarray(arr).save(tmp / "images" / f"{i}.png")
        rows.append({"index": i, "color": name})
    (tmp / "labels.json").write_text(json.dumps(rows))
    os.replace(tmp, root)


def load(cfg: ExampleConfig, kind: TaskKind, cache_dir: Path) -> TaskData:
    root = Path(cache_dir) / f"example-colors-{cfg.images}-{cfg.image_size}-{cfg.seed}"
    if not (root / "labels.json").exists():
        _generate(cfg, root)
    rows = json.loads((root / "labels.json").read_text())
    revision = hashlib.sha256((root / "labels.json").read_bytes()).hexdigest()[:16]
    names = list(COLORS)
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for r in rows:
        split = "train" if r["index"] % 6 < 4 else ("val" if r["index"] % 6 == 4 else "test")
        img = str(root / "images" / f"{r['index']}.png")
        if kind in (TaskKind.VQA, TaskKind.ANSWERABILITY):
            splits[split].append(
                QASample(f"{r['index']}/color", img, "what color is the square?", (r["color"],), "color", "other")
            )
            for probe in ("red", "blue"):
                ans = "yes" if r["color"] == probe else "no"
                splits[split].append(
                    QASample(f"{r['index']}/is-{probe}", img, f"is the square {probe}?", (ans,), "yes/no", "yes/no")
                )
            if kind is TaskKind.ANSWERABILITY:  # there is never a circle
                splits[split].append(
                    QASample(
                        f"{r['index']}/circle",
                        img,
                        "what color is the circle?",
                        ("unanswerable",),
                        "color",
                        "other",
                        answerable=False,
                    )
                )
        elif kind is TaskKind.ZEROSHOT:
            splits[split].append(ImageSample(str(r["index"]), img, names.index(r["color"])))
        else:
            splits[split].append(
                CaptionSample(str(r["index"]), img, (f"a {r['color']} square", f"a {r['color']} square on black"))
            )
    vocab = sorted({a for v in splits.values() for s in v if isinstance(s, QASample) for a in s.answers}) or None
    return TaskData(
        "example-colors",
        kind,
        root,
        splits,
        revision,
        answer_vocab=vocab,
        class_names=names if kind is TaskKind.ZEROSHOT else None,
        templates=["a {} square"] if kind is TaskKind.ZEROSHOT else None,
    )


@dataclass(frozen=True)
class BowConfig:
    hidden: int = 32
    buckets: int = 64
    image_size: int = 16
    pooled_size: int = 8
    pretrained: bool = False
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=6,
            batch_size=16,
            warmup_epochs=1,
            lrs={"head": 0.05},
            report_epochs=(3,),
            augment=("color_jitter", "hflip"),
        )
    )


class BagOfWords(TaskModel):
    """Pixels of a downsampled image plus hashed question words, into a small MLP.

    For answerability one more output scores whether the question can be answered.
    """

    def __init__(self, cfg: BowConfig, vocab: list[str], kind: TaskKind = TaskKind.VQA) -> None:
        super().__init__()
        self.cfg, self.vocab, self.image_size, self.kind = cfg, vocab, cfg.image_size, kind
        outputs = len(vocab) + (kind is TaskKind.ANSWERABILITY)
        self.mlp = nn.Sequential(
            nn.Linear(3 * cfg.pooled_size**2 + cfg.buckets, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, outputs)
        )

    def _pool(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(images, self.cfg.pooled_size).flatten(1)

    def image_stem(self) -> Stem:
        # Average pooling has no weights: a frozen, deterministic stem the feature cache can hold.
        return Stem(f"avg-pool {self.cfg.pooled_size}px", f"avgpool-{self.cfg.pooled_size}", self._pool)

    def _bow(self, questions: list[str], device: torch.device) -> torch.Tensor:
        out = torch.zeros(len(questions), self.cfg.buckets, device=device)
        for i, q in enumerate(questions):
            for w in q.lower().strip("?").split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.cfg.buckets] = 1.0
        return out

    def forward(self, batch) -> torch.Tensor:
        pooled = batch.image_features if batch.image_features is not None else self._pool(batch.images)
        img = pooled[batch.image_index]
        return self.mlp(torch.cat([img, self._bow(batch.questions, img.device)], dim=1))

    def loss(self, batch) -> torch.Tensor:
        out = self(batch)
        loss = nn.functional.cross_entropy(
            out[:, : len(self.vocab)], batch.labels, ignore_index=-1, label_smoothing=self.cfg.train.label_smoothing
        )
        if self.kind is TaskKind.ANSWERABILITY:
            loss = loss + nn.functional.binary_cross_entropy_with_logits(out[:, -1], batch.answerable)
        return loss

    def predict(self, batch):
        out = self(batch).float()
        conf, idx = out[:, : len(self.vocab)].softmax(-1).max(-1)
        preds = [{"answer": self.vocab[i], "confidence": c} for i, c in zip(idx.tolist(), conf.tolist())]
        if self.kind is TaskKind.ANSWERABILITY:
            for p, s in zip(preds, out[:, -1].sigmoid().tolist()):
                p["answerable_score"] = s
        return preds


@dataclass(frozen=True)
class ColorNameConfig:
    image_size: int = 16
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=0, eval_splits=("test",)))


class ColorName(TaskModel):
    """Zero-shot: score each class by how close the image's brightest colour is to its name's RGB.

    As a captioner it names the closest colour: "a <colour> square".
    """

    trains = False
    weights = "none (colour-name table)"

    def __init__(self, cfg: ColorNameConfig, class_names: list[str]) -> None:
        super().__init__()
        self.image_size = cfg.image_size
        self.class_names = class_names
        self.register_buffer(
            "table", torch.tensor([COLORS.get(c, (0, 0, 0)) for c in class_names], dtype=torch.float) / 255
        )

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        pix = images.flatten(2)  # [B, 3, HW]
        bright = pix.gather(2, pix.sum(1, keepdim=True).argmax(2, keepdim=True).expand(-1, 3, 1)).squeeze(2)
        return -torch.cdist(bright, self.table)

    def predict(self, batch):
        logits = self._logits(batch.images)
        if hasattr(batch, "captions"):
            return [{"caption": f"a {self.class_names[i]} square"} for i in logits.argmax(1).tolist()]
        return [{"logits": row} for row in logits.tolist()]


@hookimpl
def register_datasets(register):
    register(
        DatasetSpec(
            "example-colors",
            (TaskKind.VQA, TaskKind.ANSWERABILITY, TaskKind.ZEROSHOT, TaskKind.CAPTIONING),
            ExampleConfig,
            load,
            unsafe_augmentations=frozenset({"hue", "hflip"}),
            description="one coloured square per image",
        )
    )


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            "example-bow",
            "Example",
            "Example BoW",
            (TaskKind.VQA, TaskKind.ANSWERABILITY),
            BowConfig,
            lambda cfg, data, device: BagOfWords(cfg, data.answer_vocab, data.kind),
            profiles={"quick": {}, "paper": {"train.epochs": 10}},
        )
    )
    register(
        ModelSpec(
            "example-colorname",
            "Example",
            "Example colour names",
            (TaskKind.ZEROSHOT, TaskKind.CAPTIONING),
            ColorNameConfig,
            lambda cfg, data, device: ColorName(cfg, data.class_names or list(COLORS)),
        )
    )
