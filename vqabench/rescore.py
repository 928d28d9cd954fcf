"""Re-computing metrics from stored predictions, so that a metric fix never costs a retrain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vqabench import evaluate
from vqabench.results import atomic_write_json, iter_records, read_jsonl
from vqabench.tasks import TaskKind


def rescore(runs: Path, spice: bool = False) -> Iterator[tuple[Path, bool]]:
    """Rescore every record under ``runs`` from its ``predictions-<split>.jsonl``; yield (path, changed)."""
    for path, record in iter_records(runs):
        kind = TaskKind(record["kind"])
        opts = dict(record["config"].get("score", {}))
        if kind is TaskKind.CAPTIONING:
            opts["spice"] = spice
        final = {}
        for split in record["final"]:
            preds = path.parent / f"predictions-{split}.jsonl"
            if not preds.exists():
                raise FileNotFoundError(f"{preds} is missing: rerun the cell with vqabench run --force")
            lines = read_jsonl(preds)
            final[split] = evaluate.score(kind, lines, **opts)
            # CLIPScore needs the images and the CLIP model of the run: kept as recorded.
            final[split].update(
                {k: v for k, v in record["final"][split].items() if k.startswith(("clipscore", "refclipscore"))}
            )
            if split in record.get("baseline", {}):
                answer = record["baseline"][split]["answer"]
                base = evaluate.score(
                    TaskKind.VQA, [{**ln, "answer": answer} for ln in lines], vqa_mode=opts.get("vqa_mode", "vqa")
                )
                record["baseline"][split]["vqa_accuracy"] = base["vqa_accuracy"]
        changed = _norm(final) != _norm(record["final"])
        record["final"] = final
        atomic_write_json(path, record)
        yield path, changed


def _norm(obj):
    import json

    return json.loads(json.dumps(obj, sort_keys=True, default=str))
