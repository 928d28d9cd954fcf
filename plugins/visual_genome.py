"""The visual-genome dataset plugin: report 004's relation questions from the official Visual Genome files.

Point it at the folder the official downloads were unzipped in (``--data root=DIR``; from
https://homes.cs.washington.edu/~ranjay/visualgenome/api.html: relationships.json.zip,
image_data.json.zip and the two image zips images.zip and images2.zip)::

    DIR/relationships.json     [{"image_id" | "id", "relationships": [{"relationship_id", "predicate",
                                 "synsets", "subject": {"object_id", "x", "y", "w", "h",
                                 "name" | "names": [...], ...}, "object": {...}}, ...]}, ...]
    DIR/image_data.json        [{"image_id" | "id", "url", "width", "height", "coco_id", "flickr_id"}, ...]
    DIR/VG_100K/<id>.jpg       images.zip
    DIR/VG_100K_2/<id>.jpg     images2.zip

Both spellings of the id and of an object's name occur across releases (v1.0-v1.4); a list of
names counts by its first. Other fields are ignored. An image's file is the last two parts of its
``url`` (``.../VG_100K_2/1.jpg``): a folder of the two above and the file name, which must lie
inside the root (``vqabench.files.contained``: no ``..``, no link out, a regular file).

Questions (report 004: "extracting objects and relationships"): per relationship, "What is the
relationship between the SUBJECT and the OBJECT?" answered by its predicate. Names and predicates
are lowercased, stripped and their whitespace collapsed. Skipped, and counted by reason:

- ``ambiguous_name``: the subject's or the object's name names more than one object (object_id)
  among the objects of that image's relationships: "the man" would not say which;
- ``several_predicates``: one (subject, object) name pair with different predicates in one image
  (every relationship of that pair is skipped: no single answer);
- ``duplicate``: the same (subject, object, predicate) again in one image (asked once);
- ``empty``: an empty name or predicate.

Splits: Visual Genome has none for this task. Images with at least one question are ordered by id,
permuted by ``numpy.random.default_rng(seed)``, cut to ``max_images`` (0: all) and divided by
``split_fractions`` (train, val, test; test takes the rounding remainder): all questions of an
image share its split. Vocabulary: the ``top_k`` most frequent training predicates (0: every one,
as report 004's "vocabulary ... of unique answers"); a question whose predicate falls outside
counts 0 (the record's vocabulary coverage says how many). The counts of questions and skips are in
``TaskData.notes["relations"]`` (the record's ``data_notes``) and in the log.

Errors: every missing file in one message with where to download it; a malformed record (not an
object, a missing field, a field of the wrong type) names the file, the record's 0-based index,
its image id and the field. Unreadable image bytes are found when the image store decodes them,
still before training. The JSON files are read whole: the full relationships.json (~0.7 GB) needs
several GB of memory and about a minute.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vqabench.files import UnsafePathError, check_regular_file, contained, dataset_root, describe_os_error, file_sha256
from vqabench.hookspecs import hookimpl
from vqabench.registry import DatasetSpec
from vqabench.tasks import TaskData, TaskKind, kind_name

log = logging.getLogger(__name__)

NAME = "visual-genome"
SOURCE = "https://homes.cs.washington.edu/~ranjay/visualgenome/api.html"
FILES = {"relationships.json": "relationships.json.zip", "image_data.json": "image_data.json.zip"}
IMAGE_FOLDERS = {"VG_100K": "images.zip", "VG_100K_2": "images2.zip"}
LAYOUT = "relationships.json and image_data.json in the root, the images in VG_100K/ and VG_100K_2/"
QUESTION = "What is the relationship between the {subject} and the {object}?"
SKIP_REASONS = ("ambiguous_name", "several_predicates", "duplicate", "empty")
FORMAT = "1"  # bump when a change here changes the samples: part of the revision


class DatasetError(ValueError):
    """Visual Genome files that cannot be used as they are; the message names the file, record, field and fix."""


@dataclass(frozen=True)
class VisualGenomeConfig:
    """Where the official files are, how images are split, and the answer vocabulary."""

    root: str = ""  # required; empty only so that the config can be built before it is set
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test, by image
    seed: int = 0
    top_k: int = 0  # answer vocabulary: the top_k most frequent training predicates; 0: all (report 004)
    max_images: int = 0  # images with questions kept (first of the seeded order); 0: all

    def __post_init__(self) -> None:
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(
                f"visual-genome config: split_fractions={fractions!r} must be three positive numbers summing to 1, "
                f"e.g. --data split_fractions=0.8,0.1,0.1"
            )
        for name in ("seed", "top_k", "max_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"visual-genome config: {name}={getattr(self, name)} must be >= 0")


def normalise(text: str) -> str:
    """Lowercased, stripped, whitespace collapsed: how names and predicates are compared and asked."""
    return " ".join(text.lower().split())


def _root(value: str, flag: str = "--data root=DIR") -> Path:
    holds = f"the official Visual Genome files ({', '.join([*FILES.values(), *IMAGE_FOLDERS.values()])} from {SOURCE})"
    return dataset_root(value, dataset=NAME, holds=holds, flag=flag, error=DatasetError)


def locate(root: Path) -> dict[str, Path]:
    """The two JSON files, once they and the image folders are there (every missing one in one message)."""
    missing = [f"{name} (from {zipname})" for name, zipname in FILES.items() if not (root / name).exists()]
    missing += [
        f"{folder}/ (from {zipname})" for folder, zipname in IMAGE_FOLDERS.items() if not (root / folder).is_dir()
    ]
    if missing:
        raise DatasetError(
            f"{NAME}: {root} lacks {', '.join(missing)}; download them from {SOURCE} and unzip them in {root} "
            f"({LAYOUT})"
        )
    for name in FILES:
        check_regular_file(root / name, dataset=NAME, fix="put the official JSON file there", error=DatasetError)
    return {name: root / name for name in FILES}


def _read_list(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(f"{NAME}: {describe_os_error(exc, path, 'reading')}") from None
    except ValueError as exc:  # JSONDecodeError (names line and column) or UnicodeDecodeError
        raise DatasetError(f"{NAME}: {path} is not valid UTF-8 JSON ({exc}); download it again from {SOURCE}") from None
    if not isinstance(data, list):
        raise DatasetError(f"{NAME}: {path} holds a JSON {type(data).__name__}, not the official list of records")
    return data


class _Record:
    """Field access on one record of a file, with errors naming the file, the record and the field."""

    def __init__(self, path: Path, index: int, record: Any):
        self.path, self.index, self.id = path, index, None
        if not isinstance(record, dict):
            raise self.error("", f"is a {type(record).__name__}, not a JSON object")
        self.record = record
        self.id = self.first_of(record, ("image_id", "id"), _is_id, "an integer >= 0")

    def error(self, field: str, what: str) -> DatasetError:
        ident = f" (image_id {self.id})" if self.id is not None else ""
        where = f" field {field}" if field else ""
        return DatasetError(
            f"{NAME}: {self.path} record {self.index}{ident}{where}: {what}; the official files from {SOURCE} "
            f"have it: download them again"
        )

    def first_of(self, obj: dict[str, Any], names: tuple[str, ...], test: Any, expected: str, prefix: str = "") -> Any:
        """The value of the first of ``names`` present in ``obj``, checked by ``test``."""
        for name in names:
            if name in obj:
                if not test(obj[name]):
                    raise self.error(prefix + name, f"{_short(obj[name])} is not {expected}")
                return obj[name]
        raise self.error(prefix + " | ".join(names), "missing")


def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _short(v: Any, limit: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _name(rec: _Record, obj: dict[str, Any], prefix: str) -> str:
    """An object's name: the first of ``names`` when given, else ``name`` (both forms occur across releases)."""
    if "names" not in obj:
        return rec.first_of(obj, ("name", "names"), lambda v: isinstance(v, str), "a string", prefix)
    names = rec.first_of(obj, ("names",), lambda v: isinstance(v, list) and v, "a non-empty list of strings", prefix)
    if not isinstance(names[0], str):
        raise rec.error(f"{prefix}names[0]", f"{_short(names[0])} is not a string")
    return names[0]


