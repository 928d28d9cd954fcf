"""The training engine every family shares.

AdamW over named parameter groups with their own learning rates, linear warm-up then cosine
decay, gradient accumulation and clipping, bf16 autocast on GPU, validation every epoch with the
metric history kept, the best checkpoint by a chosen metric, and safetensors checkpoints that a
killed run resumes from.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from vqabench.config import TrainConfig
from vqabench.evaluate import autocast

Validate = Callable[[int], dict[str, Any]]


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch
    step_losses: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = -math.inf
    train_seconds: float = 0.0
    train_images: int = 0  # distinct images encoded (one per image per step)
    train_samples: int = 0
    resumed_from: int = 0


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and all buffers: what a checkpoint must keep (frozen weights reload)."""
    state = {n: p for n, p in model.named_parameters() if p.requires_grad}
    state.update(dict(model.named_buffers()))
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Write the trainable state as safetensors, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(_trainable_state(model), str(tmp))
    os.replace(tmp, path)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    state = load_file(str(path))
    missing = set(_trainable_state(model)) - set(state)
    if missing:
        raise RuntimeError(
            f"checkpoint {path} lacks {len(missing)} tensors (e.g. {sorted(missing)[0]}); delete it to retrain"
        )
    model.load_state_dict(state, strict=False)


def make_optimizer(model: Any, cfg: TrainConfig) -> torch.optim.AdamW:
    groups = []
    for name, params in model.param_groups().items():
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        if name not in cfg.lrs:
            raise ValueError(
                f"parameter group {name!r} of {type(model).__name__} has no learning rate; "
                f"set one with --lr {name}=VALUE (recipe has: {', '.join(cfg.lrs) or 'none'})"
            )
        groups.append({"params": params, "lr": cfg.lrs[name], "name": name})
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to 0."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class EpochStats:
    losses: list[float]
    images: int
    samples: int
    seconds: float


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
) -> EpochStats:
    """One pass over ``batches`` (or ``max_steps`` of them): forward, backward, step; timed."""
    model.train()
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    n_batches = len(batches) if max_steps is None else min(max_steps, len(batches))
    losses: list[torch.Tensor] = []
    images = samples = 0
    t0 = time.perf_counter()
    bar = tqdm(batches, total=n_batches, desc=desc, unit="batch", disable=not progress, leave=False)
    opt.zero_grad(set_to_none=True)
    for i, batch in enumerate(bar):
        if i >= n_batches:
            break
        batch = batch.to(device)
        if augment is not None:
            batch.images = augment(batch.images, gen)
        if device.type == "cuda" and batch.images.dim() == 4 and batch.images.numel():
            batch.images = batch.images.contiguous(memory_format=torch.channels_last)
        with autocast(device, cfg.precision):
            loss = model.loss(batch)
        (loss / cfg.grad_accum).backward()
        losses.append(loss.detach())
        images += batch.images.shape[0]
        samples += len(batch.ids)
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
    return EpochStats(torch.stack(losses).float().cpu().tolist() if losses else [], images, samples, seconds)


def fit(
    model: Any,
    train_batches: Any,
    validate: Validate,
    cfg: TrainConfig,
    device: torch.device,
    ckpt_dir: Path,
    *,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs``, validating each epoch; resume from ``ckpt_dir``."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    opt = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_batches) / cfg.grad_accum)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(steps_per_epoch * cfg.epochs, round(steps_per_epoch * cfg.warmup_epochs))
    )
    result = FitResult()
    gen = torch.Generator().manual_seed(seed)
    start = 0
    last, trainer = ckpt_dir / "last.safetensors", ckpt_dir / "trainer.pt"
    if last.exists() and trainer.exists():
        state = torch.load(trainer, map_location="cpu", weights_only=False)
        load_weights(model, last)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        result = state["result"]
        start = result.resumed_from = state["epoch"]
        train_batches.epoch = start

    for epoch in range(start, cfg.epochs):
        stats = train_epoch(
            model,
            train_batches,
            opt,
            sched,
            cfg,
            device,
            augment,
            gen,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            progress=progress,
        )
        seconds = stats.seconds
        result.train_seconds += seconds
        result.train_images += stats.images
        result.train_samples += stats.samples
        step_losses = stats.losses
        result.step_losses.extend(step_losses)
        metrics = validate(epoch + 1)
        entry = {
            "epoch": epoch + 1,
            "train_loss": sum(step_losses) / max(1, len(step_losses)),
            "seconds": seconds,
            "lr": {g["name"]: g["lr"] for g in opt.param_groups},
            "val": metrics,
        }
        result.history.append(entry)
        value = metrics.get(cfg.best_metric)
        if value is None:
            raise KeyError(f"best_metric {cfg.best_metric!r} is not among the validation metrics: {', '.join(metrics)}")
        if value > result.best_value:
            result.best_value, result.best_epoch = value, epoch + 1
            save_weights(model, ckpt_dir / "best.safetensors")
        save_weights(model, last)
        tmp = trainer.with_name(".trainer.pt.tmp")
        torch.save(
            {
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "generator": gen.get_state(),
                "result": result,
                "epoch": epoch + 1,
            },
            tmp,
        )
        os.replace(tmp, trainer)
        if progress:
            tqdm.write(
                f"  epoch {epoch + 1}: loss {entry['train_loss']:.4f}  val {cfg.best_metric} {value:.4f}  ({seconds:.1f}s)"
            )
    if (ckpt_dir / "best.safetensors").exists():
        load_weights(model, ckpt_dir / "best.safetensors")
    return result
