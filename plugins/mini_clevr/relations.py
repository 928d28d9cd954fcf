"""Mini-CLEVR relation questions (dataset ``mini-clevr-relations``, kind vqa): report 004's question form.

"What is the relationship between the red circle and the blue square?" with the answer "left of",
"right of", "above" or "below": where the first object lies relative to the second in image
coordinates (x grows rightwards, y downwards, so "above" is the smaller y). The relation is the
dominant axis of the offset between the two centres.

Derived at load time from ``scenes/<split>.jsonl`` (every object's colour, shape, size, centre and
circumradius), so the same generated directory, cache, config, images and splits serve ``mini-clevr``
and this dataset; nothing is regenerated. Source domain only (train, val, test).

Which pairs are asked, per scene (every unordered pair of objects is considered once):

- both objects must be singled out by their attributes; each is named with the fewest of shape,
  colour and size that do so, as ``questions.py`` names referents (``identifying_attrs``);
  otherwise the pair is skipped as ``ambiguous_referent``;
- the offset must be clearly on one axis: the dominant component at least ``DOMINANCE`` (2) times
  the other (at least ~18 degrees away from the diagonal), else ``near_diagonal``;
- the two shapes must be apart along that axis: the centres' distance on it at least the sum of
  the circumradii (what ``questions.py`` asks of a left/right pair), else ``too_close``.

A kept pair is asked in one direction, drawn per scene, so that "left of" / "right of" and "above"
/ "below" come out balanced. Every draw follows from ``(config.seed, split, image_index)``. The
counts of questions kept and pairs skipped, per split and reason, are in
``TaskData.notes["relations"]`` (the record's ``data_notes``) and in the log.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from vqabench_plugins.mini_clevr.config import UNSAFE_AUGMENTATIONS, MiniClevrConfig
from vqabench_plugins.mini_clevr.generate import SPLITS
from vqabench_plugins.mini_clevr.questions import ATTRIBUTES, describe, identifying_attrs
from vqabench_plugins.mini_clevr.store import ensure, read_meta
from vqabench_plugins.mini_clevr.taskdata import Reader, split_names

from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.qa import QASample

log = logging.getLogger(__name__)

NAME = "mini-clevr-relations"
# Bump when a change here changes any question: it is part of the revision that keys caches.
RELATIONS_VERSION = "1"
RELATIONS = ("left of", "right of", "above", "below")
DOMINANCE = 2.0  # the dominant offset component must be this many times the other
QUESTION = "What is the relationship between {subject} and {object}?"
SKIP_REASONS = ("ambiguous_referent", "near_diagonal", "too_close")
VOCAB_RULE = "the four image-plane relations (left of, right of, above, below)"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# What each object of a scene must hold for a relation to be computed from it.
_OBJECT_FIELDS = {
    "color": (lambda v: isinstance(v, str), "a string"),
    "shape": (lambda v: isinstance(v, str), "a string"),
    "size": (lambda v: isinstance(v, str), "a string"),
    "radius": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "pixel_coords": (lambda v: isinstance(v, list) and len(v) == 2 and all(map(_number, v)), "a list [x, y]"),
}


def _objects(reader: Reader, where: str, record: dict[str, Any]) -> list[dict[str, Any]]:
    objects = record["objects"]
    if not isinstance(objects, list):
        raise reader.error(f"{where} field objects", f"a {type(objects).__name__}, not a list of objects")
    for k, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise reader.error(f"{where} field objects[{k}]", f"a {type(obj).__name__}, not an object")
        for name, (test, expected) in _OBJECT_FIELDS.items():
            if name not in obj:
                raise reader.error(f"{where} field objects[{k}].{name}", "missing")
            if not test(obj[name]):
                raise reader.error(f"{where} field objects[{k}].{name}", f"{obj[name]!r} is not {expected}")
    return objects


def relation(subject: dict[str, Any], other: dict[str, Any]) -> tuple[str | None, str]:
    """Where ``subject`` lies relative to ``other``: (a relation of ``RELATIONS``, "") or (None, skip reason)."""
    dx = subject["pixel_coords"][0] - other["pixel_coords"][0]
    dy = subject["pixel_coords"][1] - other["pixel_coords"][1]
    major, minor = (abs(dx), abs(dy)) if abs(dx) >= abs(dy) else (abs(dy), abs(dx))
    if major < DOMINANCE * minor:
        return None, "near_diagonal"
    if major < subject["radius"] + other["radius"]:
        return None, "too_close"
    if abs(dx) >= abs(dy):
        return ("left of" if dx < 0 else "right of"), ""
    return ("above" if dy < 0 else "below"), ""  # image coordinates: y grows downwards


def scene_questions(
    objects: list[dict[str, Any]], rng: np.random.Generator, skipped: Counter
) -> list[tuple[int, int, str, str]]:
    """(subject index, object index, question, answer) for every askable pair of one scene.

    ``skipped`` counts the pairs left out, by reason (module docstring).
    """
    names = [identifying_attrs(o, objects, ATTRIBUTES, rng) for o in objects]
    out = []
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            if names[i] is None or names[j] is None:
                skipped["ambiguous_referent"] += 1
                continue
            s, o = (i, j) if rng.random() < 0.5 else (j, i)
            answer, reason = relation(objects[s], objects[o])
            if answer is None:
                skipped[reason] += 1
                continue
            question = QUESTION.format(subject=describe(names[s]), object=describe(names[o]))
            out.append((s, o, question, answer))
    return out


def _split_samples(reader: Reader, split: str, seed: int) -> tuple[list[QASample], dict[str, Any]]:
    rows = reader.jsonl(f"scenes/{split}.jsonl", ("image_index", "objects"), "image_index", f"split {split}")
    samples: list[QASample] = []
    skipped: Counter = Counter()
    for where, record, image in rows:
        index = record["image_index"]
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        for s, o, question, answer in scene_questions(_objects(reader, where, record), rng, skipped):
            samples.append(QASample(f"{split}/{index}-{s}-{o}", image, question, (answer,), "relation", "other"))
    stats = {"images": len(rows), "questions": len(samples), "skipped": {r: skipped[r] for r in SKIP_REASONS}}
    return samples, stats


def load_relations(config: MiniClevrConfig, kind: TaskKind, cache_dir: Path) -> TaskData:
    """The relation questions of the Mini-CLEVR directory ``config`` names (generated on first use)."""
    if TaskKind(kind) != TaskKind.VQA:
        raise ValueError(f"{NAME} gives task kind vqa, not {kind!r}")
    root, manifest = ensure(config, Path(cache_dir))
    reader = Reader(root, manifest["files"])
    splits: dict[str, list[QASample]] = {}
    stats: dict[str, Any] = {}
    for split in [s for s in split_names(reader, read_meta(root), "splits") if s in SPLITS]:
        splits[split], stats[split] = _split_samples(reader, split, config.seed)
        log.info("%s %s: %s", NAME, split, stats[split])
    revision = hashlib.sha256(f"{manifest['revision']}/relations-{RELATIONS_VERSION}".encode()).hexdigest()
    return TaskData(
        dataset=NAME,
        kind=TaskKind.VQA,
        root=root,
        splits=splits,
        revision=revision,
        answer_vocab=list(RELATIONS),
        vocab_rule=VOCAB_RULE,
        vqa_mode="vqa",
        unsafe_augmentations=UNSAFE_AUGMENTATIONS,  # hflip swaps left and right
        notes={"relations": stats},
    )
