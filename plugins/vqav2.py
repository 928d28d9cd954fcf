"""The vqav2 dataset plugin: the official VQA v2 files (balanced real images, MS COCO 2014), for VQA.

Point it at the folder the official downloads were unzipped in (``--data root=DIR``; from
https://visualqa.org/download.html: Questions_Train_mscoco.zip, Questions_Val_mscoco.zip,
Annotations_Train_mscoco.zip, Annotations_Val_mscoco.zip, and the COCO images train2014.zip and
val2014.zip linked there):

- questions ``v2_OpenEnded_mscoco_{train,val}2014_questions.json`` and annotations
  ``v2_mscoco_{train,val}2014_annotations.json``, each directly in the root (where the zips unpack
  them) or in ``Questions/`` and ``Annotations/`` respectively (not both places);
- images ``<root>/train2014/COCO_train2014_<image_id:012d>.jpg`` and the same for val2014. They must
  lie inside the root: a symbolic link that leaves it is refused (``vqabench.files.contained``).

A questions file is ``{"data_subtype", "questions": [{"image_id", "question", "question_id"}]}``,
an annotations file ``{"annotations": [{"question_id", "image_id", "question_type", "answer_type",
"multiple_choice_answer", "answers": [{"answer", "answer_confidence", "answer_id"}, ...]}]}``.
Unknown fields are ignored, and so are annotations of questions the questions file lacks; every
question needs its annotation, with the same image_id. Any non-empty list of answers is accepted
(the official files give ten). Samples keep every human answer as written, its confidence,
``question_type`` and ``answer_type``; the metric is the official one (``vqa_mode="vqa"``), which
normalises answers itself. A sample's id is its question_id. The test-dev/test-std questions
(test2015, scored only by the evaluation server) are not read, and a Hugging Face ``datasets``
copy is not supported: only the official files.

Setups (``setup``), vqabench's split names first:

- ``standard``: ``train`` = train2014 minus a holdout, ``val`` = that holdout (checkpoint
  selection), ``test`` = val2014. The holdout is ``holdout`` train2014 images with all their
  questions, at most a tenth of the images (at least one), so small copies keep most for training.
- ``report001`` (report 001, the paper this dataset serves; the ``paper`` profile): a seeded
  ``sample_fraction`` (25%) of the train2014 IMAGES with all their questions (about 110k questions
  on the full data), ordered by question_id. Report 001 trained on "the first 100,000 samples" and
  validated on "the last 9000" of its ~110k; vqabench keeps those shares of whatever the sample
  holds: ``train`` = the first round(S * 100/110) questions, ``val`` = the last round(S * 9/110)
  (at least one), the few between unused, as in the report (on the full data: ~100.9k and ~9.1k).
  ``val`` is cut by position, not image, as the report's was. ``test`` = val2014: the report's own
  validation comes from training images and is ``val`` here, so its numbers compare with ``val``.

Both draw images the same way: the sorted train2014 image ids permuted by
``numpy.random.default_rng(seed)``; the sample (report001) is the first round(fraction * n) of the
permutation, the holdout (standard) its first images. The report drew each image independently
with p=0.25 without a seed, so its exact sample cannot be rebuilt; the expected size is the same.
``limit_train`` (images, 0 = all) keeps only the first images of the pool (a quick look).

Vocabularies (``vocab``), ordered by count (ties alphabetical), capped at ``top_k`` when it is set:

- ``top`` (bottom-up-attention's ``tools/compute_softscore.py``, which MMF's VQA v2 answer list
  comes from): each question's ``multiple_choice_answer`` normalised as the official evaluation
  normalises answers (``vqabench.metrics.vqa.normalize_answer``), counted over every question of
  train2014 AND val2014, kept when it occurs at least ``min_count`` (9) times: 3,129 answers on the
  full data. Counting val2014 (our test) is that rule's convention; it adds answer names only.
- ``all`` (report 001): every ``multiple_choice_answer``, as written, of the questions ``train``
  and ``val`` are drawn from (report001: the whole sample, the unused questions too, as the
  report's LabelEncoder was fitted to "the entire answer space": 9,214 answers there; standard:
  train2014 after ``limit_train``).

Training targets match the raw human answers against the vocabulary as given (``vqabench.vocab``),
as bottom-up's ``compute_target`` does: with ``top``, an answer written otherwise than its
normalised form ("t-shirt" for "t shirt") gives no target; scoring is unaffected.

Profiles: ``quick`` = standard with ``limit_train=8000`` images (about a tenth; val2014 is still the
whole test); ``paper`` = ``setup=report001 vocab=all``. The usual benchmark setup is the default
config (no profile), or ``--data setup=standard vocab=top`` under ``--profile paper``.

The index (``vqabench_plugins.vqav2_index``): the four JSON files parsed and checked once, as numpy
arrays with string tables in one ``index.npz``, cached in ``cache_dir/vqav2/<files digest>/``. It
depends only on the files' bytes, so one ``vqabench data prepare vqav2`` serves every setup, seed and
vocabulary; ``revision`` hashes that digest and the config fields that change the data. Image
presence is checked on every load (one directory listing per image folder). Each malformed record
is a one-line ``DatasetError`` naming the file, the question (0-based position and question_id),
the field and the fix.
Unreadable image bytes are found when the image store decodes them
(``vqabench.images.ImageDecodeError`` names the file), still before training. At full size
(658k questions) prepare takes 15-40 s and 2.5 GB, a load from the index under ten seconds and
1 GB, on two busy cores (``python -m vqabench_plugins.vqav2_bench DIR`` measures it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from vqabench_plugins.vqav2_index import (
    ANSWER_TYPES,
    CONFIDENCES,
    FILES,
    INDEX_FILE,
    INDEX_FORMAT,
    OFFICIAL,
    SOURCE,
    DatasetError,
    Index,
    build_index,
    paused_gc,
    read_index,
    write_index,
)

from vqabench.files import UnsafePathError, check_regular_file, contained, dataset_root, describe_os_error, file_sha256
from vqabench.hookspecs import hookimpl
from vqabench.registry import DatasetSpec
from vqabench.tasks import TaskData, TaskKind, kind_name

NAME = "vqav2"
ROOT_FLAG = "--data root=DIR"
SETUPS = ("standard", "report001")
VOCABS = ("top", "all")
IMAGE_ZIPS = {"train2014": "train2014.zip", "val2014": "val2014.zip"}
# Report 001: "the first 100,000 samples" for training and "the last 9000" for validation, of "around 110k".
REPORT_SAMPLE, REPORT_TRAIN, REPORT_VAL = 110_000, 100_000, 9_000
DOWNLOADS = ", ".join(f.zip for f in FILES) + ", " + ", ".join(IMAGE_ZIPS.values())


@dataclass(frozen=True)
class VQAv2Config:
    """Where the official files are, which setup draws the splits, and which answer vocabulary."""

    root: str = ""  # required; empty only so that the config can be built before it is set
    setup: str = "standard"  # "standard" or "report001" (see the module docstring)
    sample_fraction: float = 0.25  # report001: share of the train2014 images sampled
    seed: int = 0
    vocab: str = "top"  # "top" (bottom-up's 3,129 rule) or "all" (report 001)
    min_count: int = 9  # vocab "top": questions a normalised answer needs
    top_k: int = 0  # 0: no cap on the vocabulary
    holdout: int = 2000  # standard: train2014 images held out as val (at most a tenth of them)
    limit_train: int = 0  # train2014 images kept (first of the seeded pool); 0: all

    def __post_init__(self) -> None:
        for name, choices in (("setup", SETUPS), ("vocab", VOCABS)):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"vqav2 config: {name}={getattr(self, name)!r} is not one of {', '.join(choices)}, "
                    f"e.g. --data {name}={choices[0]}"
                )
        if not (isinstance(self.sample_fraction, (int, float)) and 0 < self.sample_fraction <= 1):
            raise ValueError(
                f"vqav2 config: sample_fraction={self.sample_fraction!r} must lie in (0, 1], "
                f"e.g. --data sample_fraction=0.25"
            )
        minimum = {"seed": 0, "min_count": 1, "top_k": 0, "holdout": 1, "limit_train": 0}
        for name, low in minimum.items():
            if getattr(self, name) < low:
                raise ValueError(
                    f"vqav2 config: {name}={getattr(self, name)} must be >= {low}, e.g. --data {name}={low}"
                )


# --- the files ----------------------------------------------------------------------------------------


def _root(value: str, flag: str = ROOT_FLAG) -> Path:
    where = f"{DOWNLOADS} from {SOURCE}, unzipped"
    return dataset_root(
        value, dataset=NAME, holds=f"the official VQA v2 files ({where})", flag=flag, error=DatasetError
    )


def locate(root: Path) -> dict[str, Path]:
    """``"questions/train2014"`` (etc.) -> the file, once every file and image folder is there.

    Every missing file and folder is reported in one message, each with the zip it comes from.
    """
    files: dict[str, Path] = {}
    missing: list[str] = []
    for f in FILES:
        found = [p for p in (root / f.name, root / f.folder / f.name) if p.exists()]
        if len(found) > 1:
            raise DatasetError(f"vqav2: both {found[0]} and {found[1]} exist; keep one: move or delete the other")
        if found:
            files[f.key] = found[0]
        else:
            missing.append(f"{f.name} (from {f.zip})")
    missing += [f"{split}/ (from {zipname})" for split, zipname in IMAGE_ZIPS.items() if not (root / split).is_dir()]
    if missing:
        raise DatasetError(
            f"vqav2: {root} lacks {', '.join(missing)}; download them from {SOURCE} and unzip them in {root} "
            f"(the JSON files in the root or in Questions/ and Annotations/, the images in train2014/ and val2014/)"
        )
    for path in files.values():
        _check_regular(path)
    return files


def _check_regular(path: Path) -> None:
    check_regular_file(path, dataset=NAME, fix="put the official JSON file there", error=DatasetError)


def files_digest(files: dict[str, Path]) -> str:
    """sha256 of the four files' bytes (and the index format): the key of the cached index."""
    digest = hashlib.sha256(f"vqav2 index {INDEX_FORMAT}\n".encode())
    for key in sorted(files):
        try:
            part = file_sha256(files[key])
        except OSError as exc:
            raise DatasetError(f"vqav2: {describe_os_error(exc, files[key], 'reading')}") from None
        digest.update(key.encode() + b"\0" + part)
    return digest.hexdigest()


