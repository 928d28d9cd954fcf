"""Writing a Mini-CLEVR directory: parallel rendering, jsonl tables, meta, manifest, atomic rename.

Every image draws its randomness from a generator seeded with ``(seed, stream, image index)``,
so the output does not depend on the number of worker processes or on how work is chunked;
PNGs use a fixed zlib level and JSON sorted keys, so the same options give byte-identical files
(with the same zlib and Pillow: other versions may compress or resample differently).
Everything is written into a temporary sibling directory that is renamed into place once the
manifest is written: a directory under the final name is always complete.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from vqabench_plugins.mini_clevr import manifest, zeroshot
from vqabench_plugins.mini_clevr.captions import make_captions
from vqabench_plugins.mini_clevr.config import (
    BACKGROUND,
    COLORS,
    GENERATOR_VERSION,
    SHAPES,
    SIZES,
    MiniClevrConfig,
    generation_options,
    split_sizes,
)
from vqabench_plugins.mini_clevr.questions import answer_vocabulary, is_askable, make_questions
from vqabench_plugins.mini_clevr.render import Picture, encode_png, render_source, render_target
from vqabench_plugins.mini_clevr.scene import radius_range, sample_scene, sample_single

from vqabench.files import writer_tag
from vqabench.workers import die_with_owner

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
TARGET = "target_"  # prefix of the target-domain splits
# Independent random streams per image index.
_SCENE_STREAM, _ZEROSHOT_STREAM, _TARGET_STREAM = 0, 1, 2


def available_cpus() -> int:
    """The CPUs this process may run on (the default number of workers)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def image_filename(split: str, index: int) -> str:
    """Where an image of the main set lives, relative to the dataset root."""
    return f"images/{split}/mini_clevr_{split}_{index:06d}.png"


def zeroshot_filename(split: str, index: int) -> str:
    return f"zeroshot/images/{split}/zeroshot_{split}_{index:06d}.png"


def _plan_scenes(config: MiniClevrConfig) -> list[tuple[int, str, bool]]:
    """(image index, split, also rendered in the target domain) for every scene."""
    n_train, n_val, n_test = split_sizes(config.images, config.split_fractions)
    n_target_train = round(n_train * config.target_train_fraction)
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return [(i, split, split != "train" or i < n_target_train) for i, split in enumerate(splits)]


def _write_png(root: Path, rel: str, picture: Picture, level: int) -> dict[str, Any]:
    data = encode_png(picture, level)
    (root / rel).write_bytes(data)
    return manifest.digest(data)


def _line(record: dict[str, Any]) -> str:
    return manifest.dumps(record) + "\n"


def _line_around(record: dict[str, Any], key: str) -> tuple[str, str]:
    """The canonical JSON line of ``record`` cut where ``key`` goes, so that
    ``head + '"key":' + value + tail`` is the line of the record with that key added."""
    before = {k: v for k, v in record.items() if k < key}
    after = {k: v for k, v in record.items() if k > key}
    head = manifest.dumps(before)[:-1] + ("," if before else "") + f'"{key}":'
    tail = ("," if after else "") + manifest.dumps(after)[1:] + "\n"
    return head, tail


def _make_scene(config: MiniClevrConfig, root: Path, index: int, split: str, with_target: bool) -> dict[str, Any]:
    """Sample, question, caption and draw one scene (in both domains when asked).

    Returns its PNG digests, its scene and caption lines, and per question the lines for each
    domain with a gap for ``question_index``, which only the parent can number.
    """
    rng = np.random.default_rng([config.seed, _SCENE_STREAM, index])
    objects = sample_scene(rng, config, accept=is_askable)
    # Alternating the left/right answer by index balances yes and no exactly.
    questions = make_questions(objects, rng, (config.seed + index) % 2 == 0, config.unanswerable_fraction)
    captions = make_captions(objects, rng, config.captions_per_image)

    out: dict[str, Any] = {"files": {}, "lines": [], "questions": [[] for _ in questions]}
    domains = [("source", split, render_source(objects, config.image_size))]
    if with_target:
        target_rng = np.random.default_rng([config.seed, _TARGET_STREAM, index])
        domains.append(("target", TARGET + split, render_target(objects, config.image_size, target_rng)))
    for domain, name, picture in domains:
        rel = image_filename(name, index)
        out["files"][rel] = _write_png(root, rel, picture, config.png_compress_level)
        image = {"image_index": index, "image_filename": rel, "split": name}
        out["lines"].append((f"scenes/{name}.jsonl", _line({**image, "domain": domain, "objects": objects})))
        out["lines"].append((f"captions/{name}.jsonl", _line({**image, "domain": domain, "captions": captions})))
        for parts, q in zip(out["questions"], questions):
            head, tail = _line_around({**image, **q}, "question_index")
            parts.append((f"questions/{name}.jsonl", q["answerable"], head, tail))
    return out


