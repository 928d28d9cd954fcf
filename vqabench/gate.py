"""The regression gate: metric thresholds per dataset, task kind, model and metric.

A thresholds file is TOML with one ``[[check]]`` table per threshold::

    [[check]]
    dataset = "mini-clevr"
    kind = "vqa"
    model = "resnet-sbert"
    profile = "quick"            # optional: any profile when absent
    metric = "test.vqa_accuracy" # SPLIT.METRIC of the record's final metrics
    min = 0.5                    # and/or max
    relative_to = "baseline"     # optional: compare the margin over the task's baseline ("majority" too)
    worst = 0.5                  # optional: the worst acceptable value, in the metric's own direction

A margin and ``worst`` follow the metric's direction (``higher_is_better`` in its definition): for
a lower-is-better metric such as ``aurc`` the margin is baseline - value and ``worst`` is a maximum.

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
from vqabench.tasks import get_task


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
    worst: float | None = None

    @property
    def label(self) -> str:
        rel = " vs baseline" if self.relative_to else ""
        profile = f" [{self.profile}]" if self.profile else ""
        return f"{self.dataset}/{self.kind} {self.model}{profile} {self.metric}{rel}"


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
        if entry.get("min") is None and entry.get("max") is None and entry.get("worst") is None:
            raise ValueError(f"{where}: give min, max or worst")
        for bound in ("min", "max", "worst"):
            value = entry.get(bound)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{where}: {bound} must be a number, got {value!r}")
        if entry.get("relative_to") not in (None, "majority", "baseline"):
            raise ValueError(f'{where}: relative_to must be "baseline" (or its older name "majority")')
        out.append(Threshold(**entry))
    if not out:
        raise ValueError(f"{path}: no [[check]] entries")
    return out


def _value(record: dict[str, Any], t: Threshold) -> float | None:
    split, metric = t.metric.split(".", 1)
    value = record["final"].get(split, {}).get(metric)
    if value is None or not isinstance(value, (int, float)):
        return None
    if t.relative_to:
        base = (record.get("baseline") or {}).get(split, {}).get(metric)
        if base is None:
            return None
        return value - base if _higher(record["kind"], metric) else base - value
    return float(value)


def _higher(kind: str, metric: str) -> bool:
    """The metric's direction from its definition (a kind no plugin registers: higher)."""
    try:
        return get_task(kind).metric(metric).higher_is_better
    except KeyError:
        return True


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
            if t.worst is not None:
                # A margin is oriented so that higher is better; a raw value follows its metric.
                higher = True if t.relative_to else _higher(t.kind, t.metric.split(".", 1)[1])
                ok = ok and (value >= t.worst if higher else value <= t.worst)
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
