"""The vizwiz dataset plugin: the official VizWiz VQA files, for VQA and answerability.

Point it at the folder the official downloads were unzipped in (``--data root=DIR``; Annotations.zip,
train.zip, val.zip and test.zip from https://vizwiz.org/tasks-and-datasets/vqa/):

- annotations ``Annotations/{train,val,test}.json`` (the zip's layout) or ``{train,val,test}.json``
  directly in the root (not both); ``train.json`` and ``val.json`` are required, ``test.json`` is not;
- images ``<root>/<official split>/<image>``, e.g. ``root/train/VizWiz_train_00000000.jpg``.

Each annotation file is a JSON list of records ``{"image", "question", "answers": [{"answer",
"answer_confidence"}, ...], "answer_type", "answerable"}``; test.json records have only ``image``
and ``question``. Unknown fields are ignored everywhere. Answers are kept exactly as written (the
VizWiz metric never normalises references). VizWiz asks one question per image, so a sample's id
is its image file name, and an image named twice in one file is an error.

Splits (vqabench's names; the official ones in brackets):

- ``train``: official train minus a holdout; ``val``: that holdout, for checkpoint selection. The
  holdout is ``holdout_fraction`` of the official train images (rounded, at least one), drawn by
  permuting the sorted image names with ``numpy.random.default_rng(seed)``; with ``limit_train``
  only the first ``limit_train`` images of that permutation are kept (a quick look), and the
  holdout is taken from them.
- ``test``: official val, labelled: the split leaderboards score.
- ``challenge``: official test (only when test.json exists), without answers: it is in
  ``TaskData.unlabelled``, so cells predict it for ``vqabench export`` and nothing scores it. Its
  samples have ``answers=()``, ``answerable=True`` and ``answer_type=""``.

Samples keep their file's record order. Both kinds (``vqa`` and ``answerability``) get the same
samples, answerable and unanswerable ("unanswerable" is an ordinary answer), and the same
vocabulary: report 002's ``confident`` rule (``vqabench.vocab``) over the ``train`` split, so no
answer seen only in the holdout enters it.

``revision`` hashes the annotation files' bytes and the config fields that change the data. The
parsed files are cached as a compact index in ``cache_dir/vizwiz/<revision>/``, so a second load
reads one JSON file instead of checking every record again; image presence is checked on every
load (one directory listing per split). Each malformed record is a one-line ``DatasetError``
naming the file, the record (its 0-based position in the JSON list), the field and the fix.
Image names go through ``vqabench.files.contained``. Unreadable image bytes are found when the
image store decodes them (``vqabench.images.ImageDecodeError`` names the file), still before
training.

``export`` writes the evaluation server's files from a model's stored predictions: the answers file
``[{"image", "answer"}]`` and, beside it, ``<stem>-answerability<suffix>`` with
``[{"image", "answerable"}]`` (the probability that the question is answerable).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vqabench.files import (
    UnsafePathError,
    atomic_write_json,
    atomic_write_text,
    check_regular_file,
    contained,
    dataset_root,
    describe_os_error,
    file_sha256,
)
from vqabench.hookspecs import hookimpl
from vqabench.registry import DatasetSpec
from vqabench.tasks import TaskData, TaskKind, kind_name

NAME = "vizwiz"
SOURCE = "https://vizwiz.org/tasks-and-datasets/vqa/"
DOWNLOADS = "Annotations.zip, train.zip, val.zip, test.zip"
ROOT_FLAG = "--data root=DIR"
OFFICIAL = ("train", "val", "test")  # official split names: annotation file stems and image folders
REQUIRED = ("train", "val")
LABELLED = ("train", "val")  # test.json carries no answers
SPLITS = ("train", "val", "test", "challenge")  # vqabench's names
UNLABELLED = "challenge"
ANSWER_TYPES = ("other", "yes/no", "number", "unanswerable")
CONFIDENCES = {"yes": "y", "maybe": "m", "no": "n"}  # stored as one letter each in the index
ANNOTATIONS = "Annotations"
# Bumped when the index's shape changes, so an index an older vqabench wrote is never misread.
INDEX_FORMAT = 1
INDEX_FILE = "index.json"


class DatasetError(ValueError):
    """VizWiz files that cannot be used as they are; the message names the file, record, field and fix."""


@dataclass(frozen=True)
class VizWizConfig:
    """Where the official files are, and how the validation holdout is drawn from official train."""

    root: str = ""  # required; empty only so that the config can be built before it is set
    holdout_fraction: float = 0.1
    seed: int = 0
    limit_train: int = 0  # 0: every official train question

    def __post_init__(self) -> None:
        if not (isinstance(self.holdout_fraction, (int, float)) and 0 < self.holdout_fraction < 1):
            raise ValueError(
                f"vizwiz config: holdout_fraction={self.holdout_fraction!r} must lie strictly between 0 and 1, "
                f"e.g. --data holdout_fraction=0.1"
            )
        if self.seed < 0:
            raise ValueError(f"vizwiz config: seed={self.seed} must be >= 0, e.g. --data seed=0")
        if self.limit_train < 0:
            raise ValueError(
                f"vizwiz config: limit_train={self.limit_train} must be >= 0 (0 keeps every question), "
                f"e.g. --data limit_train=2000"
            )


# --- the files ----------------------------------------------------------------------------------------


def _root(value: str, flag: str = ROOT_FLAG) -> Path:
    where = f"{DOWNLOADS} from {SOURCE}, unzipped"
    return dataset_root(
        value, dataset=NAME, holds=f"the official VizWiz files ({where})", flag=flag, error=DatasetError
    )


def locate(root: Path) -> dict[str, Path]:
    """Official split -> its annotation file, once every file the dataset needs is there.

    Missing files (annotations, image folders) are reported together in one message.
    """
    found = [d for d in (root / ANNOTATIONS, root) if any((d / f"{s}.json").exists() for s in OFFICIAL)]
    if len(found) > 1:
        raise DatasetError(
            f"vizwiz: both {found[0]} and {found[1]} hold annotation files (train.json, val.json, test.json); "
            f"keep one set: move or delete the other"
        )
    folder = found[0] if found else root / ANNOTATIONS
    files = {s: folder / f"{s}.json" for s in OFFICIAL if (folder / f"{s}.json").exists()}
    missing = [folder / f"{s}.json" for s in REQUIRED if s not in files]
    missing += [root / s for s in OFFICIAL if (s in REQUIRED or s in files) and not (root / s).is_dir()]
    if missing:
        names = ", ".join(str(p.relative_to(root)) + ("/" if p.suffix != ".json" else "") for p in missing)
        raise DatasetError(
            f"vizwiz: {root} lacks {names}; download {DOWNLOADS} from {SOURCE} and unzip them in {root} "
            f"(giving {ANNOTATIONS}/train.json, val.json, test.json and the image folders train/, val/, test/)"
        )
    for path in files.values():
        _check_regular(path)
    return files


def _check_regular(path: Path) -> None:
    check_regular_file(path, dataset=NAME, fix="put the official annotation file there", error=DatasetError)


def _file_digest(path: Path) -> bytes:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise DatasetError(f"vizwiz: {describe_os_error(exc, path, 'reading')}") from None


def revision(files: dict[str, Path], config: VizWizConfig) -> str:
    """sha256 of the annotation files' bytes and of the config fields that change the samples.

    The root and the layout (``Annotations/`` or not) are left out: the same files give the same data.
    """
    # The index format is part of it, so caches keyed by the revision follow a change in how files are read.
    digest = hashlib.sha256(f"vizwiz index {INDEX_FORMAT}\n".encode())
    for split in sorted(files):
        digest.update(split.encode() + b"\0" + _file_digest(files[split]))
    fields = {"holdout_fraction": config.holdout_fraction, "seed": config.seed, "limit_train": config.limit_train}
    digest.update(json.dumps(fields, sort_keys=True).encode())
    return digest.hexdigest()


# --- the records ----------------------------------------------------------------------------------------

FIX = f"correct the record, or re-download {ANNOTATIONS}.zip from {SOURCE}"


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message names the bad value, not a whole table."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(where: str, what: str) -> DatasetError:
    return DatasetError(f"vizwiz: {where}: {what}; {FIX}")


def _read_records(path: Path) -> list[Any]:
    try:
        records = json.loads(path.read_bytes())
    except OSError as exc:
        raise DatasetError(f"vizwiz: {describe_os_error(exc, path, 'reading')}") from None
    except ValueError as exc:  # JSONDecodeError names line and column; UnicodeDecodeError the byte
        raise _fail(str(path), f"is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(records, list):
        raise _fail(str(path), f"holds a JSON {type(records).__name__}, not a list of records")
    if not records:
        raise _fail(str(path), "holds no records")
    return records


def _answerable(where: str, value: Any) -> int:
    # JSON gives 0/1 (the official files) or true/false; 1.0 or "1" would hide a conversion bug.
    if isinstance(value, bool) or (type(value) is int and value in (0, 1)):
        return int(value)
    raise _fail(f"{where} field answerable", f"{value!r} is not 0, 1, true or false")


def _answers(where: str, record: dict[str, Any]) -> tuple[list[str], str]:
    """(answers, confidences as letters) of a labelled record."""
    answers = record.get("answers")
    if not isinstance(answers, list) or not answers:
        got = "missing" if "answers" not in record else _short(answers)
        raise _fail(
            f"{where} field answers",
            f"is {got}, not a non-empty list of answer objects; a train or val question needs its human answers",
        )
    texts, letters = [], []
    for j, item in enumerate(answers):
        if not isinstance(item, dict):
            raise _fail(f"{where} field answers[{j}]", f"is a {type(item).__name__}, not an object with 'answer'")
        if not isinstance(item.get("answer"), str):
            got = "missing" if "answer" not in item else f"{item['answer']!r}, not a string"
            raise _fail(f"{where} field answers[{j}].answer", f"is {got}")
        confidence = item.get("answer_confidence")
        if confidence not in CONFIDENCES:
            got = "missing" if "answer_confidence" not in item else repr(confidence)
            raise _fail(f"{where} field answers[{j}].answer_confidence", f"is {got}, not 'yes', 'maybe' or 'no'")
        texts.append(item["answer"])
        letters.append(CONFIDENCES[confidence])
    return texts, "".join(letters)


def parse_file(path: Path, split: str, image_dir: Path) -> dict[str, list[Any]]:
    """The checked records of one official annotation file as index columns (in file order).

    Labelled files (train, val) give ``image``, ``question``, ``answers``, ``confidences`` (one
    letter per answer), ``answer_type`` and ``answerable`` (0/1); test gives ``image`` and ``question``.
    """
    labelled = split in LABELLED
    columns: dict[str, list[Any]] = {"image": [], "question": []}
    if labelled:
        columns.update(answers=[], confidences=[], answer_type=[], answerable=[])
    seen: dict[str, int] = {}
    for i, record in enumerate(_read_records(path)):
        where = f"{path} record {i}"
        if not isinstance(record, dict):
            raise _fail(where, f"is a {type(record).__name__}, not an object")
        for name in ("image", "question"):
            if name not in record:
                raise _fail(f"{where} field {name}", "is missing")
        if not isinstance(record["question"], str):
            raise _fail(f"{where} field question", f"{record['question']!r} is not a string")
        image = record["image"]
        try:
            contained(image_dir, image, where=f"{where} field image")
        except UnsafePathError as exc:
            raise DatasetError(f"vizwiz: {exc}; {FIX}") from None
        if image in seen:
            raise _fail(
                f"{where} field image",
                f"{image!r} is also the image of record {seen[image]}; VizWiz asks one question per image",
            )
        seen[image] = i
        columns["image"].append(image)
        columns["question"].append(record["question"])
        if not labelled:
            continue
        answers, letters = _answers(where, record)
        answer_type = record.get("answer_type")
        if answer_type not in ANSWER_TYPES:
            got = "missing" if "answer_type" not in record else repr(answer_type)
            raise _fail(f"{where} field answer_type", f"is {got}, not one of {', '.join(ANSWER_TYPES)}")
        if "answerable" not in record:
            raise _fail(f"{where} field answerable", "is missing (0 or 1)")
        columns["answers"].append(answers)
        columns["confidences"].append(letters)
        columns["answer_type"].append(answer_type)
        columns["answerable"].append(_answerable(where, record["answerable"]))
    return columns


def check_images(root: Path, files: dict[str, Path], index: dict[str, Any]) -> None:
    """Every image the annotation files name exists (one directory listing per split, so it is cheap)."""
    for split, columns in index["splits"].items():
        folder = root / split
        try:
            present = set(os.listdir(folder))
        except OSError as exc:
            raise DatasetError(f"vizwiz: {describe_os_error(exc, folder, 'listing')}") from None
        # Official names are plain file names; a name with a folder in it is looked up on its own.
        missing = [
            (i, name)
            for i, name in enumerate(columns["image"])
            if name not in present and ("/" not in name or not (folder / name).is_file())
        ]
        if missing:
            i, name = missing[0]
            others = f", nor do {len(missing) - 1} other images it names" if len(missing) > 1 else ""
            raise DatasetError(
                f"vizwiz: {files[split]} record {i} field image: {folder / name} does not exist{others}; "
                f"download {split}.zip from {SOURCE} and unzip it in {root}"
            )


# --- the index ------------------------------------------------------------------------------------------


def index_dir(cache_dir: Path, rev: str) -> Path:
    """Where the index of a revision is cached."""
    return Path(cache_dir) / NAME / rev


def build_index(root: Path, files: dict[str, Path]) -> dict[str, Any]:
    """Every annotation file parsed and checked: ``{"format", "splits": {official split: columns}}``."""
    splits = {split: parse_file(path, split, root / split) for split, path in files.items()}
    return {"format": INDEX_FORMAT, "splits": splits}


def _valid_index(index: Any, files: dict[str, Path]) -> bool:
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        return False
    splits = index.get("splits")
    if not isinstance(splits, dict) or set(splits) != set(files):
        return False
    for split, columns in splits.items():
        names = ("image", "question") + (
            ("answers", "confidences", "answer_type", "answerable") if split in LABELLED else ()
        )
        if not isinstance(columns, dict) or any(not isinstance(columns.get(n), list) for n in names):
            return False
        if len({len(columns[n]) for n in names}) != 1:
            return False
    return True


def write_index(index: dict[str, Any], directory: Path) -> Path:
    # Compact, not the indented JSON of records: the full index is tens of megabytes of answers.
    atomic_write_text(directory / INDEX_FILE, json.dumps(index, separators=(",", ":")) + "\n")
    return directory


def cached_index(root: Path, files: dict[str, Path], directory: Path) -> dict[str, Any]:
    """The index in ``directory`` when it is there and whole, else built from the files and written."""
    try:
        index = json.loads((directory / INDEX_FILE).read_bytes())
        if _valid_index(index, files):
            return index
    except (OSError, ValueError):  # absent or damaged: built again below
        pass
    index = build_index(root, files)
    write_index(index, directory)
    return index


# --- splits and samples ---------------------------------------------------------------------------------


def holdout(images: list[str], config: VizWizConfig) -> tuple[set[str], set[str]]:
    """(train, val) image names of official train; see the module docstring for the rule."""
    order = sorted(images)  # so the draw does not depend on the file's record order
    chosen = [order[i] for i in np.random.default_rng(config.seed).permutation(len(order))]
    if config.limit_train:
        chosen = chosen[: config.limit_train]
    n_val = max(1, round(config.holdout_fraction * len(chosen)))
    if n_val >= len(chosen):
        raise DatasetError(
            f"vizwiz: holdout_fraction={config.holdout_fraction} of {len(chosen)} train questions leaves none to "
            f"train on; use more questions (limit_train=0 keeps all) or a smaller --data holdout_fraction"
        )
    return set(chosen[n_val:]), set(chosen[:n_val])


def _samples(columns: dict[str, list[Any]], image_dir: Path, keep: set[str] | None = None) -> list[Any]:
    from vqabench.tasks.qa import QASample  # pulls in torch, which `vqabench plugins` does not need

    letters = {v: k for k, v in CONFIDENCES.items()}
    # Joined as strings: a Path per image costs more than the rest of a cached load together.
    prefix = os.path.join(str(image_dir), "")
    out = []
    for i, image in enumerate(columns["image"]):
        if keep is not None and image not in keep:
            continue
        if "answers" not in columns:
            out.append(QASample(id=image, image=prefix + image, question=columns["question"][i], answers=()))
            continue
        out.append(
            QASample(
                id=image,
                image=prefix + image,
                question=columns["question"][i],
                answers=tuple(columns["answers"][i]),
                answer_type=columns["answer_type"][i],
                answerable=bool(columns["answerable"][i]),
                answer_confidences=tuple(letters[c] for c in columns["confidences"][i]),
            )
        )
    return out


def splits_of(root: Path, index: dict[str, Any], config: VizWizConfig) -> dict[str, list[Any]]:
    """vqabench's splits (train, val, test, and challenge when test.json exists) from the index."""
    official = index["splits"]
    train, val = holdout(official["train"]["image"], config)
    splits = {
        "train": _samples(official["train"], root / "train", train),
        "val": _samples(official["train"], root / "train", val),
        "test": _samples(official["val"], root / "val"),
    }
    if "test" in official:
        splits[UNLABELLED] = _samples(official["test"], root / "test")
    return splits


