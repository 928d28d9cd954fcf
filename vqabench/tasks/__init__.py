"""Task kinds: what a dataset provides, what a model implements, what is reported.

Each built-in kind is one module exporting one ``Task`` object (``vqa``, ``answerability``,
``zeroshot``, ``captioning``); plugins add kinds through the ``register_tasks`` hook. Everything
kind-specific (sample type, collation, prediction fields, scoring, primary metric, baseline,
leaderboard columns) lives on that object, and the rest of vqabench dispatches through
``get_task(kind)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqabench.tasks.base import Task


class TaskKind(str, enum.Enum):
    """Names of the built-in kinds. Kinds are strings: ``TaskKind.VQA == "vqa"``."""

    VQA = "vqa"
    ANSWERABILITY = "answerability"
    ZEROSHOT = "zeroshot"
    CAPTIONING = "captioning"

    def __str__(self) -> str:
        return self.value


def kind_name(kind: Any) -> str:
    """The plain string name of a kind given as a TaskKind, a Task or a string."""
    if isinstance(kind, Task):
        return kind.name
    return kind.value if isinstance(kind, TaskKind) else str(kind)


_BUILTIN: dict[str, Task] = {}
# Kinds registered by plugins (``register_tasks``); added by vqabench.plugins.load_plugins.
_PLUGIN: dict[str, Task] = {}


def builtin_tasks() -> dict[str, Task]:
    """The four kinds that come with vqabench."""
    if not _BUILTIN:
        from vqabench.tasks.answerability import TASK as ANSWERABILITY
        from vqabench.tasks.captioning import TASK as CAPTIONING
        from vqabench.tasks.vqa import TASK as VQA
        from vqabench.tasks.zeroshot import TASK as ZEROSHOT

        _BUILTIN.update({t.name: t for t in (VQA, ANSWERABILITY, ZEROSHOT, CAPTIONING)})
    return _BUILTIN


def all_tasks() -> dict[str, Task]:
    """Built-in and plugin-registered kinds by name."""
    return {**builtin_tasks(), **_PLUGIN}


def add_plugin_tasks(tasks: dict[str, Task]) -> None:
    """Make plugin-registered kinds resolvable (called by ``load_plugins``).

    Kinds stay known for the life of the process, so a later ``load_plugins`` with fewer plugins
    does not strand records or objects of a kind loaded before.
    """
    _PLUGIN.update(tasks)


def set_plugin_tasks(tasks: dict[str, Task]) -> None:
    """Replace the plugin-registered kinds (for tests)."""
    _PLUGIN.clear()
    _PLUGIN.update(tasks)


def get_task(kind: Any) -> Task:
    """The Task object of a kind name, with the known kinds in the error."""
    name = kind_name(kind)
    tasks = all_tasks()
    if name not in tasks:
        from vqabench.registry import did_you_mean

        raise KeyError(f"unknown task kind {name!r}{did_you_mean(name, tasks)}")
    return tasks[name]


@dataclass
class TaskData:
    """One dataset prepared for one task kind: samples per split plus the kind's metadata.

    ``splits`` maps split names ("train", "val", "test", and e.g. "target_train" for a second
    domain) to lists of samples of the kind's sample type. ``revision`` is a content hash of the
    prepared data, used to key caches.
    """

    dataset: str
    kind: str
    root: Path
    splits: dict[str, list[Any]]
    revision: str
    answer_vocab: list[str] | None = None  # vqa / answerability
    vocab_rule: str = ""  # how answer_vocab was built (see vqabench.vocab), shown in records
    class_names: list[str] | None = None  # zeroshot
    templates: list[str] | None = None  # zeroshot prompt templates, with "{}" for the class name
    # zeroshot: per attribute name (e.g. "colour"), the attribute value of each class, aligned with class_names
    class_attributes: dict[str, list[str]] | None = None
    vqa_mode: str = "vqa"  # "vqa" (official) or "vizwiz" normalisation
    unsafe_augmentations: frozenset[str] = field(default_factory=frozenset)
    # Splits without references (a challenge's test set): every cell predicts them and stores the
    # predictions (for ``vqabench export``), but nothing scores them; their samples may lack answers.
    unlabelled: frozenset[str] = field(default_factory=frozenset)
    extra: dict[str, Any] = field(default_factory=dict)  # anything a plugin-registered kind needs
    # What the loader counted and the record keeps as "data_notes" (JSON): e.g. questions built and
    # pairs skipped, per split and reason.
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kind = kind_name(self.kind)

    def split(self, name: str) -> list[Any]:
        """The samples of one split, with an error naming the available splits."""
        if name not in self.splits:
            raise KeyError(
                f"dataset {self.dataset!r} ({self.kind}) has no split {name!r}; it has: {', '.join(self.splits)}"
            )
        return self.splits[name]
