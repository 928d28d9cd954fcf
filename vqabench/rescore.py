"""Re-computing metrics from stored predictions, so that a metric fix never costs a retrain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vqabench import evaluate
from vqabench.files import atomic_write_json, dumps_json
from vqabench.results import iter_records, read_jsonl
from vqabench.tasks import get_task


def rescore(runs: Path, spice: bool = False) -> Iterator[tuple[Path, bool]]:
    """Rescore every record under ``runs`` from its ``predictions-<split>.jsonl``; yield (path, changed)."""
    found = False
    for path, record in iter_records(runs):
        found = True
        task = get_task(record["kind"])
        opts = {**record["config"].get("score", {}), **task.rescore_options(spice)}
        final = {}
        for split in record["final"]:
            preds = path.parent / f"predictions-{split}.jsonl"
            if not preds.exists():
                raise FileNotFoundError(f"{preds} is missing: rerun the cell with vqabench run --force")
            lines = read_jsonl(preds)
            final[split] = evaluate.score(task.name, lines, **opts)
            # Metrics that need the run (CLIPScore: its images and CLIP model) are kept as recorded.
            prefixes = task.run_score_prefixes
            final[split].update(
                {k: v for k, v in record["final"][split].items() if prefixes and k.startswith(prefixes)}
            )
            base = record.get("baseline", {}).get(split)
            if base and "prediction" in base:
                scored = evaluate.score(task.name, [{**ln, **base["prediction"]} for ln in lines], **opts)
                base.update(
                    {k: v for k, v in scored.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                )
        changed = dumps_json(final) != dumps_json(record["final"])
        record["final"] = final
        atomic_write_json(path, record)
        yield path, changed
    if not found:
        raise FileNotFoundError(f"no result records (record.json) under {runs}")
