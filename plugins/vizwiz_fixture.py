"""A small VizWiz VQA set in the exact official layout, for tests and for trying the vizwiz plugin.

``write_fixture(root)`` writes ``root/Annotations/{train,val,test}.json`` and the image folders
``root/{train,val,test}/VizWiz_<split>_<i:08d>.jpg``, as the official zips unpack. Records look
like the real ones: ten answers with confidences, the four answer types, unanswerable questions
(``answerable`` 0, mostly "unanswerable" answers), answers with apostrophes ("2 o'clock",
"doesn't say"), and a few fields the official files do not have, which a loader must ignore.

The images carry what the answers depend on, so a model can beat the majority baseline: a coloured
square answers "what colour is this?" and "is this <colour>?", white dots answer "how many?", and
unanswerable questions come with nearly black, blurred photos. Everything follows from ``seed``.

Run ``python -m vqabench_plugins.vizwiz_fixture DIR`` to write one (``--help`` for the sizes).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

COLOURS = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 200), "yellow": (230, 210, 40)}
# Question kinds in a fixed interleaving, so even a split of ten questions holds every answer type.
PATTERN = (
    "colour",
    "unanswerable",
    "yes/no",
    "number",
    "clock",
    "colour",
    "label",
    "yes/no",
    "colour",
    "unanswerable",
)


def _answers(main: str, others: Sequence[str], rng: np.random.Generator) -> list[dict[str, Any]]:
    """Ten answers: ``main`` from most annotators ("yes" or "maybe" sure), ``others`` from the rest."""
    n_other = int(rng.integers(0, min(3, len(others)) + 1)) if others else 0
    texts = [main] * (10 - n_other) + [str(rng.choice(others)) for _ in range(n_other)]
    out = []
    for j, text in enumerate(texts):
        sure = "yes" if text == main and rng.random() < 0.85 else str(rng.choice(["maybe", "no"]))
        answer: dict[str, Any] = {"answer": text, "answer_confidence": sure}
        if j == 0 and rng.random() < 0.2:
            answer["answer_id"] = int(rng.integers(1_000_000))  # not an official field: to be ignored
        out.append(answer)
    return out


def _square(size: int, rgb: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A light, noisy background with a square of ``rgb`` over its centre half."""
    pixels = rng.integers(150, 200, (size, size, 3)).astype(np.int16)
    lo, hi = size // 4, size - size // 4
    pixels[lo:hi, lo:hi] = np.array(rgb) + rng.integers(-15, 16, (hi - lo, hi - lo, 3))
    return pixels.clip(0, 255).astype(np.uint8)


def _dots(size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    pixels = np.full((size, size, 3), (20, 30, 80), np.uint8)
    cell = size // 3
    for k in range(count):  # one dot per column, at a random height
        y = int(rng.integers(0, 3)) * cell
        pixels[y + cell // 4 : y + 3 * cell // 4, k * cell + cell // 4 : k * cell + 3 * cell // 4] = 255
    return pixels


def _record(kind: str, size: int, rng: np.random.Generator) -> tuple[dict[str, Any], Image.Image]:
    """One labelled record (without its image name) and its image."""
    colour = str(rng.choice(list(COLOURS)))
    if kind == "colour":
        record = {
            "question": str(rng.choice(["What colour is this?", "What color is this shirt?"])),
            "answers": _answers(colour, [f"dark {colour}", f"{colour} and white"], rng),
            "answer_type": "other",
        }
        pixels = _square(size, COLOURS[colour], rng)
    elif kind == "yes/no":
        asked = colour if rng.random() < 0.5 else str(rng.choice([c for c in COLOURS if c != colour]))
        truth = "yes" if asked == colour else "no"
        other = "no" if truth == "yes" else "yes"
        record = {"question": f"Is this {asked}?", "answers": _answers(truth, [other], rng), "answer_type": "yes/no"}
        pixels = _square(size, COLOURS[colour], rng)
    elif kind == "number":
        count = int(rng.integers(1, 4))
        record = {"question": "How many dots are there?", "answers": _answers(str(count), [], rng)}
        record["answer_type"] = "number"
        pixels = _dots(size, count, rng)
    elif kind == "clock":
        record = {"question": "What time does this clock say?", "answers": _answers("2 o'clock", ["2:00"], rng)}
        record["answer_type"] = "other"
        pixels = np.full((size, size, 3), 235, np.uint8)
        pixels[size // 2 - 1 : size // 2 + 1, size // 4 : size // 2] = 0  # an hour hand
    elif kind == "label":
        record = {
            "question": "What does this label say?",
            "answers": _answers("doesn't say", ["no text", "blank"], rng),
            "answer_type": "other",
        }
        pixels = np.tile(np.linspace(120, 220, size, dtype=np.uint8)[None, :, None], (size, 1, 3))
    else:  # unanswerable: a dark, blurred photo of nothing in particular
        record = {
            "question": str(rng.choice(["What is this?", "What does this say?", "Can you tell me what this is?"])),
            "answers": _answers("unanswerable", ["unsuitable", "blurry"], rng),
            "answer_type": "unanswerable",
        }
        pixels = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
        image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(size / 8))
        return {**record, "answerable": 0}, image
    return {**record, "answerable": 1}, Image.fromarray(pixels)


def _split(root: Path, split: str, count: int, size: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng([seed, ("train", "val", "test").index(split)])
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        name = f"VizWiz_{split}_{i:08d}.jpg"
        record, image = _record(PATTERN[i % len(PATTERN)], size, rng)
        image.save(folder / name, "JPEG", quality=90)
        if split == "test":  # the official test file gives only the image and the question
            record = {"question": record["question"]}
        if i % 7 == 3:
            record["vqabench_fixture_note"] = "a field the official files lack"
        records.append({"image": name, **record})
    return records


def write_fixture(
    root: Path, *, train: int = 60, val: int = 20, test: int = 10, seed: int = 0, image_size: int = 32
) -> Path:
    """Write a VizWiz-shaped set of ``train``/``val``/``test`` questions into ``root``; return ``root``."""
    if min(train, val, test) < 1 or image_size < 8:
        raise ValueError(
            f"vizwiz fixture: train={train}, val={val}, test={test} must be >= 1 and image_size={image_size} >= 8"
        )
    root = Path(root)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("val", val), ("test", test)):
        records = _split(root, split, count, image_size, seed)
        (root / "Annotations" / f"{split}.json").write_text(json.dumps(records), encoding="utf-8")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vqabench_plugins.vizwiz_fixture", description="Write a small VizWiz-shaped VQA set."
    )
    parser.add_argument("root", type=Path, help="folder to write (Annotations/ and train/, val/, test/ go in it)")
    parser.add_argument("--train", type=int, default=60, help="questions in official train (default 60)")
    parser.add_argument("--val", type=int, default=20, help="questions in official val (default 20)")
    parser.add_argument("--test", type=int, default=10, help="questions in official test (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    args = parser.parse_args(argv)
    try:
        root = write_fixture(
            args.root, train=args.train, val=args.val, test=args.test, seed=args.seed, image_size=args.image_size
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote a VizWiz-shaped set to {root}; load it with --data root={root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