def _relationships(rec: _Record) -> list[tuple[int, str, int, str, str]]:
    """(subject id, subject name, object id, object name, predicate) of each relationship of one image."""
    rels = rec.first_of(rec.record, ("relationships",), lambda v: isinstance(v, list), "a list")
    out = []
    for k, rel in enumerate(rels):
        where = f"relationships[{k}]"
        if not isinstance(rel, dict):
            raise rec.error(where, f"is a {type(rel).__name__}, not an object")
        predicate = rec.first_of(rel, ("predicate",), lambda v: isinstance(v, str), "a string", f"{where}.")
        ends = []
        for end in ("subject", "object"):
            obj = rec.first_of(rel, (end,), lambda v: isinstance(v, dict), "an object", f"{where}.")
            prefix = f"{where}.{end}."
            ident = rec.first_of(obj, ("object_id", "id"), _is_id, "an integer >= 0", prefix)
            ends.append((ident, normalise(_name(rec, obj, prefix))))
        out.append((ends[0][0], ends[0][1], ends[1][0], ends[1][1], normalise(predicate)))
    return out


def image_questions(rels: list[tuple[int, str, int, str, str]], skipped: Counter) -> list[tuple[str, str, str]]:
    """(subject, object, predicate) of the unambiguous relationships of one image (module docstring)."""
    objects: dict[str, set[int]] = defaultdict(set)  # name -> the object ids it names in this image
    for s_id, s_name, o_id, o_name, _ in rels:
        objects[s_name].add(s_id)
        objects[o_name].add(o_id)
    predicates: dict[tuple[str, str], set[str]] = defaultdict(set)
    for _, s_name, _, o_name, predicate in rels:
        predicates[s_name, o_name].add(predicate)
    out, seen = [], set()
    for s_id, s_name, o_id, o_name, predicate in rels:
        if not (s_name and o_name and predicate):
            skipped["empty"] += 1
        elif len(objects[s_name]) > 1 or len(objects[o_name]) > 1 or s_id == o_id:
            skipped["ambiguous_name"] += 1
        elif len(predicates[s_name, o_name]) > 1:
            skipped["several_predicates"] += 1
        elif (s_name, o_name) in seen:
            skipped["duplicate"] += 1
        else:
            seen.add((s_name, o_name))
            out.append((s_name, o_name, predicate))
    return out


