"""The registered DatasetSpec and the TaskData it loads for every task kind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mini_clevr_fixtures import tiny_config, tiny_options, tiny_root, tiny_tables  # noqa: F401 (fixtures)
from vqabench_plugins.mini_clevr import QUICK, load
from vqabench_plugins.mini_clevr.config import COLORS, UNANSWERABLE, MiniClevrConfig
from vqabench_plugins.mini_clevr.generate import generate
from vqabench_plugins.mini_clevr.manifest import verify
from vqabench_plugins.mini_clevr.zeroshot import CLASS_NAMES

from vqabench.config import apply_overrides
from vqabench.plugins import load_plugins
from vqabench.tasks import TaskKind, get_task
from vqabench.tasks.captioning import CaptionSample
from vqabench.tasks.qa import QASample
from vqabench.tasks.zeroshot import ImageSample

REPORT_003 = ["{}", "a photo of a {}.", "This is a photo of {}", "This is not a photo of {}", "No {}, no score."]
SPLITS = ["train", "val", "test"]
TARGET_SPLITS = ["target_train", "target_val", "target_test"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def loaded(tiny_config, cache_dir):
    """kind -> TaskData, loaded through the plugin (the first call generates into the cache)."""
    tasks = {}

    def get(kind):
        if kind not in tasks:
            tasks[kind] = load(tiny_config, kind, cache_dir)
        return tasks[kind]

    return get


@pytest.mark.parametrize("kind", list(TaskKind), ids=lambda k: k.value)
def test_every_kind_has_nonempty_valid_splits(loaded, kind, cache_dir):
    task = loaded(kind)
    assert task.kind == kind and type(task.kind) is str  # kinds are plain strings
    get_task(task.kind).check_data(task)
    if kind in (TaskKind.VQA, TaskKind.ANSWERABILITY):
        assert task.vocab_rule.startswith("every answer the generator can produce")
    assert task.dataset == "mini-clevr"
    assert task.root.parent == cache_dir and task.revision == verify(task.root)["revision"]
    assert task.unsafe_augmentations == frozenset({"hflip", "hue", "crop", "erase"})
    expected = SPLITS if task.kind == TaskKind.ZEROSHOT else SPLITS + TARGET_SPLITS
    assert list(task.splits) == expected
    ids = set()
    for split, samples in task.splits.items():
        assert samples, split
        for s in samples:
            assert s.id.startswith(f"{split}/") and s.id not in ids
            ids.add(s.id)
            assert os.path.isabs(s.image) and Path(s.image).is_file()
            assert Path(s.image).parent.name == split


@pytest.mark.parametrize("kind", [TaskKind.VQA, TaskKind.ANSWERABILITY], ids=lambda k: k.value)
def test_qa_kinds(loaded, kind):
    task = loaded(kind)
    samples = [s for split in task.splits.values() for s in split]
    assert all(isinstance(s, QASample) and len(s.answers) == 1 for s in samples)
    assert {s.question_type for s in samples} == {"query_color", "count", "left_of"}
    assert task.vqa_mode == "vqa"
    answerable = [s for s in samples if s.answerable]
    assert all(s.answers[0] in task.answer_vocab for s in samples)
    assert {s.answer_type for s in answerable} == {"other", "number", "yes/no"}
    if task.kind == TaskKind.VQA:
        assert answerable == samples and UNANSWERABLE not in task.answer_vocab
        assert task.answer_vocab[: len(COLORS)] == list(COLORS)
    else:
        unanswerable = [s for s in samples if not s.answerable]
        assert unanswerable and all(
            s.answers == (UNANSWERABLE,) and s.answer_type == UNANSWERABLE for s in unanswerable
        )
        assert task.answer_vocab[-1] == UNANSWERABLE
        assert 0.03 < len(unanswerable) / len(samples) < 0.2


def test_zeroshot_kind(loaded):
    task = loaded(TaskKind.ZEROSHOT)
    assert task.class_names == list(CLASS_NAMES) and len(task.class_names) == 24
    assert "red circle" in task.class_names and "cyan pentagon" in task.class_names
    for template in REPORT_003:
        assert template in task.templates
    five = [t for t in task.templates if t.format("x") == "x x x x x"]
    assert len(five) == 1, "report 003's class-name-five-times prompt"
    assert len(task.templates) == 6 and all(t.format("red circle").count("red circle") >= 1 for t in task.templates)
    for split, samples in task.splits.items():
        assert all(isinstance(s, ImageSample) for s in samples)
        assert sorted({s.label for s in samples}) == list(range(24)), split


def test_captioning_kind(loaded):
    task = loaded(TaskKind.CAPTIONING)
    for split, samples in task.splits.items():
        assert all(isinstance(s, CaptionSample) and len(s.captions) == 5 for s in samples)
        assert {s.domain for s in samples} == {"target" if split.startswith("target_") else "source"}


def test_plugin_registers_through_its_entry_point(monkeypatch):
    monkeypatch.setenv("VQABENCH_PLUGINS", "mini_clevr")
    registry, infos = load_plugins()
    assert [i.error for i in infos if i.name == "mini_clevr"] == [None]
    spec = registry.dataset("mini-clevr")
    assert set(spec.task_kinds) == set(TaskKind)
    assert spec.config_cls is MiniClevrConfig and spec.load is load and spec.prepare is not None
    assert set(spec.profiles) == {"quick", "paper"} and spec.profiles["paper"] == {}
    assert spec.unsafe_augmentations == frozenset({"hflip", "hue", "crop", "erase"})
    quick = apply_overrides(MiniClevrConfig(), spec.profiles["quick"])
    assert (quick.images, quick.image_size) == (1000, 64)


def test_quick_profile_is_small_and_complete(tmp_path):
    config = MiniClevrConfig(**QUICK, workers=2)
    manifest = generate(config, tmp_path / "quick")
    questions = sum(
        len((tmp_path / "quick" / rel).read_text().splitlines())
        for rel in manifest["files"]
        if rel.startswith("questions/") and "target" not in rel
    )
    assert 3500 < questions < 4500
    assert sum(rel.startswith("images/train/") for rel in manifest["files"]) == 800
