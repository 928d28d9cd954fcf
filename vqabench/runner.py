"""The runner: plan the (model, task) cells, then for each: prepare, train, evaluate, record."""

from __future__ import annotations

import shutil
import sys
import time
import traceback
from typing import Any

from vqabench import augment as augment_lib
from vqabench import evaluate
from vqabench.cell import (
    Cell,
    Prepared,
    RunOptions,
    Skipped,
    baselines,
    build_record,
    check_recipe,
    prepare,
    resolve,
)
from vqabench.config import config_hash
from vqabench.data import limit_samples
from vqabench.engine import fit
from vqabench.files import atomic_write_json, atomic_write_text
from vqabench.registry import ModelRef, PluginInfo, Registry, did_you_mean
from vqabench.results import Ledger, cell_dir, read_record, write_jsonl
from vqabench.tasks import TaskData, get_task

__all__ = ["Cell", "RunOptions", "Skipped", "plan", "run", "run_cell"]


def plan(registry: Registry, opts: RunOptions) -> tuple[list[Cell], list[Skipped]]:
    """Every compatible (model, task) cell, and the skipped pairs with their reasons."""
    if opts.models == ("all",):
        refs = [ModelRef(n) for n in sorted(registry.models)]
    else:
        refs = [ModelRef.parse(m) for m in opts.models]
    tasks: list[tuple[Any, str | None]] = []
    for t in opts.tasks:
        name, _, kind = t.partition("/")
        ds = registry.dataset(name)
        if kind:
            get_task(kind)  # an unknown kind names the known ones
            if kind not in ds.task_kinds:
                raise ValueError(f"dataset {ds.name!r} has no task kind {kind!r}; it has: {', '.join(ds.task_kinds)}")
        tasks.append((ds, kind or None))
    cells, skipped = [], []
    for ref in refs:
        spec = registry.model(ref.name)
        if ref.tag and ref.tag not in spec.tags:
            raise ValueError(
                f"model {ref.name!r} has no weights tag {ref.tag!r}; it has: {', '.join(spec.tags) or 'none'}"
            )
        for ds, only in tasks:
            for kind in [only] if only else list(ds.task_kinds):
                task = f"{ds.name}/{kind}"
                if kind not in spec.task_kinds:
                    skipped.append(Skipped(str(ref), task, f"model supports {', '.join(spec.task_kinds)}"))
                elif opts.profile in spec.skip_profiles:
                    skipped.append(Skipped(str(ref), task, spec.skip_profiles[opts.profile]))
                else:
                    cells.append(Cell(ref, spec, ds, kind))
    return cells, skipped


