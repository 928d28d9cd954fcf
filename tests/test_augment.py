import colorsys

import pytest
import torch

from vqabench import augment
from vqabench.augment import AUGMENTATIONS, build, color_jitter, crop, erase, hflip, hue

# Six colours, each with one clearly largest channel and max*1.3 < 1, so no clamp ties the argmax.
PALETTE = torch.tensor(
    [
        [0.70, 0.10, 0.10],  # red
        [0.10, 0.65, 0.15],  # green
        [0.10, 0.15, 0.70],  # blue
        [0.70, 0.35, 0.05],  # orange
        [0.40, 0.05, 0.70],  # purple
        [0.05, 0.45, 0.70],  # azure
    ]
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(n=4, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=gen(seed))


def palette_image(n=2, size=12):
    """Horizontal bands of the six palette colours."""
    rows = PALETTE[torch.arange(size) % 6]  # [size, 3]
    return rows.T[:, :, None].expand(3, size, size).unsqueeze(0).repeat(n, 1, 1, 1).contiguous()


def hue_deg(rgb):
    return colorsys.rgb_to_hsv(*rgb)[0] * 360


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_shape_dtype_and_range(name):
    x = images()
    y = AUGMENTATIONS[name](x, gen())
    assert y.shape == x.shape
    assert y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_input_is_not_modified(name):
    x = images()
    before = x.clone()
    AUGMENTATIONS[name](x, gen())
    assert torch.equal(x, before)


def test_hflip_p1_flips_every_image():
    x = images()
    assert torch.equal(hflip(x, gen(), p=1.0), x.flip(-1))


def test_hflip_p0_is_identity():
    x = images()
    assert torch.equal(hflip(x, gen(), p=0.0), x)


def test_hflip_default_flips_some_images_whole():
    x = images(n=64)
    y = hflip(x, gen())
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(y[i], x[i]) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48


def test_color_jitter_keeps_red_dominant():
    x = torch.zeros(8, 3, 8, 8)
    x[:, 0] = 0.8
    for seed in range(20):
        y = color_jitter(x, gen(seed), strength=0.5)
        assert (y[:, 0] > y[:, 1]).all() and (y[:, 0] > y[:, 2]).all()


def test_color_jitter_keeps_argmax_channel_of_palette():
    x = palette_image(n=8)
    for seed in range(20):
        y = color_jitter(x, gen(seed))
        assert torch.equal(y.argmax(dim=1), x.argmax(dim=1))
        assert not torch.allclose(y, x, atol=1e-3)


def test_color_jitter_strength_zero_is_identity():
    x = images()
    assert torch.allclose(color_jitter(x, gen(), strength=0.0), x, atol=1e-6)


def test_hue_changes_hue():
    x = torch.empty(4, 3, 6, 6)
    x[:] = torch.tensor([0.6, 0.4, 0.4])[:, None, None]
    y = hue(x, gen(3), max_shift=0.1)
    before = hue_deg((0.6, 0.4, 0.4))
    shifts = []
    for i in range(4):
        after = hue_deg(y[i, :, 0, 0].tolist())
        shifts.append(min(abs(after - before), 360 - abs(after - before)))
    assert max(shifts) > 3  # degrees
    assert max(shifts) < 60  # at most +-36 degrees of YIQ rotation, plus the YIQ/HSV mismatch


def test_hue_keeps_luma_and_grey():
    x = torch.full((2, 3, 4, 4), 0.5)
    assert torch.allclose(hue(x, gen(), max_shift=0.5), x, atol=1e-5)
    c = torch.empty(2, 3, 4, 4)
    c[:] = torch.tensor([0.6, 0.4, 0.4])[:, None, None]
    luma = torch.tensor([0.299, 0.587, 0.114])
    y = hue(c, gen(), max_shift=0.1)
    assert torch.allclose(torch.einsum("c,nchw->nhw", luma, y), torch.einsum("c,nchw->nhw", luma, c), atol=1e-4)


def test_hue_zero_shift_is_identity():
    x = images()
    assert torch.allclose(hue(x, gen(), max_shift=0.0), x, atol=1e-5)


def test_crop_full_scale_is_identity():
    x = images(size=20)
    assert torch.allclose(crop(x, gen(), scale=(1.0, 1.0)), x, atol=1e-5)


def test_crop_changes_images():
    x = images(size=20)
    y = crop(x, gen(), scale=(0.3, 0.5))
    assert (y - x).abs().amax(dim=(1, 2, 3)).min() > 0.05


def test_erase_p0_is_identity():
    x = images(size=32)
    assert torch.equal(erase(x, gen(), p=0.0), x)


def test_erase_p1_changes_one_rectangle_per_image():
    x = torch.full((6, 3, 32, 32), 0.5)
    y = erase(x, gen(), p=1.0)
    changed = (y != x).any(dim=1)  # [n, h, w]
    for i in range(6):
        rows = changed[i].any(dim=1).nonzero().flatten()
        cols = changed[i].any(dim=0).nonzero().flatten()
        assert len(rows) > 0
        box = changed[i, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert box.all(), "the erased region is a filled rectangle"
        assert int(changed[i].sum()) == box.numel()
        assert 0.005 < box.numel() / (32 * 32) < 0.3


def test_build_empty_is_none():
    assert build([]) is None


def test_build_unknown_suggests():
    with pytest.raises(ValueError, match=r"unknown augmentation 'flip'; did you mean 'hflip'\?"):
        build(["hue", "flip"])


def test_build_applies_in_order():
    x = images()
    fn = build(["hflip", "hue"])
    g1, g2 = gen(5), gen(5)
    expected = hue(hflip(x, g2), g2)
    assert torch.equal(fn(x, g1), expected)


def test_same_seed_same_output_other_seed_differs():
    fn = build(list(AUGMENTATIONS))
    x = images(n=8, size=24)
    a, b, c = fn(x, gen(1)), fn(x, gen(1)), fn(x, gen(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_registry_names():
    assert sorted(AUGMENTATIONS) == ["color_jitter", "crop", "erase", "hflip", "hue"]
    assert AUGMENTATIONS["hflip"] is augment.hflip
