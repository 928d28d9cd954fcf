"""Throughput benchmark: training and inference speed, cached versus uncached epochs, data
preparation time and peak memory, for each (model, task) cell, measured in one process.

Epochs are timed without augmentation, so that cached and uncached epochs do the same work; the
``cache`` column says when a run of the recipe augments and so cannot use the cache.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vqabench import evaluate
from vqabench.config import config_hash
from vqabench.data import Batches, ImageStore
from vqabench.engine import make_optimizer, train_epoch
from vqabench.features import FeatureStore
from vqabench.model import count_parameters
from vqabench.registry import PluginInfo, Registry
from vqabench.runner import RunOptions, augmentations, build_model, device_name, pick_device, plan, resolve

FIELDS = [
    "model",
    "task",
    "device",
    "trainable_params",
    "train_steps",
    "uncached_epoch_s",
    "cache_build_s",
    "cached_epoch_s",
    "cached_speedup",
    "train_images_per_s",
    "train_samples_per_s",
    "cached_train_images_per_s",
    "inference_images_per_s",
    "prepare_data_s",
    "prepare_images",
    "peak_memory_bytes",
    "memory_measured",
    "cache",
    "compiled",
]


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench(
    registry: Registry, infos: list[PluginInfo], opts: RunOptions, max_steps: int | None = None
) -> list[dict[str, Any]]:
    """One row of measurements per planned cell (see FIELDS)."""
    cells, _ = plan(registry, opts)
    device = pick_device(opts.device)
    prepared: dict[tuple[str, str], tuple[float, int]] = {}
    rows = []
    for cell in cells:
        mcfg, dcfg = resolve(cell, opts)
        dkey = (cell.dataset.name, config_hash(dcfg))
        if dkey not in prepared:  # preparation from scratch (generation, for synthetic data)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                fresh = cell.dataset.load(dcfg, cell.kind, Path(tmp))
                prepared[dkey] = (time.perf_counter() - t0, len({s.image for v in fresh.splits.values() for s in v}))
        data = cell.dataset.load(dcfg, cell.kind, opts.cache_dir)
        model, compiled = build_model(cell, mcfg, data, device, opts.seed)
        train, val = data.split("train"), data.split("val")
        store = ImageStore.build(
            [s.image for s in train + val], model.image_size, opts.cache_dir, data.revision, opts.progress
        )
        store = store.place(device)
        index = {a: i for i, a in enumerate(data.answer_vocab or [])}
        cfg = mcfg.train

        def batches(samples: list, features: Any = None, shuffle: bool = True) -> Batches:
            return Batches(
                cell.kind, samples, store, cfg.batch_size, shuffle, opts.seed, index, features, device=device
            )

        row: dict[str, Any] = {
            "model": str(cell.ref),
            "task": f"{cell.dataset.name}/{cell.kind.value}",
            "device": device_name(device),
        }
        row["trainable_params"] = count_parameters(model)[0]
        row["compiled"] = ",".join(compiled) or "no"
        opt = make_optimizer(model, cfg) if model.trains else None
        if opt is not None:
            # Warm-up outside the timing (allocator, lazy init, kernels); compiled methods also
            # see a second batch shape there, so that their recompilation for dynamic shapes is
            # not timed either.
            train_epoch(model, batches(train), opt, None, cfg, device, max_steps=3 if compiled else 1)
            plain = train_epoch(
                model,
                batches(train),
                opt,
                None,
                cfg,
                device,
                max_steps=max_steps,
                progress=opts.progress,
                desc="uncached",
            )
            row.update(
                train_steps=len(plain.losses),
                uncached_epoch_s=plain.seconds,
                train_images_per_s=plain.images / plain.seconds,
                train_samples_per_s=plain.samples / plain.seconds,
            )
        stem = model.image_stem()
        features = None
        if stem is not None:
            t0 = time.perf_counter()
            features, _ = FeatureStore.build(stem, store, None, data.revision, device, cfg.precision)
            if device.type == "cuda":
                torch.cuda.synchronize()
            row["cache_build_s"] = time.perf_counter() - t0
            used, _ = augmentations(cell, data, cfg.augment)
            # The bench trains without augmentation; a run of an augmented recipe cannot cache.
            row["cache"] = stem.name if not used else f"{stem.name} (not in runs: they augment with {', '.join(used)})"
            if opt is not None:
                cached = train_epoch(
                    model,
                    batches(train, features),
                    opt,
                    None,
                    cfg,
                    device,
                    max_steps=max_steps,
                    progress=opts.progress,
                    desc="cached",
                )
                row.update(
                    cached_epoch_s=cached.seconds,
                    cached_speedup=row["uncached_epoch_s"] / cached.seconds,
                    cached_train_images_per_s=cached.images / cached.seconds,
                )
        else:
            row["cache"] = "none (no frozen image stem)"
        t0 = time.perf_counter()
        evaluate.predict(model, batches(val, shuffle=False), val, cell.kind, device, cfg.precision)
        if device.type == "cuda":
            torch.cuda.synchronize()
        row["inference_images_per_s"] = len({s.image for s in val}) / (time.perf_counter() - t0)
        row["prepare_data_s"], row["prepare_images"] = prepared[dkey]
        row["peak_memory_bytes"] = _peak(device)
        row["memory_measured"] = "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"
        rows.append({k: row.get(k) for k in FIELDS})
    return rows
