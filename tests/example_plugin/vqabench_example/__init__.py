"""An example third-party vqabench plugin: the ``example-colors`` dataset, tiny models and a task kind.

``example-colors`` draws one coloured square per image and asks about its colour; a second
domain (``target_train`` / ``target_test``) draws the same squares on a grey background, and
``--data annotators=10`` gives every colour question ten noisy human answers.
``example-bow`` is a trained VQA model (pixels + bag of words); ``example-colorname`` needs no
training (it matches the image's brightest colour to colour names). ``models.py`` holds the
models that show the core's mechanisms (soft targets, two stages, two streams) and
``multiple_choice.py`` a task kind this plugin adds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from vqabench.config import EvalConfig, TrainConfig
from vqabench.files import UnsafePathError, contained, describe_os_error
from vqabench.hookspecs import hookimpl
from vqabench.model import Stem, TaskModel
from vqabench.registry import DatasetSpec, ModelSpec
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.captioning import CaptionSample
from vqabench.tasks.qa import QASample
from vqabench.tasks.zeroshot import ImageSample
from vqabench.vocab import answer_vocabulary, describe_rule
from vqabench_example.multiple_choice import TASK as MULTIPLE_CHOICE
from vqabench_example.multiple_choice import ChoiceSample

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30)}


@dataclass(frozen=True)
class ExampleConfig:
    images: int = 48
    image_size: int = 16
    seed: int = 0
    annotators: int = 1  # human answers per colour question; with more, some name a wrong colour

    def __post_init__(self) -> None:
        # Refused before anything is generated: images=-1 would write an empty dataset into the cache.
        for name, low, why in (
            ("images", 6, "every split needs an image: images go to train, val and test by index % 6"),
            ("image_size", 3, "a square is drawn at least a third of the image wide"),
            ("seed", 0, "seeds are non-negative"),
            ("annotators", 1, "every question needs an answer"),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"example-colors config: {name}={getattr(self, name)!r} must be >= {low} ({why})")


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
    # The target domain: the same kind of squares on a grey background (own RNG, so the source
    # images stay those of earlier versions).
    trng = np.random.default_rng([cfg.seed, 1])
    for i in range(cfg.images // 2):
        name = list(COLORS)[i % len(COLORS)]
        arr = np.full((cfg.image_size, cfg.image_size, 3), 110, dtype=np.uint8)
        s = int(trng.integers(cfg.image_size // 3, cfg.image_size))
        y, x = trng.integers(0, cfg.image_size - s + 1, size=2)
        arr[y : y + s, x : x + s] = COLORS[name]
        Image.fromarray(arr).save(tmp / "images" / f"t{i}.png")
        rows.append({"index": f"t{i}", "color": name, "domain": "target"})
    (tmp / "labels.json").write_text(json.dumps(rows))
    if root.exists():  # a cache entry whose labels.json is gone is incomplete: replaced, not merged into
        shutil.rmtree(root)
    os.replace(tmp, root)


def _split(r: dict) -> str:
    if r.get("domain") == "target":
        return "target_train" if int(r["index"][1:]) % 3 else "target_test"
    return "train" if r["index"] % 6 < 4 else ("val" if r["index"] % 6 == 4 else "test")


def _color_answers(color: str, annotators: int, rng: np.random.Generator) -> tuple[str, ...]:
    """``annotators`` human answers: mostly right, about one in five naming another colour."""
    if annotators == 1:
        return (color,)
    others = [c for c in COLORS if c != color]
    return tuple(color if rng.random() > 0.2 else others[int(rng.integers(len(others)))] for _ in range(annotators))


def _read_labels(root: Path) -> tuple[list[dict], list[str]]:
    """The rows of ``labels.json`` and their image paths; ValueError naming the file, row and field.

    How a dataset plugin reads its own tables: every row checked before it becomes a sample, and
    every file name it gives resolved with ``vqabench.files.contained`` (a regular file inside root).
    Rows are counted from 0, as JSON array indices.
    """
    path, fix = root / "labels.json", f"delete {root} to regenerate it"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{describe_os_error(exc, path, 'reading')} (or {fix})") from None
    except ValueError as exc:  # JSONDecodeError (line and column) or UnicodeDecodeError
        raise ValueError(f"{path}: not valid UTF-8 JSON ({exc}); {fix}") from None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a non-empty list of rows; {fix}")
    images, seen = [], set()
    for n, r in enumerate(rows):
        where = f"{path} row {n}"
        if not isinstance(r, dict) or not {"index", "color"} <= set(r):
            raise ValueError(f"{where}: expected an object with fields index and color, got {r!r:.80}; {fix}")
        index, target = r["index"], r.get("domain") == "target"
        ok = isinstance(index, str) and index[:1] == "t" and index[1:].isdigit() if target else _count(index)
        if not ok:
            expected = '"t<integer>"' if target else "an integer >= 0"
            raise ValueError(f"{where} field index: {index!r} is not {expected}; {fix}")
        if not isinstance(r["color"], str) or r["color"] not in COLORS:
            raise ValueError(f"{where} field color: {r['color']!r} is not one of {', '.join(COLORS)}; {fix}")
        if index in seen:
            raise ValueError(f"{where} field index: {index!r} appears twice; {fix}")
        seen.add(index)
        try:
            images.append(str(contained(root, f"images/{index}.png", where=f"{where} field index", must_exist=True)))
        except UnsafePathError as exc:
            raise ValueError(f"{exc}; {fix}") from None
    return rows, images


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def load(cfg: ExampleConfig, kind: str, cache_dir: Path) -> TaskData:
    root = Path(cache_dir) / f"example-colors-{cfg.images}-{cfg.image_size}-{cfg.seed}-v2"
    if not (root / "labels.json").exists():
        _generate(cfg, root)
    rows, images = _read_labels(root)
    revision = hashlib.sha256((root / "labels.json").read_bytes()).hexdigest()[:16]
    names = list(COLORS)
    rng = np.random.default_rng([cfg.seed, cfg.annotators])
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for r, img in zip(rows, images):
        split = _split(r)
        if kind in (TaskKind.VQA, TaskKind.ANSWERABILITY):
            answers = _color_answers(r["color"], cfg.annotators, rng)
            samples = [QASample(f"{r['index']}/color", img, "what color is the square?", answers, "color", "other")]
            for probe in ("red", "blue"):
                ans = "yes" if r["color"] == probe else "no"
                samples.append(
                    QASample(f"{r['index']}/is-{probe}", img, f"is the square {probe}?", (ans,), "yes/no", "yes/no")
                )
            if kind == TaskKind.ANSWERABILITY:  # there is never a circle
                samples.append(
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
            splits.setdefault(split, []).extend(samples)
        elif r.get("domain") == "target":
            continue  # the second domain is for question answering only
        elif kind == TaskKind.ZEROSHOT:
            splits[split].append(ImageSample(str(r["index"]), img, names.index(r["color"])))
        elif kind == "multiple-choice":
            order = np.random.default_rng([cfg.seed, r["index"]]).permutation(len(names)).tolist()
            candidates = tuple(f"a {names[i]} square" for i in order)
            splits[split].append(ChoiceSample(str(r["index"]), img, candidates, order.index(names.index(r["color"]))))
        else:
            splits[split].append(
                CaptionSample(str(r["index"]), img, (f"a {r['color']} square", f"a {r['color']} square on black"))
            )
    qa = [s for v in splits.values() for s in v if isinstance(s, QASample)]
    return TaskData(
        "example-colors",
        kind,
        root,
        splits,
        revision,
        answer_vocab=answer_vocabulary([s for s in qa if not s.id.startswith("t")]) or None,
        vocab_rule=describe_rule("all"),
        class_names=names if kind == TaskKind.ZEROSHOT else None,
        templates=["a {} square"] if kind == TaskKind.ZEROSHOT else None,
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
        outputs = len(vocab) + (kind == TaskKind.ANSWERABILITY)
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
        logits = out[:, : len(self.vocab)]
        if batch.soft_labels is not None:
            # Soft targets (train.targets = "soft"): BCE per answer, summed over answers as VQA heads do.
            loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.soft_labels, reduction="sum")
            loss = loss / logits.shape[0]
        else:
            loss = nn.functional.cross_entropy(
                logits, batch.labels, ignore_index=-1, label_smoothing=self.cfg.train.label_smoothing
            )
        if self.kind == TaskKind.ANSWERABILITY:
            loss = loss + nn.functional.binary_cross_entropy_with_logits(out[:, -1], batch.answerable)
        return loss

    def predict(self, batch):
        out = self(batch).float()
        conf, idx = out[:, : len(self.vocab)].softmax(-1).max(-1)
        preds = [{"answer": self.vocab[i], "confidence": c} for i, c in zip(idx.tolist(), conf.tolist())]
        if self.kind == TaskKind.ANSWERABILITY:
            for p, s in zip(preds, out[:, -1].sigmoid().tolist()):
                p["answerable_score"] = s
        return preds


@dataclass(frozen=True)
class ColorNameConfig:
    image_size: int = 16
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(splits=("test",)))


class ColorName(TaskModel):
    """Zero-shot: score each class by how close the image's brightest colour is to its name's RGB.

    As a captioner it names the closest colour: "a <colour> square".
    """

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
        if hasattr(batch, "candidates"):  # multiple choice: the candidate naming the closest colour
            names = [self.class_names[i] for i in logits.argmax(1).tolist()]
            return [
                {"choice": next((j for j, c in enumerate(cs) if n in c), 0)} for n, cs in zip(names, batch.candidates)
            ]
        if hasattr(batch, "captions"):
            return [{"caption": f"a {self.class_names[i]} square"} for i in logits.argmax(1).tolist()]
        return [{"logits": row} for row in logits.tolist()]


@hookimpl
def register_tasks(register):
    register(MULTIPLE_CHOICE)


@hookimpl
def register_datasets(register):
    register(
        DatasetSpec(
            "example-colors",
            (TaskKind.VQA, TaskKind.ANSWERABILITY, TaskKind.ZEROSHOT, TaskKind.CAPTIONING, "multiple-choice"),
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
            (TaskKind.ZEROSHOT, TaskKind.CAPTIONING, "multiple-choice"),
            ColorNameConfig,
            lambda cfg, data, device: ColorName(cfg, data.class_names or list(COLORS)),
        )
    )
    from vqabench_example import models  # after BagOfWords exists: the models build on it

    register(
        ModelSpec(
            "example-bow-soft",
            "Example",
            "Example BoW (soft targets)",
            (TaskKind.VQA,),
            BowConfig,
            lambda cfg, data, device: BagOfWords(cfg, data.answer_vocab, data.kind),
            profiles={"quick": {"train": models.soft_recipe()}},
            description="example-bow trained with BCE on soft targets from every human answer",
        )
    )
    register(
        ModelSpec(
            "example-staged",
            "Example",
            "Example two-stage (head, then adapter)",
            (TaskKind.VQA,),
            models.StagedConfig,
            lambda cfg, data, device: models.StagedBow(cfg, data.answer_vocab),
        )
    )
    register(
        ModelSpec(
            "example-caption",
            "Example",
            "Example retrieval captioner",
            (TaskKind.CAPTIONING,),
            models.RetrievalCaptionConfig,
            lambda cfg, data, device: models.RetrievalCaptioner(
                cfg, sorted({c for s in data.splits["train"] for c in s.captions})
            ),
        )
    )
    register(
        ModelSpec(
            "example-dann",
            "Example",
            "Example domain-adversarial BoW",
            (TaskKind.VQA,),
            models.DannConfig,
            lambda cfg, data, device: models.DannBow(cfg, data.answer_vocab),
        )
    )