def revision(digest: str, config: VQAv2Config) -> str:
    """sha256 of the files' digest and of the config fields that change the samples or the vocabulary.

    The root and the layout are left out: the same files give the same data.
    """
    fields: dict[str, Any] = {"setup": config.setup, "seed": config.seed, "limit_train": config.limit_train}
    fields.update(vocab=config.vocab, top_k=config.top_k)
    if config.vocab == "top":
        fields["min_count"] = config.min_count
    if config.setup == "standard":
        fields["holdout"] = config.holdout
    else:
        fields["sample_fraction"] = config.sample_fraction
    return hashlib.sha256((digest + json.dumps(fields, sort_keys=True)).encode()).hexdigest()


# --- the index ------------------------------------------------------------------------------------------


def index_dir(cache_dir: Path, digest: str) -> Path:
    """Where the index of the files with this digest is cached."""
    return Path(cache_dir) / NAME / digest


def cached_index(files: dict[str, Path], directory: Path) -> Index:
    """The index in ``directory`` when it is there and whole, else built from the files and written."""
    index = read_index(directory / INDEX_FILE)
    if index is None:
        index = build_index(files)
        write_index(index, directory)
    return index


def _image_name(split: str, image_id: int) -> str:
    return f"COCO_{split}_{image_id:012d}.jpg"


