"""The feature cache: any shape, float16 on disk, chunked, atomic, self-checking; text with masks."""

import json
import os
import time

import numpy as np
import pytest
import torch

from vqabench.data import ImageStore
from vqabench.features import FeatureStore, TextFeatureStore, cache_for, clear, text_cache_for
from vqabench.model import Stem, TextStem
from vqabench.plugins import load_plugins
from vqabench.results import iter_records
from vqabench.runner import RunOptions, run


def _store(n=5, size=4):
    images = torch.arange(n * 3 * size * size, dtype=torch.uint8).reshape(n, 3, size, size)
    return ImageStore([f"/img/{i}.png" for i in range(n)], images)


def test_feature_store_computes_once_then_hits_the_disk_cache(tmp_path):
    calls = []

    def encode(x):
        calls.append(x.shape[0])
        return x.mean(dim=(2, 3))

    stem = Stem("mean colour", "mean-v1", encode)
    store = _store()
    first, hit = FeatureStore.build(stem, store, tmp_path, "rev1", torch.device("cpu"), batch_size=2)
    assert not hit and calls == [2, 2, 1]
    again, hit = FeatureStore.build(stem, store, tmp_path, "rev1", torch.device("cpu"))
    assert hit and calls == [2, 2, 1]
    assert torch.equal(first.gather(["/img/3.png", "/img/0.png"]), again.gather(["/img/3.png", "/img/0.png"]))
    expected = store.images[3].float().div(255).mean(dim=(1, 2))
    assert torch.allclose(first.gather(["/img/3.png"])[0], expected, atol=1e-3)  # float16 by default
    # Another dataset revision or stem key is another cache entry.
    FeatureStore.build(stem, store, tmp_path, "rev2", torch.device("cpu"))
    assert len(calls) == 4
    assert not list((tmp_path / "features").glob("*.tmp"))


def test_cache_clear_removes_only_the_named_part(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "a.npy").write_bytes(b"x")
    (tmp_path / "images").mkdir()
    (tmp_path / "mini-clevr-abc").mkdir()
    assert clear(tmp_path, "features") == [tmp_path / "features"]
    assert (tmp_path / "images").exists() and (tmp_path / "mini-clevr-abc").exists()
    assert clear(tmp_path, "data") == [tmp_path / "mini-clevr-abc"]


def test_cached_and_uncached_runs_give_the_same_metrics(only_example, tmp_path):
    registry, infos = load_plugins()
    finals = {}
    for no_cache in (False, True):
        out = tmp_path / f"runs-{no_cache}"
        opts = RunOptions(
            models=("example-bow",),
            tasks=("example-colors/vqa",),
            out=out,
            cache_dir=tmp_path / "cache",
            model_overrides={"train.augment": ""},
            no_cache=no_cache,
            progress=False,
        )
        run(registry, infos, opts)
        ((_, rec),) = list(iter_records(out))
        finals[no_cache] = rec
    cached, plain = finals[False], finals[True]
    assert cached["cached"]["image"].startswith("avg-pool 8px") and cached["cached"]["off"] is None
    assert plain["cached"]["image"] is None and plain["cached"]["off"] == "--no-cache"
    for split in ("val", "test"):
        assert abs(cached["final"][split]["vqa_accuracy"] - plain["final"][split]["vqa_accuracy"]) < 0.05
    np.testing.assert_allclose(cached["step_losses"], plain["step_losses"], rtol=1e-3, atol=1e-4)


