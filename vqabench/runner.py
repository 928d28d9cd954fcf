"""The runner: plan the (model, task) pairs, then for each: build, train, evaluate, record."""

from __future__ import annotations

import platform
import resource
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import vqabench
from vqabench import augment as augment_lib
from vqabench import evaluate
from vqabench.config import apply_overrides, config_hash, to_jsonable
from vqabench.data import Batches, ImageStore, limit_samples
from vqabench.engine import fit
from vqabench.features import cache_for
from vqabench.model import compile_methods, count_parameters
from vqabench.registry import DatasetSpec, ModelRef, ModelSpec, PluginInfo, Registry, did_you_mean
from vqabench.results import SCHEMA_VERSION, Ledger, atomic_write_json, cell_dir, read_record, write_jsonl
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.qa import majority_answer


@dataclass(frozen=True)
class RunOptions:
    """Everything ``vqabench run`` takes; overrides use dotted keys on the model config."""

    models: tuple[str, ...] = ("all",)
    tasks: tuple[str, ...] = ()
    profile: str = "quick"
    device: str = "auto"
    seed: int = 0
    out: Path = Path("runs")
    cache_dir: Path = Path(".cache/vqabench")
    model_overrides: Mapping[str, Any] = field(default_factory=dict)
    data_overrides: Mapping[str, Any] = field(default_factory=dict)
    limit: int | None = None
    force: bool = False
    no_cache: bool = False
    clipscore: str | None = None  # "ARCH@TAG_OR_FILE": the CLIP that scores captions (CLIPScore)
    progress: bool = True


@dataclass(frozen=True)
class Cell:
    ref: ModelRef
    model: ModelSpec
    dataset: DatasetSpec
    kind: TaskKind

    def key(self, opts: RunOptions) -> str:
        return f"{self.ref}|{self.dataset.name}/{self.kind.value}|{opts.profile}|seed{opts.seed}"


def plan(registry: Registry, opts: RunOptions) -> tuple[list[Cell], list[tuple[str, str]]]:
    """Every compatible (model, task) cell, and the skipped pairs with their reasons."""
    refs = (
        [ModelRef(n) for n in sorted(registry.models)]
        if opts.models == ("all",)
        else [ModelRef.parse(m) for m in opts.models]
    )
    tasks: list[tuple[DatasetSpec, TaskKind | None]] = []
    for t in opts.tasks:
        name, _, kind = t.partition("/")
        tasks.append((registry.dataset(name), TaskKind.parse(kind) if kind else None))
    cells, skipped = [], []
    for ref in refs:
        spec = registry.model(ref.name)
        if ref.tag and ref.tag not in spec.tags:
            raise ValueError(
                f"model {ref.name!r} has no weights tag {ref.tag!r}; it has: {', '.join(spec.tags) or 'none'}"
            )
        for ds, only in tasks:
            for kind in [only] if only else list(ds.task_kinds):
                label = f"{ref} x {ds.name}/{kind.value}"
                if kind not in ds.task_kinds:
                    raise ValueError(
                        f"dataset {ds.name!r} has no task kind {kind.value!r}; it has: {', '.join(k.value for k in ds.task_kinds)}"
                    )
                if kind not in spec.task_kinds:
                    skipped.append((label, f"model supports {', '.join(k.value for k in spec.task_kinds)}"))
                elif opts.profile in spec.skip_profiles:
                    skipped.append((label, spec.skip_profiles[opts.profile]))
                else:
                    cells.append(Cell(ref, spec, ds, kind))
    return cells, skipped


