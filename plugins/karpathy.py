"""Karpathy's caption split files, shared by the coco-captions and flickr30k dataset plugins.

``caption_datasets.zip`` (https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip)
holds ``dataset_coco.json``, ``dataset_flickr8k.json`` and ``dataset_flickr30k.json``: the image
splits every captioning paper since Karpathy & Fei-Fei (2015) reports on. Each file is
``{"images": [...], "dataset": "coco" | "flickr30k" | ...}``; an image record is
``{"filename", "split", "sentences": [{"raw", "tokens", "imgid", "sentid"}], "imgid", "sentids"}``
plus, in COCO's file, ``"filepath"`` (``train2014`` or ``val2014``) and ``"cocoid"``. Splits are
``train``, ``restval``, ``val`` and ``test``; ``restval`` (the COCO val2014 images Karpathy kept out
of val and test) is training data, as in every paper that uses the split, so it joins ``train``.
Captions are the ``raw`` sentences as written (the metric tokenises them itself); ``tokens`` and
every other field are ignored.

A malformed record is a one-line ``DatasetError`` naming the file, the record (``images[i]``, its
0-based position), the field and the fix; so are an unknown split name, an image without a caption,
a repeated image, an image path that leaves the dataset root (``vqabench.files.contained``) and a
missing image. Unreadable image bytes are found when the image store decodes them, before training.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vqabench.files import (
    UnsafePathError,
    check_regular_file,
    contained,
    dataset_root,
    describe_os_error,
    file_sha256,
)
from vqabench.tasks import TaskData, TaskKind, kind_name

KARPATHY_SOURCE = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
# Karpathy's split names -> vqabench's; restval is training data.
SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
OUR_SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """Caption files that cannot be used as they are; the message names the file, record, field and fix."""


@dataclass(frozen=True)
class Layout:
    """What differs between the datasets that use Karpathy's split files."""

    dataset: str  # vqabench's dataset name, which starts every message
    name: str  # the split file's own "dataset" value ("coco", "flickr30k")
    id_field: str | None  # the record field holding the image id; None: the file name without extension
    image_folder: str | None  # the folder holding the images; None: each record's "filepath"
    folders: dict[str, str]  # image folder -> the download that holds it
    source: str  # where the images come from


@dataclass(frozen=True)
class KarpathyImage:
    """One checked image record: its id, path under the root, vqabench split and captions."""

    index: int  # position in the file's "images" list
    id: str
    path: str  # relative to the dataset root
    split: str
    captions: tuple[str, ...]


def check_config(dataset: str, karpathy_file: str, max_images: int, seed: int) -> None:
    """The shared config checks, each naming the field and a good value."""
    if not isinstance(karpathy_file, str) or not karpathy_file:
        raise ValueError(f"{dataset} config: karpathy_file={karpathy_file!r} must name the split file")
    if max_images < 0:
        raise ValueError(
            f"{dataset} config: max_images={max_images} must be >= 0 (0 keeps every image), e.g. --data max_images=1000"
        )
    if seed < 0:
        raise ValueError(f"{dataset} config: seed={seed} must be >= 0, e.g. --data seed=0")


def root_of(layout: Layout, value: str, flag: str) -> Path:
    holds = f"Karpathy's split file (from {KARPATHY_SOURCE}) and the images ({layout.source})"
    return dataset_root(value, dataset=layout.dataset, holds=holds, flag=flag, error=DatasetError)


def locate(layout: Layout, root: Path, karpathy_file: str, required: dict[str, str] | None = None) -> Path:
    """The split file's path, once it, the ``required`` files (relative path -> where they come from)
    and the image folders are there; everything missing is named in one message."""
    split_file = root / karpathy_file
    wanted = {karpathy_file: f"caption_datasets.zip from {KARPATHY_SOURCE}", **(required or {})}
    missing = [f"{rel} ({where})" for rel, where in wanted.items() if not (root / rel).exists()]
    missing += [f"{d}/ ({where})" for d, where in layout.folders.items() if not (root / d).is_dir()]
    if missing:
        raise DatasetError(
            f"{layout.dataset}: {root} lacks {', '.join(missing)}; download them and unzip them in {root} "
            f"(the split file {karpathy_file} in the root, the images in {', '.join(f + '/' for f in layout.folders)})"
        )
    for rel in wanted:
        check_regular_file(root / rel, dataset=layout.dataset, fix="put the file itself there", error=DatasetError)
    return split_file


