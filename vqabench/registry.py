"""What plugins register (datasets, models, pretraining recipes) and the validated registry that holds them."""

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
    ``export(config, split, lines, out)`` writes an evaluation server's files from a model's
    stored prediction lines of one split (``vqabench export``), merged by sample id over the
    dataset's task kinds, and returns the paths written; ``config`` is the dataset config the
    predictions were made with, as the record holds it (a dict).
    """

    name: str
    task_kinds: tuple[str, ...]
    config_cls: type
    load: Callable[[Any, str, Path], TaskData]
    prepare: Callable[[Any, Path], Path] | None = None
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    unsafe_augmentations: frozenset[str] = frozenset()
    description: str = ""
    export: Callable[[Any, str, list[dict[str, Any]], Path], list[Path]] | None = None


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
class PretrainSpec:
    """A pretraining recipe, as a plugin registers it (``vqabench pretrain NAME --data DATASET``).

    ``run(config, ctx)`` trains on ``ctx.load(kind)`` data (kinds from ``task_kinds``), writes its
    files into ``ctx.out`` (``artifact`` among them: the file a ``pretrain:NAME/DATASET`` reference
    resolves to) and returns the body of its record (curves, evaluation). ``config_cls`` is a frozen
    dataclass: one recipe serves every run profile. See ``vqabench.pretrain``.
    """

    name: str
    task_kinds: tuple[str, ...]
    config_cls: type
    run: Callable[[Any, Any], dict[str, Any]]
    artifact: str
    description: str = ""


# ``PLUGIN:NAME`` picks the plugin (its entry-point name) when two plugins register NAME. ':' is
# free: names cannot hold it, ``/`` already separates DATASET/KIND and ``@`` a weights tag, and
# ``--set SCOPE:KEY=VALUE`` splits at its last ':' (config keys hold none), so a scope may be
# ``MODEL`` or ``PLUGIN:MODEL``.
PLUGIN_SEP = ":"


def split_plugin(text: str) -> tuple[str | None, str]:
    """``"PLUGIN:NAME"`` -> (PLUGIN, NAME); ``"NAME"`` -> (None, NAME)."""
    plugin, sep, name = text.partition(PLUGIN_SEP)
    return (plugin, name) if sep else (None, text)


@dataclass(frozen=True)
class ModelRef:
    """A model reference from the command line, parsed once: ``[PLUGIN:]NAME[@TAG]``.

    ``str(ref)`` is ``NAME[@TAG]``, whichever plugin provides the model: records, run directories
    and ledger keys name the model, and the record's ``versions.model_plugin`` says which
    distribution provided it (the runner refuses to overwrite a record of another distribution).
    """

    name: str
    tag: str | None = None
    plugin: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        body, at, tag = text.strip().partition("@")
        plugin, name = split_plugin(body)
        if not name or (at and not tag) or plugin == "" or PLUGIN_SEP in name:
            raise ValueError(
                f"bad model reference {text!r}: expected NAME or NAME@TAG, optionally PLUGIN:NAME[@TAG] "
                f"to pick the plugin that provides it"
            )
        return cls(name, tag or None, plugin)

    @property
    def qualified_name(self) -> str:
        """``PLUGIN:NAME`` when the plugin was named, else ``NAME`` (what the registry looks up)."""
        return f"{self.plugin}{PLUGIN_SEP}{self.name}" if self.plugin else self.name

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
    pretrainers: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def status(self) -> str:
        return "failed" if self.error else "ok"


class NameConflictError(ValueError):
    """A name two plugins register: it resolves to neither until the user picks one."""


NAME_CHARS = "/,@" + PLUGIN_SEP  # not allowed in a kind, dataset or model name


def _check_name(plugin: str, what: str, name: str) -> None:
    if not name or any(c.isspace() or c in NAME_CHARS for c in name):
        raise ValueError(f"plugin {plugin!r}: invalid {what} name {name!r} (no '/', ',', '@' or spaces, and no ':')")


class Registry:
    """Datasets, models and task kinds by name, each remembering the plugin that registered it.

    A name registered by two plugins is a conflict: both plugins stay loaded (their other names
    work), the name moves from ``tasks`` / ``datasets`` / ``models`` to ``conflicts`` and resolves
    to neither, and a lookup of the bare name raises ``NameConflictError`` naming both plugins and
    how to pick one. First registered would otherwise win by entry-point order, and a third-party
    plugin could silently take a first-party model's name and its run directories.
    """

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = dict(builtin_tasks())
        self.datasets: dict[str, DatasetSpec] = {}
        self.models: dict[str, ModelSpec] = {}
        self.pretrainers: dict[str, PretrainSpec] = {}
        self.owner: dict[tuple[str, str], str] = {}
        # (what, name) -> {plugin: spec} for every name more than one plugin registers.
        self.conflicts: dict[tuple[str, str], dict[str, Any]] = {}
        # Loaded plugins -> their distribution (set by load_plugins), for conflict messages.
        self.plugins: dict[str, str] = {}

    def copy(self) -> Registry:
        """A copy whose tables can change without touching this one (a plugin's staged work)."""
        out = Registry()
        out.tasks, out.datasets, out.models = dict(self.tasks), dict(self.datasets), dict(self.models)
        out.pretrainers = dict(self.pretrainers)
        out.owner, out.plugins = dict(self.owner), dict(self.plugins)
        out.conflicts = {k: dict(v) for k, v in self.conflicts.items()}
        return out

    def _table(self, what: str) -> dict[str, Any]:
        return {"task": self.tasks, "dataset": self.datasets, "model": self.models, "pretrainer": self.pretrainers}[
            what
        ]

    def claims(self, what: str, name: str) -> dict[str, Any]:
        """{plugin: spec} of every plugin that registers ``name`` (empty when none does)."""
        if (what, name) in self.conflicts:
            return dict(self.conflicts[(what, name)])
        if (what, name) in self.owner:
            return {self.owner[(what, name)]: self._table(what)[name]}
        return {}

    def _claim(self, what: str, name: str, spec: Any, plugin: str) -> None:
        claims = self.claims(what, name)
        if plugin in claims:
            label = "task kind" if what == "task" else what
            raise ValueError(f"plugin {plugin!r} registers {label} {name!r} twice; register each name once")
        if not claims:
            self._table(what)[name] = spec
            self.owner[(what, name)] = plugin
            return
        self._table(what).pop(name, None)
        self.owner.pop((what, name), None)
        self.conflicts[(what, name)] = {**claims, plugin: spec}

    def add_task(self, task: Task, plugin: str) -> None:
        """Add a plugin's task kind; raise ValueError naming the plugin on a bad or built-in name."""
        if not isinstance(task, Task):
            raise ValueError(
                f"plugin {plugin!r} registered a {type(task).__name__}, expected a vqabench.tasks.base.Task"
            )
        _check_name(plugin, "task kind", task.name)
        # A built-in kind cannot be deselected (VQABENCH_PLUGINS picks plugins), so taking its name
        # stays an error of the plugin; two plugins claiming one name is a conflict (see Registry).
        if task.name in builtin_tasks():
            raise ValueError(f"plugin {plugin!r}: task kind {task.name!r} is already registered by 'vqabench'")
        if not task.primary_metric or task.primary_metric not in task.metric_names:
            raise ValueError(f"plugin {plugin!r}: task kind {task.name!r}: primary_metric must be one of metric_names")
        self._claim("task", task.name, task, plugin)

    def add(self, what: str, spec: DatasetSpec | ModelSpec | PretrainSpec, plugin: str) -> None:
        """Add one spec; raise ValueError naming the plugin on a bad registration or a repeat by it."""
        expected = {"dataset": DatasetSpec, "model": ModelSpec, "pretrainer": PretrainSpec}[what]
        if not isinstance(spec, expected):
            raise ValueError(f"plugin {plugin!r} registered a {type(spec).__name__}, expected {expected.__name__}")
        _check_name(plugin, what, spec.name)
        for kind in spec.task_kinds:
            # A conflicting kind is still a known name: the conflict is reported when it is used.
            if not isinstance(kind, str) or (
                kind_name(kind) not in self.tasks and ("task", kind_name(kind)) not in self.conflicts
            ):
                raise ValueError(
                    f"plugin {plugin!r}: {what} {spec.name!r} declares unknown task kind {kind!r}; "
                    f"known kinds: {', '.join(self.tasks)} (a plugin adds one with the register_tasks hook)"
                )
        # Kinds are plain strings from here on (TaskKind members are str too).
        object.__setattr__(spec, "task_kinds", tuple(kind_name(k) for k in spec.task_kinds))
        self._claim(what, spec.name, spec, plugin)

    def conflict_message(self, what: str, name: str) -> str:
        """Why ``name`` resolves to neither plugin, and the two ways to pick one."""
        claims = list(self.conflicts[(what, name)])
        label = "task kind" if what == "task" else what
        who = " and ".join(f"{p!r} ({self.plugins.get(p, '?')})" for p in claims)
        keep = sorted({p for p in self.plugins if p not in claims} | {claims[0]})
        only = f"VQABENCH_PLUGINS={','.join(keep)}"
        if what == "task":
            # Records store a kind by name and rescoring, leaderboards and the gate look it up by
            # name, so two kinds of one name cannot be told apart: only loading one of them helps.
            return (
                f"task kind {name!r} is registered by plugins {who}, so it resolves to neither; "
                f"load only one of them, e.g. {only}"
            )
        return (
            f"{label} {name!r} is registered by plugins {who}, so it resolves to neither; pick one by naming it "
            f"PLUGIN:NAME (e.g. {claims[0]}:{name}) or load only one of them (e.g. {only})"
        )

    def check_kind(self, kind: str) -> None:
        """Raise NameConflictError when two plugins register the task kind ``kind``."""
        if ("task", kind) in self.conflicts:
            raise NameConflictError(self.conflict_message("task", kind))

    def _lookup(self, what: str, text: str) -> Any:
        plugin, name = split_plugin(text)
        table = self._table(what)
        claims = self.claims(what, name)
        if plugin is None:
            if (what, name) in self.conflicts:
                raise NameConflictError(self.conflict_message(what, name))
            if name not in table:
                known = [*table, *(n for w, n in self.conflicts if w == what)]
                raise KeyError(f"unknown {what} {name!r}{did_you_mean(name, known)}")
            return table[name]
        if plugin in claims:
            return claims[plugin]
        if not claims:
            return self._lookup(what, name)  # unknown NAME: the same message as without a plugin
        raise KeyError(
            f"plugin {plugin!r} registers no {what} {name!r}; it is registered by "
            f"{', '.join(repr(p) for p in claims)} (write PLUGIN:NAME with one of them)"
        )

    def dataset(self, name: str) -> DatasetSpec:
        """The dataset ``NAME`` or ``PLUGIN:NAME``; KeyError when unknown, NameConflictError when ambiguous."""
        return self._lookup("dataset", name)

    def model(self, name: str) -> ModelSpec:
        """The model ``NAME`` or ``PLUGIN:NAME``; KeyError when unknown, NameConflictError when ambiguous."""
        return self._lookup("model", name)

    def pretrainer(self, name: str) -> PretrainSpec:
        """The pretraining recipe ``NAME`` or ``PLUGIN:NAME``."""
        return self._lookup("pretrainer", name)

    def plugin_of(self, what: str, name: str) -> str | None:
        """The plugin that provides ``NAME`` or ``PLUGIN:NAME`` (None when unknown or ambiguous)."""
        plugin, bare = split_plugin(name)
        return plugin if plugin is not None else self.owner.get((what, bare))
