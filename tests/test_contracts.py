"""Contract tests over every registered dataset and model (first-party and the example plugin)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image
from vqabench_plugins.caption_fixture import write_coco, write_flickr30k
from vqabench_plugins.vg_fixture import write_fixture as write_vg
from vqabench_plugins.vizwiz_fixture import write_fixture
from vqabench_plugins.vqav2_fixture import write_fixture as write_vqav2

from vqabench.config import apply_overrides, train_config
from vqabench.data import Batches, ImageStore
from vqabench.plugins import load_plugins
from vqabench.tasks import TaskData, TaskKind, get_task
from vqabench.tasks.base import CollateContext, Streams
from vqabench.vocab import AnswerTargets

# Small dataset options per dataset, so each contract test generates in a second or two.
TINY_DATA = {
    "mini-clevr": {"images": 24, "image_size": 48, "zeroshot_per_class": 10},
    "mini-clevr-relations": {"images": 24, "image_size": 48, "zeroshot_per_class": 10},
    "example-colors": {},
}


def _image_folder(root):
    """A train/val/test folder tree of two classes, two images each."""
    for split in ("train", "val", "test"):
        for c, colour in (("red_square", (200, 30, 30)), ("blue_square", (30, 30, 200))):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((16, 16, 3), colour, dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return {"root": str(root)}


# Datasets that read a user's files: their options after writing a small tree under the given path.
TINY_FILES = {
    "image-folder": _image_folder,
    "coco-captions": lambda root: {"root": str(write_coco(root, train_images=2, val_images=3, image_size=16))},
    "flickr30k": lambda root: {
        "root": str(write_flickr30k(root, train_images=2, val_images=1, test_images=1, image_size=16))
    },
    "vizwiz": lambda root: {"root": str(write_fixture(root, train=10, val=4, test=2, image_size=16))},
    "visual-genome": lambda root: {"root": str(write_vg(root, images=10, image_size=16))},
    # min_count=1: on 18 questions no answer reaches the full-size rule's 9.
    "vqav2": lambda root: {
        "root": str(write_vqav2(root, train_images=6, val_images=3, questions_per_image=2, image_size=16)),
        "min_count": 1,
    },
}


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
    for overrides in spec.profiles.values():
        apply_overrides(spec.config_cls(), overrides)
    options = TINY_FILES[name](tmp_path / "files") if name in TINY_FILES else TINY_DATA[name]
    cfg = apply_overrides(spec.config_cls(), options)
    for kind in spec.task_kinds:
        task = get_task(kind)
        data = spec.load(cfg, kind, tmp_path)
        assert isinstance(data, TaskData) and data.kind == kind and type(data.kind) is str and data.revision
        task.check_data(data)  # sample types and unique ids, per split
        for split in ("train", "val", "test"):
            samples = data.split(split)
            assert samples and all(isinstance(s, task.sample_type) for s in samples), (kind, split)
            assert len({s.id for s in samples}) == len(samples)
        if kind in (TaskKind.VQA, TaskKind.ANSWERABILITY):
            assert data.answer_vocab and len(set(data.answer_vocab)) == len(data.answer_vocab)
            assert data.vocab_rule
        if kind == TaskKind.ZEROSHOT:
            assert (
                data.class_names
                and data.templates
                and all(0 <= s.label < len(data.class_names) for s in data.split("test"))
            )


def _four_samples(kind: str, root) -> TaskData:
    """Four samples on two synthetic images, from the kind's own fixture: what every model must handle."""
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        path = root / f"{i}.png"
        Image.fromarray(np.full((40, 40, 3), colour, dtype=np.uint8)).save(path)
        paths.append(str(path))
    data = TaskData("contract", kind, root, revision="rev0", **get_task(kind).fixture(paths))
    get_task(kind).check_data(data)
    return data