def run(registry: Registry, infos: list[PluginInfo], opts: RunOptions) -> Ledger:
    """Run every planned cell; a failing cell is recorded in the ledger and the rest go on."""
    cells, skipped = plan(registry, opts)
    for cell in cells:  # a bad override or recipe fails the whole command before anything runs
        check_recipe(cell, resolve(cell, opts)[0])
    scoped = {k.partition(":")[0] for k in opts.model_overrides if ":" in k}
    names = {c.ref.name for c in cells}
    if scoped - names:
        name = sorted(scoped - names)[0]
        raise ValueError(f"--set {name}:...: no planned model is called {name!r}{did_you_mean(name, names)}")
    ledger = Ledger(opts.out)
    for s in skipped:
        ledger.set(f"{s.model}|{s.task}|{opts.profile}|seed{opts.seed}", "skipped", reason=s.reason)
    for cell in cells:
        if ledger.cells.get(cell.key(opts), {}).get("state") != "done" or opts.force:
            ledger.set(cell.key(opts), "pending")
    data_cache: dict[tuple[str, str, str], TaskData] = {}
    for cell in cells:
        key = cell.key(opts)
        try:
            state, info = run_cell(cell, opts, registry, infos, data_cache, ledger)
            ledger.set(key, state, **info)
        except Exception as exc:  # record and go on: one broken cell must not sink the run
            ledger.set(key, "failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8))
            print(f"FAILED {key}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return ledger


def run_cell(
    cell: Cell,
    opts: RunOptions,
    registry: Registry,
    infos: list[PluginInfo],
    data_cache: dict,
    ledger: Ledger | None = None,
) -> tuple[str, dict]:
    """Train (when the model trains) and evaluate one cell; write its predictions and record."""
    mcfg, dcfg = resolve(cell, opts)
    check_recipe(cell, mcfg)
    chash = config_hash(
        {
            "model": str(cell.ref),
            "kind": cell.kind,
            "mcfg": mcfg,
            "dcfg": dcfg,
            "profile": opts.profile,
            "seed": opts.seed,
            "limit": opts.limit,
        }
    )
    where = cell_dir(opts.out, cell.dataset.name, cell.kind, str(cell.ref), opts.profile, opts.seed)
    if (
        (where / "record.json").exists()
        and not opts.force
        and read_record(where / "record.json")["config_hash"] == chash
    ):
        return "done", {"record": str(where / "record.json"), "reason": "already done (same config hash)"}
    if ledger is not None:
        ledger.set(cell.key(opts), "running")
    ckpt = where / "ckpt"
    if ((ckpt / "config_hash").exists() and (ckpt / "config_hash").read_text() != chash) or opts.force:
        shutil.rmtree(ckpt, ignore_errors=True)  # checkpoints of another config must not be resumed
    atomic_write_text(ckpt / "config_hash", chash)

    # Data: prepared once per (dataset, kind, config) in this process, then sampled by --limit.
    dkey = (cell.dataset.name, cell.kind, config_hash(dcfg))
    if dkey not in data_cache:
        data_cache[dkey] = cell.dataset.load(dcfg, cell.kind, opts.cache_dir)
    prep = prepare(cell, opts, mcfg, dcfg, data_cache[dkey])

    # Train (a model without a recipe is evaluated as it is), keeping the best-validation weights.
    t0 = time.perf_counter()
    result = None
    if prep.train is not None:
        result = fit(
            prep.model,
            prep.train,
            prep.streams,
            lambda: _validate(prep),
            cell.task.check_best_metric(prep.train.best_metric),
            prep.device,
            ckpt,
            augment=augment_lib.build(prep.used_aug),
            seed=opts.seed,
            progress=opts.progress,
        )

    # Evaluate every eval split, and the task's baseline on the same lines.
    final, rates, lines_by_split = {}, {}, {}
    for split in prep.eval.splits:
        t1 = time.perf_counter()
        lines = evaluate.predict(
            prep.model, prep.batches(split), prep.splits[split], cell.kind, prep.device, prep.eval.precision
        )
        rates[split] = len(lines) / max(1e-9, time.perf_counter() - t1)
        write_jsonl(where / f"predictions-{split}.jsonl", lines)
        final[split] = evaluate.score(cell.kind, lines, **cell.task.score_options(prep.data))
        final[split].update(cell.task.run_scores(prep.splits[split], lines, opts, prep.device))
        lines_by_split[split] = lines
    baseline = baselines(prep, lines_by_split)
    record = build_record(
        prep,
        config_hash=chash,
        fit=result,
        final=final,
        baseline=baseline,
        total_seconds=time.perf_counter() - t0,
        inference_rate=rates,
        versions={
            "model_plugin": _plugin(registry, infos, "model", cell.ref.name),
            "dataset_plugin": _plugin(registry, infos, "dataset", cell.dataset.name),
        },
    )
    atomic_write_json(where / "record.json", record)
    return "done", {"record": str(where / "record.json")}


def _validate(prep: Prepared) -> dict[str, Any]:
    """Scalar validation metrics (on a seeded sample when ``val_limit``), and the loss if selected."""
    samples = limit_samples(prep.splits["val"], prep.train.val_limit, prep.opts.seed)
    precision = prep.train.precision
    lines = evaluate.predict(
        prep.model, prep.batches("val", samples=samples), samples, prep.cell.kind, prep.device, precision
    )
    scored = evaluate.score(prep.cell.kind, lines, **prep.task.score_options(prep.data))
    out = {k: v for k, v in scored.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if prep.train.best_metric == "val_loss":
        out["val_loss"] = evaluate.mean_loss(prep.model, prep.batches("val", samples=samples), prep.device, precision)
    return out


def _plugin(registry: Registry, infos: list[PluginInfo], what: str, name: str) -> dict[str, str]:
    from vqabench.plugins import plugin_version

    return plugin_version(registry, what, name, infos)
