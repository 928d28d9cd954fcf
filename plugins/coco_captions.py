"""The coco-captions dataset plugin: MS COCO 2014 captions on Karpathy's splits, for captioning.

Point it at a folder (``--data root=DIR``) holding:

- ``dataset_coco.json``, Karpathy's split file (from ``caption_datasets.zip``,
  https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip; another name or a
  path relative to the root with ``--data karpathy_file=...``): required;
- the COCO 2014 images ``train2014/`` and ``val2014/`` (``train2014.zip`` and ``val2014.zip`` from
  https://cocodataset.org/#download): required; an image is ``<root>/<filepath>/<filename>`` of its
  Karpathy record;
- ``annotations/captions_train2014.json`` and ``annotations/captions_val2014.json`` (from
  ``annotations_trainval2014.zip``, same page): needed only with ``references=coco``.

Splits are Karpathy's (``vqabench_plugins.karpathy``): 113,287 training images (train plus
restval), 5,000 val and 5,000 test; a sample's id is the COCO image id (``cocoid``).

References: Karpathy's ``raw`` sentences (``references=karpathy``, the default) are COCO's
annotation captions, copied into the split file, so the split file alone suffices. With
``references=coco`` the captions come from the 2014 annotation files instead (``{"images": [{"id",
"file_name", ...}], "annotations": [{"image_id", "id", "caption"}, ...]}``, every other field
ignored), in file order, as the COCO evaluation code reads them; each Karpathy image must be there
under its ``cocoid`` with the same file name and at least one caption. The two differ at most in
whitespace, which the metric's tokenizer removes.

``max_images`` keeps a seeded sample of at most that many images per split (``seed``), in file
order. Profiles: ``quick`` = 1,000 images per split; ``paper`` = every image. The files are parsed
and every kept image's path checked on each load (a few seconds at full size); ``revision`` hashes
the files read and the fields that change the samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vqabench_plugins import karpathy
from vqabench_plugins.karpathy import DatasetError, KarpathyImage, Layout

from vqabench.hookspecs import hookimpl
from vqabench.registry import DatasetSpec
from vqabench.tasks import TaskData, TaskKind

NAME = "coco-captions"
COCO_SOURCE = "https://cocodataset.org/#download"
ANNOTATIONS = {
    "annotations/captions_train2014.json": f"annotations_trainval2014.zip from {COCO_SOURCE}",
    "annotations/captions_val2014.json": f"annotations_trainval2014.zip from {COCO_SOURCE}",
}
REFERENCES = ("karpathy", "coco")
LAYOUT = Layout(
    dataset=NAME,
    name="coco",
    id_field="cocoid",
    image_folder=None,
    folders={"train2014": f"train2014.zip from {COCO_SOURCE}", "val2014": f"val2014.zip from {COCO_SOURCE}"},
    source=f"train2014/ and val2014/ from {COCO_SOURCE}",
)


@dataclass(frozen=True)
class CocoCaptionsConfig:
    """Where the files are, which captions are the references, and how many images per split."""

    root: str = ""  # required; empty only so that the config can be built before it is set
    karpathy_file: str = "dataset_coco.json"  # relative to the root
    references: str = "karpathy"  # "karpathy" (the split file's raw sentences) or "coco" (2014 annotation files)
    max_images: int = 0  # per split; 0: every image
    seed: int = 0

    def __post_init__(self) -> None:
        karpathy.check_config(NAME, self.karpathy_file, self.max_images, self.seed)
        if self.references not in REFERENCES:
            raise ValueError(
                f"{NAME} config: references={self.references!r} is not one of {', '.join(REFERENCES)}, "
                f"e.g. --data references=karpathy"
            )


def read_annotations(root: Path) -> dict[int, tuple[str, list[str]]]:
    """COCO image id -> (file name, captions in file order) from the two 2014 caption files."""
    out: dict[int, tuple[str, list[str]]] = {}
    fix = f"correct it, or re-download annotations_trainval2014.zip from {COCO_SOURCE}"
    for rel in ANNOTATIONS:
        path = root / rel
        top = karpathy.read_json(NAME, path, fix)
        if not isinstance(top, dict):
            raise DatasetError(f"{NAME}: {path} is not a COCO captions file (a JSON object); {fix}")
        for field in ("images", "annotations"):
            if not isinstance(top.get(field), list):
                what = "is missing" if field not in top else "is not a list"
                raise DatasetError(f"{NAME}: {path} field {field} {what}; {fix}")
        names: dict[int, str] = {}
        for i, image in enumerate(top["images"]):
            where = f"{NAME}: {path} images[{i}]"
            if not isinstance(image, dict) or type(image.get("id")) is not int:
                raise DatasetError(f"{where} field id: is missing or not an integer; {fix}")
            if not isinstance(image.get("file_name"), str):
                raise DatasetError(f"{where} field file_name: is missing or not a string; {fix}")
            names[image["id"]] = image["file_name"]
        captions: dict[int, list[str]] = {k: [] for k in names}
        for i, ann in enumerate(top["annotations"]):
            where = f"{NAME}: {path} annotations[{i}]"
            if not isinstance(ann, dict) or type(ann.get("image_id")) is not int:
                raise DatasetError(f"{where} field image_id: is missing or not an integer; {fix}")
            if ann["image_id"] not in captions:
                raise DatasetError(f"{where} field image_id: {ann['image_id']} is not in the file's images; {fix}")
            if not isinstance(ann.get("caption"), str) or not ann["caption"].strip():
                raise DatasetError(f"{where} field caption: is missing, empty or not a string; {fix}")
            captions[ann["image_id"]].append(ann["caption"])
        out.update({k: (names[k], captions[k]) for k in names})
    return out


def _coco_captions(split_file: Path, annotations: dict[int, tuple[str, list[str]]], images: list[KarpathyImage]):
    """A function giving each Karpathy image its annotation captions, after checking every kept image."""
    for m in images:
        where = f"{NAME}: {split_file} images[{m.index}] field cocoid"
        found = annotations.get(int(m.id))
        if found is None:
            raise DatasetError(
                f"{where}: image {m.id} is in neither annotations/captions_*2014.json; use the files of COCO 2014"
            )
        name, captions = found
        if name != m.path.split("/")[-1]:
            raise DatasetError(
                f"{where}: image {m.id} is {name!r} in the annotation file, not {m.path!r}; use the files of COCO 2014"
            )
        if not captions:
            raise DatasetError(
                f"{where}: image {m.id} has no caption in the annotation files; use the files of COCO 2014"
            )
    return lambda m: tuple(annotations[int(m.id)][1])


def _load(config: CocoCaptionsConfig, kind: str, flag: str) -> TaskData:
    root = karpathy.root_of(LAYOUT, config.root, flag)
    coco = config.references == "coco"
    split_file = karpathy.locate(LAYOUT, root, config.karpathy_file, ANNOTATIONS if coco else None)
    images = karpathy.read_split_file(LAYOUT, split_file)
    splits = karpathy.sample(images, config.max_images, config.seed)
    karpathy.check_images(LAYOUT, root, split_file, splits)
    files = [split_file, *([root / rel for rel in ANNOTATIONS] if coco else [])]
    fields: dict[str, Any] = {"references": config.references, "max_images": config.max_images, "seed": config.seed}
    rev = karpathy.revision(LAYOUT, files, fields)
    captions = None
    if coco:
        kept = [m for members in splits.values() for m in members]
        captions = _coco_captions(split_file, read_annotations(root), kept)
    return karpathy.task_data(LAYOUT, kind, root, splits, rev, captions)


def load(config: CocoCaptionsConfig, kind: str, cache_dir: Path) -> TaskData:
    """The captioning TaskData of the files in ``config.root`` (nothing is cached: the split file is the index)."""
    return _load(config, kind, "--data root=DIR")


def prepare(config: CocoCaptionsConfig, root: Path) -> Path:
    """Check the files in ``root`` (every record, and every image the config keeps); return ``root``."""
    _load(replace(config, root=str(root)), TaskKind.CAPTIONING, "--root DIR")
    return Path(root)


@hookimpl
def register_datasets(register):
    """Register the coco-captions dataset."""
    register(
        DatasetSpec(
            name=NAME,
            task_kinds=(TaskKind.CAPTIONING,),
            config_cls=CocoCaptionsConfig,
            load=load,
            prepare=prepare,
            profiles={"quick": {"max_images": 1000}, "paper": {}},
            description="MS COCO 2014 captions on Karpathy's splits (--data root=DIR: dataset_coco.json, "
            "train2014/, val2014/; restval joins train)",
        )
    )