def _tiny_caption_lm(root):
    """A random caption LM saved as ``vqabench pretrain caption-lm`` saves one; its artefact file."""
    from vqabench_plugins.clip_decoder_lm import CaptionLMConfig, new_model, save

    cfg = CaptionLMConfig(layers=1, width=32, heads=2)
    model, tokenizer = new_model(cfg, ["a red square", "a blue square"])
    root.mkdir(parents=True, exist_ok=True)
    return save(model, cfg, tokenizer, root)


def _local_checkpoints(cfg, tmp_path):
    """``cfg`` with each ``pretrain:`` reference replaced by a small random checkpoint of the same
    form (the real one takes minutes to train), in the architecture the config asks for."""
    from helpers import save_tiny_clip_checkpoint

    from vqabench.pretrain import SCHEME

    found = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, str) and value.startswith(f"{SCHEME}caption-lm/"):
            found[f.name] = str(_tiny_caption_lm(tmp_path / "caption-lm"))  # a language model, not a CLIP
        elif isinstance(value, str) and value.startswith(f"{SCHEME}clip-prefix/"):
            found[f.name] = "none"  # a captioner's stage 1, not a CLIP: mapper and decoder from random init
        elif isinstance(value, str) and value.startswith(SCHEME):
            model_cfg = dict(getattr(cfg, "model_cfg", None) or {}) or None
            found[f.name] = str(save_tiny_clip_checkpoint(tmp_path / "pretrained", model_cfg))
    return dataclasses.replace(cfg, **found)


@pytest.mark.parametrize("name", sorted(REGISTRY.models))
def test_model_contract_on_four_samples(registry, name, tmp_path):
    spec = registry.model(name)
    assert _frozen_dataclass(spec.config_cls) and spec.display_name and spec.task_kinds
    cfg = _local_checkpoints(apply_overrides(spec.config_cls(), spec.profiles.get("quick", {})), tmp_path)
    recipe = train_config(cfg)
    assert recipe is None or dataclasses.is_dataclass(recipe)
    for overrides in spec.tags.values():
        if all(k.split(".")[0] in {f.name for f in dataclasses.fields(cfg)} for k in overrides):
            apply_overrides(cfg, overrides)
    for kind in spec.task_kinds:
        task = get_task(kind)
        data = _four_samples(kind, tmp_path)
        torch.manual_seed(0)
        model = spec.build(cfg, data, torch.device("cpu"))
        store = ImageStore.build([s.image for s in data.split("train")], model.image_size, None, data.revision)
        answers = AnswerTargets(data.answer_vocab) if data.answer_vocab else None
        targets = recipe.targets if recipe is not None else "hard"
        ctx = CollateContext(store, None, None, answers, targets, torch.device("cpu"))
        (batch,) = list(Batches(task, data.split("train"), 4, ctx))
        if recipe is not None:
            # Every stage: the model may change itself first; its groups then need the stage's rates.
            rated = set()
            for stage in recipe.resolved_stages():
                model.begin_stage(stage)
                rated |= set(stage.lrs)
                model.zero_grad(set_to_none=True)
                model.train()
                streams = stage.streams or ("train",)
                step = batch if len(streams) == 1 else Streams({name: batch for name in streams})
                loss = model.loss(step)
                assert loss.dim() == 0 and math.isfinite(loss.item()), stage.name
                loss.backward()
                groups = {n: ps for n, ps in model.param_groups().items() if n in stage.lrs}
                assert groups, f"stage {stage.name!r} trains none of the groups {set(model.param_groups())}"
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for ps in groups.values() for p in ps)
            groups = set(model.param_groups())
            assert groups <= rated, f"groups {groups} need learning rates in the recipe"
        model.eval()
        preds = model.predict(batch)
        assert len(preds) == 4 and all(set(task.prediction_fields) <= set(p) for p in preds)
        task.check_predictions(model, preds)
        lines = [{**task.reference_fields(s), **p} for s, p in zip(data.split("train"), preds)]
        if kind != "captioning":  # the Java scorers take seconds to start; test_runner scores captions
            assert task.primary_metric in task.score(lines, **task.score_options(data))
        assert isinstance(model.weights, str) and model.weights
