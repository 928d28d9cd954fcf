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

SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class Stage:
    """One stage of a staged recipe: its own epochs, trained parameter groups and schedule.

    ``lrs`` names the parameter groups that train in this stage (the others are frozen for it).
    Fields left None take the recipe's value (``TrainConfig``). The model's ``begin_stage`` is
    called before the stage starts, so it may change itself (add adapters, unfreeze a part) first:
    a group trains only the parameters that are trainable (``requires_grad``) at that point.
    """

    name: str
    epochs: int | None = None
    lrs: Mapping[str, float] = field(default_factory=dict)
    warmup_epochs: float | None = None
    schedule: str | None = None
    step_every: int | None = None
    step_gamma: float | None = None
    streams: tuple[str, ...] | None = None
    patience: int | None = None


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe shared by every family (defaults: report 000).

    A recipe is one or more stages. Without ``stages`` it is one stage named "train" made of the
    top-level fields; with ``stages`` each stage takes what it leaves None from them.
    """

    epochs: int = 15
    batch_size: int = 128
    warmup_epochs: float = 2.0
    # "cosine": linear warm-up then cosine decay to 0; "step": warm-up then the rate times
    # ``step_gamma`` every ``step_every`` epochs (report 001).
    schedule: str = "cosine"
    step_every: int = 1
    step_gamma: float = 0.1
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
    # The validation metric that picks the best checkpoint: "" for the task's primary metric, or
    # any metric the task produces, or "val_loss". Its direction comes from the metric definition.
    best_metric: str = ""
    # Further selection metrics, each keeping its own best checkpoint (of the last stage), whose
    # test scores the record reports under "selections" (report 003: by loss, CIDEr, CLIPScore).
    keep_best: tuple[str, ...] = ()
    augment: tuple[str, ...] = ()  # names from vqabench.augment; unsafe ones are dropped per dataset
    # Report 000 quotes validation accuracy at these epochs besides the last.
    report_epochs: tuple[int, ...] = (10,)
    # Splits trained on together (e.g. "train" and an unlabelled "target_train"); the first is
    # the epoch's length, shorter ones cycle. The model's loss gets a dict of batches by split
    # when there is more than one.
    streams: tuple[str, ...] = ("train",)
    val_every: int = 1  # validate every N epochs (and after the last); for costly validation
    # The split that selects checkpoints: "target_val" to select on the domain a model adapts to.
    val_split: str = "val"
    val_limit: int | None = None  # validate on a seeded sample of at most N val samples
    # Also score a seeded sample of the training split (as large as the validation sample, in eval
    # mode, unaugmented) at each validation: history's "train_<metric>" (report 001's training accuracy).
    train_metrics: bool = False
    # Stop a stage once its best validation metric has not improved for this many validations
    # in a row (a plateau; report 001's stage 1); 0 trains every epoch of the stage.
    patience: int = 0
    # Answer targets of classification VQA: "hard" (one label per question) or "soft" (every
    # vocabulary answer scored as the official VQA metric scores it, for BCE-style heads).
    targets: str = "hard"
    stages: tuple[Stage, ...] = ()

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule {self.schedule!r}: choose {' or '.join(SCHEDULES)}")
        if self.targets not in ("hard", "soft"):
            raise ValueError(f"train.targets {self.targets!r}: choose hard or soft")
        if self.val_every < 1:
            raise ValueError(f"train.val_every must be >= 1, got {self.val_every}")
        for key, value in [
            ("patience", self.patience),
            *((f"stages.{s.name}.patience", s.patience) for s in self.stages),
        ]:
            if value is not None and value < 0:
                raise ValueError(f"train.{key} must be >= 0 (0: no early stop), got {value}")
        # Zero epochs would write a record of an untrained model as if it had trained; a model
        # that needs no training is evaluation-only (no ``train`` recipe) instead.
        for key, value in [("epochs", self.epochs), *((f"stages.{s.name}.epochs", s.epochs) for s in self.stages)]:
            if value is not None and value < 1:
                raise ValueError(f"train.{key} must be >= 1, got {value} (a model that trains, trains an epoch)")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"train.stages: stage names must be unique, got {names}")

    def resolved_stages(self) -> tuple[Stage, ...]:
        """Every stage with its None fields filled from the recipe."""
        if not self.stages:
            return (
                Stage(
                    "train",
                    self.epochs,
                    dict(self.lrs),
                    self.warmup_epochs,
                    self.schedule,
                    self.step_every,
                    self.step_gamma,
                    self.streams,
                    self.patience,
                ),
            )
        out = []
        for s in self.stages:
            out.append(
                Stage(
                    s.name,
                    self.epochs if s.epochs is None else s.epochs,
                    dict(s.lrs) or dict(self.lrs),
                    self.warmup_epochs if s.warmup_epochs is None else s.warmup_epochs,
                    s.schedule or self.schedule,
                    self.step_every if s.step_every is None else s.step_every,
                    self.step_gamma if s.step_gamma is None else s.step_gamma,
                    s.streams or self.streams,
                    self.patience if s.patience is None else s.patience,
                )
            )
            if out[-1].schedule not in SCHEDULES:
                raise ValueError(f"train.stages.{s.name}.schedule {s.schedule!r}: choose {' or '.join(SCHEDULES)}")
        return tuple(out)


@dataclass(frozen=True)
class EvalConfig:
    """How a model is evaluated, apart from any training: batch size, splits, precision."""

    batch_size: int = 128
    splits: tuple[str, ...] = ("val", "test")
    precision: str = "auto"


def train_config(model_config: Any) -> TrainConfig | None:
    """The model config's training recipe, or None for a model that does not train."""
    return getattr(model_config, "train", None)


def eval_config(model_config: Any) -> EvalConfig:
    """The model config's evaluation settings (defaults when it has none)."""
    return getattr(model_config, "eval", None) or EvalConfig()


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
        elif isinstance(current, tuple) and current and all(dataclasses.is_dataclass(c) for c in current):
            direct[head] = _override_items(current, sub, where=f"{where}.{head}")
        elif isinstance(current, Mapping):  # e.g. train.lrs.head=1e-3 merges one learning rate
            direct[head] = {**current, **{k: _coerce(v, float, f"{where}.{head}.{k}") for k, v in sub.items()}}
        else:
            raise ValueError(f"{where}: field {head!r} has no sub-fields (got {head}.{next(iter(sub))})")
    return dataclasses.replace(obj, **direct)


def _override_items(items: tuple, overrides: Mapping[str, Any], *, where: str) -> tuple:
    """Overrides into a tuple of dataclasses, each addressed by its ``name`` or index (stages)."""
    names = [str(getattr(item, "name", i)) for i, item in enumerate(items)]
    per: dict[int, dict[str, Any]] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head in names:
            index = names.index(head)
        elif head.isdigit() and int(head) < len(items):
            index = int(head)
        else:
            from vqabench.registry import did_you_mean

            raise ValueError(f"{where}: no item {head!r}{did_you_mean(head, names)}")
        if not rest:
            raise ValueError(f"{where}.{head}: name a field, e.g. {where}.{head}.epochs=2")
        per.setdefault(index, {})[rest] = value
    return tuple(
        apply_overrides(item, per[i], where=f"{where}.{names[i]}") if i in per else item for i, item in enumerate(items)
    )


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