def test_augmentation_turns_the_cache_off_and_says_so(only_example, tmp_path):
    registry, infos = load_plugins()
    opts = RunOptions(
        models=("example-bow",),
        tasks=("example-colors/vqa",),
        out=tmp_path / "runs",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    run(registry, infos, opts)
    ((_, rec),) = list(iter_records(tmp_path / "runs"))
    assert rec["cached"]["image"] is None and rec["cached"]["off"] == "augmentation on (color_jitter)"


# --- any shape, dtype, layout --------------------------------------------------------------------

CPU = torch.device("cpu")
# Stem outputs of every shape the cache holds: pooled [N, D], tokens [N, T, D], maps [N, C, H, W].
SHAPED = {
    "pooled": lambda x: x.mean(dim=(2, 3)) * 3.0,
    "tokens": lambda x: x.flatten(2).transpose(1, 2) - 0.5,  # [N, 16, 3]
    "maps": lambda x: torch.cat([x, x.square()], dim=1),  # [N, 6, 4, 4]
}


class Counting:
    """An encode that counts its calls and can fail on a given call (a build killed midway)."""

    def __init__(self, fn, fail_on: int | None = None):
        self.fn, self.fail_on, self.calls = fn, fail_on, 0

    def __call__(self, x):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("killed")
        return self.fn(x)


def _entries(cache_dir):
    root = cache_dir / "features"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.mark.parametrize("kind", SHAPED)
def test_every_shape_round_trips_through_the_disk(tmp_path, kind):
    store = _store(7)
    stem = Stem(kind, f"{kind}-v1", SHAPED[kind])
    direct = SHAPED[kind](store.images.float() / 255)
    exact, _ = FeatureStore.build(stem, store, tmp_path, "r", CPU, batch_size=3, dtype="float32")
    half, _ = FeatureStore.build(stem, store, tmp_path, "r", CPU, batch_size=3)
    keys = store.paths
    assert exact.features.shape == half.features.shape == direct.shape
    assert torch.equal(exact.gather(keys), direct)
    assert torch.allclose(half.gather(keys), direct, atol=1e-3, rtol=1e-3)
    # Read back from disk as memory maps, in the asked dtype; gather always returns float32.
    assert exact.features.dtype == torch.float32 and half.features.dtype == torch.float16
    assert half.gather(keys[:2]).dtype == torch.float32
    assert isinstance(np.load(half.source / "features.npy", mmap_mode="r"), np.memmap)


def test_entry_layout_and_meta(tmp_path):
    store = _store(5)
    stem = Stem("tokens", "tokens-v1", SHAPED["tokens"])
    fs, hit = FeatureStore.build(stem, store, tmp_path, "rev1", CPU)
    (name,) = _entries(tmp_path)
    assert not hit and name.startswith("image-") and fs.source == tmp_path / "features" / name
    assert sorted(p.name for p in fs.source.iterdir()) == ["features.npy", "meta.json"]
    meta = json.loads((fs.source / "meta.json").read_text())
    assert meta["shape"] == [5, 16, 3] and meta["rows"] == 5 and meta["dtype"] == "float16"
    assert meta["stem"] == "tokens" and meta["stem_key"] == "tokens-v1" and meta["mask_shape"] is None
    assert len(meta["keys_sha256"]) == 64 and meta["image_size"] == 4 and meta["resize"] == "squash"
    assert np.load(fs.source / "features.npy").dtype == np.float16


def test_float32_doubles_the_file_and_is_another_entry(tmp_path):
    store = _store(5)
    stem = Stem("tokens", "tokens-v1", SHAPED["tokens"])
    half, _ = FeatureStore.build(stem, store, tmp_path, "r", CPU)
    full, hit = FeatureStore.build(stem, store, tmp_path, "r", CPU, dtype="float32")
    assert not hit and half.source != full.source
    assert np.load(full.source / "features.npy").nbytes == 2 * np.load(half.source / "features.npy").nbytes
    with pytest.raises(ValueError, match="dtype"):
        FeatureStore.build(stem, store, tmp_path, "r", CPU, dtype="bfloat16")


def test_key_covers_size_resize_and_revision(tmp_path):
    stem = Stem("pooled", "pooled-v1", SHAPED["pooled"])
    FeatureStore.build(stem, _store(5), tmp_path, "r", CPU)
    FeatureStore.build(stem, _store(5, size=8), tmp_path, "r", CPU)
    cropped = _store(5)
    cropped.resize = "center_crop"
    FeatureStore.build(stem, cropped, tmp_path, "r", CPU)
    FeatureStore.build(stem, _store(5), tmp_path, "r2", CPU)
    _, hit = FeatureStore.build(stem, _store(5), tmp_path, "r", CPU)
    assert hit and len(_entries(tmp_path)) == 4


def test_gather_returns_rows_in_the_requested_order(tmp_path):
    store = _store(6)
    fs, _ = FeatureStore.build(Stem("pooled", "p", SHAPED["pooled"]), store, tmp_path, "r", CPU, dtype="float32")
    order = ["/img/4.png", "/img/0.png", "/img/4.png", "/img/2.png"]
    expected = SHAPED["pooled"](store.images[[4, 0, 4, 2]].float() / 255)
    assert torch.equal(fs.gather(order), expected)


def test_float16_overflow_is_stored_in_float32(tmp_path):
    stem = Stem("huge", "huge", lambda x: x.mean(dim=(2, 3)) * 1e6)
    fs, _ = FeatureStore.build(stem, _store(5), tmp_path, "r", CPU, batch_size=2)
    assert fs.features.dtype == torch.float32 and torch.isfinite(fs.features).all()
    assert json.loads((fs.source / "meta.json").read_text())["dtype"] == "float32"
    _, hit = FeatureStore.build(stem, _store(5), tmp_path, "r", CPU, batch_size=2)
    assert hit


def test_without_a_cache_dir_features_stay_in_memory(tmp_path):
    fs, hit = FeatureStore.build(Stem("pooled", "p", SHAPED["pooled"]), _store(5), None, "r", CPU, batch_size=2)
    assert not hit and fs.source is None and fs.features.shape == (5, 3)
    empty, _ = FeatureStore.build(Stem("pooled", "p", SHAPED["pooled"]), _store(0), tmp_path, "r", CPU)
    assert empty.features.shape[0] == 0 and _entries(tmp_path) == []


# --- atomic, self-checking --------------------------------------------------------------------


def test_a_build_killed_midway_leaves_no_entry_and_the_next_recomputes(tmp_path):
    store = _store(7)
    failing = Counting(SHAPED["tokens"], fail_on=2)
    with pytest.raises(RuntimeError, match="killed"):
        FeatureStore.build(Stem("tokens", "t", failing), store, tmp_path, "r", CPU, batch_size=3)
    assert _entries(tmp_path) == []  # neither the entry nor its temporary directory
    encode = Counting(SHAPED["tokens"])
    fs, hit = FeatureStore.build(Stem("tokens", "t", encode), store, tmp_path, "r", CPU, batch_size=3)
    assert not hit and encode.calls == 3
    assert torch.allclose(fs.gather(store.paths), SHAPED["tokens"](store.images.float() / 255), atol=1e-3)


def test_a_process_killed_midway_leaves_only_a_temporary_directory_that_is_never_used(tmp_path):
    store = _store(5)
    stem = Stem("pooled", "p", Counting(SHAPED["pooled"]))
    fs, _ = FeatureStore.build(stem, store, tmp_path, "r", CPU)
    entry = fs.source
    # What SIGKILL inside atomic_dir leaves: a dot-named temporary directory and no entry.
    tmp = entry.with_name(f".{entry.name}.abc123.tmp")
    os.replace(entry, tmp)
    (tmp / "meta.json").unlink()
    again, hit = FeatureStore.build(stem, store, tmp_path, "r", CPU)
    assert not hit and again.source == entry and tmp.exists()  # a live writer's may still be in use
    old = time.time() - 2 * 3600
    for p in [tmp, *tmp.iterdir()]:
        os.utime(p, (old, old))
    (entry / "meta.json").unlink()
    FeatureStore.build(stem, store, tmp_path, "r", CPU)
    assert not tmp.exists()  # untouched for hours: a dead build's, removed


def _corrupt_meta(entry):
    (entry / "meta.json").write_text("{not json")


def _drop_meta(entry):
    (entry / "meta.json").unlink()


def _truncate(entry):
    data = (entry / "features.npy").read_bytes()
    (entry / "features.npy").write_bytes(data[: len(data) // 2])


def _wrong_rows(entry):
    meta = json.loads((entry / "meta.json").read_text())
    meta["rows"] = 4
    (entry / "meta.json").write_text(json.dumps(meta))


def _wrong_shape(entry):
    np.save(entry / "features.npy", np.zeros((5, 2), np.float16))


def _wrong_keys(entry):
    meta = json.loads((entry / "meta.json").read_text())
    meta["keys_sha256"] = "0" * 64
    (entry / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [_corrupt_meta, _drop_meta, _truncate, _wrong_rows, _wrong_shape, _wrong_keys])
def test_a_damaged_entry_is_ignored_and_recomputed(tmp_path, damage):
    store = _store(5)
    encode = Counting(SHAPED["pooled"])
    stem = Stem("pooled", "p", encode)
    fs, _ = FeatureStore.build(stem, store, tmp_path, "r", CPU, batch_size=2)
    assert encode.calls == 3
    damage(fs.source)
    again, hit = FeatureStore.build(stem, store, tmp_path, "r", CPU, batch_size=2)
    assert not hit and encode.calls == 6
    assert torch.allclose(again.gather(store.paths), SHAPED["pooled"](store.images.float() / 255), atol=1e-3)
    _, hit = FeatureStore.build(stem, store, tmp_path, "r", CPU, batch_size=2)
    assert hit and encode.calls == 6 and len(_entries(tmp_path)) == 1


# --- text -------------------------------------------------------------------------------------


def _token_stem(calls: list[int]) -> TextStem:
    """One token per word, padded to the longest string of each chunk (as a tokenizer does);
    token j of a string is [len(word_j), j, 1]."""

    def encode(strings):
        calls.append(len(strings))
        words = [s.split() for s in strings]
        length = max(len(w) for w in words)
        feats = torch.zeros(len(strings), length, 3)
        mask = torch.zeros(len(strings), length, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                feats[i, j] = torch.tensor([len(w), j, 1.0])
                mask[i, j] = True
        return feats, mask

    return TextStem("word tokens", "words-v1", encode)


def _tokens_of(s: str) -> torch.Tensor:
    return torch.tensor([[len(w), j, 1.0] for j, w in enumerate(s.split())])


# Chunks of 2: lengths 2, then 4 (longer: the rows so far are re-laid), then 1 (shorter: padded).
QUESTIONS = ["is it", "what color", "how many red things", "is it red", "why", "what color"]


@pytest.mark.parametrize("cache", [True, False], ids=["disk", "memory"])
def test_text_token_states_are_padded_to_the_longest_with_a_mask(tmp_path, cache):
    calls: list[int] = []
    store, hit = TextFeatureStore.build(
        _token_stem(calls), QUESTIONS, tmp_path if cache else None, CPU, batch_size=2, dtype="float32"
    )
    assert not hit and calls == [2, 2, 1]  # distinct strings only
    assert store.keys == list(dict.fromkeys(QUESTIONS)) and store.features.shape == (5, 4, 3)
    order = ["why", "how many red things", "is it", "why"]
    feats, mask = store.gather(order)
    assert feats.dtype == torch.float32 and mask.dtype == torch.bool and feats.shape == (4, 4, 3)
    for i, s in enumerate(order):
        n = len(s.split())
        assert mask[i].tolist() == [True] * n + [False] * (4 - n)
        assert torch.equal(feats[i, :n], _tokens_of(s)) and not feats[i, n:].any()
    if cache:
        assert sorted(p.name for p in store.source.iterdir()) == ["features.npy", "mask.npy", "meta.json"]
        meta = json.loads((store.source / "meta.json").read_text())
        assert meta["shape"] == [5, 4, 3] and meta["mask_shape"] == [5, 4] and store.source.name.startswith("text-")
        again, hit = TextFeatureStore.build(_token_stem(calls), QUESTIONS, tmp_path, CPU, batch_size=2, dtype="float32")
        assert hit and calls == [2, 2, 1]
        assert torch.equal(again.gather(order)[0], feats)


def test_text_store_is_float16_by_default_and_recomputed_after_a_kill(tmp_path):
    calls: list[int] = []
    stem = _token_stem(calls)
    broken = TextStem(stem.name, stem.key, Counting(stem.encode, fail_on=2))
    with pytest.raises(RuntimeError, match="killed"):
        TextFeatureStore.build(broken, QUESTIONS, tmp_path, CPU, batch_size=2)
    assert _entries(tmp_path) == []
    store, hit = TextFeatureStore.build(stem, QUESTIONS, tmp_path, CPU, batch_size=2)
    assert not hit and store.features.dtype == torch.float16
    (store.source / "mask.npy").write_bytes(b"garbage")
    store, hit = TextFeatureStore.build(stem, QUESTIONS, tmp_path, CPU, batch_size=2)
    assert not hit and store.mask.dtype == torch.bool


def test_pooled_text_has_no_mask(tmp_path):
    stem = TextStem("length", "len-v1", lambda ss: (torch.tensor([[float(len(s)), 1.0] for s in ss]), None))
    store, _ = TextFeatureStore.build(stem, ["a", "bbb", "cc"], tmp_path, CPU, batch_size=2)
    feats, mask = store.gather(["cc", "a"])
    assert mask is None and store.mask is None and feats.tolist() == [[2.0, 1.0], [1.0, 1.0]]


class _Model:
    def __init__(self, image=None, text=None):
        self._image, self._text = image, text

    def image_stem(self):
        return self._image

    def text_stem(self):
        return self._text

    def text_cache_info(self):
        return None


def test_text_cache_for_needs_a_text_stem_and_the_cache_on(tmp_path):
    assert text_cache_for(_Model(), QUESTIONS, tmp_path, False, CPU, "auto") == (None, None)
    model = _Model(text=_token_stem([]))
    assert text_cache_for(model, QUESTIONS, tmp_path, True, CPU, "auto") == (None, None)
    store, note = text_cache_for(model, QUESTIONS, tmp_path, False, CPU, "auto")
    assert note == "word tokens (computed)" and store.features.shape[0] == 5
    assert text_cache_for(model, QUESTIONS, tmp_path, False, CPU, "auto")[1] == "word tokens (cache hit)"


def test_cache_for_notes(tmp_path):
    stem = Stem("pooled", "p", SHAPED["pooled"])
    assert cache_for(_Model(), _store(), [], tmp_path, False, "r", CPU, "auto")[1]["off"] == "no frozen image stem"
    assert cache_for(_Model(stem), _store(), [], tmp_path, True, "r", CPU, "auto")[1]["off"] == "--no-cache"
    fs, note = cache_for(_Model(stem), _store(), [], tmp_path, False, "r", CPU, "auto")
    assert note == {"image": "pooled (computed)", "text": None, "off": None} and fs.features.shape == (5, 3)


# --- placement --------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_place_moves_to_the_gpu_only_when_it_fits(tmp_path, monkeypatch):
    store = _store(6)
    stem = Stem("tokens", "t", SHAPED["tokens"])
    gpu = torch.device("cuda")
    fs, _ = FeatureStore.build(stem, store, tmp_path, "r", gpu, precision="fp32")
    assert fs.features.device.type == "cuda"  # small: placed by build
    expected = SHAPED["tokens"](store.images[[5, 1]].float() / 255)
    assert torch.allclose(fs.gather(["/img/5.png", "/img/1.png"]).cpu(), expected, atol=1e-3)
    # Less than twice its size free: it stays memory-mapped on the host and gathers via pinned memory.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * fs.nbytes - 1, 2**40))
    host, hit = FeatureStore.build(stem, store, tmp_path, "r", gpu, precision="fp32")
    assert hit and host.features.device.type == "cpu"
    got = host.gather(["/img/5.png", "/img/1.png"], gpu)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    assert torch.allclose(got.cpu(), expected, atol=1e-3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 2**40))
    text, _ = TextFeatureStore.build(_token_stem([]), QUESTIONS, tmp_path, gpu, batch_size=2)
    feats, mask = text.gather(["why"], gpu)
    assert text.features.device.type == "cpu" and feats.device.type == mask.device.type == "cuda"
    monkeypatch.undo()
    assert text.place(gpu).features.device.type == "cuda" and text.place(gpu).mask.device.type == "cuda"