def read_json(dataset: str, path: Path, fix: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except OSError as exc:
        raise DatasetError(f"{dataset}: {describe_os_error(exc, path, 'reading')}") from None
    except ValueError as exc:  # JSONDecodeError names line and column; UnicodeDecodeError the byte
        raise DatasetError(f"{dataset}: {path} is not valid UTF-8 JSON ({exc}); {fix}") from None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _got(record: dict[str, Any], field: str, expected: str) -> str:
    return "is missing" if field not in record else f"is {_short(record[field])}, not {expected}"


def read_split_file(layout: Layout, path: Path) -> list[KarpathyImage]:
    """Every image record of a Karpathy split file, checked, in file order."""
    fix = f"correct it, or re-download caption_datasets.zip from {KARPATHY_SOURCE}"

    def fail(where: str, what: str) -> DatasetError:
        return DatasetError(f"{layout.dataset}: {where}: {what}; {fix}")

    top = read_json(layout.dataset, path, fix)
    if not isinstance(top, dict) or not isinstance(top.get("images"), list):
        raise fail(str(path), 'is not a Karpathy split file: {"images": [...], "dataset": ...} expected')
    named = top.get("dataset", layout.name)
    if named != layout.name:
        raise fail(
            f"{path} field dataset", f"is {_short(named)}: the split file of another dataset, not {layout.name!r}"
        )
    if not top["images"]:
        raise fail(f"{path} field images", "holds no image records")
    out: list[KarpathyImage] = []
    seen: dict[str, int] = {}
    for i, record in enumerate(top["images"]):
        where = f"{path} images[{i}]"
        if not isinstance(record, dict):
            raise fail(where, f"is {_short(record)}, not an object")
        filename = record.get("filename")
        if not isinstance(filename, str) or not filename:
            raise fail(f"{where} field filename", _got(record, "filename", "a file name"))
        if layout.image_folder is None:
            folder = record.get("filepath")
            if not isinstance(folder, str) or not folder:
                raise fail(f"{where} field filepath", _got(record, "filepath", "a folder name such as 'val2014'"))
        else:
            folder = layout.image_folder
        if layout.id_field is None:
            image_id = os.path.splitext(filename)[0]
        else:
            value = record.get(layout.id_field)
            if type(value) is not int or value < 0:
                raise fail(f"{where} field {layout.id_field}", _got(record, layout.id_field, "a non-negative integer"))
            image_id = str(value)
        split = record.get("split")
        if split not in SPLITS:
            raise fail(f"{where} field split", _got(record, "split", "one of " + ", ".join(SPLITS)))
        sentences = record.get("sentences")
        if not isinstance(sentences, list):
            raise fail(f"{where} field sentences", _got(record, "sentences", "a list of sentence objects"))
        if not sentences:
            raise fail(f"{where} field sentences", "is empty: the image has no caption")
        captions = []
        for j, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                got = _got(sentence, "raw", "a non-empty string") if isinstance(sentence, dict) else "is not an object"
                raise fail(f"{where} field sentences[{j}].raw", got)
            captions.append(raw)
        if image_id in seen:
            raise fail(
                f"{where} field {layout.id_field or 'filename'}",
                f"repeats image {image_id!r} of images[{seen[image_id]}]",
            )
        seen[image_id] = i
        out.append(KarpathyImage(i, image_id, f"{folder}/{filename}", SPLITS[split], tuple(captions)))
    return out


def sample(images: Sequence[KarpathyImage], max_images: int, seed: int) -> dict[str, list[KarpathyImage]]:
    """vqabench's splits; with ``max_images``, a seeded sample of at most that many per split, in file order.

    The sample is the first ``max_images`` of the split's sorted image ids permuted by
    ``numpy.random.default_rng([seed, split number])``, so it does not depend on the file's order.
    """
    splits: dict[str, list[KarpathyImage]] = {s: [] for s in OUR_SPLITS}
    for image in images:
        splits[image.split].append(image)
    if not max_images:
        return splits
    for n, name in enumerate(OUR_SPLITS):
        members = splits[name]
        if len(members) <= max_images:
            continue
        ids = sorted(m.id for m in members)
        chosen = {ids[k] for k in np.random.default_rng([seed, n]).permutation(len(ids))[:max_images]}
        splits[name] = [m for m in members if m.id in chosen]
    return splits


def check_images(layout: Layout, root: Path, split_file: Path, splits: dict[str, list[KarpathyImage]]) -> None:
    """Every image a kept record names is a regular file inside the root (one listing per folder)."""
    listings: dict[str, set[str]] = {}
    missing: list[KarpathyImage] = []
    for image in (m for members in splits.values() for m in members):
        where = f"{split_file} images[{image.index}] field filename"
        try:
            contained(root, image.path, where=where)
        except UnsafePathError as exc:
            raise DatasetError(f"{layout.dataset}: {exc}; correct the record") from None
        folder, name = os.path.split(image.path)
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(root / folder))
            except FileNotFoundError:
                listings[folder] = set()
            except OSError as exc:
                raise DatasetError(f"{layout.dataset}: {describe_os_error(exc, root / folder, 'listing')}") from None
        if name not in listings[folder] and not (root / image.path).is_file():
            missing.append(image)
    if missing:
        first = min(missing, key=lambda m: m.index)
        others = f", nor do {len(missing) - 1} other images it lists" if len(missing) > 1 else ""
        zipped = layout.folders.get(first.path.split("/")[0], "the dataset's image download")
        raise DatasetError(
            f"{layout.dataset}: {split_file} images[{first.index}] field filename: {root / first.path} does not "
            f"exist{others}; download {zipped} and unzip it in {root}"
        )


