import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqabench import images
from vqabench.images import ImageDecodeError, ImageStore, decode_image

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def noise_images(root, n, size=(12, 10), fmt="png"):
    """``n`` small random-noise images (JPEG or PNG); their paths."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = root / f"noise{i}.{fmt}"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def bands(path, width=40, height=20, cuts=(6, 34)):
    """Red left, green centre, blue right band (split at ``cuts`` along x)."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, : cuts[0]], arr[:, cuts[0] : cuts[1]], arr[:, cuts[1] :] = RED, GREEN, BLUE
    Image.fromarray(arr).save(path)
    return str(path)


def cache_files(cache):
    """Everything in the store directory, hidden temporary files included."""
    return sorted(p.name for p in (cache / "images").iterdir()) if (cache / "images").exists() else []


# Resize modes.


def test_center_crop_keeps_the_centre_and_squash_keeps_everything(tmp_path):
    path = bands(tmp_path / "bands.png")
    crop = ImageStore.build([path], 16, None, "r0", resize="center_crop").images[0]
    squash = ImageStore.build([path], 16, None, "r0").images[0]
    assert crop.shape == squash.shape == (3, 16, 16)
    # 40x20 -> 32x16 then columns 8..24 of 32: original columns 10..30, inside the green band.
    assert (crop.permute(1, 2, 0).reshape(-1, 3) == torch.tensor(GREEN, dtype=torch.uint8)).all()
    row = squash[:, 8].T.tolist()  # one row, [16, 3]
    assert row[0] == list(RED) and row[8] == list(GREEN) and row[15] == list(BLUE)


@pytest.mark.parametrize("wh", [(37, 23), (23, 37), (16, 16), (20, 20), (9, 40), (41, 17)])
def test_center_crop_matches_torchvision(tmp_path, wh):
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode

    (path,) = noise_images(tmp_path, 1, size=wh)
    with Image.open(path) as im:
        ref = tvf.center_crop(tvf.resize(im, 16, InterpolationMode.BICUBIC), 16)
        expected = torch.from_numpy(np.asarray(ref).transpose(2, 0, 1).copy())
    assert torch.equal(ImageStore.build([path], 16, None, "r0", resize="center_crop").images[0], expected)


def test_unknown_resize_mode_lists_the_modes(tmp_path):
    with pytest.raises(ValueError, match="'stretch'.*squash, center_crop"):
        ImageStore.build(noise_images(tmp_path, 1), 8, None, "r0", resize="stretch")


def test_cache_key_depends_on_resize_mode(tmp_path):
    paths = noise_images(tmp_path, 2)
    cache = tmp_path / "cache"
    squash = ImageStore.build(paths, 8, cache, "r0")
    crop = ImageStore.build(paths, 8, cache, "r0", resize="center_crop")
    names = cache_files(cache)
    assert len(names) == 2 and names[0].split("-")[0] != names[1].split("-")[0]
    assert not torch.equal(squash.images, crop.images)
    # Each mode finds its own store again.
    assert torch.equal(ImageStore.build(paths, 8, cache, "r0", resize="center_crop").images, crop.images)
    assert torch.equal(ImageStore.build(paths, 8, cache, "r0").images, squash.images)
    assert cache_files(cache) == names


# PIL modes.


def _palette(colours):
    return [c for rgb in colours for c in rgb] + [0] * (768 - 3 * len(colours))


def mode_images(root):
    """One 2x2 file per PIL mode; with the RGB its top-left pixel must become."""
    cases = {}

    def add(name, im, rgb, fmt="png"):
        path = root / f"{name}.{fmt}"
        im.save(path)
        cases[name] = (str(path), rgb)

    add("L", Image.new("L", (2, 2), 77), (77, 77, 77))
    add("LA", Image.new("LA", (2, 2), (77, 10)), (77, 77, 77))
    add("RGBA", Image.new("RGBA", (2, 2), (1, 2, 3, 128)), (1, 2, 3))
    p = Image.new("P", (2, 2), 1)
    p.putpalette(_palette([(0, 0, 0), (10, 20, 30)]))
    add("P", p, (10, 20, 30))
    pt = Image.new("P", (2, 2), 1)
    pt.putpalette(_palette([(0, 0, 0), (10, 20, 30), (40, 50, 60)]))
    pt.info["transparency"] = bytes([0, 128, 255])  # one alpha per palette entry: a tRNS table
    add("P_transparency", pt, (10, 20, 30))
    add("CMYK", Image.new("CMYK", (2, 2), (0, 255, 0, 0)), (255, 0, 255), fmt="tiff")
    add("I16", Image.fromarray(np.full((2, 2), 0x1234, dtype=np.uint16)), (0x12, 0x12, 0x12))
    add("I16_max", Image.fromarray(np.full((2, 2), 0xFFFF, dtype=np.uint16)), (255, 255, 255))
    add("1_white", Image.new("1", (2, 2), 1), (255, 255, 255))
    add("1_black", Image.new("1", (2, 2), 0), (0, 0, 0))
    return cases


def test_every_mode_becomes_rgb(tmp_path):
    cases = mode_images(tmp_path)
    with Image.open(cases["P_transparency"][0]) as im:
        assert im.mode == "P" and isinstance(im.info["transparency"], bytes)
    with Image.open(cases["I16"][0]) as im:
        assert im.mode.startswith("I;16")
    with Image.open(cases["CMYK"][0]) as im:
        assert im.mode == "CMYK"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's warning on palette transparency included
        store = ImageStore.build([path for path, _ in cases.values()], 2, None, "r0")
    assert store.images.shape == (len(cases), 3, 2, 2) and store.images.dtype == torch.uint8
    for (path, rgb), row in zip(cases.values(), store.images):
        assert row[:, 0, 0].tolist() == list(rgb), path
        assert (row == row[:, :1, :1]).all(), path  # solid images stay solid


