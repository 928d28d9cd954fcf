"""The runner: plan the (model, task) cells, then for each: prepare, train, evaluate, record."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from vqabench import augment as augment_lib
from vqabench import distributed, evaluate, evaluations, trainings
from vqabench.cell import (
    Cell,
    Prepared,
    RunOptions,
    Skipped,
    baselines,
    build_record,
    check_lr_groups,
    check_recipe,
    prepare,
    resolve,
)
from vqabench.checkpoint import drop_replaced, start_checkpoints
from vqabench.config import config_hash
from vqabench.data import limit_samples
from vqabench.engine import fit
from vqabench.files import atomic_write_json, clean_partial
from vqabench.pretrain import resolve_scorer
from vqabench.registry import ModelRef, NameConflictError, PluginInfo, Registry, did_you_mean, split_plugin
from vqabench.results import Ledger, cell_dir, read_record
from vqabench.tasks import TaskData, get_task

__all__ = ["Cell", "RunOptions", "Skipped", "plan", "run", "run_cell"]


def plan(registry: Registry, opts: RunOptions) -> tuple[list[Cell], list[Skipped]]:
    """Every compatible (model, task) cell, and the skipped pairs with their reasons."""
    if opts.models == ("all",):
        # "all" uses every name, so a name two plugins register stops it as a bare name would.
        for what, name in registry.conflicts:
            if what == "model":
                raise NameConflictError(f"--models all: {registry.conflict_message(what, name)}")
        refs = [ModelRef(n) for n in sorted(registry.models)]
    else:
        refs = [ModelRef.parse(m) for m in opts.models]
    tasks: list[tuple[Any, str | None, str | None]] = []
    for t in opts.tasks:
        name, _, kind = t.partition("/")  # PLUGIN:DATASET/KIND: the plugin is part of the name
        ds = registry.dataset(name)
        for k in [kind] if kind else ds.task_kinds:
            if ("task", k) in registry.conflicts:
                raise NameConflictError(f"--tasks {t}: {registry.conflict_message('task', k)}")
        if kind:
            get_task(kind)  # an unknown kind names the known ones
            if kind not in ds.task_kinds:
                raise ValueError(f"dataset {ds.name!r} has no task kind {kind!r}; it has: {', '.join(ds.task_kinds)}")
        tasks.append((ds, kind or None, split_plugin(name)[0] or registry.plugin_of("dataset", name)))
    cells, skipped = [], []
    for ref in refs:
        spec = registry.model(ref.qualified_name)
        # The provider, named or not: records say whose model ran, and --set PLUGIN:NAME:KEY=V reaches it.
        ref = dataclasses.replace(ref, plugin=ref.plugin or registry.plugin_of("model", ref.name))
        if ref.tag and ref.tag not in spec.tags:
            raise ValueError(
                f"model {ref.name!r} has no weights tag {ref.tag!r}; it has: {', '.join(spec.tags) or 'none'}"
            )
        for ds, only, ds_plugin in tasks:
            for kind in [only] if only else list(ds.task_kinds):
                task = f"{ds.name}/{kind}"
                if kind not in spec.task_kinds:
                    skipped.append(Skipped(str(ref), task, f"model supports {', '.join(spec.task_kinds)}"))
                elif opts.profile in spec.skip_profiles:
                    skipped.append(Skipped(str(ref), task, spec.skip_profiles[opts.profile]))
                else:
                    cells.append(Cell(ref, spec, ds, kind, ds_plugin, registry))
    return cells, skipped


def run(registry: Registry, infos: list[PluginInfo], opts: RunOptions, executor: Any = None) -> Ledger:
    """Run every planned cell; a failing cell is recorded in the ledger and the rest go on.

    ``executor(cells, opts, ledger)`` runs the cells elsewhere (``vqabench.executors.RayExecutor``:
    one Ray task per cell); without one they run here, one after the other.
    """
    cells, skipped = plan(registry, opts)
    for cell in cells:  # a bad override or recipe fails the whole command before anything runs
        mcfg = resolve(cell, opts)[0]
        check_recipe(cell, mcfg)
        check_lr_groups(cell, opts, mcfg)
        # Nothing of another distribution's cell is resumed, deleted or overwritten: checked for
        # every cell first, so a refused one stops the run before any other cell trains.
        check_provenance(_cell_dir(cell, opts), cell, _versions(cell, registry, infos))
    if opts.clipscore and any(c.task.run_score_prefixes for c in cells):
        # ``--clipscore ARCH@pretrain:NAME/DATASET``: the scorer a pretraining makes, made once here.
        scorer = resolve_scorer(registry, opts.clipscore, cache_dir=opts.cache_dir, progress=opts.progress)
        opts = dataclasses.replace(opts, clipscore=scorer)
    scoped = {k.rpartition(":")[0] for k in opts.model_overrides if ":" in k}
    names = {c.ref.name for c in cells} | {c.ref.qualified_name for c in cells}
    if scoped - names:
        name = sorted(scoped - names)[0]
        raise ValueError(f"--set {name}:...: no planned model is called {name!r}{did_you_mean(name, names)}")
    # The ledger's temporary file a killed run left (only its own name: --out may hold other files).
    if distributed.is_main():  # with several ranks (torchrun), rank 0 alone writes the ledger
        clean_partial(opts.out, pattern=".status.json.*.tmp")
    ledger = distributed.open_ledger(opts.out)
    for s in skipped:
        ledger.set(f"{s.model}|{s.task}|{opts.profile}|seed{opts.seed}", "skipped", reason=s.reason)
    for cell in cells:
        if ledger.cells.get(cell.key(opts), {}).get("state") != "done" or opts.force:
            ledger.set(cell.key(opts), "pending")
    if executor is not None:
        executor(cells, opts, ledger)
        return ledger
    data_cache: dict[tuple[str, str, str], TaskData] = {}
    published: set[str] = set()
    for cell in cells:
        key = cell.key(opts)
        try:
            state, info = run_cell(cell, opts, registry, infos, data_cache, ledger, published)
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
    published: set[str] | None = None,
) -> tuple[str, dict]:
    """Train (when the model trains) and evaluate one cell; write its predictions and record.

    ``published`` collects the training keys this run trained (see ``vqabench.trainings``).
    """
    published = set() if published is None else published
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
    where = _cell_dir(cell, opts)
    versions = _versions(cell, registry, infos)
    check_provenance(where, cell, versions)  # before anything in the directory is read or replaced
    # What killed runs left half-written here (a prediction file, a record, a checkpoint set), even
    # in a cell that is done; only entries whose writer is gone, never a live run's (files.is_stale).
    if distributed.is_main():
        clean_partial(where, recursive=True)
    if (
        (where / "record.json").exists()
        and not opts.force
        and read_record(where / "record.json")["config_hash"] == chash
    ):
        return "done", {"record": str(where / "record.json"), "reason": "already done (same config hash)"}
    if ledger is not None:
        ledger.set(cell.key(opts), "running")

    # Data: prepared once per (dataset, kind, config) in this process, then sampled by --limit.
    # With several ranks, rank 0 generates and caches first; the others then read its cache.
    dkey = (cell.dataset.name, cell.kind, config_hash(dcfg))
    with distributed.main_first():
        if dkey not in data_cache:
            data_cache[dkey] = cell.dataset.load(dcfg, cell.kind, opts.cache_dir)
        prep = prepare(cell, opts, mcfg, dcfg, data_cache[dkey])
    for warning in prep.warnings:  # also in the record; shown now, before training
        print(f"warning: {cell.key(opts)}: {warning}", file=sys.stderr)

    # A training another kind's cell of this model already did (trainings.py): loaded, not redone.
    # With --force only one published by this run counts, so that --force retrains exactly once.
    ckpt = where / "ckpt"
    tkey = trainings.training_key(prep) if prep.train is not None else None
    shared = trainings.find(opts.out, tkey, prep.train) if tkey else None
    if shared is not None and (shared["path"] == ckpt or (opts.force and tkey not in published)):
        shared = None
    # Only now, with data and model checked: a cell refused above (bad data, a --lr typo) must not
    # have deleted the checkpoints a killed run of the previous config could still resume from.
    # Checkpoints of another config (all, with --force) must not be resumed; they are set aside, not
    # deleted, until this run has a checkpoint or record of its own: a run that cannot write loses nothing.
    if shared is None:
        distributed.main_only(start_checkpoints)(ckpt, chash, force=opts.force)

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
            ckpt if shared is None else shared["path"],
            augment=augment_lib.build(prep.used_aug),
            seed=opts.seed,
            progress=opts.progress,
            # The record's "cached" of the stages a resumed run restores instead of training.
            stage_notes=lambda: prep.cached,
            restore_notes=lambda saved: setattr(prep, "cached", saved),
            keep={m: cell.task.check_best_metric(m) for m in prep.train.keep_best},
        )
        if shared is None:
            distributed.main_only(trainings.publish)(opts.out, tkey, ckpt, cell.key(opts))
            published.add(tkey)

    # Evaluate every eval split, and the task's baseline on the same lines.
    # Unlabelled splits (a challenge's test set) are predicted and stored for export, not scored.
    final, rates, lines_by_split, unscored = {}, {}, {}, {}
    unlabelled = [s for s in prep.splits if s in prep.data.unlabelled]
    for split in dict.fromkeys([*prep.eval.splits, *unlabelled]):
        lines, metrics, rates[split] = evaluations.score_split(prep, split, where)
        if metrics is None:
            unscored[split] = len(lines)
            continue
        final[split], lines_by_split[split] = metrics, lines
    baseline = baselines(prep, lines_by_split)
    # Beyond the selected checkpoint's default predictions: the other kept checkpoints, the
    # prediction variants and the model's figures, each on the test split.
    extra = {
        "selections": evaluations.selections(prep, result, final, where),
        "variants": evaluations.variants(prep, final, rates, where),
        "figures": evaluations.figures(prep, lines_by_split.get(evaluations.test_split(prep) or ""), where),
    }
    record = build_record(
        prep,
        config_hash=chash,
        fit=result,
        final=final,
        baseline=baseline,
        total_seconds=time.perf_counter() - t0,
        inference_rate=rates,
        versions=versions,
    )
    record["unscored"] = unscored
    record.update({k: v for k, v in extra.items() if v})
    if tkey is not None:
        record["shared_training"] = {"key": tkey, "trained_by": shared["cell"] if shared else cell.key(opts)}
    distributed.main_only(atomic_write_json)(where / "record.json", record)
    distributed.main_only(drop_replaced)(ckpt)  # the record replaces the result whose checkpoints were set aside
    return "done", {"record": str(where / "record.json")}


def _scalars(prep: Prepared, split: str, samples: list[Any], run_scores: bool = False) -> dict[str, Any]:
    """The task's scalar metrics of the model's predictions on ``samples`` of ``split`` (with
    ``run_scores``, also those that need the run's scorer, e.g. CLIPScore)."""
    lines = evaluate.predict(
        prep.model, prep.batches(split, samples=samples), samples, prep.cell.kind, prep.device, prep.train.precision
    )
    scored = evaluate.score(prep.cell.kind, lines, **prep.task.score_options(prep.data))
    if run_scores:
        scored.update(prep.task.run_scores(samples, lines, prep.opts, prep.device))
    return evaluations.scalars(scored)


def _validate(prep: Prepared) -> dict[str, Any]:
    """Scalar validation metrics (on a seeded sample when ``val_limit``), the loss and run-level
    scores when a selection metric is one, and with ``train.train_metrics`` the same metrics on as
    many training samples (``train_`` keys)."""
    split = prep.train.val_split
    samples = limit_samples(prep.splits[split], prep.train.val_limit, prep.opts.seed)
    selecting = {prep.train.best_metric, *prep.train.keep_best}
    prefixes = prep.task.run_score_prefixes
    out = _scalars(prep, split, samples, run_scores=any(prefixes and m.startswith(prefixes) for m in selecting))
    if "val_loss" in selecting:
        batches = prep.batches(split, samples=samples)
        out["val_loss"] = evaluate.mean_loss(prep.model, batches, prep.device, prep.train.precision)
    if prep.train.train_metrics:
        split = prep.train.resolved_stages()[0].streams[0] if prep.train.resolved_stages()[0].streams else "train"
        seen = limit_samples(prep.splits[split], len(samples), prep.opts.seed)
        out.update({f"train_{k}": v for k, v in _scalars(prep, split, seen).items()})
    return out


def _cell_dir(cell: Cell, opts: RunOptions) -> Path:
    return cell_dir(opts.out, cell.dataset.name, cell.kind, str(cell.ref), opts.profile, opts.seed)


def _versions(cell: Cell, registry: Registry, infos: list[PluginInfo]) -> dict[str, dict[str, str]]:
    """The record's plugin provenance: which plugin and distribution provide the model and dataset."""
    from vqabench.plugins import plugin_version

    return {
        "model_plugin": plugin_version(registry, "model", cell.ref.name, infos, plugin=cell.ref.plugin),
        "dataset_plugin": plugin_version(registry, "dataset", cell.dataset.name, infos, plugin=cell.dataset_plugin),
    }


def check_provenance(where: Path, cell: Cell, versions: dict[str, dict[str, str]]) -> None:
    """Refuse a cell directory whose record another distribution's model or dataset wrote.

    Run directories are named by model and dataset name, so a plugin registering a taken name
    (picked with PLUGIN:NAME) would otherwise overwrite the record, predictions and checkpoints
    of the other one, or resume its checkpoints. A record that cannot be read is left to the
    cell's own checks; one without provenance (or an unknown distribution) is not refused.
    """
    path = where / "record.json"
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        before = old["versions"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    named = {"model_plugin": ("model", str(cell.ref)), "dataset_plugin": ("dataset", cell.dataset.name)}
    for field, (what, name) in named.items():
        entry = before.get(field) if isinstance(before, dict) else None
        was = entry.get("distribution") if isinstance(entry, dict) else None
        now = versions[field]["distribution"]
        if was and now and "?" not in (was, now) and was != now:
            raise ValueError(
                f"{path} was written with {what} {name!r} from distribution {was!r}, but {what} {name!r} now comes "
                f"from {now!r}: refusing to overwrite it, its predictions or its checkpoints; use another --out, "
                f"or delete {where} to replace that result"
            )