def augmentations(cell: Cell, data: TaskData, names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The recipe's augmentations this dataset allows, and the dropped ones with the reason."""
    unsafe = cell.dataset.unsafe_augmentations | data.unsafe_augmentations
    return [a for a in names if a not in unsafe], {
        a: f"changes answers on {data.dataset}" for a in names if a in unsafe
    }


def build_model(cell: Cell, mcfg: Any, data: TaskData, device: torch.device, seed: int) -> tuple[Any, list[str]]:
    """The cell's model, seeded, on ``device`` (channels-last on a GPU, peak memory counted from
    here), with the methods ``train.compile`` asks for compiled; returns (model, their names)."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = cell.model.build(mcfg, data, device).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, compile_methods(model) if mcfg.train.compile else []


def resolve(cell: Cell, opts: RunOptions) -> tuple[Any, Any]:
    """The model and dataset configs: defaults, then profile, weights tag and user overrides."""
    mcfg = apply_overrides(
        cell.model.config_cls(),
        cell.model.profiles.get(opts.profile, {}),
        where=f"model {cell.ref} profile {opts.profile}",
    )
    if cell.ref.tag:
        mcfg = apply_overrides(mcfg, cell.model.tags[cell.ref.tag], where=f"model {cell.ref}")
    # "--set KEY=V" applies to every model, "--set NAME:KEY=V" to model NAME only.
    mine = {
        k.partition(":")[2]: v
        for k, v in opts.model_overrides.items()
        if k.partition(":")[0] == cell.ref.name and ":" in k
    }
    shared = {k: v for k, v in opts.model_overrides.items() if ":" not in k}
    mcfg = apply_overrides(mcfg, {**shared, **mine}, where=f"model {cell.ref} (--set)")
    dcfg = apply_overrides(
        cell.dataset.config_cls(),
        cell.dataset.profiles.get(opts.profile, {}),
        where=f"dataset {cell.dataset.name} profile {opts.profile}",
    )
    dcfg = apply_overrides(dcfg, opts.data_overrides, where=f"dataset {cell.dataset.name} (--data)")
    return mcfg, dcfg


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def run(registry: Registry, infos: list[PluginInfo], opts: RunOptions) -> Ledger:
    """Run every planned cell; a failing cell is recorded in the ledger and the rest go on."""
    cells, skipped = plan(registry, opts)
    for cell in cells:  # a bad override fails the whole command before anything runs
        resolve(cell, opts)
    scoped = {k.partition(":")[0] for k in opts.model_overrides if ":" in k}
    if scoped - {c.ref.name for c in cells}:
        name = sorted(scoped - {c.ref.name for c in cells})[0]
        raise ValueError(
            f"--set {name}:...: no planned model is called {name!r}{did_you_mean(name, {c.ref.name for c in cells})}"
        )
    ledger = Ledger(opts.out)
    for label, reason in skipped:
        ledger.set(f"{label.replace(' x ', '|')}|{opts.profile}|seed{opts.seed}", "skipped", reason=reason)
    for cell in cells:
        if ledger.cells.get(cell.key(opts), {}).get("state") != "done" or opts.force:
            ledger.set(cell.key(opts), "pending")
    data_cache: dict[tuple[str, TaskKind, str], TaskData] = {}
    for cell in cells:
        key = cell.key(opts)
        try:
            state, info = run_cell(cell, opts, registry, infos, data_cache)
            ledger.set(key, state, **info)
        except Exception as exc:  # record and go on: one broken cell must not sink the run
            ledger.set(key, "failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8))
            print(f"FAILED {key}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return ledger


def run_cell(
    cell: Cell, opts: RunOptions, registry: Registry, infos: list[PluginInfo], data_cache: dict
) -> tuple[str, dict]:
    mcfg, dcfg = resolve(cell, opts)
    chash = config_hash(
        {
            "model": str(cell.ref),
            "kind": cell.kind.value,
            "mcfg": mcfg,
            "dcfg": dcfg,
            "profile": opts.profile,
            "seed": opts.seed,
            "limit": opts.limit,
        }
    )
    where = cell_dir(opts.out, cell.dataset.name, cell.kind.value, str(cell.ref), opts.profile, opts.seed)
    if (
        (where / "record.json").exists()
        and not opts.force
        and read_record(where / "record.json")["config_hash"] == chash
    ):
        return "done", {"record": str(where / "record.json"), "reason": "already done (same config hash)"}
    ckpt = where / "ckpt"
    if (ckpt / "config_hash").exists() and (ckpt / "config_hash").read_text() != chash or opts.force:
        for f in ckpt.glob("*"):
            f.unlink()  # checkpoints of another config must not be resumed
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "config_hash").write_text(chash)

    # Data: prepared once per (dataset, kind, config) in this process, then sampled by --limit.
    dkey = (cell.dataset.name, cell.kind, config_hash(dcfg))
    if dkey not in data_cache:
        data_cache[dkey] = cell.dataset.load(dcfg, cell.kind, opts.cache_dir)
    data = data_cache[dkey]
    splits = {
        s: limit_samples(v, opts.limit, opts.seed)
        for s, v in data.splits.items()
        if s in ("train", *mcfg.train.eval_splits)
    }

    # Model, images and augmentations.
    device = pick_device(opts.device)
    model, compiled = build_model(cell, mcfg, data, device, opts.seed)
    store = ImageStore.build(
        [s.image for v in splits.values() for s in v], model.image_size, opts.cache_dir, data.revision, opts.progress
    )
    store = store.place(device)
    answer_index = {a: i for i, a in enumerate(data.answer_vocab or [])}

    used, disabled = augmentations(cell, data, mcfg.train.augment)
    features, cached = cache_for(
        model, store, used, opts.cache_dir, opts.no_cache, data.revision, device, mcfg.train.precision
    )

    def batches(split: str, shuffle: bool) -> Batches:
        return Batches(
            cell.kind,
            splits[split],
            store,
            mcfg.train.batch_size,
            shuffle,
            opts.seed,
            answer_index,
            features,
            device=device,
        )

    score_opts = evaluate.score_options(data)

    def validate(epoch: int) -> dict[str, Any]:
        lines = evaluate.predict(model, batches("val", False), splits["val"], cell.kind, device, mcfg.train.precision)
        return {k: v for k, v in evaluate.score(cell.kind, lines, **score_opts).items() if isinstance(v, (int, float))}

    # Train (zero-shot models skip this), then evaluate the best-validation checkpoint.
    t0 = time.perf_counter()
    result = None
    if getattr(model, "trains", True):
        result = fit(
            model,
            batches("train", True),
            validate,
            mcfg.train,
            device,
            ckpt,
            augment=augment_lib.build(used),
            seed=opts.seed,
            progress=opts.progress,
        )
    final, baseline, infer_rate = {}, {}, {}
    for split in mcfg.train.eval_splits:
        t1 = time.perf_counter()
        lines = evaluate.predict(model, batches(split, False), splits[split], cell.kind, device, mcfg.train.precision)
        infer_rate[split] = len(lines) / max(1e-9, time.perf_counter() - t1)
        write_jsonl(where / f"predictions-{split}.jsonl", lines)
        final[split] = evaluate.score(cell.kind, lines, **score_opts)
        if cell.kind is TaskKind.CAPTIONING and opts.clipscore:
            final[split].update(evaluate.clipscore(opts.clipscore, splits[split], lines, device))
        if cell.kind in (TaskKind.VQA, TaskKind.ANSWERABILITY):
            answer = majority_answer(splits["train"])
            base = evaluate.score(TaskKind.VQA, [{**ln, "answer": answer} for ln in lines], vqa_mode=data.vqa_mode)
            baseline[split] = {"answer": answer, "vqa_accuracy": base["vqa_accuracy"]}
    total = time.perf_counter() - t0

    trainable, n_total = count_parameters(model)
    peak = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    record = {
        "schema": SCHEMA_VERSION,
        "model": str(cell.ref),
        "display_name": cell.model.display_name,
        "family": cell.model.family,
        "dataset": cell.dataset.name,
        "kind": cell.kind.value,
        "profile": opts.profile,
        "seed": opts.seed,
        "config": {"model": to_jsonable(mcfg), "dataset": to_jsonable(dcfg), "score": score_opts},
        "config_hash": chash,
        "weights": model.weights,
        "partial": opts.limit is not None,
        "limit": opts.limit,
        "sample_ids": {s: [x.id for x in v] for s, v in splits.items()} if opts.limit is not None else None,
        "augmentations": {"used": used, "disabled": disabled},
        "cached": cached,
        "compiled": compiled,
        "params": {"trainable": trainable, "total": n_total},
        "history": result.history if result else [],
        "step_losses": result.step_losses if result else [],
        "best_epoch": result.best_epoch if result else None,
        "resumed_from_epoch": result.resumed_from if result else 0,
        "final": final,
        "baseline": baseline,
        "timing": {
            "epoch_seconds": [h["seconds"] for h in result.history] if result else [],
            "train_seconds": result.train_seconds if result else 0.0,
            "total_seconds": total,
            "train_images_per_second": result.train_images / result.train_seconds
            if result and result.train_seconds
            else None,
            "train_samples_per_second": result.train_samples / result.train_seconds
            if result and result.train_seconds
            else None,
            "inference_samples_per_second": infer_rate,
        },
        "memory": {
            "peak_bytes": peak,
            "measured": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        },
        "device": device_name(device),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "vqabench": vqabench.__version__,
            "model_plugin": _plugin(registry, infos, "model", cell.ref.name),
            "dataset_plugin": _plugin(registry, infos, "dataset", cell.dataset.name),
        },
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(where / "record.json", record)
    return "done", {"record": str(where / "record.json")}


def _plugin(registry: Registry, infos: list[PluginInfo], what: str, name: str) -> dict[str, str]:
    from vqabench.plugins import plugin_version

    return plugin_version(registry, what, name, infos)
