"""Building a TaskData per task kind from a checked Mini-CLEVR directory.

Sample ids are "<split>/<question_index>" for questions and "<split>/<image_index>" for images
(the target-domain splits reuse the indices of the scenes they restyle, under their own split
name). Every malformed line (bad JSON or UTF-8, a missing field, a field of the wrong type, a
repeated index) or bad image reference is a ``DatasetError`` naming ``FILE:LINE``, the field and
the fix. Image names go through ``vqabench.files.contained``: an absolute name, one that leaves the
root (``..``, a symbolic link) or one that is not a regular file is refused, and so is one the
manifest does not list (only hashed files are read).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vqabench_plugins.mini_clevr.config import UNANSWERABLE, UNSAFE_AUGMENTATIONS, MiniClevrConfig
from vqabench_plugins.mini_clevr.generate import SPLITS, TARGET
from vqabench_plugins.mini_clevr.manifest import MANIFEST, DatasetError, fix_hint
from vqabench_plugins.mini_clevr.store import ensure, read_meta

from vqabench.files import UnsafePathError, contained, describe_os_error
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.captioning import CaptionSample
from vqabench.tasks.qa import QASample
from vqabench.tasks.zeroshot import ImageSample

NAME = "mini-clevr"


def _index(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _texts(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v)


def _short(v: Any, limit: int = 60) -> str:
    """``repr(v)``, cut to ``limit`` characters: a message names the bad value, not a whole table."""
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# What each field of a table row must hold: (test, what it must be). A wrong type is refused here,
# naming file, line and field, rather than deep in training (a numeric answer never matches a
# string prediction; an index given as a string would silently make another sample id).
FIELD_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "question_index": (_index, "an integer >= 0"),
    "image_index": (_index, "an integer >= 0"),
    "label": (_index, "an integer >= 0"),
    "question": (_text, "a string"),
    "answer": (_text, "a string"),
    "question_type": (_text, "a string"),
    "answer_type": (_text, "a string"),
    "domain": (_text, "a string"),
    "answerable": (lambda v: isinstance(v, bool), "true or false"),
    "captions": (_texts, "a non-empty list of strings"),
}


class Reader:
    """Reads the tables of one dataset directory, checking every line and image reference.

    ``files`` is the file table of a manifest that ``manifest.verify`` accepted (or ``generate``
    wrote): only files listed there are read.
    """

    def __init__(self, root: Path, files: dict[str, Any]) -> None:
        self.root = root
        self.files = files

    def error(self, where: str, what: str) -> DatasetError:
        return DatasetError(f"{where}: {what}; {fix_hint(self.root)}")

    def _listed(self, rel: str, why: str) -> Path:
        """``root / rel`` for a file the manifest lists (so it was checked and hashed); else an error."""
        if rel not in self.files:
            raise self.error(str(self.root / MANIFEST), f"does not list {rel} ({why})")
        return self.root / rel

    def json(self, rel: str) -> Any:
        path = self._listed(rel, "a file every Mini-CLEVR dataset has")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise self.error(str(path), f"unreadable ({describe_os_error(exc, path)})") from None
        except ValueError as exc:  # JSONDecodeError (names line and column) or UnicodeDecodeError
            raise self.error(str(path), f"not valid UTF-8 JSON ({exc})") from None

    def jsonl(self, rel: str, fields: tuple[str, ...], key: str, why: str) -> list[tuple[str, dict[str, Any], str]]:
        """(``FILE:LINE``, record, image path) for each line of the table ``rel``.

        Checks each line's JSON, that it has ``fields`` of the right types (``FIELD_TYPES``),
        that ``key`` is not repeated, and that its image is a file of the dataset inside the root.
        """
        path = self._listed(rel, why)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise self.error(str(path), f"unreadable ({describe_os_error(exc, path)})") from None
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()  # the newline that ends the last line
        if not lines:
            raise self.error(str(path), f"is empty; every Mini-CLEVR split has rows ({why})")
        rows = []
        seen: dict[Any, int] = {}
        for number, raw in enumerate(lines, 1):
            where = f"{path}:{number}"
            try:  # decoded line by line, so a bad byte is reported with its line
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise self.error(where, f"not UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})") from None
            except ValueError as exc:
                raise self.error(where, f"not valid JSON ({exc})") from None
            if not isinstance(record, dict):
                raise self.error(where, f"not a JSON object (a {type(record).__name__})")
            missing = [f for f in ("image_filename", *fields) if f not in record]
            if missing:
                raise self.error(where, f"missing field(s) {', '.join(missing)}")
            for name, value in record.items():
                test, expected = FIELD_TYPES.get(name, (None, ""))
                if test is not None and not test(value):
                    raise self.error(f"{where} field {name}", f"{value!r} is not {expected}")
            if record[key] in seen:
                raise self.error(f"{where} field {key}", f"{record[key]!r} repeats line {seen[record[key]]}")
            seen[record[key]] = number
            rows.append((where, record, self._image(where, record["image_filename"])))
        return rows

    def _image(self, where: str, name: Any) -> str:
        """The path of an image a row names: a regular file inside the root that the manifest lists."""
        if isinstance(name, str) and name in self.files:
            # Every listed name went through ``contained`` in manifest.verify moments ago (or was just
            # written by the generator): checking again would cost ~50 us per image for nothing.
            return str(self.root / name)
        try:  # not listed: say precisely why, when the name is also unsafe
            contained(self.root, name, where=f"{where} field image_filename")
        except UnsafePathError as exc:
            raise DatasetError(f"{exc}; {fix_hint(self.root)}") from None
        raise self.error(f"{where} field image_filename", f"image {name!r} is not part of the dataset")


KNOWN_SPLITS = (*SPLITS, *(TARGET + s for s in SPLITS))


def _split_order(names: list[str]) -> list[str]:
    """train, val, test first, then the target-domain splits in the same order."""
    rank = {s: i for i, s in enumerate(KNOWN_SPLITS)}
    return sorted(names, key=lambda s: (rank.get(s, len(rank)), s))


def split_names(reader: Reader, meta: Any, *fields: str) -> list[str]:
    """The split names meta.json gives under ``fields`` (``splits``, or ``zeroshot.images``), in order.

    A split name becomes part of a table's file name, so only Mini-CLEVR's own names are accepted.
    """
    where = f"{reader.root / 'meta.json'} field {'.'.join(fields)}"
    value = meta
    for name in fields:
        value = value.get(name) if isinstance(value, dict) else None
    known = KNOWN_SPLITS if fields == ("splits",) else SPLITS
    if not isinstance(value, dict) or not value:
        raise reader.error(where, f"is {value!r}, not an object of split names")
    unknown = [s for s in value if s not in known]
    if unknown:
        raise reader.error(where, f"unknown split {unknown[0]!r}; Mini-CLEVR's splits are {', '.join(known)}")
    return _split_order(list(value))


def _qa_splits(reader: Reader, splits: list[str], answerable_only: bool) -> dict[str, list[QASample]]:
    fields = ("question_index", "question", "answer", "question_type", "answerable")
    out: dict[str, list[QASample]] = {}
    for split in splits:
        samples = []
        rows = reader.jsonl(f"questions/{split}.jsonl", fields, "question_index", f"meta.json lists split {split}")
        for _, q, image in rows:
            if answerable_only and not q["answerable"]:
                continue
            samples.append(
                QASample(
                    id=f"{split}/{q['question_index']}",
                    image=image,
                    question=q["question"],
                    answers=(q["answer"],),
                    question_type=q["question_type"],
                    answer_type=q.get("answer_type", ""),
                    answerable=q["answerable"],
                )
            )
        out[split] = samples
    return out


# Mini-CLEVR has one answer per question, so its vocabulary is every answer its generator can give.
VOCAB_RULE = "every answer the generator can produce (answer2idx.json)"


def _answer_vocab(reader: Reader) -> list[str]:
    table = reader.json("answer2idx.json")
    path = reader.root / "answer2idx.json"
    if not isinstance(table, dict) or not table:
        raise reader.error(str(path), f"holds {_short(table)}, not an object mapping each answer to its index")
    bad = next((a for a, i in table.items() if not _index(i)), None)
    if bad is not None:
        raise reader.error(f"{path} field {bad}", f"{table[bad]!r} is not an integer >= 0")
    if sorted(table.values()) != list(range(len(table))):
        raise reader.error(str(path), f"the indices are not 0 to {len(table) - 1}, each once")
    return sorted(table, key=table.__getitem__)


def _vqa(reader: Reader, meta: dict[str, Any]) -> dict[str, Any]:
    splits = split_names(reader, meta, "splits")
    return {
        "splits": _qa_splits(reader, splits, answerable_only=True),
        "answer_vocab": _answer_vocab(reader),
        "vocab_rule": VOCAB_RULE,
    }


def _answerability(reader: Reader, meta: dict[str, Any]) -> dict[str, Any]:
    splits = split_names(reader, meta, "splits")
    vocab = _answer_vocab(reader)
    return {
        "splits": _qa_splits(reader, splits, answerable_only=False),
        "answer_vocab": [*vocab, UNANSWERABLE],
        "vocab_rule": VOCAB_RULE + f', plus "{UNANSWERABLE}"',
    }


def _classes(reader: Reader) -> tuple[list[str], list[str]]:
    """(class names, prompt templates) from zeroshot/classes.json."""
    classes = reader.json("zeroshot/classes.json")
    path = reader.root / "zeroshot" / "classes.json"
    for name in ("class_names", "templates"):
        value = classes.get(name) if isinstance(classes, dict) else None
        if not _texts(value):
            raise reader.error(f"{path} field {name}", f"{_short(value)} is not a non-empty list of strings")
    return list(classes["class_names"]), list(classes["templates"])


def _zeroshot(reader: Reader, meta: dict[str, Any]) -> dict[str, Any]:
    class_names, templates = _classes(reader)
    splits = {}
    for split in split_names(reader, meta, "zeroshot", "images"):
        why = f"meta.json lists zero-shot split {split}"
        rows = reader.jsonl(f"zeroshot/{split}.jsonl", ("image_index", "label"), "image_index", why)
        for where, r, _ in rows:
            if r["label"] >= len(class_names):
                raise reader.error(
                    f"{where} field label", f"{r['label']} is not a class index (0 to {len(class_names) - 1})"
                )
        splits[split] = [
            ImageSample(id=f"{split}/{r['image_index']}", image=image, label=r["label"]) for _, r, image in rows
        ]
    # Each class is "<colour> <shape>": zero-shot accuracy on each alone shows a model that learns
    # only one of them (chance: 1/6 for colour, 1/4 for shape).
    attributes = {"colour": [n.split(" ")[0] for n in class_names], "shape": [n.split(" ")[-1] for n in class_names]}
    return {"splits": splits, "class_names": class_names, "templates": templates, "class_attributes": attributes}


def _captioning(reader: Reader, meta: dict[str, Any]) -> dict[str, Any]:
    splits = {}
    for split in split_names(reader, meta, "splits"):
        why = f"meta.json lists split {split}"
        rows = reader.jsonl(f"captions/{split}.jsonl", ("image_index", "captions"), "image_index", why)
        splits[split] = [
            CaptionSample(
                id=f"{split}/{r['image_index']}",
                image=image,
                captions=tuple(r["captions"]),
                domain=r.get("domain", "source"),
            )
            for _, r, image in rows
        ]
    return {"splits": splits}


_BUILDERS: dict[TaskKind, Callable[[Reader, dict[str, Any]], dict[str, Any]]] = {
    TaskKind.VQA: _vqa,
    TaskKind.ANSWERABILITY: _answerability,
    TaskKind.ZEROSHOT: _zeroshot,
    TaskKind.CAPTIONING: _captioning,
}


def load_task(config: MiniClevrConfig, kind: TaskKind, cache_dir: Path) -> TaskData:
    """The TaskData of ``kind``, generating (or checking) the dataset directory first."""
    kind = TaskKind(kind)
    root, manifest = ensure(config, Path(cache_dir))
    reader = Reader(root, manifest["files"])
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