def _make_zeroshot(config: MiniClevrConfig, root: Path, index: int, split: str, label: int) -> dict[str, Any]:
    rng = np.random.default_rng([config.seed, _ZEROSHOT_STREAM, index])
    color, shape = zeroshot.CLASS_NAMES[label].split(" ")
    objects = sample_single(rng, config, shape, color)
    rel = zeroshot_filename(split, index)
    record = {
        "image_index": index,
        "image_filename": rel,
        "split": split,
        "domain": "source",
        "label": label,
        "class_name": zeroshot.CLASS_NAMES[label],
        "objects": objects,
    }
    files = {rel: _write_png(root, rel, render_source(objects, config.image_size), config.png_compress_level)}
    return {"files": files, "lines": [(f"zeroshot/{split}.jsonl", _line(record))], "questions": []}


def _work(config: MiniClevrConfig, root: str, jobs: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Run a chunk of jobs (in a worker process): render, write PNGs, return digests and lines."""
    makers = {"scene": _make_scene, "zeroshot": _make_zeroshot}
    return [makers[kind](config, Path(root), *args) for kind, *args in jobs]


def _run(config: MiniClevrConfig, root: Path, jobs: list[tuple[Any, ...]]) -> Iterator[dict[str, Any]]:
    """Run every job in ``config.workers`` processes, yielding results in job order as they come,
    so that the caller writes the tables while the workers still render."""
    workers = max(1, min(config.workers or available_cpus(), len(jobs)))
    per_chunk = max(1, -(-len(jobs) // (workers * 8)))  # several chunks per worker evens out the load
    chunks = [jobs[i : i + per_chunk] for i in range(0, len(jobs), per_chunk)]
    if workers == 1:
        for chunk in chunks:
            yield from _work(config, str(root), chunk)
        return
    # forkserver: workers start from a clean process, not a fork of a parent that may hold torch threads.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    # Workers die with this process: a SIGKILL here must not leave them rendering or waiting for tasks.
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context(method),
        initializer=die_with_owner,
        initargs=(os.getpid(),),
    )
    try:
        for results in pool.map(_work, repeat(config), repeat(str(root)), chunks):
            yield from results
    finally:
        # On an error, drop the chunks not started yet; wait for running ones, which write files.
        pool.shutdown(wait=True, cancel_futures=True)


class _Tables:
    """The jsonl tables, appended to line by line and hashed as they are written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.open: dict[str, tuple[BinaryIO, Any]] = {}
        self.lines: Counter = Counter()  # table -> lines
        self.answerable: Counter = Counter()  # question table -> answerable questions

    def write(self, rel: str, line: str) -> None:
        if rel not in self.open:
            self.open[rel] = ((self.root / rel).open("wb"), hashlib.sha256())
        handle, hasher = self.open[rel]
        data = line.encode("utf-8")
        handle.write(data)
        hasher.update(data)
        self.lines[rel] += 1

    def add(self, result: dict[str, Any], first_question: int) -> int:
        """Write one job's lines, numbering its questions from ``first_question``; return the next number."""
        for rel, line in result["lines"]:
            self.write(rel, line)
        for number, parts in enumerate(result["questions"], first_question):
            for rel, answerable, head, tail in parts:
                self.write(rel, f"{head}{number}{tail}")
                self.answerable[rel] += answerable
        return first_question + len(result["questions"])

    def close(self) -> dict[str, dict[str, Any]]:
        """Close every table; return their manifest entries."""
        digests = {}
        for rel, (handle, hasher) in self.open.items():
            digests[rel] = {"sha256": hasher.hexdigest(), "size": handle.tell()}
            handle.close()
        return digests


def _meta(config: MiniClevrConfig, tables: _Tables) -> dict[str, Any]:
    """meta.json: generator, options, drawing constants and what each split holds."""

    def lines(table: str, split: str) -> int:
        return tables.lines[f"{table}/{split}.jsonl"]

    splits = sorted({rel.split("/")[1][: -len(".jsonl")] for rel in tables.lines if rel.startswith("scenes/")})
    shots = sorted({rel.split("/")[1][: -len(".jsonl")] for rel in tables.lines if rel.startswith("zeroshot/")})
    return {
        "dataset": "mini-clevr",
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "options": generation_options(config),
        "image_size": config.image_size,
        "colors": {name: list(rgb) for name, rgb in COLORS.items()},
        "shapes": list(SHAPES),
        "sizes": list(SIZES),
        "background": list(BACKGROUND),
        # Circumradius ranges and clearance in px at this image size (the report's numbers x size/224).
        "radius_scales": {size: [round(v, 3) for v in radius_range(config, size)] for size in SIZES},
        "clearance": round(config.clearance * config.scale, 3),
        "splits": {
            split: {
                "domain": "target" if split.startswith(TARGET) else "source",
                "images": lines("scenes", split),
                "questions": lines("questions", split),
                "answerable_questions": tables.answerable[f"questions/{split}.jsonl"],
            }
            for split in splits
        },
        "zeroshot": {
            "classes": len(zeroshot.CLASS_NAMES),
            "images": {split: lines("zeroshot", split) for split in shots},
        },
    }


def generate(config: MiniClevrConfig, root: Path) -> dict[str, Any]:
    """Generate the dataset at ``root``, which must not exist yet; return its manifest.

    Work happens in a temporary sibling directory renamed to ``root`` at the end. If another
    process published ``root`` first, its copy is kept (after checking it) and ours dropped.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    # The name says which process writes it, so a later prepare or load can tell a killed
    # generation's leftover from a live one's (vqabench.files.is_stale).
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-{writer_tag()}.", dir=root.parent))
    try:
        scene_plan = _plan_scenes(config)
        shot_plan = zeroshot.plan(config)
        for split in {s for _, s, _ in scene_plan} | {TARGET + s for _, s, t in scene_plan if t}:
            (tmp / "images" / split).mkdir(parents=True)
        for split in {s for _, s, _ in shot_plan}:
            (tmp / "zeroshot" / "images" / split).mkdir(parents=True)
        for sub in ("scenes", "questions", "captions"):
            (tmp / sub).mkdir()

        # Render in worker processes; write the tables here as results arrive, in index order.
        jobs = [("scene", *p) for p in scene_plan] + [("zeroshot", *p) for p in shot_plan]
        tables = _Tables(tmp)
        files: dict[str, dict[str, Any]] = {}
        question_index = 0
        try:
            for result in _run(config, tmp, jobs):
                files.update(result["files"])
                question_index = tables.add(result, question_index)
        finally:
            files.update(tables.close())

        documents = {
            "answer2idx.json": {a: i for i, a in enumerate(answer_vocabulary(config))},
            "zeroshot/classes.json": {"class_names": list(zeroshot.CLASS_NAMES), "templates": list(zeroshot.TEMPLATES)},
            "meta.json": _meta(config, tables),
        }
        for rel, document in documents.items():
            data = (manifest.dumps(document) + "\n").encode("utf-8")
            (tmp / rel).write_bytes(data)
            files[rel] = manifest.digest(data)
        written = manifest.write_manifest(tmp, dict(sorted(files.items())))
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.exists():
                raise
            log.info("mini-clevr: %s was published by another process; keeping it", root)
            shutil.rmtree(tmp, ignore_errors=True)
            return manifest.verify(root)
        return written
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
