"""Throughput benchmark: training and inference speed, cached versus uncached epochs, data
preparation time and peak memory, for each (model, task) cell, measured in one process.

Epochs are timed without augmentation, so that cached and uncached epochs do the same work; the
``cache`` column says when a run of the recipe augments and so cannot use the cache.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vqabench import evaluate
from vqabench.cell import RunOptions, prepare, resolve
from vqabench.config import config_hash
from vqabench.device import device_name, peak_memory
from vqabench.engine import make_optimizer, train_epoch
from vqabench.features import FeatureStore, text_cache_for
from vqabench.model import count_parameters
from vqabench.registry import PluginInfo, Registry
from vqabench.runner import plan

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


def _timed_epoch(prep: Any, opt: Any, max_steps: int | None, desc: str) -> Any:
    """One timed pass over (at most ``max_steps`` of) the training split, batched as the cell is now."""
    batches = prep.batches("train", True)
    progress = prep.opts.progress
    return train_epoch(
        prep.model, batches, opt, None, prep.train, prep.device, max_steps=max_steps, progress=progress, desc=desc
    )


def bench(
    registry: Registry, infos: list[PluginInfo], opts: RunOptions, max_steps: int | None = None
) -> list[dict[str, Any]]:
    """One row of measurements per planned cell (see FIELDS), prepared exactly as a run prepares it."""
    cells, _ = plan(registry, opts)
    prepared_data: dict[tuple[str, str], tuple[float, int]] = {}
    rows = []
    for cell in cells:
        mcfg, dcfg = resolve(cell, opts)
        dkey = (cell.dataset.name, config_hash(dcfg))
        if dkey not in prepared_data:  # preparation from scratch (generation, for synthetic data)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                fresh = cell.dataset.load(dcfg, cell.kind, Path(tmp))
                images = len({cell.task.image_of(s) for v in fresh.splits.values() for s in v})
                prepared_data[dkey] = (time.perf_counter() - t0, images)
        data = cell.dataset.load(dcfg, cell.kind, opts.cache_dir)
        # Timed epochs run uncached first: the cache is switched on below, by hand.
        prep = prepare(cell, dataclasses.replace(opts, no_cache=True), mcfg, dcfg, data)
        prep.opts = opts
        model, device, cfg = prep.model, prep.device, prep.train
        row: dict[str, Any] = {"model": str(cell.ref), "task": f"{cell.dataset.name}/{cell.kind}"}
        row["device"] = device_name(device)
        row["trainable_params"] = count_parameters(model)[0]
        row["compiled"] = ",".join(prep.compiled) or "no"
        opt = None
        if cfg is not None:
            stage = cfg.resolved_stages()[0]
            model.begin_stage(stage)
            opt = make_optimizer(model, dict(stage.lrs), cfg.weight_decay, strict=not cfg.stages)
            # Warm-up outside the timing (allocator, lazy init, kernels); compiled methods also
            # see a second batch shape there, so that their recompilation for dynamic shapes is
            # not timed either.
            warm = 3 if prep.compiled else 1
            train_epoch(model, prep.batches("train", True), opt, None, cfg, device, max_steps=warm)
            plain = _timed_epoch(prep, opt, max_steps, "uncached")
            row.update(
                train_steps=len(plain.losses),
                uncached_epoch_s=plain.seconds,
                train_images_per_s=plain.images / plain.seconds,
                train_samples_per_s=plain.samples / plain.seconds,
            )
        stem = model.image_stem()
        if stem is not None:
            t0 = time.perf_counter()
            features, _ = FeatureStore.build(
                stem, prep.store, None, data.revision, device, cfg.precision if cfg else "auto"
            )
            if device.type == "cuda":
                torch.cuda.synchronize()
            row["cache_build_s"] = time.perf_counter() - t0
            # The bench trains without augmentation; a run of an augmented recipe cannot cache.
            used = prep.used_aug
            row["cache"] = stem.name if not used else f"{stem.name} (not in runs: they augment with {', '.join(used)})"
            if opt is not None:
                prep.features = features
                # The text cache too, as a run builds it (a frozen text tower is not run per step),
                # over every split the cell uses: the evaluation below reads it as well.
                questions = sorted({s.question for v in prep.splits.values() for s in v if hasattr(s, "question")})
                prep.text_features, _ = text_cache_for(model, questions, opts.cache_dir, False, device, cfg.precision)
                cached = _timed_epoch(prep, opt, max_steps, "cached")
                row.update(
                    cached_epoch_s=cached.seconds,
                    cached_speedup=row["uncached_epoch_s"] / cached.seconds,
                    cached_train_images_per_s=cached.images / cached.seconds,
                )
        else:
            row["cache"] = "none (no frozen image stem)"
        split = "val" if "val" in prep.splits else prep.eval.splits[0]
        samples = prep.splits[split]
        t0 = time.perf_counter()
        evaluate.predict(model, prep.batches(split), samples, cell.kind, device, prep.eval.precision)
        if device.type == "cuda":
            torch.cuda.synchronize()
        row["inference_images_per_s"] = len({cell.task.image_of(s) for s in samples}) / (time.perf_counter() - t0)
        row["prepare_data_s"], row["prepare_images"] = prepared_data[dkey]
        memory = peak_memory(device)
        row["peak_memory_bytes"], row["memory_measured"] = memory["peak_bytes"], memory["measured"]
        rows.append({k: row.get(k) for k in FIELDS})
    return rows
