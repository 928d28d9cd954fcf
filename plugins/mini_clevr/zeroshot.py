"""The zero-shot classification set: single-object images labelled "<colour> <shape>" (24 classes)."""

from __future__ import annotations

from vqabench_plugins.mini_clevr.config import COLORS, SHAPES, MiniClevrConfig, split_sizes

CLASS_NAMES: tuple[str, ...] = tuple(f"{color} {shape}" for color in COLORS for shape in SHAPES)

# Report 003's six prompts, the dataset's templates. Each holds ``{}`` (or ``{0}``) where the class
# name goes; report 003's "{object} x5" is written "{0} ..." five times: a bare "{} {} {} {} {}"
# would need five arguments.
TEMPLATES: tuple[str, ...] = (
    "{}",
    "{0} {0} {0} {0} {0}",
    "a photo of a {}.",
    "This is a photo of {}",
    "This is not a photo of {}",
    "No {}, no score.",
)


def plan(config: MiniClevrConfig) -> list[tuple[int, str, int]]:
    """(image index, split, label) of every zero-shot image; each split holds every class equally."""
    items = []
    per_split = split_sizes(config.zeroshot_per_class, config.zeroshot_split_fractions)
    for split, per_class in zip(("train", "val", "test"), per_split):
        for _ in range(per_class):
            items += [(len(items) + label, split, label) for label in range(len(CLASS_NAMES))]
    return items
