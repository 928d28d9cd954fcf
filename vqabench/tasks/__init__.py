"""The four task kinds: what a dataset provides, what a model implements, what is reported.

Each kind has its own module (``qa``, ``zeroshot``, ``captioning``) holding its sample type, its
batch type, the fields of its stored predictions and its scoring function.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class TaskKind(str, enum.Enum):
    """A task kind; its value is the name used on the command line (``dataset/kind``)."""

    VQA = "vqa"
    ANSWERABILITY = "answerability"
    ZEROSHOT = "zeroshot"
    CAPTIONING = "captioning"

    @classmethod
    def parse(cls, text: str) -> TaskKind:
        try:
            return cls(text)
        except ValueError:
            known = ", ".join(k.value for k in cls)
            raise ValueError(f"unknown task kind {text!r}; known kinds: {known}") from None


@dataclass
class TaskData:
    """One dataset prepared for one task kind: samples per split plus the kind's metadata.

    ``splits`` maps split names ("train", "val", "test", and e.g. "target_train" for a second
    domain) to lists of samples of the kind's sample type. ``revision`` is a content hash of the
    prepared data, used to key caches.
    """

    dataset: str
    kind: TaskKind
    root: Path
    splits: dict[str, list[Any]]
    revision: str
    answer_vocab: list[str] | None = None  # vqa / answerability
    class_names: list[str] | None = None  # zeroshot
    templates: list[str] | None = None  # zeroshot prompt templates, with "{}" for the class name
    vqa_mode: str = "vqa"  # "vqa" (official) or "vizwiz" normalisation
    unsafe_augmentations: frozenset[str] = field(default_factory=frozenset)

    def split(self, name: str) -> list[Any]:
        """The samples of one split, with an error naming the available splits."""
        if name not in self.splits:
            raise KeyError(
                f"dataset {self.dataset!r} ({self.kind.value}) has no split {name!r}; it has: {', '.join(self.splits)}"
            )
        return self.splits[name]
