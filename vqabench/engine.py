"""The training engine every family shares.

A recipe is one or more stages (``vqabench.config.Stage``). For each stage, in order:

1. the model may change itself (``begin_stage``: add adapters, freeze a part), then the groups
   the stage does not train are frozen for it;
2. the caller builds the stage's training streams (so the feature cache follows what is frozen);
3. AdamW over the stage's parameter groups, each with its learning rate; linear warm-up then
   cosine decay, or step decay every N epochs; gradient accumulation and clipping; bf16 autocast
   on GPU; the training progress p in [0, 1] over the whole recipe is given to the model;
4. validation every ``val_every`` epochs (and after the last), the best checkpoint kept by the
   selection metric in its own direction;
5. at the end of the stage the best weights are restored and the next stage starts from them.

Every epoch writes one checkpoint set (weights, optimizer, scheduler, every RNG: no pickle) as
one directory, so a run killed anywhere resumes where it was and ends as an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vqabench import distributed
from vqabench.checkpoint import load_checkpoint, load_weights_file, save_checkpoint
from vqabench.config import Stage, TrainConfig
from vqabench.device import autocast
from vqabench.files import atomic_path, recover_dir
from vqabench.metrics.base import Metric
from vqabench.tasks.base import Streams


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch, every stage
    step_losses: list[float] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)  # per stage: best epoch, its val metrics
    best_epoch: int = 0  # of the last stage, counted over the whole recipe
    train_seconds: float = 0.0
    train_images: int = 0  # distinct images encoded (one per image per step)
    train_samples: int = 0
    resumed_from: dict[str, Any] | None = None  # {"stage": name, "epoch": n} when a run resumed
    # Per ``keep`` metric, the last stage's best checkpoint by it: {"epoch", "value", "path"}
    # (epoch 0 and no path when validation never produced the metric).
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)


def trained_state(model: torch.nn.Module, names: set[str]) -> dict[str, torch.Tensor]:
    """The parameters named in ``names`` (those trained in any stage so far) and every buffer."""
    state = {n: p for n, p in model.named_parameters() if n in names}
    state.update(dict(model.named_buffers()))
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}


def restore(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: Path) -> None:
    """Load a checkpoint's tensors into ``model``; every trainable parameter must be there."""
    missing = {n for n, p in model.named_parameters() if p.requires_grad} - set(weights)
    if missing:
        raise RuntimeError(
            f"checkpoint {where} lacks {len(missing)} trainable tensors (e.g. {sorted(missing)[0]}); "
            f"delete {where.parent} to retrain"
        )
    model.load_state_dict(weights, strict=False)


