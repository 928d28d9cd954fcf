"""A small Visual Genome set in the exact official layout, for tests and for trying the visual-genome plugin.

``write_fixture(root)`` writes ``root/relationships.json``, ``root/image_data.json`` and the images
``root/VG_100K/<id>.jpg`` and ``root/VG_100K_2/<id>.jpg`` (alternately, as the two official image
zips unpack), real JPEGs drawn by the VQA v2 fixture's writer: a coloured square, circle or triangle
above a dark strip with white dots. Records look like the real ones and use both spellings the
releases have: ``image_id`` or ``id`` for an image, ``name`` or ``names: [...]`` for an object, with
``synsets``, boxes (``x``, ``y``, ``w``, ``h``), ``relationship_id`` and a few fields the official
files do not have, which a loader must ignore. Predicates come in mixed case and spacing (" Below ",
"next  to"), which the loader normalises.

Every image has the cases a loader must skip: two objects named "dot" (an ambiguous name) when it
has two or more dots; on every third image one (subject, object) pair with two predicates; on every
fourth a relationship repeated under another relationship_id. Everything follows from ``seed``.

Run ``python -m vqabench_plugins.vg_fixture DIR`` to write one (``--help`` for the sizes).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from vqabench_plugins.vqav2_fixture import COLOURS, SHAPES, draw_image

FOLDERS = ("VG_100K", "VG_100K_2")
URL = "https://cs.stanford.edu/people/rak248/{folder}/{id}.jpg"
SYNSETS = {"above": "along.r.01", "below": "below.r.01", "on": "along.r.01", "next to": "next.r.01"}


class _Objects:
    """Object records of one image with ids that are unique over the whole fixture."""

    def __init__(self, first_id: int, rng: np.random.Generator, size: int):
        self.next_id, self.rng, self.size = first_id, rng, size
        self.count = 0

    def make(self, name: str) -> dict[str, Any]:
        x, y = (int(v) for v in self.rng.integers(0, self.size // 2, 2))
        obj: dict[str, Any] = {"object_id": self.next_id, "x": x, "y": y, "w": self.size // 4, "h": self.size // 4}
        # Both releases' forms: a plain name, or a list of names whose first counts.
        if self.count % 2:
            obj["names"] = [name, f"{name} thing"]
        else:
            obj["name"] = name
        obj["synsets"] = [f"{name.split()[-1]}.n.01"]
        self.next_id += 1
        self.count += 1
        return obj


def _relationships(scene: dict[str, Any], n: int, objects: _Objects, next_rel: list[int]) -> list[dict[str, Any]]:
    """The relationships of one image: what the picture shows, plus the cases a loader must skip."""
    shape, strip = objects.make(scene["shape"]), objects.make("strip")
    rows = [(shape, strip, "above"), (dict(strip), dict(shape), " Below "), (objects.make("dots"), strip, "ON")]
    rows.append((objects.make(f"{scene['colour']} paint"), shape, "on"))
    dots = [objects.make("dot") for _ in range(scene["dots"])]
    rows += [(dot, strip, "on") for dot in dots]  # two or more dots: "dot" names several objects
    if n % 3 == 1:  # one pair, two predicates: no single answer
        frame = objects.make("frame")
        rows += [(frame, strip, "next  to"), (frame, strip, "above")]
    if n % 4 == 2:  # the same relationship again under another id
        rows.append((shape, strip, "above"))
    out = []
    for subject, obj, predicate in rows:
        rel = {
            "relationship_id": next_rel[0],
            "predicate": predicate,
            "synsets": [SYNSETS.get(" ".join(predicate.lower().split()), "along.r.01")],
            "subject": subject,
            "object": obj,
        }
        if next_rel[0] % 5 == 0:
            rel["vqabench_fixture_note"] = {"a field the official files lack": [1, 2]}
        next_rel[0] += 1
        out.append(rel)
    return out


def write_fixture(root: Path, *, images: int = 12, seed: int = 0, image_size: int = 32) -> Path:
    """Write a Visual Genome-shaped set into ``root`` (see the module docstring); return ``root``."""
    if images < 3 or image_size < 8:
        raise ValueError(f"vg fixture: images={images} must be >= 3 and image_size={image_size} >= 8")
    root = Path(root)
    for folder in FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Real ids start at 1 and run to ~2.4M (VG_100K_2 holds the later ones); here in no particular order.
    ids = (rng.choice(100_000, images, replace=False) + 1).tolist()
    objects = _Objects(1_000_000, rng, image_size)
    next_rel = [4_000_000]
    relationships, image_data = [], []
    for n, image_id in enumerate(ids):
        scene = {"colour": str(rng.choice(list(COLOURS))), "shape": str(rng.choice(SHAPES))}
        scene["dots"] = int(rng.integers(1, 5))
        folder = FOLDERS[n % 2]
        draw_image(scene, image_size, rng).save(root / folder / f"{image_id}.jpg", "JPEG", quality=90)
        key = "id" if n % 3 == 2 else "image_id"  # v1.0-v1.2 say "id", later releases "image_id"
        rels = _relationships(scene, n, objects, next_rel)
        relationships.append({key: image_id, "relationships": rels})
        record = {
            key: image_id,
            "url": URL.format(folder=folder, id=image_id),
            "width": image_size,
            "height": image_size,
            "coco_id": int(rng.integers(1, 600_000)) if n % 2 else None,
            "flickr_id": int(rng.integers(1, 10**8)) if n % 2 == 0 else None,
        }
        if n % 4 == 3:
            record["vqabench_fixture_note"] = "a field the official files lack"
        image_data.append(record)
    (root / "relationships.json").write_text(json.dumps(relationships), encoding="utf-8")
    (root / "image_data.json").write_text(json.dumps(image_data), encoding="utf-8")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vqabench_plugins.vg_fixture", description="Write a small Visual Genome-shaped set."
    )
    parser.add_argument("root", type=Path, help="folder to write (the JSON files and VG_100K/, VG_100K_2/ go in it)")
    parser.add_argument("--images", type=int, default=12, help="images (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    args = parser.parse_args(argv)
    try:
        root = write_fixture(args.root, images=args.images, seed=args.seed, image_size=args.image_size)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote a Visual Genome-shaped set to {root}; load it with --data root={root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
