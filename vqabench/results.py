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
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vqabench.files import atomic_write_json, atomic_write_text, dumps_json  # noqa: F401 (re-exported)

SCHEMA_VERSION = 2

RECORD_FIELDS = {
    "schema": "record schema version",
    "model": "model name as registered (with @tag when given)",
    "display_name": "model name for tables",
    "family": "model family",
    "dataset": "dataset name",
    "kind": "task kind (vqa, answerability, zeroshot, captioning, or a plugin's)",
    "profile": "quick or paper",
    "seed": "random seed",
    "config": "resolved model (train / eval recipe included), dataset and scoring configuration",
    "config_hash": "hash of config, profile, seed and limit: a rerun with the same hash is skipped",
    "weights": "weights used: a pretrained tag or 'random init', and what trained",
    "pretrained": "{config field: {'reference', 'key', 'path', 'evaluation'}} for each pretrain:NAME/DATASET "
    "reference the model config resolved (a pretraining run by vqabench itself); {} when none",
    "partial": "true when --limit sampled the data; then 'limit' and 'sample_ids' say how",
    "augmentations": "{'used': [...], 'disabled': {name: reason}}",
    "cached": "{'image': cached stem or null, 'text': cached text encoder or null, 'off': why the image cache was off}",
    "compiled": "methods run through torch.compile (train.compile), [] when eager",
    "params": "{'trainable': int, 'total': int}",
    "trained": "false for an evaluation-only model (then 'training' says so and no training fields follow)",
    "history": "trained only: per epoch: stage, train_loss, seconds, lr per group, val metrics when validated",
    "step_losses": "trained only: training loss of every step",
    "stages": "trained only: per stage: name, epochs, best epoch, selection metric and the val metrics there",
    "best_epoch": "trained only: epoch (over all stages) of the best validation metric of the last stage",
    "resumed_from": "trained only: {'stage', 'epoch'} when the run resumed from a checkpoint, else null",
    "final": "{split: metrics} of the selected checkpoint",
    "unscored": "{split: predictions} of the dataset's unlabelled splits (a challenge's test set): predicted and "
    "stored for export, not scored; {} when none",
    "shared_training": "trained only: {'key': training key, 'trained_by': the cell that trained the weights}; a "
    "model whose training does not depend on the kind loads another kind's training of the same key",
    "selections": "trained with train.keep_best only: {metric: {'epoch', 'val', 'split', 'test': metrics}} of the "
    "checkpoint each further selection metric kept ('note' instead when validation never produced the metric)",
    "variants": "models with prediction variants only: [{'name', 'split', 'test': metrics, 'samples_per_second'}], "
    "the default prediction first, then each variant (decoding settings)",
    "figures": "models that draw figures only: [{'title', 'file'}], PNGs under the cell directory",
    "baseline": "{split: {'label', 'prediction', metrics}}: the task's trivial baseline (majority answer, ...)",
    "data_notes": "what the dataset loader counted (e.g. relation questions built and pairs skipped, per split "
    "and reason); {} when nothing",
    "vocab": "answer vocabulary: size, rule and coverage (accuracy ceiling) per split; null without one",
    "warnings": "what the run found suspicious but could go on with, with counts (e.g. questions with no answer "
    "in the vocabulary, per split); [] when nothing",
    "timing": "total and inference samples/s; trained: seconds per epoch, training images/s and samples/s",
    "memory": "peak memory in bytes and what was measured (cuda allocator or process RSS)",
    "device": "device name",
    "versions": "python, torch, vqabench and the plugins' distribution versions",
    "finished": "UTC time the record was written",
}


def write_jsonl(path: Path, lines: Iterable[dict[str, Any]]) -> None:
    """Stored predictions: one strict-JSON object per line, written atomically."""
    atomic_write_text(path, "".join(dumps_json(line, indent=None) + "\n" for line in lines))


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


def _reject_constant(name: str) -> None:
    raise ValueError(f"bare {name} is not strict JSON")


def read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}); delete it and rerun the cell") from None
    if record.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"{path}: record schema {record.get('schema')!r}, this vqabench reads {SCHEMA_VERSION}")
    return record


def iter_records(runs: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every result record under ``runs``, in path order."""
    for path in sorted(Path(runs).rglob("record.json")):
        yield path, read_record(path)


class RunWarning(UserWarning):
    """Something a run repaired or noticed and went on with (the CLI prints it as one line)."""


class Ledger:
    """The status of every (model, task) cell of a run directory: pending, done, skipped, failed.

    The records are the source of truth; the ledger is a summary of them plus the states records
    cannot hold (pending, failed, skipped). A ledger that cannot be read (a truncated write by an
    older version, a hand edit) is moved aside and rebuilt from the records, with a warning.
    """

    STATES = ("pending", "running", "done", "skipped", "failed")

    def __init__(self, runs: Path) -> None:
        self.path = Path(runs) / "status.json"
        self.cells: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self.cells = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            cells = data.get("cells") if isinstance(data, dict) else None
            if not isinstance(cells, dict) or not all(isinstance(v, dict) and "state" in v for v in cells.values()):
                raise ValueError("no 'cells' table of {cell: {'state': ...}}")
            return cells
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return self._rebuild(exc)

    def _rebuild(self, why: Exception) -> dict[str, dict[str, Any]]:
        """Move the unreadable ledger aside (never delete it) and rebuild it from the records."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(self.path, aside)
        cells: dict[str, dict[str, Any]] = {}
        skipped = 0
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for path in sorted(self.path.parent.rglob("record.json")):
            try:
                rec = read_record(path)
                key = f"{rec['model']}|{rec['dataset']}/{rec['kind']}|{rec['profile']}|seed{rec['seed']}"
            except (ValueError, KeyError, TypeError, OSError):
                skipped += 1  # an unreadable record is not a done cell: its cell runs again
                continue
            cells[key] = {"state": "done", "updated": now, "record": str(path), "reason": "rebuilt from its record"}
        atomic_write_json(self.path, {"cells": cells})
        left_out = f"; {skipped} unreadable record(s) left out" if skipped else ""
        warnings.warn(
            f"{self.path} could not be read ({type(why).__name__}: {why}); moved it to {aside} and rebuilt the "
            f"ledger from the {len(cells)} record(s) under {self.path.parent}{left_out}",
            RunWarning,
            stacklevel=3,
        )
        return cells

    def set(self, cell: str, state: str, **info: Any) -> None:
        if state not in self.STATES:
            raise ValueError(f"ledger cell {cell!r}: unknown state {state!r}; states are {', '.join(self.STATES)}")
        self.cells[cell] = {"state": state, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
        atomic_write_json(self.path, {"cells": self.cells})

    def summary(self) -> list[tuple[str, str, str]]:
        return [(c, v["state"], v.get("reason") or v.get("error") or "") for c, v in sorted(self.cells.items())]
