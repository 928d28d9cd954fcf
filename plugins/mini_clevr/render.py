"""Drawing scenes: the source domain (flat colours on a plain background), the target domain
(cloud-textured background, dimmer tinted hazy light) and a small fast PNG encoder.

Every image has at most 16 distinct colours, so it is drawn as palette indices and stored as a
4-bit palette PNG (open it with ``Image.open(path).convert("RGB")``): a third of the bytes to
compress that an RGB PNG has, which makes encoding several times faster. Lighting changes act
on the palette, not on pixels.

Shapes are drawn without anti-aliasing, so in the source domain every pixel of an object has
exactly its named colour. The target-domain light is mild enough that each object's pixels
remain nearest (in RGB) to its own named colour.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from vqabench_plugins.mini_clevr.config import BACKGROUND, COLORS, SIDES

RGB = tuple[int, int, int]
# Palette layout: the named colours first (their index is their position in COLORS), then the
# background entries (one plain grey, or the texture levels of the target domain).
_COLOR_INDEX = {name: i for i, name in enumerate(COLORS)}
_FIRST_BACKGROUND = len(COLORS)

# Target domain: background tones, light tints (per-channel gains), overall light level and haze.
_TARGET_BACKGROUNDS = ((104, 92, 80), (78, 96, 88), (96, 96, 112), (150, 140, 120))
_TINTS = ((1.0, 0.96, 0.92), (0.92, 0.96, 1.0), (1.0, 0.92, 1.0))
_GAIN_RANGE = (0.8, 0.95)
_HAZE_RANGE = (8.0, 24.0)  # added to every channel: lower contrast
_TEXTURE_LEVELS = 5  # posterised cloud texture, drawn as flat patches
_TEXTURE_STEP = 18


@dataclass(frozen=True)
class Picture:
    """A rendered image: palette indices [H, W] and at most 16 palette colours."""

    indices: np.ndarray
    palette: tuple[RGB, ...]

    def rgb(self) -> np.ndarray:
        """The image as uint8 [H, W, 3]."""
        return np.asarray(self.palette, dtype=np.uint8)[self.indices]


def polygon_points(obj: dict[str, Any]) -> list[tuple[float, float]]:
    """The vertices of a polygonal object: circumradius ``radius``, a vertex up at rotation 0."""
    x, y = obj["pixel_coords"]
    r, n = obj["radius"], SIDES[obj["shape"]]
    start = math.radians(obj["rotation"]) - math.pi / 2
    angles = [start + 2 * math.pi * k / n for k in range(n)]
    return [(x + r * math.cos(a), y + r * math.sin(a)) for a in angles]


def _draw_objects(image: Image.Image, objects: Sequence[dict[str, Any]]) -> None:
    """Draw the objects onto an index image (mode "L") in place, as their colours' indices."""
    draw = ImageDraw.Draw(image)
    for obj in objects:
        fill = _COLOR_INDEX[obj["color"]]
        if obj["shape"] == "circle":
            x, y = obj["pixel_coords"]
            r = obj["radius"]
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            draw.polygon(polygon_points(obj), fill=fill)


def render_source(objects: Sequence[dict[str, Any]], image_size: int) -> Picture:
    """The source-domain image of a scene: named colours on plain grey."""
    image = Image.new("L", (image_size, image_size), _FIRST_BACKGROUND)
    _draw_objects(image, objects)
    return Picture(np.asarray(image), (*COLORS.values(), BACKGROUND))


def render_target(objects: Sequence[dict[str, Any]], image_size: int, rng: np.random.Generator) -> Picture:
    """The target-domain image of a scene: same shapes, another look.

    A posterised cloud texture replaces the plain background, and the light changes: dimmer,
    tinted and hazier.
    """
    size = image_size
    # Cloud texture: coarse noise upsampled bilinearly, cut into a few flat levels of one tone.
    cells = max(2, size // 16)
    coarse = rng.integers(0, 256, size=cells * cells, dtype=np.uint8).tobytes()
    clouds = np.asarray(Image.frombytes("L", (cells, cells), coarse).resize((size, size), Image.Resampling.BILINEAR))
    levels = (clouds.astype(np.uint16) * _TEXTURE_LEVELS >> 8).astype(np.uint8) + _FIRST_BACKGROUND
    image = Image.fromarray(levels)
    _draw_objects(image, objects)

    tone = _TARGET_BACKGROUNDS[int(rng.integers(len(_TARGET_BACKGROUNDS)))]
    middle = (_TEXTURE_LEVELS - 1) / 2
    tones = [[c + (k - middle) * _TEXTURE_STEP for c in tone] for k in range(_TEXTURE_LEVELS)]
    gain = rng.uniform(*_GAIN_RANGE) * np.asarray(_TINTS[int(rng.integers(len(_TINTS)))])
    haze = rng.uniform(*_HAZE_RANGE)
    lit = np.clip(np.asarray([*COLORS.values(), *tones]) * gain + haze + 0.5, 0, 255).astype(np.uint8)
    return Picture(np.asarray(image), tuple(map(tuple, lit.tolist())))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(picture: Picture, compress_level: int) -> bytes:
    """A 4-bit palette PNG of ``picture``, byte-for-byte the same for a given zlib.

    Rows are left unfiltered: on these flat images deflate alone does as well as PNG filters.
    """
    if len(picture.palette) > 16:
        raise ValueError(f"a 4-bit PNG holds at most 16 colours, got {len(picture.palette)}")
    indices = picture.indices
    height, width = indices.shape
    if width % 2:
        indices = np.pad(indices, ((0, 0), (0, 1)))
    raw = np.zeros((height, indices.shape[1] // 2 + 1), dtype=np.uint8)  # column 0: filter type None
    packed = raw[:, 1:]
    np.left_shift(indices[:, 0::2], 4, out=packed)
    np.bitwise_or(packed, indices[:, 1::2], out=packed)
    header = struct.pack(">IIBBBBB", width, height, 4, 3, 0, 0, 0)  # bit depth 4, colour type 3 (palette)
    palette = bytes(v for rgb in picture.palette for v in rgb)
    idat = zlib.compress(raw.tobytes(), compress_level)
    chunks = [_chunk(b"IHDR", header), _chunk(b"PLTE", palette), _chunk(b"IDAT", idat), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)