# --- the plugin -----------------------------------------------------------------------------------------


def load(config: VizWizConfig, kind: str, cache_dir: Path) -> TaskData:
    """The TaskData of ``kind`` (vqa or answerability) from the official files in ``config.root``."""
    from vqabench.vocab import answer_vocabulary, describe_rule

    kind = kind_name(kind)
    if kind not in (TaskKind.VQA, TaskKind.ANSWERABILITY):
        raise DatasetError(f"vizwiz gives task kinds vqa and answerability, not {kind!r}")
    root = _root(config.root)
    files = locate(root)
    rev = revision(files, config)
    index = cached_index(root, files, index_dir(cache_dir, rev))
    check_images(root, files, index)
    splits = splits_of(root, index, config)
    return TaskData(
        dataset=NAME,
        kind=kind,
        root=root,
        splits=splits,
        revision=rev,
        answer_vocab=answer_vocabulary(splits["train"], rule="confident"),
        vocab_rule=describe_rule("confident"),
        vqa_mode="vizwiz",
        unlabelled=frozenset({UNLABELLED}) if UNLABELLED in splits else frozenset(),
    )


def prepare(config: VizWizConfig, root: Path) -> Path:
    """Check the official files in ``root`` (every record and image) and write their index.

    The index goes where ``vqabench run`` looks by default (``$VQABENCH_CACHE`` or
    ``~/.cache/vqabench``); returns its directory.
    """
    from vqabench.cli import default_cache

    config = replace(config, root=str(root))
    root = _root(config.root, "--root DIR")
    files = locate(root)
    index = build_index(root, files)
    check_images(root, files, index)
    splits_of(root, index, config)  # a holdout that leaves nothing to train on fails here, not in a run
    return write_index(index, index_dir(default_cache(), revision(files, config)))


