"""Reproducibility, the manifest, the cache and clear errors on broken directories."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from mini_clevr_fixtures import tiny_config, tiny_options, tiny_root, tiny_tables  # noqa: F401 (fixtures)
from vqabench_plugins.mini_clevr import generate as gen
from vqabench_plugins.mini_clevr import load, prepare, store
from vqabench_plugins.mini_clevr.config import MiniClevrConfig, config_key
from vqabench_plugins.mini_clevr.manifest import MANIFEST, DatasetError, digest, dumps, verify, write_manifest

from vqabench.tasks import TaskKind


def _manifest(root):
    return json.loads((root / MANIFEST).read_text())


def _some_png(root):
    return sorted((root / "images" / "val").glob("*.png"))[0]


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, tiny_root, tiny_options):
    one = gen.generate(MiniClevrConfig(**tiny_options, workers=1), tmp_path / "one")
    assert one == _manifest(tiny_root)  # tiny_root was made with two workers
    for rel in ("questions/train.jsonl", "meta.json", "images/target_val/mini_clevr_target_val_000032.png"):
        assert (tmp_path / "one" / rel).read_bytes() == (tiny_root / rel).read_bytes()
    other = gen.generate(MiniClevrConfig(**{**tiny_options, "seed": 4}, workers=1), tmp_path / "other")
    assert other["revision"] != one["revision"]


def test_cache_key_ignores_runtime_fields():
    base = MiniClevrConfig()
    assert config_key(base) == config_key(dataclasses.replace(base, workers=3, root="/x"))
    assert config_key(base) != config_key(dataclasses.replace(base, seed=1))


@pytest.fixture()
def cached(tmp_path, tiny_options):
    """A tiny dataset generated into a cache directory through ``ensure``."""
    config = MiniClevrConfig(**tiny_options, workers=1)
    root, manifest = store.ensure(config, tmp_path / "cache")
    assert root == store.cache_path(config, tmp_path / "cache")
    return config, root, manifest


def test_cache_reuses_a_valid_directory(cached):
    config, root, manifest = cached
    stamp = (root / MANIFEST).stat().st_mtime_ns
    assert store.ensure(config, root.parent) == (root, manifest)
    assert (root / MANIFEST).stat().st_mtime_ns == stamp


def test_cache_regenerates_a_partial_directory(cached):
    config, root, manifest = cached
    (root / MANIFEST).unlink()  # as if generation had been killed before the end
    _some_png(root).unlink()
    again, regenerated = store.ensure(config, root.parent)
    assert again == root and regenerated == manifest
    assert verify(root)["revision"] == manifest["revision"]


def test_cache_regenerates_a_tampered_file(cached):
    config, root, manifest = cached
    png = _some_png(root)
    original = png.read_bytes()
    png.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # same size, other content
    with pytest.raises(DatasetError, match="does not match"):
        verify(root)
    store.ensure(config, root.parent)
    assert png.read_bytes() == original


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch, tiny_options):
    calls = []

    def failing(*args):
        calls.append(args)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return original(*args)

    original = gen._make_scene
    monkeypatch.setattr(gen, "_make_scene", failing)
    with pytest.raises(KeyboardInterrupt):
        gen.generate(MiniClevrConfig(**tiny_options, workers=1), tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


def test_explicit_root_is_checked_not_regenerated(tmp_path, tiny_options):
    root = tmp_path / "prepared"
    config = MiniClevrConfig(**tiny_options, workers=1)
    assert prepare(config, root) == root
    assert prepare(config, root) == root  # already there: kept
    explicit = dataclasses.replace(config, root=str(root))
    assert load(explicit, TaskKind.VQA, tmp_path / "unused").root == root

    png = _some_png(root)
    png.write_bytes(b"not a png")
    with pytest.raises(DatasetError) as err:
        load(explicit, TaskKind.VQA, tmp_path / "unused")
    assert str(png) in str(err.value) and f"vqabench data prepare mini-clevr --root {root}" in str(err.value)

    (root / MANIFEST).unlink()
    with pytest.raises(DatasetError, match="manifest.json is missing"):
        load(explicit, TaskKind.VQA, tmp_path / "unused")
    assert not (tmp_path / "unused").exists()


def test_prepare_refuses_other_content(tmp_path, tiny_options):
    config = MiniClevrConfig(**tiny_options, workers=1)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not an empty directory"):
        prepare(config, busy)
    assert (busy / "notes.txt").read_text() == "mine"

    empty = tmp_path / "empty"
    empty.mkdir()
    prepare(config, empty)
    with pytest.raises(DatasetError, match="other options"):
        prepare(dataclasses.replace(config, seed=9), empty)


def _rewrite(root, rel, text):
    """Change a file and re-sign the manifest, so that only the content check can catch it."""
    (root / rel).write_text(text)
    files = _manifest(root)["files"]
    files[rel] = digest((root / rel).read_bytes())
    write_manifest(root, files)


def test_malformed_lines_name_file_line_and_fix(tmp_path, tiny_root, tiny_options):
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    config = MiniClevrConfig(**tiny_options, root=str(root))
    lines = (root / "questions" / "val.jsonl").read_text().splitlines()

    _rewrite(root, "questions/val.jsonl", "\n".join([lines[0], "{broken", *lines[2:]]) + "\n")
    with pytest.raises(DatasetError) as err:
        load(config, TaskKind.VQA, tmp_path)
    message = str(err.value)
    assert f"{root / 'questions' / 'val.jsonl'}:2: not valid JSON" in message
    assert f"delete {root} and run `vqabench data prepare mini-clevr --root {root}`" in message

    row = json.loads(lines[1])
    row["image_filename"] = "images/val/missing.png"
    _rewrite(root, "questions/val.jsonl", "\n".join([lines[0], json.dumps(row), *lines[2:]]) + "\n")
    with pytest.raises(DatasetError, match=r"val.jsonl:2 field image_filename: image 'images/val/missing.png' is not"):
        load(config, TaskKind.ANSWERABILITY, tmp_path)

    del row["question"]
    row["image_filename"] = json.loads(lines[1])["image_filename"]
    _rewrite(root, "questions/val.jsonl", "\n".join([lines[0], json.dumps(row), *lines[2:]]) + "\n")
    with pytest.raises(DatasetError, match="val.jsonl:2: missing field"):
        load(config, TaskKind.VQA, tmp_path)


def test_every_line_is_canonical_json(tiny_root):
    """Sorted keys, no spaces: what makes files byte-identical across runs."""
    for path in tiny_root.rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            assert dumps(json.loads(line)) == line, path
    questions = [json.loads(line) for line in (tiny_root / "questions" / "train.jsonl").read_text().splitlines()]
    assert [q["question_index"] for q in questions] == list(range(len(questions)))


def test_a_failing_worker_leaves_nothing(tmp_path, tiny_options):
    # Six objects 100 px apart cannot fit a 64 px canvas: the workers raise.
    config = MiniClevrConfig(**{**tiny_options, "min_objects": 6, "clearance": 350.0}, workers=2)
    with pytest.raises(RuntimeError, match="no valid scene"):
        gen.generate(config, tmp_path / "data")
    assert list(tmp_path.iterdir()) == []