def test_modes_are_converted_before_resizing(tmp_path):
    # A palette image resized as "P" would use nearest neighbour; as RGB it blends.
    arr = np.zeros((4, 8), dtype=np.uint8)
    arr[:, 4:] = 1
    im = Image.fromarray(arr, "P")
    im.putpalette(_palette([(0, 0, 0), (200, 200, 200)]))
    im.save(tmp_path / "p.png")
    out = decode_image(str(tmp_path / "p.png"), 4)
    assert 0 < int(out[0, 0, 2]) < 200  # a blended column at the colour edge


# Unreadable files.


def test_corrupt_missing_and_truncated_files_name_path_and_dataset(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    jpeg = noise_images(tmp_path, 1, size=(64, 64), fmt="jpg")[0]
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(Path(jpeg).read_bytes()[:300])
    for path in (bad, tmp_path / "nope.png", truncated):
        with pytest.raises(ImageDecodeError) as info:
            ImageStore.build([jpeg, str(path)], 8, tmp_path / "cache", "r0", dataset="vizwiz")
        message = str(info.value)
        assert str(path) in message and "vizwiz" in message
        assert "re-download or re-prepare the dataset: vqabench data prepare vizwiz" in message
        assert isinstance(info.value, ValueError) and info.value.path == str(path)
    assert "file not found" in str(ImageDecodeError(str(tmp_path / "x.png"), "file not found"))


@pytest.mark.parametrize("side", [10, 20])  # over the limit (a warning in PIL), over twice it (an error)
@pytest.mark.parametrize("parallel_min", [10**9, 2])  # in-process; in workers, which get the parent's limit
def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch, side, parallel_min):
    small = noise_images(tmp_path, 1, size=(4, 4))[0]
    bomb = str(tmp_path / "bomb.png")
    Image.new("RGB", (side, side)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    with pytest.raises(ImageDecodeError, match=rf"{bomb} \(dataset coco\): decompression bomb"):
        ImageStore.build([small, bomb], 8, None, "r0", dataset="coco", workers=2, parallel_min=parallel_min)


def test_decode_error_survives_pickling():
    err = pickle.loads(pickle.dumps(ImageDecodeError("/a.png", "broken", "gqa")))
    assert (err.path, err.reason, err.dataset) == ("/a.png", "broken", "gqa")
    assert str(err) == str(ImageDecodeError("/a.png", "broken", "gqa"))


# Cache.


def test_cached_store_is_reused_without_decoding(tmp_path, monkeypatch):
    paths = noise_images(tmp_path, 3)
    cache = tmp_path / "cache"
    first = ImageStore.build(paths, 8, cache, "r0", resize="center_crop")
    (name,) = cache_files(cache)
    assert name.endswith("-8px-center_crop.npy")
    mtime = (cache / "images" / name).stat().st_mtime_ns

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(images, "decode_image", no_decode)
    second = ImageStore.build(paths, 8, cache, "r0", resize="center_crop")
    assert torch.equal(second.images, first.images)
    assert (cache / "images" / name).stat().st_mtime_ns == mtime
    second.images[0, 0, 0, 0] = 7  # copy-on-write: the store is writable, the file unchanged
    assert torch.equal(ImageStore.build(paths, 8, cache, "r0", resize="center_crop").images, first.images)


def test_failed_build_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    paths = noise_images(tmp_path, 6)
    calls = []

    def fail_midway(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 4:
            raise ImageDecodeError(path, "boom")
        return real(path, *args, **kwargs)

    real = images.decode_image
    monkeypatch.setattr(images, "decode_image", fail_midway)
    with pytest.raises(ImageDecodeError, match="boom"):
        ImageStore.build(paths, 8, tmp_path / "cache", "r0")
    assert len(calls) == 4 and cache_files(tmp_path / "cache") == []


# Worker processes.


def test_parallel_decode_is_identical_to_in_process(tmp_path, monkeypatch):
    paths = noise_images(tmp_path, 80, size=(14, 11), fmt="jpg")
    serial = ImageStore.build(paths, 8, None, "r0", resize="center_crop", parallel_min=10**9)
    serial_cached = ImageStore.build(paths, 8, tmp_path / "c1", "r0", resize="center_crop", parallel_min=10**9)

    def not_here(*args, **kwargs):
        raise AssertionError("decoded in the parent process")

    monkeypatch.setattr(images, "decode_image", not_here)  # workers have their own, unpatched module
    kw = {"resize": "center_crop", "workers": 2, "parallel_min": 2}
    parallel = ImageStore.build(paths, 8, None, "r0", **kw)  # rows come back through the pipe
    parallel_cached = ImageStore.build(paths, 8, tmp_path / "c2", "r0", progress=True, **kw)  # written in place
    assert serial.images.numpy().tobytes() == parallel.images.numpy().tobytes()
    assert serial.images.numpy().tobytes() == serial_cached.images.numpy().tobytes()
    assert serial.images.numpy().tobytes() == parallel_cached.images.numpy().tobytes()
    assert cache_files(tmp_path / "c1") == cache_files(tmp_path / "c2")


def test_worker_error_names_file_and_leaves_nothing(tmp_path):
    paths = noise_images(tmp_path, 80, size=(6, 6))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    paths.insert(50, str(bad))
    cache = tmp_path / "cache"
    with pytest.raises(ImageDecodeError) as info:
        ImageStore.build(paths, 4, cache, "r0", dataset="textvqa", workers=2, parallel_min=2)
    assert info.value.path == str(bad) and "textvqa" in str(info.value)
    assert info.value.__cause__ is None  # raised afresh in the parent, without the remote traceback
    assert cache_files(cache) == []