def check_images(root: Path, files: dict[str, Path], index: Index) -> None:
    """Every image the questions name is a regular file inside the root (one listing per folder)."""
    for split in OFFICIAL:
        folder, qpath = root / split, files[f"questions/{split}"]
        image_ids = index.splits[split]["image_id"]
        try:
            with os.scandir(folder) as entries:
                listed = {e.name: e.is_file(follow_symlinks=False) for e in entries}
        except OSError as exc:
            raise DatasetError(f"vqav2: {describe_os_error(exc, folder, 'listing')}") from None
        # A folder that is a link (a shared COCO copy) may lead out of the root: every image then goes through
        # `contained`; otherwise only the entries that are not plain files (links, FIFOs, folders) need it.
        linked = os.path.realpath(folder) != os.path.join(os.path.realpath(root), split)
        qids = index.splits[split]["question_id"]
        images, first = np.unique(image_ids, return_index=True)  # first: the first question of each image
        missing = []
        for image, i in zip(images.tolist(), first.tolist()):
            name = _image_name(split, image)
            plain = listed.get(name)
            if plain is None:
                missing.append(i)
            elif linked or not plain:
                where = f"{qpath} question {i} (question_id {int(qids[i])}) field image_id"
                try:
                    contained(root, f"{split}/{name}", where=where)
                except UnsafePathError as exc:
                    raise DatasetError(f"vqav2: {exc}; put the image file itself there, inside the root") from None
        if missing:
            i = min(missing)  # the first question, in file order, whose image is missing
            qid = int(qids[i])
            path = folder / _image_name(split, int(image_ids[i]))
            others = f", nor do {len(missing) - 1} other images its questions name" if len(missing) > 1 else ""
            raise DatasetError(
                f"vqav2: {qpath} question {i} (question_id {qid}) field image_id: {path} does not exist{others}; "
                f"download {IMAGE_ZIPS[split]} (linked from {SOURCE}) and unzip it in {root}"
            )


