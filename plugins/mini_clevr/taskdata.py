"""Building a TaskData per task kind from a checked Mini-CLEVR directory.

Sample ids are "<split>/<question_index>" for questions and "<split>/<image_index>" for images
(the target-domain splits reuse the indices of the scenes they restyle, under their own split
name). Every malformed line or dangling image reference is an error naming the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vqabench_plugins.mini_clevr.config import UNANSWERABLE, UNSAFE_AUGMENTATIONS, MiniClevrConfig
from vqabench_plugins.mini_clevr.generate import SPLITS, TARGET
from vqabench_plugins.mini_clevr.manifest import DatasetError, fix_hint
from vqabench_plugins.mini_clevr.store import ensure, read_meta

from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.captioning import CaptionSample
from vqabench.tasks.qa import QASample
from vqabench.tasks.zeroshot import ImageSample

NAME = "mini-clevr"


class _Reader:
    """Reads the tables of one dataset directory, checking every line and image reference."""

    def __init__(self, root: Path, files: dict[str, Any]) -> None:
        self.root = root
        self.files = files

    def error(self, where: str, what: str) -> DatasetError:
        return DatasetError(f"{where}: {what}; {fix_hint(self.root)}")

    def json(self, rel: str) -> Any:
        try:
            return json.loads((self.root / rel).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise self.error(str(self.root / rel), f"unreadable ({exc})") from None

    def jsonl(self, rel: str, fields: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
        """(``file, line``, record) for each line, checking ``fields`` and that its image is listed."""
        path = self.root / rel
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            raise self.error(str(path), "missing") from None
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{path}, line {number}"
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise self.error(where, f"not valid JSON ({exc})") from None
            if not isinstance(record, dict):
                raise self.error(where, "not a JSON object")
            missing = [f for f in ("image_filename", *fields) if f not in record]
            if missing:
                raise self.error(where, f"missing field(s) {', '.join(missing)}")
            if record["image_filename"] not in self.files:
                raise self.error(where, f"image {record['image_filename']!r} is not part of the dataset")
            records.append((where, record))
        return records

    def image(self, record: dict[str, Any]) -> str:
        return str(self.root / record["image_filename"])


def _split_order(names: list[str]) -> list[str]:
    """train, val, test first, then the target-domain splits in the same order."""
    rank = {s: i for i, s in enumerate([*SPLITS, *(TARGET + s for s in SPLITS)])}
    return sorted(names, key=lambda s: (rank.get(s, len(rank)), s))


def _qa_splits(reader: _Reader, splits: list[str], answerable_only: bool) -> dict[str, list[QASample]]:
    fields = ("question_index", "question", "answer", "question_type", "answerable")
    out: dict[str, list[QASample]] = {}
    for split in splits:
        samples = []
        for _, q in reader.jsonl(f"questions/{split}.jsonl", fields):
            if answerable_only and not q["answerable"]:
                continue
            samples.append(
                QASample(
                    id=f"{split}/{q['question_index']}",
                    image=reader.image(q),
                    question=q["question"],
                    answers=(q["answer"],),
                    question_type=q["question_type"],
                    answer_type=q.get("answer_type", ""),
                    answerable=bool(q["answerable"]),
                )
            )
        out[split] = samples
    return out


# Mini-CLEVR has one answer per question, so its vocabulary is every answer its generator can give.
VOCAB_RULE = "every answer the generator can produce (answer2idx.json)"


def _answer_vocab(reader: _Reader) -> list[str]:
    table = reader.json("answer2idx.json")
    return sorted(table, key=table.__getitem__)


def _vqa(reader: _Reader, meta: dict[str, Any]) -> dict[str, Any]:
    splits = _split_order(list(meta["splits"]))
    return {
        "splits": _qa_splits(reader, splits, answerable_only=True),
        "answer_vocab": _answer_vocab(reader),
        "vocab_rule": VOCAB_RULE,
    }


def _answerability(reader: _Reader, meta: dict[str, Any]) -> dict[str, Any]:
    splits = _split_order(list(meta["splits"]))
    vocab = _answer_vocab(reader)
    return {
        "splits": _qa_splits(reader, splits, answerable_only=False),
        "answer_vocab": [*vocab, UNANSWERABLE],
        "vocab_rule": VOCAB_RULE + f', plus "{UNANSWERABLE}"',
    }


def _zeroshot(reader: _Reader, meta: dict[str, Any]) -> dict[str, Any]:
    classes = reader.json("zeroshot/classes.json")
    splits = {}
    for split in _split_order(list(meta["zeroshot"]["images"])):
        rows = reader.jsonl(f"zeroshot/{split}.jsonl", ("image_index", "label"))
        for where, r in rows:
            if not 0 <= r["label"] < len(classes["class_names"]):
                raise reader.error(where, f"label {r['label']} is not a class index")
        splits[split] = [
            ImageSample(id=f"{split}/{r['image_index']}", image=reader.image(r), label=r["label"]) for _, r in rows
        ]
    return {"splits": splits, "class_names": list(classes["class_names"]), "templates": list(classes["templates"])}


def _captioning(reader: _Reader, meta: dict[str, Any]) -> dict[str, Any]:
    splits = {}
    for split in _split_order(list(meta["splits"])):
        rows = reader.jsonl(f"captions/{split}.jsonl", ("image_index", "captions"))
        splits[split] = [
            CaptionSample(
                id=f"{split}/{r['image_index']}",
                image=reader.image(r),
                captions=tuple(r["captions"]),
                domain=r.get("domain", "source"),
            )
            for _, r in rows
        ]
    return {"splits": splits}


_BUILDERS: dict[TaskKind, Callable[[_Reader, dict[str, Any]], dict[str, Any]]] = {
    TaskKind.VQA: _vqa,
    TaskKind.ANSWERABILITY: _answerability,
    TaskKind.ZEROSHOT: _zeroshot,
    TaskKind.CAPTIONING: _captioning,
}


def load_task(config: MiniClevrConfig, kind: TaskKind, cache_dir: Path) -> TaskData:
    """The TaskData of ``kind``, generating (or checking) the dataset directory first."""
    kind = TaskKind(kind)
    root, manifest = ensure(config, Path(cache_dir))
    reader = _Reader(root, manifest["files"])
    parts = _BUILDERS[kind](reader, read_meta(root))
    return TaskData(
        dataset=NAME,
        kind=kind,
        root=root,
        revision=manifest["revision"],
        vqa_mode="vqa",
        unsafe_augmentations=UNSAFE_AUGMENTATIONS,
        **parts,
    )
