"""The Mini-CLEVR configuration (defaults: report 000) and the fixed vocabulary of the generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vqabench.config import config_hash, to_jsonable

# Bump when a change to the generator changes any output byte: it is part of the cache key.
GENERATOR_VERSION = "1.1"

REFERENCE_SIZE = 224  # radii and clearance are given in pixels at this image size
SHAPES = ("circle", "square", "triangle", "pentagon")
SIDES = {"square": 4, "triangle": 3, "pentagon": 5}  # the circle is drawn as an ellipse
# Saturated and at least ~110 RGB units apart from each other, so that a mild lighting change
# (the target domain) keeps every colour nearest to its own name.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 200),
    "cyan": (40, 200, 210),
}
SIZES = ("small", "large")
BACKGROUND = (128, 128, 128)
UNANSWERABLE = "unanswerable"

# Augmentations that change answers here: hflip swaps left and right, hue changes colours, a
# random resized crop can cut objects out of the counts and random erasing can hide them.
UNSAFE_AUGMENTATIONS = frozenset({"hflip", "hue", "crop", "erase"})

# Fields that change where data lives or how fast it is made, never what is made: they stay out
# of the cache key.
_RUNTIME_FIELDS = ("workers", "root")


@dataclass(frozen=True)
class MiniClevrConfig:
    """How to generate Mini-CLEVR; every default is report 000's unless a comment says otherwise."""

    images: int = 8000
    image_size: int = 224
    seed: int = 0
    min_objects: int = 3
    max_objects: int = 6
    small_radius: tuple[int, int] = (14, 18)  # circumradius range in px at 224 px, inclusive
    large_radius: tuple[int, int] = (24, 30)
    clearance: float = 2.0  # px at 224 px between any two circumcircles
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test, by image
    # Not in the report: extra questions about absent objects, as a fraction of answerable ones.
    unanswerable_fraction: float = 0.1
    captions_per_image: int = 5
    zeroshot_per_class: int = 50  # single-object images per "<colour> <shape>" class
    # Not in the report: the zero-shot set is split on its own, mostly into test, since zero-shot
    # models only evaluate (train serves a linear probe or a pretraining corpus).
    zeroshot_split_fractions: tuple[float, float, float] = (0.2, 0.2, 0.6)
    # Target domain: every val/test scene plus this fraction of the train scenes, restyled.
    target_train_fraction: float = 0.1
    png_compress_level: int = 1
    workers: int | None = None  # generation processes; None: one per available CPU
    root: str | None = None  # a directory made by `vqabench data prepare`, used instead of the cache

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"mini-clevr config: {name}={getattr(self, name)!r} {why}")

        if self.seed < 0:
            raise bad("seed", "must be >= 0")
        if self.image_size < 32:
            raise bad("image_size", "must be at least 32")
        if not 2 <= self.min_objects <= self.max_objects <= 6:
            raise ValueError(
                f"mini-clevr config: need 2 <= min_objects <= max_objects <= 6, "
                f"got {self.min_objects} and {self.max_objects}"
            )
        for name in ("small_radius", "large_radius"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise bad(name, "must be (low, high) with 0 < low <= high")
        if self.small_radius[1] >= self.large_radius[0]:
            raise ValueError("mini-clevr config: small_radius must lie below large_radius")
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
            raise bad("split_fractions", "must be three positive numbers summing to 1")
        if min(split_sizes(self.images, fractions)) < 1:
            raise bad("images", "is too small to give every split at least one image")
        for name in ("unanswerable_fraction", "target_train_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(name, "must lie in [0, 1]")
        if self.unanswerable_fraction * 4 > 1:
            raise bad("unanswerable_fraction", "must be at most 0.25 (one per image at most)")
        if self.captions_per_image < 1:
            raise bad("captions_per_image", "must be >= 1")
        shot_fractions = self.zeroshot_split_fractions
        if len(shot_fractions) != 3 or min(shot_fractions) <= 0 or abs(sum(shot_fractions) - 1) > 1e-6:
            raise bad("zeroshot_split_fractions", "must be three positive numbers summing to 1")
        if min(split_sizes(self.zeroshot_per_class, shot_fractions)) < 1:
            raise bad("zeroshot_per_class", "is too small to give every split one image per class")
        if not 0 <= self.png_compress_level <= 9:
            raise bad("png_compress_level", "must lie in [0, 9]")
        if self.workers is not None and self.workers < 1:
            raise bad("workers", "must be >= 1 (or none for one per CPU)")

    @property
    def scale(self) -> float:
        """Pixels at this image size per pixel at 224 px."""
        return self.image_size / REFERENCE_SIZE


def split_sizes(images: int, fractions: tuple[float, ...]) -> tuple[int, int, int]:
    """Images in train, val and test; test takes the rounding remainder."""
    train = round(images * fractions[0])
    val = round(images * fractions[1])
    return train, val, images - train - val


def generation_options(config: MiniClevrConfig) -> dict[str, Any]:
    """The fields that determine the generated bytes (what meta.json records as options)."""
    options = to_jsonable(config)
    for name in _RUNTIME_FIELDS:
        options.pop(name)
    return options


def config_key(config: MiniClevrConfig) -> str:
    """A short hash of the generator version and options: the cache directory's suffix."""
    return config_hash({"generator_version": GENERATOR_VERSION, "options": generation_options(config)})
