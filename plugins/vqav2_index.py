"""The official VQA v2 JSON files read, checked and kept as a compact index (for the vqav2 plugin).

``build_index`` parses the four files (questions and annotations of train2014 and val2014) and checks
every record: each malformed one is a one-line ``DatasetError`` naming the file, the record (its
0-based position and question_id), the field and the fix. The result, an ``Index``, holds per split
numpy arrays (ids, answer codes, confidences, types) and string tables shared by both splits; the
distinct multiple-choice answers are normalised once, for the vocabulary rule of bottom-up-attention.
``write_index`` stores it as one uncompressed ``index.npz`` (the strings as UTF-8 JSON in it), which
``read_index`` loads in well under a second for the full 658k questions; see ``vqabench_plugins.vqav2``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vqabench.files import atomic_path, describe_os_error

SOURCE = "https://visualqa.org/download.html"
OFFICIAL = ("train2014", "val2014")  # official split names: file names and image folders
ANSWER_TYPES = ("yes/no", "number", "other")
CONFIDENCES = ("yes", "maybe", "no")  # stored as their position (uint8) in the index
# Bumped when the index's shape changes, so an index an older vqabench wrote is never misread.
INDEX_FORMAT = 1
INDEX_FILE = "index.npz"


@dataclass(frozen=True)
class OfficialFile:
    """One of the four JSON files: its name, the subfolder it may sit in instead, and its zip."""

    role: str  # "questions" or "annotations"
    split: str
    name: str
    folder: str
    zip: str

    @property
    def key(self) -> str:
        return f"{self.role}/{self.split}"


# v2_OpenEnded_mscoco_train2014_questions.json in Questions_Train_mscoco.zip, and so on.
FILES = tuple(
    OfficialFile(role, split, pattern.format(split), folder, f"{folder}_{split[:-4].title()}_mscoco.zip")
    for role, pattern, folder in (
        ("questions", "v2_OpenEnded_mscoco_{}_questions.json", "Questions"),
        ("annotations", "v2_mscoco_{}_annotations.json", "Annotations"),
    )
    for split in OFFICIAL
)


class DatasetError(ValueError):
    """VQA v2 files that cannot be used as they are; the message names the file, question, field and fix."""


# --- the records ----------------------------------------------------------------------------------------


def _zip_of(path: Path) -> str:
    return next(f.zip for f in FILES if f.name == path.name)


def _fail(path: Path, where: str, what: str) -> DatasetError:
    return DatasetError(
        f"vqav2: {path}{where}: {what}; correct the record, or re-download {_zip_of(path)} from {SOURCE}"
    )


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message names the bad value, not a whole table."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read(path: Path, split: str, field: str) -> list[Any]:
    """The record list ``field`` of one official file, after checking the file's shape."""
    try:
        top = json.loads(path.read_bytes())
    except OSError as exc:
        raise DatasetError(f"vqav2: {describe_os_error(exc, path, 'reading')}") from None
    except ValueError as exc:  # JSONDecodeError names line and column; UnicodeDecodeError the byte
        raise _fail(path, "", f"is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(top, dict):
        raise _fail(path, "", f"holds a JSON {type(top).__name__}, not an object with {field!r}")
    subtype = top.get("data_subtype", split)
    if subtype != split:  # e.g. val2014 questions under the train2014 name: its images would all be missing
        raise _fail(path, " field data_subtype", f"is {_short(subtype)}, not {split!r}: the file holds another split")
    records = top.get(field)
    if not isinstance(records, list):
        got = "missing" if field not in top else f"a {type(records).__name__}"
        raise _fail(path, f" field {field}", f"is {got}, not a list of records")
    if not records:
        raise _fail(path, f" field {field}", "holds no records")
    return records


def _id(path: Path, where: str, record: dict[str, Any], name: str) -> int:
    value = record.get(name)
    if type(value) is not int or value < 0:  # bool is an int subclass: refused by the type test
        got = "missing" if name not in record else f"{_short(value)}, not a non-negative integer"
        raise _fail(path, f"{where} field {name}", f"is {got}")
    return value


class _Table:
    """Strings interned to codes (their position in ``items``), so the index stores integers."""

    def __init__(self, items: list[str] | None = None) -> None:
        self.items = list(items or [])
        self.codes = {s: i for i, s in enumerate(self.items)}

    def code(self, text: str) -> int:
        found = self.codes.get(text)
        if found is None:
            found = self.codes[text] = len(self.items)
            self.items.append(text)
        return found


def parse_questions(path: Path, split: str) -> dict[str, Any]:
    """The checked questions of one file, in file order: ``question_id``, ``image_id`` arrays and ``question``."""
    qids, images, texts = [], [], []
    seen: dict[int, int] = {}
    for i, record in enumerate(_read(path, split, "questions")):
        where = f" question {i}"
        if type(record) is not dict:
            raise _fail(path, where, f"is a {type(record).__name__}, not an object")
        qid = _id(path, where, record, "question_id")
        where = f" question {i} (question_id {qid})"
        image = _id(path, where, record, "image_id")
        text = record.get("question")
        if type(text) is not str:
            got = "missing" if "question" not in record else f"{_short(text)}, not a string"
            raise _fail(path, f"{where} field question", f"is {got}")
        if seen.setdefault(qid, i) != i:
            raise _fail(path, f"{where} field question_id", f"repeats question {seen[qid]}")
        qids.append(qid)
        images.append(image)
        texts.append(text)
    return {"question_id": np.array(qids, np.int64), "image_id": np.array(images, np.int64), "question": texts}


def parse_annotations(
    path: Path, split: str, questions: dict[str, Any], qpath: Path, answers: _Table, qtypes: _Table
) -> dict[str, np.ndarray]:
    """The checked annotation of every question (in the questions' order) as index arrays.

    ``answers`` and ``qtypes`` intern the strings (shared by both splits, so codes compare).
    """
    records = _read(path, split, "annotations")
    position: dict[int, int] = {}
    for j, record in enumerate(records):
        if type(record) is not dict:
            raise _fail(path, f" annotation {j}", f"is a {type(record).__name__}, not an object")
        qid = _id(path, f" annotation {j}", record, "question_id")
        if position.setdefault(qid, j) != j:
            raise _fail(
                path,
                f" annotation {j} (question_id {qid}) field question_id",
                f"annotates the question of annotation {position[qid]} again",
            )
    starts, codes, sure, mc, qtype, atype = [0], [], [], [], [], []
    confidence = {c: k for k, c in enumerate(CONFIDENCES)}
    answer_type = {t: k for k, t in enumerate(ANSWER_TYPES)}
    for i, (qid, image) in enumerate(zip(questions["question_id"].tolist(), questions["image_id"].tolist())):
        j = position.get(qid)
        if j is None:
            raise DatasetError(
                f"vqav2: {path} has no annotation for question_id {qid} ({qpath} question {i}); the two files must "
                f"be of one release: re-download {_zip_of(path)} and {_zip_of(qpath)} from {SOURCE}"
            )
        record, where = records[j], f" annotation {j} (question_id {qid})"
        if _id(path, where, record, "image_id") != image:
            raise DatasetError(
                f"vqav2: {path}{where} field image_id: {record['image_id']} differs from image_id {image} of "
                f"{qpath} question {i}; the two files must be of one release: re-download {_zip_of(path)} and "
                f"{_zip_of(qpath)} from {SOURCE}"
            )
        for name in ("question_type", "multiple_choice_answer"):
            if type(record.get(name)) is not str:
                got = "missing" if name not in record else f"{_short(record[name])}, not a string"
                raise _fail(path, f"{where} field {name}", f"is {got}")
        kind = answer_type.get(record.get("answer_type")) if type(record.get("answer_type")) is str else None
        if kind is None:
            got = "missing" if "answer_type" not in record else _short(record["answer_type"])
            raise _fail(path, f"{where} field answer_type", f"is {got}, not one of {', '.join(ANSWER_TYPES)}")
        given = record.get("answers")
        if type(given) is not list or not given:
            got = "missing" if "answers" not in record else _short(given)
            raise _fail(path, f"{where} field answers", f"is {got}, not a non-empty list of answer objects")
        for k, item in enumerate(given):
            if type(item) is not dict:
                raise _fail(path, f"{where} field answers[{k}]", f"is a {type(item).__name__}, not an object")
            text, level = item.get("answer"), item.get("answer_confidence")
            if type(text) is not str:
                got = "missing" if "answer" not in item else f"{_short(text)}, not a string"
                raise _fail(path, f"{where} field answers[{k}].answer", f"is {got}")
            sure_code = confidence.get(level) if type(level) is str else None
            if sure_code is None:
                got = "missing" if "answer_confidence" not in item else _short(level)
                raise _fail(
                    path, f"{where} field answers[{k}].answer_confidence", f"is {got}, not 'yes', 'maybe' or 'no'"
                )
            codes.append(answers.code(text))
            sure.append(sure_code)
        starts.append(len(codes))
        mc.append(answers.code(record["multiple_choice_answer"]))
        qtype.append(qtypes.code(record["question_type"]))
        atype.append(kind)
    return {
        "answer_start": np.array(starts, np.int64),
        "answers": np.array(codes, np.int32),
        "confidence": np.array(sure, np.uint8),
        "multiple_choice_answer": np.array(mc, np.int32),
        "question_type": np.array(qtype, np.int32),
        "answer_type": np.array(atype, np.uint8),
    }


# --- the index ------------------------------------------------------------------------------------------

ARRAYS = ("question_id", "image_id", "answer_start", "answers", "confidence", "multiple_choice_answer")
ARRAYS += ("question_type", "answer_type")


@dataclass
class Index:
    """Both official splits parsed: per split its arrays and questions; the shared string tables."""

    splits: dict[str, dict[str, Any]]  # split -> ARRAYS and "question" (list[str])
    answers: list[str]  # every answer string (human and multiple choice) by code
    question_types: list[str]
    normalised: list[str]  # the distinct normalised multiple-choice answers
    mc_normalised: np.ndarray  # answer code -> code in ``normalised`` (-1: not a multiple-choice answer)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector paused: millions of new, long-lived objects (parsed JSON, samples)
    trigger collections that find nothing to free and cost a third of the time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def build_index(files: dict[str, Path]) -> Index:
    """Every file parsed and checked; each annotations file is freed before the next is read."""
    from vqabench.metrics.vqa import normalize_answer

    answers, qtypes = _Table(), _Table()
    splits = {}
    for split in OFFICIAL:
        qpath = files[f"questions/{split}"]
        with paused_gc():
            columns = parse_questions(qpath, split)
            columns.update(parse_annotations(files[f"annotations/{split}"], split, columns, qpath, answers, qtypes))
        splits[split] = columns
    # Only the distinct multiple-choice answers are normalised (tens of thousands, not 658k).
    normalised = _Table()
    mc_normalised = np.full(len(answers.items), -1, np.int32)
    for code in np.unique(np.concatenate([c["multiple_choice_answer"] for c in splits.values()])).tolist():
        mc_normalised[code] = normalised.code(normalize_answer(answers.items[code]))
    return Index(splits, answers.items, qtypes.items, normalised.items, mc_normalised)


def write_index(index: Index, directory: Path) -> Path:
    """Write ``index`` as one ``index.npz`` (arrays, and the string tables as UTF-8 JSON) in ``directory``."""
    strings = {
        "format": INDEX_FORMAT,
        "answers": index.answers,
        "question_types": index.question_types,
        "normalised": index.normalised,
        "questions": {split: columns["question"] for split, columns in index.splits.items()},
    }
    arrays = {f"{split}/{name}": columns[name] for split, columns in index.splits.items() for name in ARRAYS}
    arrays["mc_normalised"] = index.mc_normalised
    arrays["strings"] = np.frombuffer(json.dumps(strings, separators=(",", ":")).encode(), np.uint8)
    with atomic_path(directory / INDEX_FILE) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # uncompressed: a load reads it in well under a second
    return directory


def _whole(index: Index) -> bool:
    """Whether the arrays agree in length and every code points into its table (a cheap check per load)."""
    if len(index.mc_normalised) != len(index.answers) or index.mc_normalised.max(initial=-1) >= len(index.normalised):
        return False
    for columns in index.splits.values():
        n = len(columns["question_id"])
        per_question = ("image_id", "multiple_choice_answer", "question_type", "answer_type", "question")
        if {len(columns[k]) for k in per_question} != {n} or len(columns["answer_start"]) != n + 1:
            return False
        if columns["answer_start"][-1] != len(columns["answers"]) or len(columns["confidence"]) != len(
            columns["answers"]
        ):
            return False
        bounds = {"answers": len(index.answers), "multiple_choice_answer": len(index.answers)}
        bounds.update(question_type=len(index.question_types), confidence=3, answer_type=3)
        if any(columns[k].max(initial=0) >= bound or columns[k].min(initial=0) < 0 for k, bound in bounds.items()):
            return False
    return True


def read_index(path: Path) -> Index | None:
    """The index in ``path``, or None when it is absent, damaged or of another format."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        strings = json.loads(arrays.pop("strings").tobytes())
        if strings.get("format") != INDEX_FORMAT:
            return None
        splits = {}
        for split in OFFICIAL:
            splits[split] = {name: arrays[f"{split}/{name}"] for name in ARRAYS}
            splits[split]["question"] = strings["questions"][split]
        tables = (strings["answers"], strings["question_types"], strings["normalised"])
        index = Index(splits, *tables, arrays["mc_normalised"])
        return index if _whole(index) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile):
        return None  # absent or damaged: the caller builds it again