def revision(layout: Layout, files: Sequence[Path], fields: dict[str, Any]) -> str:
    """sha256 of the files' bytes and of the config fields that change the samples (not the root)."""
    digest = hashlib.sha256(f"{layout.dataset} karpathy 1\n".encode())
    for path in files:
        try:
            digest.update(path.name.encode() + b"\0" + file_sha256(path))
        except OSError as exc:
            raise DatasetError(f"{layout.dataset}: {describe_os_error(exc, path, 'reading')}") from None
    digest.update(json.dumps(fields, sort_keys=True).encode())
    return digest.hexdigest()


def task_data(
    layout: Layout,
    kind: str,
    root: Path,
    splits: dict[str, list[KarpathyImage]],
    rev: str,
    captions: Callable[[KarpathyImage], tuple[str, ...]] | None = None,
) -> TaskData:
    """The captioning TaskData of checked, sampled splits (``captions`` may replace each image's captions)."""
    from vqabench.tasks.captioning import CaptionSample  # pulls in torch, which `vqabench plugins` does not need

    if kind_name(kind) != TaskKind.CAPTIONING:
        raise DatasetError(f"{layout.dataset} gives task kind captioning, not {kind_name(kind)!r}")
    out = {
        name: [CaptionSample(m.id, str(root / m.path), captions(m) if captions else m.captions) for m in members]
        for name, members in splits.items()
    }
    empty = [name for name, members in out.items() if not members]
    if empty:
        raise DatasetError(
            f"{layout.dataset}: the split file has no image in split(s) {', '.join(empty)}; "
            f"use the full split file from {KARPATHY_SOURCE}"
        )
    return TaskData(dataset=layout.dataset, kind=TaskKind.CAPTIONING, root=root, splits=out, revision=rev)
