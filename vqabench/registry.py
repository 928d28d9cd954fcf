"""What plugins register (datasets and models) and the validated registry that holds them."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqabench.tasks import TaskData, builtin_tasks, kind_name
from vqabench.tasks.base import Task


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A "; did you mean ...?" suffix for an unknown name, or a list of what is known."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        return f"; did you mean {' or '.join(repr(c) for c in close)}?"
    return f"; known: {', '.join(known) if known else '(none)'}"


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset, as a plugin registers it.

    ``load(config, kind, cache_dir)`` prepares the data when needed (generate, or check what the
    user downloaded) and returns a ``TaskData``. ``prepare(config, root)`` materialises it under an
    explicit directory (``vqabench data prepare``). ``unsafe_augmentations`` names augmentations that
    would change answers on this dataset; the runner switches them off and records that.
    """

    name: str
    task_kinds: tuple[str, ...]
    config_cls: type
    load: Callable[[Any, str, Path], TaskData]
    prepare: Callable[[Any, Path], Path] | None = None
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    unsafe_augmentations: frozenset[str] = frozenset()
    description: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """A model variant, as a plugin registers it.

    ``build(config, data, device)`` returns a ``vqabench.model.TaskModel`` for ``data.kind``.
    ``config_cls`` is a frozen dataclass with the report's defaults and a ``train`` field
    (``vqabench.config.TrainConfig``); ``profiles`` holds dotted-key overrides per profile and
    ``tags`` per weights tag (``name@tag`` on the command line; ``random`` means
    ``pretrained=False`` unless the spec says otherwise). ``skip_profiles`` maps a profile to the
    reason this variant does not run on it (listed as a skipped pair).
    """

    name: str
    family: str
    display_name: str
    task_kinds: tuple[str, ...]
    config_cls: type
    build: Callable[[Any, TaskData, Any], Any]
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tags: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {"random": {"pretrained": False}})
    skip_profiles: Mapping[str, str] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class ModelRef:
    """A model reference from the command line, parsed once: ``name`` or ``name@tag``."""

    name: str
    tag: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        name, _, tag = text.strip().partition("@")
        if not name or (_ and not tag):
            raise ValueError(f"bad model reference {text!r}: expected NAME or NAME@TAG")
        return cls(name, tag or None)

    def __str__(self) -> str:
        return f"{self.name}@{self.tag}" if self.tag else self.name


@dataclass
class PluginInfo:
    """One plugin as ``vqabench plugins`` shows it."""

    name: str
    distribution: str
    version: str
    datasets: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def status(self) -> str:
        return "failed" if self.error else "ok"


class Registry:
    """Datasets and models by name, each remembering the plugin that registered it."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = dict(builtin_tasks())
        self.datasets: dict[str, DatasetSpec] = {}
        self.models: dict[str, ModelSpec] = {}
        self.owner: dict[tuple[str, str], str] = {}

    def add_task(self, task: Task, plugin: str) -> None:
        """Add a plugin's task kind; raise ValueError naming the plugin on a bad or taken name."""
        if not isinstance(task, Task):
            raise ValueError(
                f"plugin {plugin!r} registered a {type(task).__name__}, expected a vqabench.tasks.base.Task"
            )
        if not task.name or any(c.isspace() or c in "/,@" for c in task.name):
            raise ValueError(f"plugin {plugin!r}: invalid task kind name {task.name!r} (no '/', ',', '@' or spaces)")
        if task.name in self.tasks:
            other = self.owner.get(("task", task.name), "vqabench")
            raise ValueError(f"plugin {plugin!r}: task kind {task.name!r} is already registered by {other!r}")
        if not task.primary_metric or task.primary_metric not in task.metric_names:
            raise ValueError(f"plugin {plugin!r}: task kind {task.name!r}: primary_metric must be one of metric_names")
        self.tasks[task.name] = task
        self.owner[("task", task.name)] = plugin

    def add(self, what: str, spec: DatasetSpec | ModelSpec, plugin: str) -> None:
        """Add one spec; raise ValueError naming the plugin on a bad or duplicate registration."""
        table: dict[str, Any] = self.datasets if what == "dataset" else self.models
        expected = DatasetSpec if what == "dataset" else ModelSpec
        if not isinstance(spec, expected):
            raise ValueError(f"plugin {plugin!r} registered a {type(spec).__name__}, expected {expected.__name__}")
        if not spec.name or any(c.isspace() or c in "/,@" for c in spec.name):
            raise ValueError(f"plugin {plugin!r}: invalid {what} name {spec.name!r} (no '/', ',', '@' or spaces)")
        for kind in spec.task_kinds:
            if not isinstance(kind, str) or kind_name(kind) not in self.tasks:
                raise ValueError(
                    f"plugin {plugin!r}: {what} {spec.name!r} declares unknown task kind {kind!r}; "
                    f"known kinds: {', '.join(self.tasks)} (a plugin adds one with the register_tasks hook)"
                )
        # Kinds are plain strings from here on (TaskKind members are str too).
        object.__setattr__(spec, "task_kinds", tuple(kind_name(k) for k in spec.task_kinds))
        if spec.name in table:
            other = self.owner[(what, spec.name)]
            raise ValueError(f"plugin {plugin!r}: {what} name {spec.name!r} is already registered by plugin {other!r}")
        table[spec.name] = spec
        self.owner[(what, spec.name)] = plugin

    def dataset(self, name: str) -> DatasetSpec:
        if name not in self.datasets:
            raise KeyError(f"unknown dataset {name!r}{did_you_mean(name, self.datasets)}")
        return self.datasets[name]

    def model(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise KeyError(f"unknown model {name!r}{did_you_mean(name, self.models)}")
        return self.models[name]
