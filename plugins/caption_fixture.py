"""Small caption sets in the exact official formats, for tests and for trying coco-captions and flickr30k.

``write_coco(root)`` writes what the COCO downloads and Karpathy's ``caption_datasets.zip`` unpack to:
``root/annotations/captions_{train,val}2014.json`` (with ``info``, ``licenses`` and, per image,
``license``, ``file_name``, ``coco_url``, ``height``, ``width``, ``date_captured``, ``flickr_url``),
the images ``root/{train2014,val2014}/COCO_<split>_<id:012d>.jpg`` and ``root/dataset_coco.json``
(records with ``filepath``, ``filename``, ``imgid``, ``sentids``, ``split``, ``sentences`` with
``tokens``, ``raw``, ``imgid``, ``sentid``, and ``cocoid``). As in the real split, train2014 images are
``train`` and val2014 images are divided among ``val``, ``test`` and ``restval``; some images have
six captions instead of five, as a few COCO images do.

``write_flickr30k(root)`` writes ``root/dataset_flickr30k.json`` (no ``filepath`` or ``cocoid``) and
``root/flickr30k-images/<photo id>.jpg``.

The images are vqav2_fixture's scenes (a coloured square, circle or triangle above a strip of white
dots), and the captions describe them in several wordings, so a captioner can learn them. Real JPEG
files; everything follows from ``seed``.

Run ``python -m vqabench_plugins.caption_fixture --out DIR [--dataset coco-captions|flickr30k]``.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from vqabench_plugins.vqav2_fixture import COLOURS, NUMBER_WORDS, SHAPES
from vqabench_plugins.vqav2_fixture import draw_image as draw_scene

INFO = {
    "description": "vqabench fixture in the COCO 2014 captions layout",
    "url": "http://mscoco.org",
    "version": "1.0",
    "year": 2014,
    "contributor": "vqabench",
    "date_created": "2015-01-27 09:11:52.357475",
}
LICENSES = [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "Attribution-NonCommercial"}]
WORDINGS = (
    "A {colour} {shape} above {count} white {dots}.",
    "a {colour} {shape} with {count} {dots} below it",
    "There is a {colour} {shape} on a grey background.",
    "{Count} white {dots} under a {colour} {shape}.",
    "A picture of a {shape} that is {colour}.",
    "A {shape}, coloured {colour}, over a dark strip with {count} {dots}.",
)


def _scene(rng: np.random.Generator) -> dict[str, Any]:
    return {"colour": str(rng.choice(list(COLOURS))), "shape": str(rng.choice(SHAPES)), "dots": int(rng.integers(1, 5))}


def _captions(scene: dict[str, Any], count: int) -> list[str]:
    words = {"colour": scene["colour"], "shape": scene["shape"], "count": NUMBER_WORDS[scene["dots"]]}
    words["Count"], words["dots"] = words["count"].capitalize(), "dot" if scene["dots"] == 1 else "dots"
    return [w.format(**words) for w in WORDINGS[:count]]


def _tokens(raw: str) -> list[str]:
    # Karpathy's tokens: lowercase words, punctuation removed.
    return re.findall(r"[a-z0-9]+", raw.lower())


def _sentences(captions: list[str], imgid: int, first: int) -> list[dict[str, Any]]:
    return [{"tokens": _tokens(c), "raw": c, "imgid": imgid, "sentid": first + k} for k, c in enumerate(captions)]


def write_coco(
    root: Path, *, train_images: int = 12, val_images: int = 12, seed: int = 0, image_size: int = 32
) -> Path:
    """Write a COCO-captions-shaped set into ``root`` (see the module docstring); return ``root``."""
    if train_images < 1 or val_images < 3 or image_size < 8:
        raise ValueError(
            f"caption fixture: train_images={train_images} must be >= 1, val_images={val_images} >= 3 "
            f"(val, test and restval come from val2014) and image_size={image_size} >= 8"
        )
    root = Path(root)
    rng = np.random.default_rng(seed)
    ids = rng.choice(581_929, train_images + val_images, replace=False) + 1  # COCO-like, in no order
    karpathy, sentid, ann_id = [], 0, 1
    for folder, chosen in (("train2014", ids[:train_images]), ("val2014", ids[train_images:])):
        (root / folder).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for k, image_id in enumerate(chosen.tolist()):
            scene = _scene(rng)
            name = f"COCO_{folder}_{image_id:012d}.jpg"
            draw_scene(scene, image_size, rng).save(root / folder / name, "JPEG", quality=90)
            images.append(
                {
                    "license": 1,
                    "file_name": name,
                    "coco_url": f"http://images.cocodataset.org/{folder}/{name}",
                    "height": image_size,
                    "width": image_size,
                    "date_captured": "2013-11-14 16:28:13",
                    "flickr_url": f"http://farm4.staticflickr.com/{image_id}.jpg",
                    "id": image_id,
                }
            )
            captions = _captions(scene, 6 if k % 5 == 2 else 5)
            for caption in captions:
                annotations.append({"image_id": image_id, "id": ann_id, "caption": caption})
                ann_id += 1
            # val2014 images are val, test and restval in turn (Karpathy's split; restval joins train).
            split = "train" if folder == "train2014" else ("val", "test", "restval")[k % 3]
            imgid = len(karpathy)
            karpathy.append(
                {
                    "filepath": folder,
                    "sentids": list(range(sentid, sentid + len(captions))),
                    "filename": name,
                    "imgid": imgid,
                    "split": split,
                    "sentences": _sentences(captions, imgid, sentid),
                    "cocoid": image_id,
                }
            )
            sentid += len(captions)
        rng.shuffle(annotations)  # the official files do not group captions by image
        content = {"info": INFO, "images": images, "licenses": LICENSES, "annotations": annotations}
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"captions_{folder}.json").write_text(json.dumps(content), encoding="utf-8")
    (root / "dataset_coco.json").write_text(json.dumps({"images": karpathy, "dataset": "coco"}), encoding="utf-8")
    return root


def write_flickr30k(
    root: Path,
    *,
    train_images: int = 12,
    val_images: int = 4,
    test_images: int = 4,
    seed: int = 0,
    image_size: int = 32,
) -> Path:
    """Write a Flickr30k-shaped set into ``root`` (see the module docstring); return ``root``."""
    if min(train_images, val_images, test_images) < 1 or image_size < 8:
        raise ValueError(
            f"caption fixture: train_images={train_images}, val_images={val_images} and test_images={test_images} "
            f"must be >= 1 and image_size={image_size} >= 8"
        )
    root = Path(root)
    (root / "flickr30k-images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 30])
    total = train_images + val_images + test_images
    photo_ids = rng.choice(9_000_000_000, total, replace=False) + 1_000_000_000  # Flickr photo ids
    splits = ["train"] * train_images + ["val"] * val_images + ["test"] * test_images
    records = []
    for imgid, (photo, split) in enumerate(zip(photo_ids.tolist(), splits)):
        scene = _scene(rng)
        name = f"{photo}.jpg"
        draw_scene(scene, image_size, rng).save(root / "flickr30k-images" / name, "JPEG", quality=90)
        captions = _captions(scene, 5)
        first = imgid * 5
        records.append(
            {
                "sentids": list(range(first, first + 5)),
                "imgid": imgid,
                "sentences": _sentences(captions, imgid, first),
                "split": split,
                "filename": name,
            }
        )
    (root / "dataset_flickr30k.json").write_text(
        json.dumps({"images": records, "dataset": "flickr30k"}), encoding="utf-8"
    )
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vqabench_plugins.caption_fixture",
        description="Write a small COCO-captions- or Flickr30k-shaped caption set.",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("--dataset", choices=("coco-captions", "flickr30k"), default="coco-captions")
    parser.add_argument("--train-images", type=int, default=12, help="training images (default 12)")
    parser.add_argument("--val-images", type=int, default=12, help="coco: val2014 images; flickr30k: val (default 12)")
    parser.add_argument("--test-images", type=int, default=4, help="flickr30k: test images (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    args = parser.parse_args(argv)
    sizes = {"train_images": args.train_images, "val_images": args.val_images}
    try:
        if args.dataset == "coco-captions":
            root = write_coco(args.out, **sizes, seed=args.seed, image_size=args.image_size)
        else:
            root = write_flickr30k(
                args.out, **sizes, test_images=args.test_images, seed=args.seed, image_size=args.image_size
            )
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote a {args.dataset}-shaped set to {root}; load it with --data root={root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
