"""A small VQA v2 set in the exact official layout, for tests and for trying the vqav2 plugin.

``write_fixture(root)`` writes the four official JSON files directly in ``root`` (where the official
zips unpack them; ``subfolders=True`` puts them in ``Questions/`` and ``Annotations/`` instead) and
the images ``root/{train2014,val2014}/COCO_<split>_<image_id:012d>.jpg``. Records look like the real
ones: COCO-like image ids in no particular order, question ids ``image_id * 1000 + k``, ten answers
with ``answer_confidence`` yes/maybe/no and ``answer_id`` 1-10, the three answer types, real
question types ("what color is the", "how many", "is the", "what is the"), a
``multiple_choice_answer`` that is the most frequent answer, majorities written in forms the
official normalisation merges ("two" for "2", "a circle" for "circle"), and a few fields the
official files do not have, which a loader must ignore.

The images carry what the answers depend on, so a model can beat the majority answer: a coloured
square, circle or triangle answers the colour, shape and "is the ... red?" questions, and white dots
in a strip along the bottom answer "how many dots are there?". Everything follows from ``seed``.

Run ``python -m vqabench_plugins.vqav2_fixture DIR`` to write one (``--help`` for the sizes).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 200), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle", "triangle")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
# Question kinds in a fixed interleaving over all questions, so even a few images hold every answer
# type; yes/no comes twice, as in VQA v2, where about 38% of the questions are yes/no.
PATTERN = ("colour", "yes/no", "count", "yes/no", "shape")
SPLITS = ("train2014", "val2014")
QUESTIONS = "v2_OpenEnded_mscoco_{}_questions.json"
ANNOTATIONS = "v2_mscoco_{}_annotations.json"
INFO = {"description": "vqabench fixture in the VQA v2 layout", "version": "2.0", "year": 2017}
LICENSE = {"name": "Creative Commons Attribution 4.0 International License", "url": "http://creativecommons.org/"}


def _answers(main: str, others: Sequence[str], rng: np.random.Generator) -> list[dict[str, Any]]:
    """Ten answers: ``main`` from most annotators (mostly sure), ``others`` from up to three."""
    n_other = int(rng.integers(0, 4)) if others else 0
    texts = [main] * (10 - n_other) + [str(rng.choice(others)) for _ in range(n_other)]
    out = []
    for j, text in enumerate(texts):
        sure = "yes" if text == main and rng.random() < 0.85 else str(rng.choice(["maybe", "no"]))
        out.append({"answer": text, "answer_confidence": sure, "answer_id": j + 1})
    return out


def draw_image(scene: dict[str, Any], size: int, rng: np.random.Generator) -> Image.Image:
    """A light, noisy picture: the shape in the upper part, ``dots`` white dots on a dark strip below."""
    pixels = rng.integers(150, 200, (size, size, 3)).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    band = size * 3 // 4  # the shape above, the dots below
    lo, hi = size // 8, band - size // 8
    rgb = COLOURS[scene["colour"]]
    if scene["shape"] == "square":
        draw.rectangle((lo, lo, hi, hi), fill=rgb)
    elif scene["shape"] == "circle":
        draw.ellipse((lo, lo, hi, hi), fill=rgb)
    else:
        draw.polygon([(lo, hi), (hi, hi), ((lo + hi) // 2, lo)], fill=rgb)
    draw.rectangle((0, band, size - 1, size - 1), fill=(20, 30, 80))
    cell, top = size // 4, band + 1
    for k in range(scene["dots"]):  # one dot per column
        x = k * cell + cell // 4
        draw.rectangle((x, top, x + max(1, cell // 2) - 1, max(top, size - 2)), fill=(255, 255, 255))
    return image


def _question(kind: str, scene: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """One question about ``scene`` with its annotation fields (all but the ids)."""
    colour, shape, dots = scene["colour"], scene["shape"], scene["dots"]
    if kind == "colour":
        question, qtype, atype = f"What color is the {shape}?", "what color is the", "other"
        main, others = colour, [f"dark {colour}", f"{colour} and white", "orange"]
    elif kind == "yes/no":
        asked = colour if rng.random() < 0.5 else str(rng.choice([c for c in COLOURS if c != colour]))
        question, qtype, atype = f"Is the {shape} {asked}?", "is the", "yes/no"
        main = "yes" if asked == colour else "no"
        others = ["no" if main == "yes" else "yes"]
    elif kind == "count":
        question, qtype, atype = "How many dots are there?", "how many", "number"
        main = NUMBER_WORDS[dots] if rng.random() < 0.3 else str(dots)  # "two" and "2" normalise alike
        others = [str(dots + 1), str(max(1, dots - 1))]
    else:
        question, qtype, atype = "What is the shape of the object?", "what is the", "other"
        main = f"a {shape}" if rng.random() < 0.3 else shape
        others = {"square": ["rectangle", "box"], "circle": ["round", "ball"], "triangle": ["pyramid"]}[shape]
    answers = _answers(main, others, rng)
    counts = Counter(a["answer"] for a in answers)
    return {
        "question": question,
        "question_type": qtype,
        "answer_type": atype,
        "multiple_choice_answer": max(counts, key=counts.__getitem__),
        "answers": answers,
    }


def _split(
    root: Path, split: str, image_ids: list[int], questions_per_image: int, size: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write the images of one split; return its question and annotation records."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    questions, annotations = [], []
    n = 0
    for image_id in image_ids:
        scene = {"colour": str(rng.choice(list(COLOURS))), "shape": str(rng.choice(SHAPES))}
        scene["dots"] = int(rng.integers(1, 5))
        draw_image(scene, size, rng).save(folder / f"COCO_{split}_{image_id:012d}.jpg", "JPEG", quality=90)
        for k in range(questions_per_image):
            record = _question(PATTERN[n % len(PATTERN)], scene, rng)
            qid = image_id * 1000 + k
            question = {"image_id": image_id, "question": record.pop("question"), "question_id": qid}
            annotation = {"question_id": qid, "image_id": image_id, **record}
            if n % 7 == 3:
                question["vqabench_fixture_note"] = "a field the official files lack"
                annotation["vqabench_fixture_note"] = {"nested": [1, 2]}
            questions.append(question)
            annotations.append(annotation)
            n += 1
    return questions, annotations


def write_fixture(
    root: Path,
    *,
    train_images: int = 12,
    val_images: int = 6,
    questions_per_image: int = 3,
    seed: int = 0,
    image_size: int = 32,
    subfolders: bool = False,
) -> Path:
    """Write a VQA v2-shaped set into ``root`` (see the module docstring); return ``root``."""
    if min(train_images, val_images, questions_per_image) < 1 or image_size < 8:
        raise ValueError(
            f"vqav2 fixture: train_images={train_images}, val_images={val_images} and "
            f"questions_per_image={questions_per_image} must be >= 1 and image_size={image_size} >= 8"
        )
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # COCO-like ids: distinct over both splits, and in no particular order in the files.
    ids = np.random.default_rng(seed).choice(581_929, train_images + val_images, replace=False) + 1
    chosen = {"train2014": ids[:train_images].tolist(), "val2014": ids[train_images:].tolist()}
    for split in SPLITS:
        questions, annotations = _split(root, split, chosen[split], questions_per_image, image_size, seed)
        head = {"info": INFO, "license": LICENSE, "data_subtype": split}
        files = {
            ("Questions", QUESTIONS.format(split)): {
                **head,
                "task_type": "Open-Ended",
                "data_type": "mscoco",
                "questions": questions,
            },
            ("Annotations", ANNOTATIONS.format(split)): {
                **head,
                "data_type": "mscoco",
                "annotations": annotations,
                "vqabench_fixture_note": "a field the official files lack",
            },
        }
        for (folder, name), content in files.items():
            path = root / folder / name if subfolders else root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content), encoding="utf-8")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vqabench_plugins.vqav2_fixture", description="Write a small VQA v2-shaped set."
    )
    parser.add_argument("root", type=Path, help="folder to write (the JSON files and train2014/, val2014/ go in it)")
    parser.add_argument("--train-images", type=int, default=12, help="train2014 images (default 12)")
    parser.add_argument("--val-images", type=int, default=6, help="val2014 images (default 6)")
    parser.add_argument("--questions-per-image", type=int, default=3, help="questions per image (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--subfolders", action="store_true", help="put the JSON files in Questions/, Annotations/")
    args = parser.parse_args(argv)
    try:
        root = write_fixture(
            args.root,
            train_images=args.train_images,
            val_images=args.val_images,
            questions_per_image=args.questions_per_image,
            seed=args.seed,
            image_size=args.image_size,
            subfolders=args.subfolders,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote a VQA v2-shaped set to {root}; load it with --data root={root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
