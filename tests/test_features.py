import numpy as np
import torch

from vqabench.data import ImageStore
from vqabench.features import FeatureStore, clear
from vqabench.model import Stem
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
    assert torch.allclose(first.gather(["/img/3.png"])[0], expected)
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
