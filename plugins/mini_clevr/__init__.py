"""The Mini-CLEVR dataset plugin: report 000's synthetic shapes, for all four task kinds.

8,000 images at 224 px (3-6 non-overlapping circles, squares, triangles and pentagons in six
colours, two radius scales, 2 px clearance), three to four questions each (a colour query, one
or two colour counts, a left/right yes/no), answer2idx.json and train/val/test splits by image.
The same generator also gives answerability questions about absent objects, a 24-class
single-object zero-shot set with report 003's prompts, five reference captions per image, and a
restyled target domain (cloud-textured background, dimmer, tinted and hazier light) as
``target_train`` / ``target_val`` / ``target_test`` splits for domain adaptation (report 004).
Images are 4-bit palette PNGs: open them with ``Image.open(path).convert("RGB")``.

Augmentations: ``hflip`` swaps left and right (left_of answers), ``hue`` changes colours
(colour queries and colour counts), ``crop`` (random resized crop) can cut objects out of the
counts and ``erase`` (random erasing) can hide them, so the harness switches these four off on
this dataset. ``color_jitter`` (brightness, contrast, saturation; hue kept) stays allowed.

Data is generated on first use into ``<cache>/mini-clevr-<hash of options>``, checked against
its sha256 manifest on every load, and regenerated when incomplete or altered. A directory made
by ``vqabench data prepare mini-clevr --root DIR`` is used with ``root=DIR``; it is checked the
same way but never regenerated: a broken one is an error naming the file and the fix.
"""

from __future__ import annotations

from pathlib import Path

from vqabench_plugins.mini_clevr.config import UNSAFE_AUGMENTATIONS, MiniClevrConfig

from vqabench.hookspecs import hookimpl
from vqabench.registry import DatasetSpec
from vqabench.tasks import TaskData, TaskKind

# Small images and an eighth of the data: about 4k questions, generated in a second or two; 40
# zero-shot images per class (24 of them in test), so that zero-shot accuracy is measurable.
QUICK = {"images": 1000, "image_size": 64, "zeroshot_per_class": 40}


def load(config: MiniClevrConfig, kind: TaskKind, cache_dir: Path) -> TaskData:
    """The TaskData of one kind, generating the data on first use."""
    # Imported here: the task modules pull in torch, which generation workers do not need.
    from vqabench_plugins.mini_clevr.taskdata import load_task

    return load_task(config, kind, cache_dir)


def load_relations(config: MiniClevrConfig, kind: TaskKind, cache_dir: Path) -> TaskData:
    """Report 004's relation questions, derived from the same generated scenes (``relations.py``)."""
    from vqabench_plugins.mini_clevr.relations import load_relations as load_from_scenes

    return load_from_scenes(config, kind, cache_dir)


def prepare(config: MiniClevrConfig, root: Path) -> Path:
    """Generate the dataset into ``root`` (missing or empty) and return it."""
    from vqabench_plugins.mini_clevr.store import prepare as prepare_dir

    return prepare_dir(config, Path(root))


@hookimpl
def register_datasets(register):
    """Register the mini-clevr dataset and its relation questions (same data, config and cache)."""
    register(
        DatasetSpec(
            name="mini-clevr",
            task_kinds=(TaskKind.VQA, TaskKind.ANSWERABILITY, TaskKind.ZEROSHOT, TaskKind.CAPTIONING),
            config_cls=MiniClevrConfig,
            load=load,
            prepare=prepare,
            profiles={"quick": QUICK, "paper": {}},
            unsafe_augmentations=UNSAFE_AUGMENTATIONS,
            description="Synthetic CLEVR-style shapes (report 000): colour, count and left/right questions, "
            "answerability, 24-class zero-shot, captions and a restyled target domain",
        )
    )
    register(
        DatasetSpec(
            name="mini-clevr-relations",
            task_kinds=(TaskKind.VQA,),
            config_cls=MiniClevrConfig,
            load=load_relations,
            prepare=prepare,
            profiles={"quick": QUICK, "paper": {}},
            unsafe_augmentations=UNSAFE_AUGMENTATIONS,
            description="Mini-CLEVR relation questions (report 004's form): left of / right of / above / below "
            "between two objects, derived from the mini-clevr scenes",
        )
    )
