"""The flickr30k dataset plugin: Flickr30k captions on Karpathy's splits, for captioning.

Point it at a folder (``--data root=DIR``) holding:

- ``dataset_flickr30k.json``, Karpathy's split file (from ``caption_datasets.zip``,
  https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip; another name with
  ``--data karpathy_file=...``);
- the images in ``flickr30k-images/`` (``flickr30k-images.tar.gz``, given on request at
  https://shannon.cs.illinois.edu/DenotationGraph/), each ``flickr30k-images/<filename>``.

Records are read by ``vqabench_plugins.karpathy`` (the format of COCO's split file, without
``filepath`` or ``cocoid``); splits are Karpathy's, 29,000 train (plus any ``restval``), 1,014 val and
1,000 test images; a sample's id is the image's file name without extension (the Flickr photo id),
its references the record's five ``raw`` sentences. ``max_images`` keeps a seeded sample of at most
that many images per split (``seed``). Profiles: ``quick`` = 1,000 images per split; ``paper`` =
every image (report 004 fine-tunes on Flickr30k). ``revision`` hashes the split file and the fields
that change the samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from vqabench_plugins import karpathy
from vqabench_plugins.karpathy import Layout

from vqabench.hookspecs import hookimpl
from vqabench.registry import DatasetSpec
from vqabench.tasks import TaskData, TaskKind

NAME = "flickr30k"
IMAGES = "flickr30k-images"
FLICKR_SOURCE = "https://shannon.cs.illinois.edu/DenotationGraph/"
LAYOUT = Layout(
    dataset=NAME,
    name="flickr30k",
    id_field=None,
    image_folder=IMAGES,
    folders={IMAGES: f"flickr30k-images.tar.gz from {FLICKR_SOURCE}"},
    source=f"{IMAGES}/ from {FLICKR_SOURCE}",
)


@dataclass(frozen=True)
class Flickr30kConfig:
    """Where the files are and how many images per split."""

    root: str = ""  # required; empty only so that the config can be built before it is set
    karpathy_file: str = "dataset_flickr30k.json"  # relative to the root
    max_images: int = 0  # per split; 0: every image
    seed: int = 0

    def __post_init__(self) -> None:
        karpathy.check_config(NAME, self.karpathy_file, self.max_images, self.seed)


def _load(config: Flickr30kConfig, kind: str, flag: str) -> TaskData:
    root = karpathy.root_of(LAYOUT, config.root, flag)
    split_file = karpathy.locate(LAYOUT, root, config.karpathy_file)
    splits = karpathy.sample(karpathy.read_split_file(LAYOUT, split_file), config.max_images, config.seed)
    karpathy.check_images(LAYOUT, root, split_file, splits)
    rev = karpathy.revision(LAYOUT, [split_file], {"max_images": config.max_images, "seed": config.seed})
    return karpathy.task_data(LAYOUT, kind, root, splits, rev)


def load(config: Flickr30kConfig, kind: str, cache_dir: Path) -> TaskData:
    """The captioning TaskData of the files in ``config.root`` (nothing is cached: the split file is the index)."""
    return _load(config, kind, "--data root=DIR")


def prepare(config: Flickr30kConfig, root: Path) -> Path:
    """Check the files in ``root`` (every record, and every image the config keeps); return ``root``."""
    _load(replace(config, root=str(root)), TaskKind.CAPTIONING, "--root DIR")
    return Path(root)


@hookimpl
def register_datasets(register):
    """Register the flickr30k dataset."""
    register(
        DatasetSpec(
            name=NAME,
            task_kinds=(TaskKind.CAPTIONING,),
            config_cls=Flickr30kConfig,
            load=load,
            prepare=prepare,
            profiles={"quick": {"max_images": 1000}, "paper": {}},
            description="Flickr30k captions on Karpathy's splits (--data root=DIR: dataset_flickr30k.json, "
            "flickr30k-images/)",
        )
    )
