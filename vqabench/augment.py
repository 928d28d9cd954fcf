"""Batch augmentations on image tensors, run where the images are (the GPU when there is one).

Names used in recipes: ``hflip``, ``color_jitter`` (brightness, contrast and saturation; hue kept),
``hue``, ``crop`` (random resized crop) and ``erase`` (random erasing). A dataset lists the ones
that would change its answers (``DatasetSpec.unsafe_augmentations``); the runner drops those.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from vqabench.transfer import to_device

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return to_device(torch.rand(n, generator=gen) * (hi - lo) + lo, device)


def _generator_on(device: torch.device, gen: torch.Generator) -> torch.Generator:
    """A generator on ``device`` seeded from ``gen``: deterministic, and no host-device copy."""
    if device.type == "cpu":
        return gen
    return torch.Generator(device=device).manual_seed(int(torch.randint(2**62, (1,), generator=gen)))


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def hflip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = to_device(torch.rand(x.shape[0], generator=gen) < p, x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def color_jitter(x: torch.Tensor, gen: torch.Generator, strength: float = 0.3) -> torch.Tensor:
    """Brightness, contrast and saturation jitter; hue is untouched, so named colours survive."""
    n, dev = x.shape[0], x.device
    b = _uniform(n, 1 - strength, 1 + strength, gen, dev)[:, None, None, None]
    c = _uniform(n, 1 - strength, 1 + strength, gen, dev)[:, None, None, None]
    s = _uniform(n, 1 - strength, 1 + strength, gen, dev)[:, None, None, None]
    x = (x * b).clamp(0, 1)
    mean = _gray(x).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 1)
    gray = _gray(x)
    return ((x - gray) * s + gray).clamp(0, 1)


def hue(x: torch.Tensor, gen: torch.Generator, max_shift: float = 0.1) -> torch.Tensor:
    """Rotate hue by a random angle per image (YIQ rotation, differentiable and batched)."""
    n, dev = x.shape[0], x.device
    theta = _uniform(n, -max_shift, max_shift, gen, dev) * 2 * math.pi
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    # Inverted on the host: linalg.inv on a GPU checks its result and so waits for it.
    from_yiq, to_yiq = to_device(torch.linalg.inv(to_yiq), dev), to_device(to_yiq, dev)
    cos, sin = theta.cos(), theta.sin()
    rot = torch.zeros(n, 3, 3, device=dev)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    mat = from_yiq @ rot @ to_yiq  # [n, 3, 3]
    return torch.einsum("nij,njhw->nihw", mat, x).clamp(0, 1)


def crop(x: torch.Tensor, gen: torch.Generator, scale: Sequence[float] = (0.6, 1.0)) -> torch.Tensor:
    """Random resized crop (square, area fraction in ``scale``) back to the input size."""
    n, dev = x.shape[0], x.device
    side = _uniform(n, scale[0], scale[1], gen, dev).sqrt()
    tx = (to_device(torch.rand(n, generator=gen), dev) * 2 - 1) * (1 - side)
    ty = (to_device(torch.rand(n, generator=gen), dev) * 2 - 1) * (1 - side)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = side, side, tx, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def erase(x: torch.Tensor, gen: torch.Generator, p: float = 0.3, area: Sequence[float] = (0.02, 0.2)) -> torch.Tensor:
    """Random erasing (Zhong et al.): with probability ``p`` a rectangle per image set to noise."""
    n, _, h, w = x.shape
    dev = x.device
    frac = _uniform(n, area[0], area[1], gen, dev)
    aspect = torch.exp(_uniform(n, math.log(0.3), math.log(3.3), gen, dev))
    eh = (frac * aspect).sqrt().clamp(max=1.0) * h
    ew = (frac / aspect).sqrt().clamp(max=1.0) * w
    y0 = to_device(torch.rand(n, generator=gen), dev) * (h - eh)
    x0 = to_device(torch.rand(n, generator=gen), dev) * (w - ew)
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    inside = (
        (ys >= y0[:, None, None])
        & (ys < (y0 + eh)[:, None, None])
        & (xs >= x0[:, None, None])
        & (xs < (x0 + ew)[:, None, None])
    )
    apply = to_device(torch.rand(n, generator=gen) < p, dev)[:, None, None]
    mask = (inside & apply).unsqueeze(1)
    # Image-sized noise is drawn where the images are, from a generator seeded by ``gen``.
    noise = torch.rand(x.shape, generator=_generator_on(dev, gen), device=dev)
    return torch.where(mask, noise, x)


AUGMENTATIONS: dict[str, Augment] = {
    "hflip": hflip,
    "color_jitter": color_jitter,
    "hue": hue,
    "crop": crop,
    "erase": erase,
}


def build(names: Sequence[str]) -> Augment | None:
    """One function applying the named augmentations in order, or None when there are none."""
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        from vqabench.registry import did_you_mean

        raise ValueError(f"unknown augmentation {unknown[0]!r}{did_you_mean(unknown[0], AUGMENTATIONS)}")
    fns = [AUGMENTATIONS[n] for n in names]
    if not fns:
        return None

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for fn in fns:
            x = fn(x, gen)
        return x

    return apply
