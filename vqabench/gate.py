"""The regression gate: metric thresholds per dataset, task kind, model and metric.

A thresholds file is TOML with one ``[[check]]`` table per threshold::

    [[check]]
    dataset = "mini-clevr"
    kind = "vqa"
    model = "resnet-sbert"
    profile = "quick"            # optional: any profile when absent
    metric = "test.vqa_accuracy" # SPLIT.METRIC of the record's final metrics
    min = 0.5                    # and/or max
    relative_to = "majority"     # optional: compare the margin over the majority baseline

Seeds of one (dataset, kind, model, profile) are averaged. A threshold with no matching record fails.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from vqabench.results import iter_records


@dataclass(frozen=True)
class Threshold:
    dataset: str
    kind: str
    model: str
    metric: str
    min: float | None = None
    max: float | None = None
    profile: str | None = None
    relative_to: str | None = None

    @property
    def label(self) -> str:
        rel = " - majority" if self.relative_to else ""
        return f"{self.dataset}/{self.kind} {self.model}{' [' + self.profile + ']' if self.profile else ''} {self.metric}{rel}"


def load_thresholds(path: Path) -> list[Threshold]:
    """Parse and validate a thresholds file; errors name the file, the entry and the field."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"thresholds file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    out = []
    allowed = set(Threshold.__dataclass_fields__)
    entries = data.get("check", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{path}: write each threshold as a [[check]] table (an array of tables), not [check]")
    for i, entry in enumerate(entries, 1):
        where = f"{path}: [[check]] #{i}"
        unknown = set(entry) - allowed
        if unknown:
            raise ValueError(f"{where}: unknown field {sorted(unknown)[0]!r}; fields are {', '.join(sorted(allowed))}")
        for need in ("dataset", "kind", "model", "metric"):
            if need not in entry:
                raise ValueError(f"{where}: missing field {need!r}")
        if "." not in entry["metric"]:
            raise ValueError(f"{where}: metric {entry['metric']!r} must be SPLIT.METRIC, e.g. test.vqa_accuracy")
        if entry.get("min") is None and entry.get("max") is None:
            raise ValueError(f"{where}: give min, max or both")
        for bound in ("min", "max"):
            value = entry.get(bound)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{where}: {bound} must be a number, got {value!r}")
        if entry.get("relative_to") not in (None, "majority"):
            raise ValueError(f'{where}: relative_to must be "majority"')
        out.append(Threshold(**entry))
    if not out:
        raise ValueError(f"{path}: no [[check]] entries")
    return out


def _value(record: dict[str, Any], t: Threshold) -> float | None:
    split, metric = t.metric.split(".", 1)
    value = record["final"].get(split, {}).get(metric)
    if value is None or not isinstance(value, (int, float)):
        return None
    if t.relative_to == "majority":
        base = record.get("baseline", {}).get(split, {}).get("vqa_accuracy")
        return None if base is None else value - base
    return float(value)


def check(thresholds: Sequence[Threshold], runs: Path) -> list[dict[str, Any]]:
    """One row per threshold: the measured value (mean over seeds), the bounds and pass/fail."""
    records = [r for _, r in iter_records(runs)]
    rows = []
    for t in thresholds:
        matching = [
            r
            for r in records
            if r["dataset"] == t.dataset
            and r["kind"] == t.kind
            and r["model"] == t.model
            and (t.profile is None or r["profile"] == t.profile)
        ]
        values = [v for v in (_value(r, t) for r in matching) if v is not None]
        if not values:
            status, value = ("MISSING" if not matching else "NO METRIC"), None
        else:
            value = statistics.mean(values)
            ok = (t.min is None or value >= t.min) and (t.max is None or value <= t.max)
            status = "pass" if ok else "FAIL"
        rows.append(
            {
                "check": t.label,
                "value": None if value is None else round(value, 4),
                "min": t.min,
                "max": t.max,
                "seeds": len(values),
                "status": status,
            }
        )
    return rows
