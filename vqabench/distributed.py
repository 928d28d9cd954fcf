"""Data-parallel training of one cell over several processes (``torchrun`` / ``accelerate launch``).

With one process (no ``WORLD_SIZE`` > 1 in the environment) nothing here changes the path: no
accelerate import, no wrapper, :func:`current` is None. With several ranks:

- every rank builds the same seeded global batches; each global batch is split into one
  contiguous part per rank, so one optimiser step sees exactly the batch a single process would
  (``train.batch_size`` is the global batch on any number of ranks);
- the model's ``loss`` runs through accelerate's ``DistributedDataParallel`` wrapper (DDP only
  averages gradients for what runs through ``forward``, and ``loss`` is a method); each rank's loss
  is weighted by its share of the batch, so the averaged gradient is the full batch's;
- evaluation predicts a round-robin share of the batches on each rank and gathers the lines, each
  sample exactly once, in the order one process writes them;
- only rank 0 writes (checkpoints, predictions, records, the ledger); the others wait at barriers.

BatchNorm statistics are per rank during training, as with any DDP run (buffers are taken from
rank 0 before evaluation), so such models match a single process only approximately.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqabench.data import Batches
from vqabench.results import Ledger

_STATE: dict[str, Any] = {}


def world_size() -> int:
    """The number of processes of this training, from the launcher's environment (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    """Whether this process writes results: always with one process, rank 0 with several."""
    return rank() == 0


def current() -> DataParallel | None:
    """The process group of this run (created on first use), or None with one process."""
    if world_size() <= 1:
        return None
    if "dp" not in _STATE:
        _STATE["dp"] = DataParallel()
    return _STATE["dp"]


def barrier() -> None:
    """Wait for every rank (nothing with one process)."""
    dp = current()
    if dp is not None:
        dp.accelerator.wait_for_everyone()


def main_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run on rank 0 alone, every rank then waiting until it is done (its files exist)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs) if is_main() else None
        barrier()
        return out

    return wrapper


def main_first() -> AbstractContextManager[Any]:
    """A block rank 0 runs first (filling the caches), then the other ranks (nothing with one process)."""
    dp = current()
    return nullcontext() if dp is None else dp.accelerator.main_process_first()


def place(device: torch.device) -> torch.device:
    """This rank's device: ``cuda`` becomes the rank's own GPU (``LOCAL_RANK``) with several ranks."""
    dp = current()
    if dp is None or device.type != "cuda":
        return device
    return dp.accelerator.device


@dataclass
class ShardedBatches(Batches):
    """This rank's part of every global batch of ``Batches``: as many steps as one process takes.

    ``weight`` is the loss weight of the batch last yielded: its share of the global batch times
    the world size, so the ranks' gradients averaged by DDP are the whole batch's mean. A rank
    whose part of a small last batch is empty gets one sample with weight 0: it must still take
    part in the gradient all-reduce.
    """

    rank: int = 0
    world: int = 1
    weight: float = 1.0

    @classmethod
    def of(cls, batches: Batches, rank: int, world: int) -> ShardedBatches:
        return cls(**{f.name: getattr(batches, f.name) for f in fields(Batches)}, rank=rank, world=world)

    def parts(self) -> list[tuple[list[int], float]]:
        """(sample indices, loss weight) of this rank for each global batch of the current epoch."""
        out = []
        for group in self._groups():
            part = np.array_split(np.asarray(group), self.world)[self.rank].tolist()
            out.append((part, len(part) * self.world / len(group)) if part else ([group[0]], 0.0))
        return out

    def __iter__(self) -> Iterator[Any]:
        parts = self.parts()
        self.epoch += 1
        for part, weight in parts:
            self.weight = weight
            yield self.task.collate([self.samples[i] for i in part], self.ctx)