# --- splits, vocabulary and samples ---------------------------------------------------------------------


def image_pool(index: Index, config: VQAv2Config) -> np.ndarray:
    """The train2014 image ids train and val are drawn from, in the seeded order (module docstring)."""
    ids = np.unique(index.splits["train2014"]["image_id"])  # sorted: the draw ignores the file's order
    pool = ids[np.random.default_rng(config.seed).permutation(len(ids))]
    if config.setup == "report001":
        pool = pool[: max(1, round(config.sample_fraction * len(pool)))]
    if config.limit_train:
        pool = pool[: config.limit_train]
    return pool


def split_rows(index: Index, config: VQAv2Config) -> dict[str, np.ndarray]:
    """Row numbers (into train2014, and val2014 for test) of vqabench's train, val and test.

    ``pool`` holds every train2014 row train and val are drawn from: all questions of the pool's
    images, with, in report001, the few between train and val.
    """
    train = index.splits["train2014"]
    pool = image_pool(index, config)
    test = np.arange(len(index.splits["val2014"]["question_id"]))
    if config.setup == "standard":
        n_val = min(config.holdout, max(1, len(pool) // 10))
        if len(pool) - n_val < 1:
            raise DatasetError(
                f"vqav2: {len(pool)} train2014 image(s) leave none to train on once {n_val} are held out; "
                f"use more images (limit_train=0 keeps all)"
            )
        held = np.isin(train["image_id"], pool[:n_val])
        kept = np.isin(train["image_id"], pool[n_val:])
        pool_rows = np.flatnonzero(held | kept)
        return {"train": np.flatnonzero(kept), "val": np.flatnonzero(held), "test": test, "pool": pool_rows}
    rows = np.flatnonzero(np.isin(train["image_id"], pool))
    rows = rows[np.argsort(train["question_id"][rows], kind="stable")]
    n = len(rows)
    n_val = max(1, round(n * REPORT_VAL / REPORT_SAMPLE))
    n_train = min(round(n * REPORT_TRAIN / REPORT_SAMPLE), n - n_val)
    if n_train < 1:
        raise DatasetError(
            f"vqav2: the report001 sample holds {n} question(s), too few for train and val; "
            f"raise --data sample_fraction or limit_train (0 keeps all)"
        )
    return {"train": rows[:n_train], "val": rows[n - n_val :], "test": test, "pool": rows}


def vocabulary(index: Index, config: VQAv2Config, rows: dict[str, np.ndarray]) -> tuple[list[str], str]:
    """The answer vocabulary by ``config.vocab`` and the rule as records show it (module docstring)."""
    if config.vocab == "top":
        table = index.normalised
        codes = np.concatenate([index.mc_normalised[c["multiple_choice_answer"]] for c in index.splits.values()])
        keep, where = config.min_count, "train2014 and val2014"
        rule = f"multiple_choice_answer normalised as the VQA evaluation does, over train2014+val2014, count >= {keep}"
    else:
        table = index.answers
        codes = index.splits["train2014"]["multiple_choice_answer"][rows["pool"]]
        keep, where = 1, "the questions train and val are drawn from"
        rule = "every multiple_choice_answer of the questions train and val are drawn from"
    counts = np.bincount(codes, minlength=len(table)).tolist()
    found = [c for c, n in enumerate(counts) if n >= keep]
    kept = [table[c] for c in sorted(found, key=lambda c: (-counts[c], table[c]))]
    if config.top_k:
        kept = kept[: config.top_k]
        rule += f", top {config.top_k}"
    if not kept:
        raise DatasetError(
            f"vqav2: vocab={config.vocab} keeps no answer: no multiple_choice_answer occurs {keep} times among "
            f"{where}; lower it, e.g. --data min_count=1"
        )
    return kept, rule


def _samples(index: Index, split: str, rows: np.ndarray, image_dir: Path) -> list[Any]:
    from vqabench.tasks.qa import QASample  # pulls in torch, which `vqabench plugins` does not need

    columns = index.splits[split]
    table, qtypes = index.answers, index.question_types
    # Joined as strings, once per image: a Path per sample costs more than the rest of a cached load together.
    prefix = os.path.join(str(image_dir), f"COCO_{split}_")
    paths: dict[int, str] = {}
    # Identical confidence tuples are shared (there are few: ten "yes" is the most common), which saves
    # memory; answer tuples are mostly distinct, so sharing them would cost more than it saves.
    shared: dict[bytes, tuple[str, ...]] = {}
    answers = memoryview(columns["answers"].astype(np.int32, copy=False).tobytes()).cast("i")
    sure = columns["confidence"].tobytes()
    starts = columns["answer_start"].tolist()
    qids, images = columns["question_id"].tolist(), columns["image_id"].tolist()
    qtype, atype = columns["question_type"].tolist(), columns["answer_type"].tolist()
    questions = columns["question"]
    out = []
    for i in rows.tolist():
        a, b = starts[i], starts[i + 1]
        key = sure[a:b]
        confidences = shared.get(key)
        if confidences is None:
            confidences = shared[key] = tuple(map(CONFIDENCES.__getitem__, key))
        image = images[i]
        path = paths.get(image)
        if path is None:
            path = paths[image] = f"{prefix}{image:012d}.jpg"
        sample = QASample(
            id=str(qids[i]),
            image=path,
            question=questions[i],
            answers=tuple(map(table.__getitem__, answers[a:b])),
            question_type=qtypes[qtype[i]],
            answer_type=ANSWER_TYPES[atype[i]],
            answer_confidences=confidences,
        )
        out.append(sample)
    return out


def splits_of(root: Path, index: Index, config: VQAv2Config) -> tuple[dict[str, list[Any]], list[str], str]:
    """vqabench's splits (train, val, test), the answer vocabulary and its rule."""
    rows = split_rows(index, config)
    vocab, rule = vocabulary(index, config, rows)
    with paused_gc():
        splits = {
            "train": _samples(index, "train2014", rows["train"], root / "train2014"),
            "val": _samples(index, "train2014", rows["val"], root / "train2014"),
            "test": _samples(index, "val2014", rows["test"], root / "val2014"),
        }
    return splits, vocab, rule


# --- the plugin -----------------------------------------------------------------------------------------


def load(config: VQAv2Config, kind: str, cache_dir: Path) -> TaskData:
    """The TaskData of ``kind`` (vqa) from the official files in ``config.root``."""
    kind = kind_name(kind)
    if kind != TaskKind.VQA:
        raise DatasetError(f"vqav2 gives task kind vqa, not {kind!r}")
    root = _root(config.root)
    files = locate(root)
    digest = files_digest(files)
    index = cached_index(files, index_dir(cache_dir, digest))
    check_images(root, files, index)
    splits, vocab, rule = splits_of(root, index, config)
    return TaskData(
        dataset=NAME,
        kind=kind,
        root=root,
        splits=splits,
        revision=revision(digest, config),
        answer_vocab=vocab,
        vocab_rule=rule,
        vqa_mode="vqa",
    )


def prepare(config: VQAv2Config, root: Path) -> Path:
    """Check the official files in ``root`` (every record and image) and write their index.

    The index goes where ``vqabench run`` looks by default (``$VQABENCH_CACHE`` or
    ``~/.cache/vqabench``); returns its directory. Nothing is downloaded.
    """
    from vqabench.cli import default_cache

    config = replace(config, root=str(root))
    root = _root(config.root, "--root DIR")
    files = locate(root)
    index = build_index(files)
    check_images(root, files, index)
    rows = split_rows(index, config)  # a setup that leaves nothing to train on fails here, not in a run
    vocabulary(index, config, rows)
    return write_index(index, index_dir(default_cache(), files_digest(files)))


@hookimpl
def register_datasets(register):
    """Register the vqav2 dataset."""
    register(
        DatasetSpec(
            name=NAME,
            task_kinds=(TaskKind.VQA,),
            config_cls=VQAv2Config,
            load=load,
            prepare=prepare,
            # quick: about a tenth of train2014's images, the full test; paper: report 001's sample and vocabulary.
            profiles={"quick": {"limit_train": 8000}, "paper": {"setup": "report001", "vocab": "all"}},
            description="VQA v2 (official files, --data root=DIR): COCO questions with ten answers each; "
            "standard: train2014 minus a holdout, test = val2014; paper: report 001's 25% image sample",
        )
    )