def make_optimizer(model: Any, lrs: dict[str, float], weight_decay: float, *, strict: bool = True) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups that have a rate in ``lrs``.

    ``strict``: a group with trainable parameters but no rate is an error (single-stage recipes);
    staged recipes list the groups each stage trains.
    """
    groups = []
    for name, params in model.param_groups().items():
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        if name not in lrs:
            if strict:
                raise ValueError(
                    f"parameter group {name!r} of {type(model).__name__} has no learning rate; "
                    f"set one with --lr {name}=VALUE (recipe has: {', '.join(lrs) or 'none'})"
                )
            continue
        groups.append({"params": params, "lr": lrs[name], "name": name})
    if not groups:
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters in groups {', '.join(lrs) or '(none)'}; "
            f"it has: {', '.join(model.param_groups())}"
        )
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to 0."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def warmup_step(warmup_steps: int, decay_every: int, gamma: float) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warm-up to 1, then times ``gamma`` every ``decay_every`` steps."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        return gamma ** (step // max(1, decay_every))

    return factor


def make_scheduler(opt: torch.optim.Optimizer, stage: Stage, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = round(steps_per_epoch * (stage.warmup_epochs or 0.0))
    if stage.schedule == "step":
        fn = warmup_step(warmup, steps_per_epoch * (stage.step_every or 1), stage.step_gamma or 0.1)
    else:
        fn = warmup_cosine(steps_per_epoch * (stage.epochs or 0), warmup)
    return torch.optim.lr_scheduler.LambdaLR(opt, fn)


@dataclass
class EpochStats:
    losses: list[float]
    images: int
    samples: int
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)  # epoch means of the model's ``loss_parts``


def _steps(streams: dict[str, Any], max_steps: int | None) -> tuple[int, Any]:
    """(number of steps, iterator of batches): the first stream sets the length, the others cycle."""
    names = list(streams)
    first = streams[names[0]]
    n = len(first) if max_steps is None else min(max_steps, len(first))
    if len(names) == 1:
        return n, islice(iter(first), n)
    others = {k: cycle_batches(streams[k]) for k in names[1:]}
    return n, (Streams({names[0]: b, **{k: next(it) for k, it in others.items()}}) for b in islice(iter(first), n))


def cycle_batches(batches: Any):
    """Batches forever: a new pass (and shuffle) each time the split runs out."""
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("a training stream has no samples")


def train_epoch(
    model: Any,
    batches: Any,
    opt: torch.optim.Optimizer,
    sched: Any,
    cfg: TrainConfig,
    device: torch.device,
    augment: Any = None,
    gen: torch.Generator | None = None,
    *,
    max_steps: int | None = None,
    desc: str = "train",
    progress: bool = False,
    step_offset: int = 0,
    total_steps: int = 0,
    parallel: Any = None,
) -> EpochStats:
    """One pass over the streams (``batches``: one Batches or a dict of them by split): timed.

    ``parallel`` (several ranks: ``vqabench.distributed.StageParallel``) computes the loss through
    DDP and makes the step losses and counts the global batch's.
    """
    model.train()
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    streams = batches if isinstance(batches, dict) else {"train": batches}
    n_batches, it = _steps(streams, max_steps)
    losses: list[torch.Tensor] = []
    parts: dict[str, list[torch.Tensor]] = {}
    images = samples = 0
    t0 = time.perf_counter()
    bar = tqdm(it, total=n_batches, desc=desc, unit="batch", disable=not progress, leave=False)
    opt.zero_grad(set_to_none=True)
    for i, batch in enumerate(bar):
        batch = batch.to(device)
        if augment is not None:
            batch.map_images(lambda x: augment(x, gen))
        if device.type == "cuda":
            batch.map_images(lambda x: x.contiguous(memory_format=torch.channels_last))
        model.progress = (step_offset + i) / max(1, total_steps)
        with autocast(device, cfg.precision):
            loss = model.loss(batch) if parallel is None else parallel.loss(batch)
        (loss / cfg.grad_accum).backward()
        losses.append(loss.detach())
        # Named parts of the loss the model reports (a domain discriminator's, ...): kept on the
        # device like the loss, so reading them makes the host wait for nothing.
        for name, value in (getattr(model, "loss_parts", None) or {}).items():
            parts.setdefault(name, []).append(value.detach().float())
        images += batch.num_images
        samples += batch.num_samples
        if (i + 1) % cfg.grad_accum == 0 or i + 1 == n_batches:
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            opt.zero_grad(set_to_none=True)
        if progress and i % 20 == 1:
            # The previous step's loss: reading it waits for that step only, while this one is
            # already queued, so the GPU never idles for the bar.
            bar.set_postfix(loss=f"{losses[-2].item():.3f}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    stacked = torch.stack(losses).float() if losses else torch.zeros(0)
    if parallel is not None:
        stacked, images, samples = parallel.totals(stacked, images, samples)
    values = stacked.cpu().tolist()
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        raise FloatingPointError(
            f"training loss is {values[bad]} at step {step_offset + bad + 1} ({desc}); "
            f"lower the learning rate (--lr) or use train.precision=fp32"
        )
    means = {name: torch.stack(v).mean().item() for name, v in parts.items()}
    means = {name: v if math.isfinite(v) else None for name, v in means.items()}  # records are strict JSON
    return EpochStats(values, images, samples, seconds, means)


def _save_weights(path: Path, model: torch.nn.Module, trained: set[str]) -> None:
    from safetensors.torch import save_file

    if not distributed.is_main():  # with several ranks, rank 0 writes (their weights are the same)
        return
    with atomic_path(path) as tmp:
        save_file(trained_state(model, trained), str(tmp))


def _stage_dirs(ckpt_dir: Path, index: int, stage: Stage) -> tuple[Path, Path, Path]:
    sdir = ckpt_dir / f"{index + 1}-{stage.name}"
    return sdir / "last", sdir / "best.safetensors", sdir / "done"


def training_done(ckpt_dir: Path, cfg: TrainConfig) -> bool:
    """Whether ``ckpt_dir`` holds the finished checkpoint of every stage of the recipe ``cfg``."""
    stages = cfg.resolved_stages()
    return all(recover_dir(_stage_dirs(ckpt_dir, i, s)[2]) is not None for i, s in enumerate(stages))


def kept_path(best_path: Path, name: str) -> Path:
    """Where a stage keeps its best checkpoint by the further selection metric ``name``."""
    return best_path.with_name(f"best-{name}.safetensors")


def _kept(summary: dict[str, Any], best_path: Path) -> dict[str, dict[str, Any]]:
    return {
        name: {**entry, "path": kept_path(best_path, name) if entry["epoch"] else None}
        for name, entry in summary.get("kept", {}).items()
    }


def _better(value: float, best: float | None, metric: Metric) -> bool:
    if best is None:
        return True
    return value > best if metric.higher_is_better else value < best


def fit(
    model: Any,
    cfg: TrainConfig,
    streams_for: Callable[[Stage], dict[str, Any]],
    validate: Callable[[], dict[str, Any]],
    best_metric: Metric,
    device: torch.device,
    ckpt_dir: Path,
    *,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    seed: int = 0,
    progress: bool = True,
    stage_notes: Callable[[], Any] | None = None,
    restore_notes: Callable[[Any], None] | None = None,
    keep: dict[str, Metric] | None = None,
) -> FitResult:
    """Train ``model`` through the recipe's stages, validating as it asks; resume from ``ckpt_dir``.

    ``streams_for(stage)`` returns the stage's training batches by split (the first one sets the
    epoch length); ``validate()`` returns scalar validation metrics, ``best_metric`` among them.
    ``stage_notes()`` is what the caller keeps with each finished stage (JSON; the runner: what it
    cached), saved in the stage's ``done`` checkpoint: a resumed run skips a finished stage without
    calling ``streams_for``, so ``restore_notes`` gets that back instead, and the record says what
    an uninterrupted run's would. ``keep`` names further selection metrics: each keeps its own
    best checkpoint per stage (``FitResult.kept``: the last stage's).
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stages = cfg.resolved_stages()
    explicit = bool(cfg.stages)
    result = FitResult()
    gen = torch.Generator().manual_seed(seed)
    trained: set[str] = set()
    total_steps = 0
    epoch_base = 0
    for index, stage in enumerate(stages):
        # Model changes and freezing first: the streams' feature cache depends on what is frozen.
        model.begin_stage(stage)
        frozen = _freeze_unlisted(model, stage, explicit)
        last, best_path, done = _stage_dirs(ckpt_dir, index, stage)
        if recover_dir(done) is not None:
            ck = load_checkpoint(done, generators={"augment": gen})
            restore(model, ck.weights, done)
            result.stages.append(ck.meta["stage"])
            result.history.extend(ck.meta["history"])
            result.step_losses.extend(ck.meta["step_losses"])
            for k in ("train_seconds", "train_images", "train_samples"):
                setattr(result, k, getattr(result, k) + ck.meta[k])
            trained.update(ck.meta["trained"])
            result.best_epoch = ck.meta["stage"]["best_epoch"]
            result.kept = _kept(ck.meta["stage"], _stage_dirs(ckpt_dir, index, stage)[1])
            total_steps = total_steps or ck.meta["total_steps"]
            if restore_notes is not None and ck.meta.get("notes") is not None:
                restore_notes(ck.meta["notes"])
            if index == len(stages) - 1:
                # What the caller derives from the last stage's streams (the feature cache that
                # evaluation reads, in float16) must be there as after an uninterrupted run, or a
                # resumed run's predictions differ from its in their last digits.
                streams_for(stage)
            _unfreeze(frozen)
            epoch_base += stage.epochs or 0
            continue
        streams = streams_for(stage)
        if distributed.current() is not None:  # each rank trains on its part of every global batch
            streams = distributed.current().shard(streams)
        if not total_steps:
            # The progress p runs over every stage's steps; stages are taken as long as this one.
            total_steps = sum(s.epochs or 0 for s in stages) * len(next(iter(streams.values())))
        stage_result = _fit_stage(
            model,
            cfg,
            stage,
            index,
            streams,
            validate,
            best_metric,
            device,
            (last, best_path, done),
            augment=augment,
            gen=gen,
            explicit=explicit,
            trained=trained,
            epoch_base=epoch_base,
            total_steps=total_steps,
            progress=progress,
            result=result,
            notes=stage_notes,
            keep=keep or {},
        )
        result.best_epoch = stage_result["best_epoch"]
        result.kept = _kept(stage_result, best_path)
        _unfreeze(frozen)
        epoch_base += stage.epochs or 0
    return result


def _freeze_unlisted(model: Any, stage: Stage, explicit: bool) -> list[torch.nn.Parameter]:
    """Freeze, for this stage, the trainable groups a staged recipe does not list; return them."""
    if not explicit:
        return []
    frozen = []
    for name, params in model.param_groups().items():
        if name not in stage.lrs:
            for p in params:
                if p.requires_grad:
                    p.requires_grad_(False)
                    frozen.append(p)
    return frozen


def _unfreeze(params: list[torch.nn.Parameter]) -> None:
    for p in params:
        p.requires_grad_(True)


def _fit_stage(
    model: Any,
    cfg: TrainConfig,
    stage: Stage,
    index: int,
    streams: dict[str, Any],
    validate: Callable[[], dict[str, Any]],
    best_metric: Metric,
    device: torch.device,
    paths: tuple[Path, Path, Path],
    *,
    augment: Any,
    gen: torch.Generator,
    explicit: bool,
    trained: set[str],
    epoch_base: int,
    total_steps: int,
    progress: bool,
    result: FitResult,
    notes: Callable[[], Any] | None = None,
    keep: dict[str, Metric] | None = None,
) -> dict[str, Any]:
    last, best_path, done = paths
    keep = keep or {}
    opt = make_optimizer(model, dict(stage.lrs), cfg.weight_decay, strict=not explicit)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    trained.update(n for n, p in model.named_parameters() if id(p) in ids)
    first = next(iter(streams.values()))
    steps_per_epoch = math.ceil(len(first) / cfg.grad_accum)
    sched = make_scheduler(opt, stage, steps_per_epoch)
    epochs = stage.epochs or 0
    state = {"history": [], "step_losses": [], "best_epoch": 0, "best_value": None, "best_val": {}, "epoch": 0}
    stats_total = {"train_seconds": 0.0, "train_images": 0, "train_samples": 0}
    if recover_dir(last) is not None:
        ck = load_checkpoint(last, optimizer=opt, scheduler=sched, generators={"augment": gen})
        restore(model, ck.weights, last)
        state, stats_total = ck.meta["state"], ck.meta["stats"]
        trained.update(ck.meta["trained"])
        result.resumed_from = {"stage": stage.name, "epoch": epoch_base + state["epoch"]}
    for name in keep:  # also into a resumed state: a checkpoint may predate ``keep``
        state.setdefault("kept", {}).setdefault(name, {"epoch": 0, "value": None})
    step_offset = epoch_base * len(first)
    # Several ranks: the loss through DDP, steps through accelerate's optimizer; checkpoints keep
    # ``opt`` itself, so they do not depend on the number of ranks.
    dp = distributed.current()
    parallel, step_opt = dp.prepare(model, opt, streams) if dp is not None else (None, opt)

    for epoch in range(state["epoch"], epochs):
        # A plateau ends the stage (checked here too, so a run killed after it resumes stopped).
        if stage.patience and state.get("since_best", 0) >= stage.patience:
            break
        for s in streams.values():
            s.epoch = epoch  # the shuffle of an epoch depends on (seed, epoch) alone, so resume matches
        number = epoch_base + epoch + 1
        label = f"{stage.name} " if explicit else ""
        stats = train_epoch(
            model,
            streams,
            step_opt,
            sched,
            cfg,
            device,
            augment,
            gen,
            desc=f"{label}epoch {epoch + 1}/{epochs}",
            progress=progress,
            step_offset=step_offset + epoch * len(first),
            total_steps=total_steps,
            parallel=parallel,
        )
        for k, v in (
            ("train_seconds", stats.seconds),
            ("train_images", stats.images),
            ("train_samples", stats.samples),
        ):
            stats_total[k] += v
        state["step_losses"].extend(stats.losses)
        entry: dict[str, Any] = {
            "epoch": number,
            "stage": stage.name,
            "stage_epoch": epoch + 1,
            "train_loss": sum(stats.losses) / max(1, len(stats.losses)),
            "seconds": stats.seconds,
            "lr": {g["name"]: g["lr"] for g in opt.param_groups},
        }
        if stats.parts:
            entry["train_loss_parts"] = stats.parts
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == epochs:
            metrics = validate()
            entry["val"] = metrics
            value = metrics.get(best_metric.name)
            if value is None or not isinstance(value, (int, float)):
                given = ", ".join(k for k, v in metrics.items() if v is not None)
                raise ValueError(
                    f"best_metric {best_metric.name!r} is undefined on this validation split (e.g. AP with one "
                    f"class only) or not produced; it gave: {given}. Choose another with "
                    f"--set train.best_metric=NAME, or validate on more samples"
                )
            state["since_best"] = state.get("since_best", 0) + 1
            if _better(value, state["best_value"], best_metric):
                state.update(best_value=value, best_epoch=number, best_val=metrics, since_best=0)
                _save_weights(best_path, model, trained)
            for name, metric in keep.items():
                # A metric this validation did not produce (CLIPScore without a scorer) keeps nothing.
                kept, v = state["kept"][name], metrics.get(name)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and _better(v, kept["value"], metric):
                    kept.update(value=v, epoch=number)
                    _save_weights(kept_path(best_path, name), model, trained)
            if progress:
                tqdm.write(
                    f"  {label}epoch {epoch + 1}: loss {entry['train_loss']:.4f}  "
                    f"val {best_metric.name} {value:.4f}  ({stats.seconds:.1f}s)"
                )
        state["history"].append(entry)
        state["epoch"] = epoch + 1
        if distributed.is_main():  # the ranks' weights and optimizer states are the same
            save_checkpoint(
                last,
                weights=trained_state(model, trained),
                optimizer=opt,
                scheduler=sched,
                generators={"augment": gen},
                meta={"state": state, "stats": stats_total, "trained": sorted(trained)},
            )

    distributed.barrier()  # rank 0's best checkpoint is complete before any rank reads it
    if best_path.exists():
        restore(model, load_weights_file(best_path), best_path)
    summary = {
        "name": stage.name,
        "epochs": epochs,
        "best_epoch": state["best_epoch"],
        "best_metric": best_metric.name,
        "best_value": state["best_value"],
        "val": state["best_val"],
        "epochs_run": state["epoch"],  # fewer than ``epochs`` when the stage stopped on a plateau
        "kept": state.get("kept", {}),
        "lrs": dict(stage.lrs),
        "schedule": stage.schedule,
    }
    # The stage's end as one unit: its final weights, the RNG state and its results, so a run
    # resumed in a later stage starts that stage exactly where an uninterrupted run did.
    if distributed.is_main():
        save_checkpoint(
            done,
            weights=trained_state(model, trained),
            optimizer=None,
            scheduler=None,
            generators={"augment": gen},
            meta={
                "stage": summary,
                "history": state["history"],
                "step_losses": state["step_losses"],
                "trained": sorted(trained),
                "total_steps": total_steps,
                "notes": notes() if notes is not None else None,
                **stats_total,
            },
        )
    result.stages.append(summary)
    result.history.extend(state["history"])
    result.step_losses.extend(state["step_losses"])
    result.train_seconds += stats_total["train_seconds"]
    result.train_images += stats_total["train_images"]
    result.train_samples += stats_total["train_samples"]
    return summary