def image_files(root: Path, path: Path) -> dict[int, tuple[str, int]]:
    """image id -> (file relative to the root, record index) from image_data.json."""
    out: dict[int, tuple[str, int]] = {}
    for index, record in enumerate(_read_list(path)):
        rec = _Record(path, index, record)
        url = rec.first_of(record, ("url",), lambda v: isinstance(v, str) and v.count("/") >= 1, "a URL")
        folder, name = url.rstrip("/").rsplit("/", 2)[-2:]
        if folder not in IMAGE_FOLDERS:
            raise rec.error("url", f"{_short(url)} does not end in VG_100K/<file> or VG_100K_2/<file>")
        out[rec.id] = (f"{folder}/{name}", index)
    return out


def _image_path(root: Path, files: dict[int, tuple[str, int]], image_id: int, data_path: Path) -> str:
    if image_id not in files:
        raise DatasetError(
            f"{NAME}: {data_path} has no record of image_id {image_id}, which relationships.json names; "
            f"use the image_data.json of the same release ({SOURCE})"
        )
    rel, index = files[image_id]
    where = f"{data_path} record {index} (image_id {image_id}) field url"
    try:
        path = contained(root, rel, where=where)
    except UnsafePathError as exc:
        raise DatasetError(f"{NAME}: {exc}; put the image file itself there, inside the root") from None
    if not path.exists():
        folder = rel.split("/", 1)[0]
        raise DatasetError(
            f"{NAME}: {where}: {path} does not exist; download {IMAGE_FOLDERS[folder]} from {SOURCE} and unzip it "
            f"in {root}"
        )
    return str(path)


def read_questions(files: dict[str, Path]) -> tuple[dict[int, list[tuple[str, str, str]]], Counter, int]:
    """Questions per image id (images without any left out), the skip counts and the relationship count."""
    skipped: Counter = Counter()
    per_image: dict[int, list[tuple[str, str, str]]] = {}
    total = 0
    seen: set[int] = set()
    path = files["relationships.json"]
    for index, record in enumerate(_read_list(path)):
        rec = _Record(path, index, record)
        if rec.id in seen:
            raise rec.error("image_id", f"{rec.id} repeats an earlier record")
        seen.add(rec.id)
        rels = _relationships(rec)
        total += len(rels)
        questions = image_questions(rels, skipped)
        if questions:
            per_image[rec.id] = questions
    return per_image, skipped, total


def split_images(image_ids: list[int], config: VisualGenomeConfig) -> dict[str, list[int]]:
    """Image ids of train, val and test: sorted ids, seeded permutation, ``max_images``, fractions."""
    ids = np.array(sorted(image_ids), dtype=np.int64)
    ids = ids[np.random.default_rng(config.seed).permutation(len(ids))]
    if config.max_images:
        ids = ids[: config.max_images]
    n_train = round(len(ids) * config.split_fractions[0])
    n_val = round(len(ids) * config.split_fractions[1])
    parts = {"train": ids[:n_train], "val": ids[n_train : n_train + n_val], "test": ids[n_train + n_val :]}
    empty = [name for name, part in parts.items() if not len(part)]
    if empty:
        raise DatasetError(
            f"{NAME}: {len(ids)} image(s) with questions leave split {empty[0]} empty; use more images "
            f"(max_images=0 keeps all) or other split_fractions"
        )
    return {name: part.tolist() for name, part in parts.items()}


