"""Tiny Mini-CLEVR datasets shared by the test modules, which import these fixtures by name.

Not a conftest.py: the root tests/conftest.py must stay the only module named ``conftest``
(other tests import helpers from it). The dataset is generated once per session.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vqabench_plugins.mini_clevr.config import MiniClevrConfig
from vqabench_plugins.mini_clevr.generate import generate

# 40 images at 64 px, every split non-empty, target train included.
TINY = dict(images=40, image_size=64, zeroshot_per_class=10, target_train_fraction=0.25, seed=3)


@pytest.fixture(scope="session")
def tiny_options() -> dict:
    """The options of the tiny dataset (without ``workers``)."""
    return dict(TINY)


@pytest.fixture(scope="session")
def tiny_config() -> MiniClevrConfig:
    return MiniClevrConfig(**TINY, workers=2)


# Fixtures imported into several modules are set up once per module; this keeps one dataset.
_made: dict[str, object] = {}


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory, tiny_config) -> Path:
    """A generated tiny dataset; tests must not modify it."""
    if "root" not in _made:
        _made["root"] = tmp_path_factory.mktemp("mini-clevr") / "data"
        generate(tiny_config, _made["root"])
    return _made["root"]


@pytest.fixture(scope="session")
def tiny_tables(tiny_root):
    """(meta, scenes by (split, image_index), questions by split) of the tiny dataset."""
    if "tables" not in _made:
        _made["tables"] = _read_tables(tiny_root)
    return _made["tables"]


def _read_tables(tiny_root: Path):
    meta = json.loads((tiny_root / "meta.json").read_text())
    scenes, questions = {}, {}
    for split in meta["splits"]:
        for line in (tiny_root / "scenes" / f"{split}.jsonl").read_text().splitlines():
            s = json.loads(line)
            scenes[split, s["image_index"]] = s
        lines = (tiny_root / "questions" / f"{split}.jsonl").read_text().splitlines()
        questions[split] = [json.loads(line) for line in lines]
    return meta, scenes, questions
