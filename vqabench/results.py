"""Result records, stored predictions and the status ledger of a run directory.

Layout under a run directory::

    <runs>/status.json                                   the ledger: one entry per (model, task) cell
    <runs>/<dataset>/<kind>/<model>/<profile>-seed<N>/
        record.json                                      the result record (schema: RECORD_FIELDS)
        predictions-<split>.jsonl                        one line per sample, re-scorable alone
        ckpt/                                            safetensors checkpoints (best, last)

Every file is written to a temporary name and renamed, so a killed run never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

RECORD_FIELDS = {
    "schema": "record schema version",
    "model": "model name as registered (with @tag when given)",
    "display_name": "model name for tables",
    "family": "model family",
    "dataset": "dataset name",
    "kind": "task kind (vqa, answerability, zeroshot, captioning)",
    "profile": "quick or paper",
    "seed": "random seed",
    "config": "resolved model, train and dataset configuration",
    "config_hash": "hash of config, profile, seed and limit: a rerun with the same hash is skipped",
    "weights": "weights used: a pretrained tag or 'random init'",
    "partial": "true when --limit sampled the data; then 'limit' and 'sample_ids' say how",
    "augmentations": "{'used': [...], 'disabled': {name: reason}}",
    "cached": "{'image': cached stem or null, 'text': memoised text encoder or null, 'off': why the image cache was off}",
    "compiled": "methods run through torch.compile (train.compile), [] when eager",
    "params": "{'trainable': int, 'total': int}",
    "history": "per epoch: train_loss, seconds, lr per group, val metrics",
    "step_losses": "training loss of every step",
    "final": "{split: metrics} of the best-validation checkpoint",
    "best_epoch": "epoch of the best validation metric",
    "baseline": "majority-answer baseline on each evaluated split, where it applies",
    "timing": "seconds per epoch, total, training images/s and samples/s, inference samples/s",
    "memory": "peak memory in bytes and what was measured (cuda allocator or process RSS)",
    "device": "device name",
    "versions": "python, torch, vqabench and the plugins' distribution versions",
    "finished": "UTC time the record was written",
}


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: Path, lines: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{path}:{n}: not valid JSON ({exc.msg}); delete the file and rerun the cell"
                    ) from None
    return out


def cell_dir(runs: Path, dataset: str, kind: str, model: str, profile: str, seed: int) -> Path:
    return runs / dataset / kind / model.replace("@", "_at_") / f"{profile}-seed{seed}"


def read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}); delete it and rerun the cell") from None
    if record.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"{path}: record schema {record.get('schema')!r}, this vqabench reads {SCHEMA_VERSION}")
    return record


def iter_records(runs: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every result record under ``runs``, in path order."""
    for path in sorted(Path(runs).rglob("record.json")):
        yield path, read_record(path)


class Ledger:
    """The status of every (model, task) cell of a run directory: pending, done, skipped, failed."""

    STATES = ("pending", "running", "done", "skipped", "failed")

    def __init__(self, runs: Path) -> None:
        self.path = Path(runs) / "status.json"
        self.cells: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self.cells = json.loads(self.path.read_text(encoding="utf-8")).get("cells", {})

    def set(self, cell: str, state: str, **info: Any) -> None:
        if state not in self.STATES:
            raise ValueError(f"ledger cell {cell!r}: unknown state {state!r}; states are {', '.join(self.STATES)}")
        self.cells[cell] = {"state": state, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
        atomic_write_json(self.path, {"cells": self.cells})

    def summary(self) -> list[tuple[str, str, str]]:
        return [(c, v["state"], v.get("reason") or v.get("error") or "") for c, v in sorted(self.cells.items())]