def vocabulary(train: list[Any], top_k: int) -> tuple[list[str], str]:
    """The training predicates by count (ties alphabetical), capped at ``top_k``; and the rule."""
    counts = Counter(s.answers[0] for s in train)
    ordered = sorted(counts, key=lambda a: (-counts[a], a))
    if top_k:
        return ordered[:top_k], f"top {top_k} training predicates by count"
    return ordered, "every training predicate (report 004)"


def revision(files: dict[str, Path], config: VisualGenomeConfig) -> str:
    """sha256 of the two files' bytes and of the config fields that change the samples or the vocabulary."""
    digest = hashlib.sha256(f"{NAME} {FORMAT}\n".encode())
    for name in sorted(files):
        try:
            digest.update(name.encode() + b"\0" + file_sha256(files[name]))
        except OSError as exc:
            raise DatasetError(f"{NAME}: {describe_os_error(exc, files[name], 'reading')}") from None
    fields = {"split_fractions": list(config.split_fractions), "seed": config.seed}
    fields.update(top_k=config.top_k, max_images=config.max_images)
    digest.update(json.dumps(fields, sort_keys=True).encode())
    return digest.hexdigest()


def build(root: Path, config: VisualGenomeConfig) -> tuple[dict[str, list[Any]], list[str], str, dict[str, Any]]:
    """The splits, the vocabulary, its rule and the counts, from the files in ``root``."""
    from vqabench.tasks.qa import QASample  # pulls in torch, which `vqabench plugins` does not need

    files = locate(root)
    per_image, skipped, total = read_questions(files)
    images = image_files(root, files["image_data.json"])
    splits: dict[str, list[Any]] = {}
    for split, ids in split_images(list(per_image), config).items():
        samples = []
        for image_id in ids:
            image = _image_path(root, images, image_id, files["image_data.json"])
            for k, (subject, obj, predicate) in enumerate(per_image[image_id]):
                question = QUESTION.format(subject=subject, object=obj)
                samples.append(QASample(f"{image_id}-{k}", image, question, (predicate,), "relation", "other"))
        splits[split] = samples
    vocab, rule = vocabulary(splits["train"], config.top_k)
    stats = {
        "relationships": total,
        "images_with_questions": len(per_image),
        "questions": {split: len(samples) for split, samples in splits.items()},
        "skipped": {reason: skipped[reason] for reason in SKIP_REASONS},
    }
    log.info("%s: %s", NAME, stats)
    return splits, vocab, rule, stats


def load(config: VisualGenomeConfig, kind: str, cache_dir: Path) -> TaskData:
    """The TaskData of ``kind`` (vqa) from the official files in ``config.root``."""
    kind = kind_name(kind)
    if kind != TaskKind.VQA:
        raise DatasetError(f"{NAME} gives task kind vqa, not {kind!r}")
    root = _root(config.root)
    splits, vocab, rule, stats = build(root, config)
    return TaskData(
        dataset=NAME,
        kind=kind,
        root=root,
        splits=splits,
        revision=revision(locate(root), config),
        answer_vocab=vocab,
        vocab_rule=rule,
        vqa_mode="vqa",
        # Flipping an image swaps "left of" and "right of", which are predicates here.
        unsafe_augmentations=frozenset({"hflip"}),
        notes={"relations": stats},
    )


def prepare(config: VisualGenomeConfig, root: Path) -> Path:
    """Check the official files in ``root``: every record and every image a question needs. Nothing is written."""
    config = replace(config, root=str(root))
    root = _root(config.root, "--root DIR")
    _, _, _, stats = build(root, config)
    log.info("%s: %s checked: %s", NAME, root, stats)
    return root


@hookimpl
def register_datasets(register):
    """Register the visual-genome dataset."""
    register(
        DatasetSpec(
            name=NAME,
            task_kinds=(TaskKind.VQA,),
            config_cls=VisualGenomeConfig,
            load=load,
            prepare=prepare,
            # quick: a seeded 5,000 images and the 100 most frequent predicates; paper: every image and predicate.
            profiles={"quick": {"max_images": 5000, "top_k": 100}, "paper": {}},
            unsafe_augmentations=frozenset({"hflip"}),
            description="Visual Genome relationships (official files, --data root=DIR): 'What is the relationship "
            "between the X and the Y?' answered by the predicate (report 004); seeded split by image",
        )
    )
