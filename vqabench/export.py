"""``vqabench export DATASET RUN_DIR``: an evaluation server's files from stored predictions.

A challenge scores its hidden test set on its own server, in its own file format; the dataset's
plugin writes that format (``DatasetSpec.export``). The predictions come from the run directory
without retraining: every cell predicts its dataset's unlabelled splits (``TaskData.unlabelled``)
and stores them, and the lines of one model's cells of the dataset (one per task kind, e.g. vqa
and answerability) are merged by sample id, so one file can carry answers and answerability.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqabench.registry import Registry
from vqabench.results import iter_records, read_jsonl


def export(
    registry: Registry,
    dataset: str,
    runs: Path,
    split: str,
    out: Path,
    *,
    model: str | None = None,
    profile: str | None = None,
    seed: int | None = None,
) -> list[Path]:
    """Write the evaluation files of ``dataset`` for one model's predictions on ``split``; their paths."""
    spec = registry.dataset(dataset)
    if spec.export is None:
        raise ValueError(f"dataset {spec.name!r} has no export format (its plugin gives no export function)")
    if not Path(runs).is_dir():
        raise FileNotFoundError(f"{runs} is not a directory: give the --out of a vqabench run, or one cell's directory")
    found = [(p, r) for p, r in iter_records(Path(runs)) if r["dataset"] == spec.name]
    chosen = [
        (p, r)
        for p, r in found
        if (model is None or r["model"] == model)
        and (profile is None or r["profile"] == profile)
        and (seed is None or r["seed"] == seed)
    ]
    if not chosen:
        have = sorted({r["model"] for _, r in found})
        raise FileNotFoundError(
            f"no {spec.name} result records under {runs}"
            + (f" for model {model!r}; it holds: {', '.join(have)}" if model and have else "")
        )
    runs_of = sorted({(r["model"], r["profile"], r["seed"]) for _, r in chosen})
    if len(runs_of) > 1:
        listed = "; ".join(f"{m} ({p}, seed {s})" for m, p, s in runs_of)
        raise ValueError(
            f"{runs} holds {spec.name} results of several runs: {listed}; pick one with --model (and --profile, --seed)"
        )
    merged: dict[str, dict[str, Any]] = {}
    stored: set[str] = set()
    for path, _ in chosen:
        stored.update(p.name[len("predictions-") : -len(".jsonl")] for p in path.parent.glob("predictions-*.jsonl"))
        file = path.parent / f"predictions-{split}.jsonl"
        if file.exists():
            for line in read_jsonl(file):
                merged.setdefault(line["id"], {}).update(line)
    if not merged:
        raise FileNotFoundError(
            f"no stored predictions of split {split!r} for {runs_of[0][0]} on {spec.name} under {runs}; "
            f"stored splits: {', '.join(sorted(stored)) or 'none'}"
        )
    config = chosen[0][1]["config"]["dataset"]
    return spec.export(config, split, list(merged.values()), Path(out))
