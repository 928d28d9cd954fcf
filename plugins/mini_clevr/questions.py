"""Question programs: how they are chosen for a scene, executed on it and put into words.

A program is one of::

    {"op": "query_color", "target": ATTRS}            -> a colour name
    {"op": "count", "target": ATTRS}                  -> "0" .. "6"
    {"op": "left_of", "subject": ATTRS, "object": ATTRS} -> "yes" | "no"

where ATTRS is a subset of {"shape", "color", "size"} with values. A referent (``target`` of
query_color, ``subject`` / ``object`` of left_of) names exactly one object, with the fewest
attributes that do so; when it names none the answer is "unanswerable" (answerability questions).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import combinations, product
from operator import itemgetter
from typing import Any

import numpy as np
from vqabench_plugins.mini_clevr.config import COLORS, SHAPES, SIZES, UNANSWERABLE, MiniClevrConfig

Objects = Sequence[dict[str, Any]]

ATTRIBUTES = ("shape", "color", "size")
_VALUES = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES}
_TWO_COUNTS_PROBABILITY = 0.9  # "one or two" counting questions; ~3.9 questions per image as in the report

_TEMPLATES = {
    "query_color": ("What color is {target}?", "What is the color of {target}?", "Which color does {target} have?"),
    "count": (
        "How many {color} shapes are there?",
        "How many {color} objects are there?",
        "What number of {color} shapes are there?",
    ),
    "left_of": (
        "Is {subject} to the left of {object}?",
        "Is {subject} on the left side of {object}?",
        "Is {subject} left of {object}?",
    ),
}
ANSWER_TYPES = {"query_color": "other", "count": "number", "left_of": "yes/no"}


class AmbiguousReferent(ValueError):
    """A program names an object its attributes do not single out."""


def answer_vocabulary(config: MiniClevrConfig) -> list[str]:
    """Every answer an answerable question can have: colours, yes/no, counts 0..max_objects."""
    return [*COLORS, "yes", "no", *(str(n) for n in range(config.max_objects + 1))]


def select(objects: Objects, attrs: dict[str, str]) -> list[dict[str, Any]]:
    """The objects whose attributes include ``attrs``."""
    return [o for o in objects if all(o[k] == v for k, v in attrs.items())]


def _referent(objects: Objects, attrs: dict[str, str]) -> dict[str, Any] | None:
    found = select(objects, attrs)
    if len(found) > 1:
        raise AmbiguousReferent(f"{describe(attrs)!r} names {len(found)} objects")
    return found[0] if found else None


def execute(program: dict[str, Any], scene: dict[str, Any] | Objects) -> str:
    """The answer of ``program`` on ``scene`` (a scenes/*.jsonl record or its object list)."""
    objects = scene["objects"] if isinstance(scene, dict) else scene
    op = program["op"]
    if op == "count":
        return str(len(select(objects, program["target"])))
    if op == "query_color":
        target = _referent(objects, program["target"])
        return UNANSWERABLE if target is None else target["color"]
    if op == "left_of":
        subject, other = _referent(objects, program["subject"]), _referent(objects, program["object"])
        if subject is None or other is None:
            return UNANSWERABLE
        return "yes" if subject["pixel_coords"][0] < other["pixel_coords"][0] else "no"
    raise ValueError(f"unknown program op {op!r}; known: count, left_of, query_color")


def describe(attrs: dict[str, str]) -> str:
    """A referent in words: size, colour, shape (or "shape"), e.g. "the large red circle"."""
    words = [attrs[k] for k in ("size", "color") if k in attrs]
    return " ".join(["the", *words, attrs.get("shape", "shape")])


def _is_unique(obj: dict[str, Any], objects: Objects, attrs: Sequence[str]) -> bool:
    key = itemgetter(*attrs)
    return [key(o) for o in objects].count(key(obj)) == 1


def identifying_attrs(
    obj: dict[str, Any], objects: Objects, allowed: Sequence[str], rng: np.random.Generator
) -> dict[str, str] | None:
    """The fewest of ``allowed`` attributes that single ``obj`` out (ties: random), or None."""
    for k in range(1, len(allowed) + 1):
        unique = [c for c in combinations(allowed, k) if _is_unique(obj, objects, c)]
        if unique:
            chosen = unique[int(rng.integers(len(unique)))] if len(unique) > 1 else unique[0]
            return {a: obj[a] for a in chosen}
    return None


def _identifiable(objects: Objects, allowed: Sequence[str]) -> list[int]:
    """Indices of the objects that some subset of ``allowed`` attributes singles out."""
    key = itemgetter(*allowed)
    keys = [key(o) for o in objects]
    return [i for i, k in enumerate(keys) if keys.count(k) == 1]


def _left_right_pairs(objects: Objects) -> list[tuple[int, int]]:
    """Pairs (left, right) of identifiable objects whose circumcircles do not overlap horizontally,
    so that "left of" is plain to see."""
    ok = _identifiable(objects, ATTRIBUTES)
    pairs = []
    for i in ok:
        for j in ok:
            a, b = objects[i], objects[j]
            if b["pixel_coords"][0] - a["pixel_coords"][0] >= a["radius"] + b["radius"]:
                pairs.append((i, j))
    return pairs


def is_askable(objects: Objects) -> bool:
    """Whether the scene supports every question type: an object identifiable without its colour
    (for query_color) and a clear left/right pair."""
    return bool(_identifiable(objects, ("shape", "size"))) and bool(_left_right_pairs(objects))


def _question(op: str, program: dict[str, Any], answer: str, rng: np.random.Generator, **words: str) -> dict[str, Any]:
    template = _TEMPLATES[op][int(rng.integers(len(_TEMPLATES[op])))]
    answerable = answer != UNANSWERABLE
    return {
        "question": template.format(**words),
        "answer": answer,
        "question_type": op,
        "answer_type": ANSWER_TYPES[op] if answerable else UNANSWERABLE,
        "answerable": answerable,
        "program": program,
    }


def _query_color(objects: Objects, rng: np.random.Generator) -> dict[str, Any]:
    candidates = _identifiable(objects, ("shape", "size"))
    obj = objects[candidates[int(rng.integers(len(candidates)))]]
    target = identifying_attrs(obj, objects, ("shape", "size"), rng)
    return _question("query_color", {"op": "query_color", "target": target}, obj["color"], rng, target=describe(target))


def _counts(objects: Objects, rng: np.random.Generator) -> list[dict[str, Any]]:
    """One or two colour counts; the answer value is drawn first, uniformly among those the scene
    offers, so that 0 and 1 do not swamp the answer distribution."""
    per_color = Counter(o["color"] for o in objects)
    remaining = {c: per_color.get(c, 0) for c in COLORS}
    out = []
    asked: set[int] = set()
    for _ in range(2 if rng.random() < _TWO_COUNTS_PROBABILITY else 1):
        values = sorted(set(remaining.values()))
        values = [v for v in values if v not in asked] or values  # a second count asks another value
        value = values[int(rng.integers(len(values)))]
        asked.add(value)
        colors = [c for c, n in remaining.items() if n == value]
        color = colors[int(rng.integers(len(colors)))]
        del remaining[color]
        program = {"op": "count", "target": {"color": color}}
        out.append(_question("count", program, str(value), rng, color=color))
    return out


def _left_of(objects: Objects, rng: np.random.Generator, want_yes: bool) -> dict[str, Any]:
    pairs = _left_right_pairs(objects)
    left, right = pairs[int(rng.integers(len(pairs)))]
    subject, other = (left, right) if want_yes else (right, left)
    s = identifying_attrs(objects[subject], objects, ATTRIBUTES, rng)
    o = identifying_attrs(objects[other], objects, ATTRIBUTES, rng)
    program = {"op": "left_of", "subject": s, "object": o}
    return _question("left_of", program, "yes" if want_yes else "no", rng, subject=describe(s), object=describe(o))


def _absent(objects: Objects, allowed: Sequence[str], rng: np.random.Generator, max_attrs: int = 2) -> dict[str, str]:
    """A description with 1..max_attrs of ``allowed`` attributes that matches no object."""
    options = []
    for k in range(1, max_attrs + 1):
        for combo in combinations(allowed, k):
            present = {tuple(o[a] for a in combo) for o in objects}
            options += [dict(zip(combo, v)) for v in product(*(_VALUES[a] for a in combo)) if v not in present]
    return options[int(rng.integers(len(options)))]


def _unanswerable(objects: Objects, rng: np.random.Generator) -> dict[str, Any]:
    """A query_color or left_of question about an object the image does not hold."""
    if rng.random() < 0.5:
        target = _absent(objects, ("shape", "size"), rng)
        program = {"op": "query_color", "target": target}
        return _question("query_color", program, UNANSWERABLE, rng, target=describe(target))
    present = _identifiable(objects, ATTRIBUTES)
    real = identifying_attrs(objects[present[int(rng.integers(len(present)))]], objects, ATTRIBUTES, rng)
    ghost = _absent(objects, ATTRIBUTES, rng)
    s, o = (ghost, real) if rng.random() < 0.5 else (real, ghost)
    program = {"op": "left_of", "subject": s, "object": o}
    return _question("left_of", program, UNANSWERABLE, rng, subject=describe(s), object=describe(o))


def make_questions(
    objects: Objects, rng: np.random.Generator, want_yes: bool, unanswerable_fraction: float
) -> list[dict[str, Any]]:
    """The questions of one scene (which must satisfy ``is_askable``), without indices.

    One query_color, one or two counts, one left_of whose answer is "yes" iff ``want_yes`` (the
    caller alternates it so yes and no are balanced), and with probability
    ``unanswerable_fraction`` per answerable question one unanswerable question.
    """
    questions = [_query_color(objects, rng), *_counts(objects, rng), _left_of(objects, rng, want_yes)]
    if rng.random() < unanswerable_fraction * len(questions):
        questions.append(_unanswerable(objects, rng))
    return questions
