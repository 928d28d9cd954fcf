"""Scene sampling: 3-6 shapes placed by rejection so that circumcircles keep their clearance.

A scene is a list of JSON-ready object dicts (the ``objects`` of ``scenes/<split>.jsonl``):
``shape``, ``color``, ``size`` (small|large), ``radius`` (circumradius, px), ``pixel_coords``
([x, y] of the centre, integer px, origin top-left) and ``rotation`` (degrees). Rendering reads
only these fields, so a stored scene re-renders to the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from vqabench_plugins.mini_clevr.config import COLORS, SHAPES, SIZES, MiniClevrConfig

Scene = list[dict[str, Any]]

_PLACEMENT_TRIES = 100  # per object, before the whole scene is started again
_SCENE_TRIES = 1000


def radius_range(config: MiniClevrConfig, size: str) -> tuple[float, float]:
    """The circumradius range (px at this image size) of one size class."""
    lo, hi = config.small_radius if size == "small" else config.large_radius
    return lo * config.scale, hi * config.scale


def _new_object(draws: list[float], config: MiniClevrConfig, shape: str, color: str) -> dict[str, Any]:
    """An object without a position; ``draws`` are three uniforms in [0, 1) for size, radius, rotation."""
    u_size, u_radius, u_rotation = draws
    size = SIZES[int(u_size * len(SIZES))]
    lo, hi = config.small_radius if size == "small" else config.large_radius
    # Integer radii at 224 px ("two discrete scales"), scaled to this image size.
    radius = round((lo + int(u_radius * (hi - lo + 1))) * config.scale, 2)
    rotation = 0.0 if shape == "circle" else round(u_rotation * 360.0, 1) % 360.0
    return {
        "shape": shape,
        "color": color,
        "size": size,
        "radius": radius,
        "pixel_coords": [0, 0],  # set by _place
        "rotation": rotation,
    }


def _place(rng: np.random.Generator, obj: dict[str, Any], image_size: int, placed: Scene, clearance: float) -> bool:
    """Give ``obj`` a centre inside the canvas and clear of ``placed``; False when none was found."""
    margin = math.ceil(obj["radius"])
    span = image_size - 2 * margin  # centres lie in [margin, image_size - 1 - margin]
    if span < 1:
        return False
    others = [(*o["pixel_coords"], obj["radius"] + o["radius"] + clearance) for o in placed]
    # All tries drawn in one call: one generator call per try would cost more than the checks.
    draws = rng.random(2 * _PLACEMENT_TRIES).tolist()
    for k in range(0, len(draws), 2):
        x, y = margin + int(draws[k] * span), margin + int(draws[k + 1] * span)
        if all((x - ox) ** 2 + (y - oy) ** 2 >= need * need for ox, oy, need in others):
            obj["pixel_coords"] = [x, y]
            return True
    return False


def sample_scene(
    rng: np.random.Generator, config: MiniClevrConfig, accept: Callable[[Scene], bool] | None = None
) -> Scene:
    """A scene of ``min_objects``..``max_objects`` non-overlapping shapes that ``accept`` (if given) allows.

    Colours come from a per-scene palette of 2-6 colours so that colours repeat often enough for
    counting questions to have answers beyond 0 and 1.
    """
    color_names = list(COLORS)
    clearance = config.clearance * config.scale
    for _ in range(_SCENE_TRIES):
        count = int(rng.integers(config.min_objects, config.max_objects + 1))
        palette = rng.permutation(len(color_names))[: int(rng.integers(2, len(color_names) + 1))].tolist()
        objects: Scene = []
        for u_shape, u_color, *rest in rng.random(size=(count, 5)).tolist():
            color = color_names[palette[int(u_color * len(palette))]]
            obj = _new_object(rest, config, SHAPES[int(u_shape * len(SHAPES))], color)
            if not _place(rng, obj, config.image_size, objects, clearance):
                break
            objects.append(obj)
        else:
            if accept is None or accept(objects):
                return objects
    raise RuntimeError(
        f"mini-clevr: no valid scene after {_SCENE_TRIES} tries; image_size={config.image_size} is too "
        f"small for {config.max_objects} objects of these radii"
    )


def sample_single(rng: np.random.Generator, config: MiniClevrConfig, shape: str, color: str) -> Scene:
    """A scene of one object of the given shape and colour (the zero-shot images)."""
    obj = _new_object(rng.random(3).tolist(), config, shape, color)
    if not _place(rng, obj, config.image_size, [], 0.0):
        raise RuntimeError(f"mini-clevr: image_size={config.image_size} cannot hold a {obj['size']} {shape}")
    return [obj]
