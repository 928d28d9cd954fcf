"""Trainings shared by the cells of one model that differ only in their task kind.

A model that serves several kinds with the same parameters and loss (``TaskModel.
training_depends_on_kind = False``: CLIP-linear answers, types and answerability in one network)
trains once per dataset: the second kind's cell loads the first one's weights. What determines a
training is its key: the model and its config, the dataset and its config, the training and
validation samples as the cell sees them (``--limit`` included), the answer vocabulary, the
selection metric and the seed; the kind only when the model's training depends on it. A model
that selects its checkpoint by a kind's own metric gets a different key per kind (``val_loss``
is the same for every kind).

The cell that trains keeps its checkpoints in its own ``ckpt/`` as always and then publishes them
under ``<out>/trained/<key>.json``; a later cell with that key restores them through the engine's
resume path (every stage finished: nothing is trained) and its record says which cell trained.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from vqabench.config import config_hash
from vqabench.engine import training_done
from vqabench.files import atomic_write_json

INDEX = "trained"


def _samples_digest(samples: list[Any]) -> str:
    """A hash of the samples' content: every field (id, question, answers, ...) but the image path,
    which names a file in this machine's cache; the dataset revision covers the image contents."""
    h = hashlib.sha256()
    for s in samples:
        fields = {k: v for k, v in vars(s).items() if k != "image"} if dataclasses.is_dataclass(s) else s
        h.update(repr(fields).encode())
        h.update(b"\n")
    return h.hexdigest()


def training_key(prep: Any) -> str:
    """What determines the weights a cell trains (see the module docstring)."""
    train = prep.train
    names = [n for stage in train.resolved_stages() for n in stage.streams or ("train",)] + [train.val_split]
    return config_hash(
        {
            "model": str(prep.cell.ref),
            "mcfg": prep.mcfg,
            "dataset": prep.cell.dataset.name,
            "dcfg": prep.dcfg,
            "revision": prep.data.revision,
            "samples": {n: _samples_digest(prep.splits[n]) for n in dict.fromkeys(names)},
            "vocab": prep.data.answer_vocab,
            "vqa_mode": prep.data.vqa_mode,
            "best_metric": prep.task.check_best_metric(train.best_metric).name,
            "kind": prep.cell.kind if prep.model.training_depends_on_kind else None,
            "seed": prep.opts.seed,
        }
    )


def _index(out: Path, key: str) -> Path:
    return out / INDEX / f"{key}.json"


def find(out: Path, key: str, train: Any) -> dict[str, Any] | None:
    """The published training of ``key`` whose checkpoints are all there, or None."""
    import json

    try:
        entry = json.loads(_index(out, key).read_text(encoding="utf-8"))
        ckpt = out / entry["ckpt"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none, or unreadable: this cell trains and publishes its own
    return {**entry, "path": ckpt} if training_done(ckpt, train) else None


def publish(out: Path, key: str, ckpt: Path, cell_key: str) -> None:
    """Make the finished training in ``ckpt`` (a directory under ``out``) loadable by ``key``."""
    atomic_write_json(_index(out, key), {"key": key, "cell": cell_key, "ckpt": str(ckpt.relative_to(out))})
