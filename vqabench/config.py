"""Typed configuration: the training recipe and profile overrides applied to frozen dataclasses.

Profiles (``quick``, ``paper``) are named sets of overrides on a family's or dataset's defaults,
never copies of them. Overrides use dotted keys for nested dataclasses: ``{"train.epochs": 3}``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PROFILES = ("quick", "paper")


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe shared by every family (defaults: report 000)."""

    epochs: int = 15
    batch_size: int = 128
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.05
    weight_decay: float = 0.01
    grad_accum: int = 1
    grad_clip: float = 1.0
    # Learning rate per parameter group name; the model names its groups.
    lrs: Mapping[str, float] = field(default_factory=lambda: {"head": 1e-3})
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; or "fp32" / "bf16"
    # torch.compile the model's per-step image path (TaskModel.compiled_methods). Off until
    # measured to help: on CPU, torch 2.15's inductor aborts the process on the ResNet path.
    compile: bool = False
    best_metric: str = "vqa_accuracy"
    eval_splits: tuple[str, ...] = ("val", "test")
    augment: tuple[str, ...] = ()  # names from vqabench.augment; unsafe ones are dropped per dataset
    # Report 000 quotes validation accuracy at these epochs besides the last.
    report_epochs: tuple[int, ...] = (10,)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a CLI/TOML value to the annotated type of a field, or raise naming the key."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or value == "none":
            return None
        return _coerce(value, args[0], key)
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else list(value)
        items = [i for i in items if i != ""]
        (inner, *_rest) = typing.get_args(tp) or (Any,)
        seq = [_coerce(i, inner, key) for i in items]
        return tuple(seq) if origin is tuple else seq
    if origin in (dict, collections.abc.Mapping) or tp in (dict, Mapping):
        if isinstance(value, str):
            pairs = [kv.split("=", 1) for kv in value.split(",") if kv]
            if any(len(p) != 2 for p in pairs):
                raise ValueError(f"override {key}={value!r}: expected NAME=VALUE[,NAME=VALUE]")
            return {k: _coerce(v, float, f"{key}.{k}") for k, v in pairs}
        return dict(value)
    try:
        if tp is bool and isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp in (int, float, str, bool):
            return tp(value)
    except (TypeError, ValueError):
        raise ValueError(f"override {key}={value!r}: expected {tp.__name__}") from None
    return value


def apply_overrides(obj: Any, overrides: Mapping[str, Any], *, where: str = "config") -> Any:
    """A copy of frozen dataclass ``obj`` with dotted-key overrides applied and type-checked."""
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in fields:
            from vqabench.registry import did_you_mean

            raise ValueError(f"{where}: unknown field {head!r}{did_you_mean(head, fields)}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = _coerce(value, hints[head], f"{where}.{key}")
    for head, sub in nested.items():
        current = getattr(obj, head)
        if dataclasses.is_dataclass(current):
            direct[head] = apply_overrides(current, sub, where=f"{where}.{head}")
        elif isinstance(current, Mapping):  # e.g. train.lrs.head=1e-3 merges one learning rate
            direct[head] = {**current, **{k: _coerce(v, float, f"{where}.{head}.{k}") for k, v in sub.items()}}
        else:
            raise ValueError(f"{where}: field {head!r} has no sub-fields (got {head}.{next(iter(sub))})")
    return dataclasses.replace(obj, **direct)


def to_jsonable(obj: Any) -> Any:
    """A dataclass (nested) as plain JSON types, for records and hashing."""
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able configuration."""
    blob = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
