"""Contract tests over every registered dataset and model (first-party and the example plugin)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vqabench.config import apply_overrides
from vqabench.data import Batches, ImageStore
from vqabench.plugins import load_plugins
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.captioning import CaptionSample
from vqabench.tasks.qa import QASample
from vqabench.tasks.zeroshot import ImageSample

SAMPLE_TYPES = {
    TaskKind.VQA: QASample,
    TaskKind.ANSWERABILITY: QASample,
    TaskKind.ZEROSHOT: ImageSample,
    TaskKind.CAPTIONING: CaptionSample,
}
PREDICTION_FIELDS = {
    TaskKind.VQA: {"answer"},
    TaskKind.ANSWERABILITY: {"answerable_score"},
    TaskKind.ZEROSHOT: {"logits"},
    TaskKind.CAPTIONING: {"caption"},
}
# Small dataset options per dataset, so each contract test generates in a second or two.
TINY_DATA = {"mini-clevr": {"images": 24, "image_size": 48, "zeroshot_per_class": 10}, "example-colors": {}}


def _load():
    """Every installed plugin plus the example plugin (imported from its source folder)."""
    import importlib
    import sys

    from conftest import EXAMPLE_DIR

    sys.path.insert(0, str(EXAMPLE_DIR))
    try:
        registry, infos = load_plugins(extra={"example": importlib.import_module("vqabench_example")})
    finally:
        sys.path.remove(str(EXAMPLE_DIR))
    assert all(i.status == "ok" for i in infos), [(i.name, i.error) for i in infos if i.error]
    return registry


REGISTRY = _load()


@pytest.fixture
def registry():
    return REGISTRY


def _frozen_dataclass(cls) -> bool:
    return dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


@pytest.mark.parametrize("name", sorted(REGISTRY.datasets))
def test_dataset_contract(registry, name, tmp_path):
    spec = registry.dataset(name)
    assert _frozen_dataclass(spec.config_cls) and spec.task_kinds
    for profile, overrides in spec.profiles.items():
        apply_overrides(spec.config_cls(), overrides)
    cfg = apply_overrides(spec.config_cls(), TINY_DATA[name])
    for kind in spec.task_kinds:
        data = spec.load(cfg, kind, tmp_path)
        assert isinstance(data, TaskData) and data.kind is kind and data.revision
        for split in ("train", "val", "test"):
            samples = data.split(split)
            assert samples and all(isinstance(s, SAMPLE_TYPES[kind]) for s in samples), (kind, split)
            assert len({s.id for s in samples}) == len(samples)
        if kind in (TaskKind.VQA, TaskKind.ANSWERABILITY):
            assert data.answer_vocab and len(set(data.answer_vocab)) == len(data.answer_vocab)
        if kind == TaskKind.ZEROSHOT:
            assert (
                data.class_names
                and data.templates
                and all(0 <= s.label < len(data.class_names) for s in data.split("test"))
            )


def _four_samples(kind: TaskKind, root) -> TaskData:
    """Four samples on two synthetic images: the fixture every model must handle."""
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        path = root / f"{i}.png"
        Image.fromarray(np.full((40, 40, 3), colour, dtype=np.uint8)).save(path)
        paths.append(str(path))
    vocab = ["red", "blue", "yes", "no"]
    if kind in (TaskKind.VQA, TaskKind.ANSWERABILITY):
        samples = [
            QASample(f"q{i}", paths[i % 2], q, (a,), t, answerable=i != 3)
            for i, (q, a, t) in enumerate(
                [
                    ("what color is it?", "red", "color"),
                    ("what color is it?", "blue", "color"),
                    ("is it red?", "yes", "yes/no"),
                    ("is it red?", "no", "yes/no"),
                ]
            )
        ]
    elif kind == TaskKind.ZEROSHOT:
        samples = [ImageSample(f"z{i}", paths[i % 2], i % 2) for i in range(4)]
    else:
        samples = [CaptionSample(f"c{i}", paths[i % 2], ("a red square", "a square")) for i in range(4)]
    return TaskData(
        "contract",
        kind,
        root,
        {"train": samples, "val": samples, "test": samples},
        "rev0",
        answer_vocab=vocab,
        class_names=["red", "blue"],
        templates=["a {} image"],
    )


@pytest.mark.parametrize("name", sorted(REGISTRY.models))
def test_model_contract_on_four_samples(registry, name, tmp_path):
    spec = registry.model(name)
    assert _frozen_dataclass(spec.config_cls) and spec.display_name and spec.task_kinds
    cfg = apply_overrides(spec.config_cls(), spec.profiles.get("quick", {}))
    assert dataclasses.is_dataclass(cfg.train)
    for tag, overrides in spec.tags.items():
        if all(k.split(".")[0] in {f.name for f in dataclasses.fields(cfg)} for k in overrides):
            apply_overrides(cfg, overrides)
    for kind in spec.task_kinds:
        data = _four_samples(kind, tmp_path)
        torch.manual_seed(0)
        model = spec.build(cfg, data, torch.device("cpu"))
        store = ImageStore.build([s.image for s in data.split("train")], model.image_size, None, data.revision)
        index = {a: i for i, a in enumerate(data.answer_vocab)}
        (batch,) = list(Batches(kind, data.split("train"), store, 4, False, 0, index))
        if model.trains:
            loss = model.loss(batch)
            assert loss.dim() == 0 and math.isfinite(loss.item())
            loss.backward()
            groups = model.param_groups()
            assert set(groups) <= set(cfg.train.lrs), f"groups {set(groups)} need learning rates in the recipe"
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for ps in groups.values() for p in ps)
        model.eval()
        preds = model.predict(batch)
        assert len(preds) == 4 and all(PREDICTION_FIELDS[kind] <= set(p) for p in preds)
        assert isinstance(model.weights, str) and model.weights