def _carries(lines: list[dict[str, Any]], field: str) -> bool:
    """Whether the lines carry ``field``: all of them, or none (a mix is lines of two exports)."""
    carried = [field in line for line in lines]
    if any(carried) and not all(carried):
        n = carried.index(False)
        raise ValueError(
            f"vizwiz export: line {n} (id {lines[n]['id']!r}) lacks field {field!r} that other lines carry; "
            f"export the predictions of one model on one split"
        )
    return all(carried)


def _checked(lines: list[dict[str, Any]], field: str, test: Any, expected: str) -> list[Any]:
    values = [line.get(field) for line in lines]
    bad = next((n for n, v in enumerate(values) if not test(v)), None)
    if bad is not None:
        raise ValueError(f"vizwiz export: line {bad} field {field}: {values[bad]!r} is not {expected}")
    return values


def _is_score(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def export(config: VizWizConfig, split: str, lines: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write the VizWiz evaluation server's files for one split's prediction lines; return their paths.

    ``out`` gets ``[{"image", "answer"}]`` when the lines carry ``answer``; ``<stem>-answerability
    <suffix>`` beside it gets ``[{"image", "answerable"}]`` when they carry ``answerable_score``.
    Entries keep the order of ``lines``.
    """
    out = Path(out)
    if split not in SPLITS:
        raise ValueError(f"vizwiz export: no split {split!r}; vizwiz has {', '.join(SPLITS)}")
    if not lines:
        raise ValueError(f"vizwiz export: no prediction lines for split {split!r}; run a model on it first")
    images = _checked(lines, "id", lambda v: isinstance(v, str) and v, "an image file name")
    first: dict[str, int] = {}
    for n, image in enumerate(images):
        if first.setdefault(image, n) != n:
            raise ValueError(f"vizwiz export: line {n} field id: {image!r} repeats line {first[image]}")
    written = []
    if _carries(lines, "answer"):
        answers = _checked(lines, "answer", lambda v: isinstance(v, str), "a string")
        atomic_write_json(out, [{"image": i, "answer": a} for i, a in zip(images, answers)])
        written.append(out)
    if _carries(lines, "answerable_score"):
        scores = _checked(lines, "answerable_score", _is_score, "a finite number")
        path = out.with_name(f"{out.stem}-answerability{out.suffix}")
        atomic_write_json(path, [{"image": i, "answerable": float(s)} for i, s in zip(images, scores)])
        written.append(path)
    if not written:
        raise ValueError(
            f"vizwiz export: the prediction lines of split {split!r} carry neither 'answer' (vqa) nor "
            f"'answerable_score' (answerability); export the predictions of a vqa or answerability cell"
        )
    return written


@hookimpl
def register_datasets(register):
    """Register the vizwiz dataset."""
    register(
        DatasetSpec(
            name=NAME,
            task_kinds=(TaskKind.VQA, TaskKind.ANSWERABILITY),
            config_cls=VizWizConfig,
            load=load,
            prepare=prepare,
            export=export,
            profiles={"quick": {}, "paper": {}},
            description="VizWiz VQA (official files, --data root=DIR): questions from blind people, ten answers each, "
            "answerability; train/val = official train and a holdout, test = official val, challenge = official test",
        )
    )
