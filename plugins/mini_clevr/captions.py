"""Reference captions: several per image, from varied templates naming the objects, their colours
and sizes, colour counts and left/right relations. Captions describe the scene only, so both
domains share them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from vqabench_plugins.mini_clevr.config import COLORS

Objects = Sequence[dict[str, Any]]
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six")


def _a(obj: dict[str, Any]) -> str:
    return f"a {obj['size']} {obj['color']} {obj['shape']}"


def _listing(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _inventory(objects: Objects, rng: np.random.Generator) -> str:
    order = rng.permutation(len(objects)).tolist()
    return f"{_NUMBERS[len(objects)].capitalize()} shapes: {_listing([_a(objects[i]) for i in order])}."


def _left_to_right(objects: Objects, rng: np.random.Generator) -> str:
    ordered = sorted(objects, key=lambda o: o["pixel_coords"][0])
    return f"From left to right there is {_listing([_a(o) for o in ordered])}."


def _relation(objects: Objects, rng: np.random.Generator) -> str:
    i, j = rng.permutation(len(objects))[:2].tolist()
    a, b = objects[i], objects[j]
    side = "left" if a["pixel_coords"][0] < b["pixel_coords"][0] else "right"
    return f"{_a(a).capitalize()} is to the {side} of {_a(b)}."


def _color_counts(objects: Objects, rng: np.random.Generator) -> str:
    counts = Counter(o["color"] for o in objects)
    parts = [f"{_NUMBERS[n]} {c} {'shape' if n == 1 else 'shapes'}" for c, n in counts.items()]
    first = next(iter(counts.values()))
    return f"There {'is' if first == 1 else 'are'} {_listing(parts)}."


def _extremes(objects: Objects, rng: np.random.Generator) -> str:
    ordered = sorted(objects, key=lambda o: o["pixel_coords"][0])
    return f"The leftmost shape is {_a(ordered[0])} and the rightmost one is {_a(ordered[-1])}."


def _shape_counts(objects: Objects, rng: np.random.Generator) -> str:
    counts = Counter(o["shape"] for o in objects)
    parts = [f"{_NUMBERS[n]} {s}{'' if n == 1 else 's'}" for s, n in counts.items()]
    colors = [c for c in COLORS if any(o["color"] == c for o in objects)]
    return f"{_listing(parts).capitalize()} in {_listing(colors)}."


_TEMPLATES = (_inventory, _left_to_right, _relation, _color_counts, _extremes, _shape_counts)


def make_captions(objects: Objects, rng: np.random.Generator, count: int) -> list[str]:
    """``count`` captions of a scene, each from a different template while templates last."""
    order = rng.permutation(len(_TEMPLATES)).tolist()
    picks = [order[k % len(order)] for k in range(count)]
    return [_TEMPLATES[t](objects, rng) for t in picks]