@dataclass
class EvalShard(Batches):
    """Every ``world``-th batch of an evaluation split from ``rank`` on (uneven counts are fine)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def of(cls, batches: Batches, rank: int, world: int) -> EvalShard:
        return cls(**{f.name: getattr(batches, f.name) for f in fields(Batches)}, rank=rank, world=world)

    def order(self) -> list[str]:
        """Sample ids in the order one process predicts them."""
        return [self.samples[i].id for g in self._groups() for i in g]

    def __len__(self) -> int:
        return len(self._groups()[self.rank :: self.world])

    def __iter__(self) -> Iterator[Any]:
        for g in self._groups()[self.rank :: self.world]:
            yield self.task.collate([self.samples[i] for i in g], self.ctx)


def gather_once(parts: list[list[dict[str, Any]]], order: list[str]) -> list[dict[str, Any]]:
    """The ranks' prediction lines as one list in ``order``; every sample exactly once or an error."""
    lines = [line for part in parts for line in part]
    ids = [line["id"] for line in lines]
    if len(ids) != len(order) or set(ids) != set(order):
        missing, extra = set(order) - set(ids), len(ids) - len(set(ids))
        raise RuntimeError(
            f"gathered {len(ids)} predictions for {len(order)} samples ({len(missing)} missing, {extra} duplicated); "
            f"every rank must predict its share of the same split"
        )
    position = {sid: i for i, sid in enumerate(order)}
    return sorted(lines, key=lambda line: position[line["id"]])


class StageParallel:
    """One stage's DDP wrapper: the loss through ``forward``, weighted by this rank's batch share."""

    def __init__(self, dp: DataParallel, model: torch.nn.Module, stream: ShardedBatches) -> None:
        self.dp, self.stream = dp, stream
        # Wrapped per stage: DDP fixes its parameter set when built, and a stage may add adapters
        # or freeze groups (begin_stage). Unused parameters (a branch one kind skips) are allowed.
        self.module = dp.accelerator.prepare_model(_LossForward(model, stream))

    def loss(self, batch: Any) -> torch.Tensor:
        return self.module(batch)

    def totals(self, losses: torch.Tensor, images: int, samples: int) -> tuple[torch.Tensor, int, int]:
        """The epoch's step losses averaged over ranks (the global batch's losses), counts summed."""
        acc = self.dp.accelerator
        losses = acc.reduce(losses.to(acc.device), reduction="mean").cpu()
        counts = acc.reduce(torch.tensor([images, samples], device=acc.device), reduction="sum").tolist()
        return losses, int(counts[0]), int(counts[1])


class _LossForward(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, stream: ShardedBatches) -> None:
        super().__init__()
        self.model, self.stream = model, stream

    def forward(self, batch: Any) -> torch.Tensor:
        return self.model.loss(batch) * self.stream.weight


class DataParallel:
    """The accelerate state of a run with several ranks."""

    def __init__(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        # gloo on CPU, nccl on GPUs; accelerate reads rank and world size from the launcher's environment.
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes

    def shard(self, streams: dict[str, Batches]) -> dict[str, ShardedBatches]:
        return {k: ShardedBatches.of(b, self.rank, self.world) for k, b in streams.items()}

    def prepare(self, model: torch.nn.Module, opt: torch.optim.Optimizer, streams: dict[str, Any]) -> tuple:
        """(the stage's DDP loss, the accelerate-wrapped optimizer) for sharded ``streams``."""
        first = next(iter(streams.values()))
        return StageParallel(self, model, first), self.accelerator.prepare_optimizer(opt)

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank, so all ranks predict with one model."""
        for buf in model.buffers():
            torch.distributed.broadcast(buf.data, src=0)

    def gather(self, lines: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
        from accelerate.utils import gather_object

        # gather_object concatenates the ranks' lists; wrapping keeps each rank's lines together.
        return gather_once(gather_object([lines]), order)


class RankLedger(Ledger):
    """The ledger of a rank other than 0: the same states, in memory only (rank 0 writes the file)."""

    def __init__(self, runs: Path) -> None:
        self.path = Path(runs) / "status.json"
        self.cells: dict[str, dict[str, Any]] = {}

    def set(self, cell: str, state: str, **info: Any) -> None:
        self.cells[cell] = {"state": state, **info}


def open_ledger(runs: Path) -> Ledger:
    """The run directory's ledger; a rank other than 0 keeps its own in memory."""
    return Ledger(runs) if is_main() else RankLedger(runs)
