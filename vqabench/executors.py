"""Running a run's cells on a Ray cluster: one Ray task per (model, task) cell.

``vqabench run --executor ray [--ray-address ADDRESS]`` plans and checks the cells as a sequential
run does, then submits each cell as a Ray task that calls the same ``run_cell``. The workers write
each cell's files (checkpoints, predictions, record) under ``--out``, which every node must see
(a shared filesystem); the driver alone keeps the ledger, shows progress over the cells and, as
``vqabench run`` does, writes the leaderboards at the end.

A cell whose worker dies (killed, out of memory, node lost) is submitted once more (it resumes
from its last epoch checkpoint) and then recorded as failed with the reason; an error raised by
the cell itself (bad data, a NaN loss) is recorded at once, as in a sequential run. A finished
cell is never rerun: its record's config hash matches, as in a sequential run.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from vqabench.cell import Cell, RunOptions, resolve
from vqabench.config import config_hash
from vqabench.results import Ledger


def import_ray() -> Any:
    """The ``ray`` module, or an error saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(f"--executor ray needs Ray ({exc}); install it with: pip install 'vqabench[ray]'") from None
    return ray


def run_remote_cell(opts: RunOptions, key: str) -> tuple[str, dict[str, Any]]:
    """What a Ray worker runs: load the plugins, find the cell ``key`` in the plan, run it."""
    from vqabench.plugins import load_plugins
    from vqabench.runner import plan, run_cell

    registry, infos = load_plugins()
    cells, _ = plan(registry, opts)
    found = [c for c in cells if c.key(opts) == key]
    if not found:
        raise LookupError(f"cell {key} is not in this worker's plan: install the same plugins on every node")
    return run_cell(found[0], opts, registry, infos, {})


def _system_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """Errors of the process or node that ran a task, not of the cell: worth one more attempt."""
    e = ray.exceptions
    return (e.WorkerCrashedError, e.NodeDiedError, e.RayActorError, e.ObjectLostError, e.OutOfMemoryError)


@dataclass
class RayExecutor:
    """Runs the cells as Ray tasks: one GPU per cell on a cluster with GPUs, else ``cpus_per_cell``."""

    address: str | None = None  # None: the Ray instance of this process, or a new local one
    progress: bool = True
    retries: int = 1  # further attempts of a cell whose worker died
    cpus_per_cell: float = 1.0
    # Variables a worker needs as the driver has them (which plugins load, where the cache is).
    forward_env: tuple[str, ...] = ("VQABENCH_PLUGINS", "VQABENCH_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

    def __post_init__(self) -> None:
        import_ray()  # a missing Ray stops the command before anything is planned or run

    def __call__(self, cells: list[Cell], opts: RunOptions, ledger: Ledger) -> None:
        ray = import_ray()
        started = not ray.is_initialized()
        if started:  # an instance this process already joined (ray.init in a notebook or test) is used as it is
            ray.init(address=self.address, include_dashboard=False, logging_level="WARNING")
        try:
            self._run(ray, cells, opts, ledger)
        finally:
            if started:
                ray.shutdown()

    def resources(self, ray: Any, opts: RunOptions) -> dict[str, float]:
        """A cell's Ray resources: one GPU where the cluster has GPUs (unless --device cpu), else CPUs.

        A task asking for a GPU would wait forever on a CPU-only cluster, so it asks for none there.
        """
        if ray.cluster_resources().get("GPU", 0) > 0 and opts.device != "cpu":
            return {"num_gpus": 1, "num_cpus": 1}
        return {"num_gpus": 0, "num_cpus": self.cpus_per_cell}

    def _run(self, ray: Any, cells: list[Cell], opts: RunOptions, ledger: Ledger) -> None:
        self._prepare_data(cells, opts)
        # Workers print no progress bars of their own: the driver shows progress over the cells.
        remote_opts = dataclasses.replace(opts, progress=False)
        env = {k: os.environ[k] for k in self.forward_env if k in os.environ}
        task = ray.remote(run_remote_cell).options(
            **self.resources(ray, opts),
            max_retries=0,  # a dead worker is resubmitted below, so the ledger can say it happened
            runtime_env={"env_vars": env} if env else None,
        )
        system = _system_errors(ray)
        pending: dict[Any, tuple[str, int, float]] = {}  # object ref -> (cell key, attempt, start)
        earlier: dict[str, str] = {}  # cell key -> the error of its previous attempt

        def submit(key: str, attempt: int) -> None:
            pending[task.remote(remote_opts, key)] = (key, attempt, time.perf_counter())
            # "pending" until its result arrives: Ray starts a submitted task when resources free up.
            ledger.set(key, "pending", attempt=attempt, executor="ray", note="submitted to Ray")

        for cell in cells:
            submit(cell.key(opts), 1)
        bar = tqdm(total=len(cells), desc="cells", unit="cell", disable=not self.progress)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            key, attempt, t0 = pending.pop(ref)
            seconds = round(time.perf_counter() - t0, 1)
            notes = {"attempts": attempt, "seconds": seconds}
            if key in earlier:
                notes["first_error"] = earlier[key]
            try:
                state, info = ray.get(ref)
            except system as exc:
                reason = f"{type(exc).__name__}: worker died ({_first_line(exc)})"
                if attempt <= self.retries:
                    earlier[key] = reason
                    tqdm.write(f"RETRY {key}: {reason}")
                    submit(key, attempt + 1)
                    continue
                ledger.set(key, "failed", error=f"{reason}; gave up after {attempt} attempts", **notes)
                tqdm.write(f"FAILED {key}: {reason}")
            except Exception as exc:  # the cell's own error: recorded, as in a sequential run
                cause = getattr(exc, "cause", None) or exc
                ledger.set(
                    key,
                    "failed",
                    error=f"{type(cause).__name__}: {cause}",
                    traceback="".join(traceback.format_exception(exc, limit=8))[-4000:],
                    **notes,
                )
                tqdm.write(f"FAILED {key}: {type(cause).__name__}: {cause}")
            else:
                ledger.set(key, state, **info, **notes)
                tqdm.write(f"{state} {key} ({seconds} s)")
            bar.update(1)
        bar.close()

    @staticmethod
    def _prepare_data(cells: list[Cell], opts: RunOptions) -> None:
        """Generate or index each dataset once, here, before workers read it from the cache."""
        seen = set()
        for cell in cells:
            dcfg = resolve(cell, opts)[1]
            key = (cell.dataset.name, cell.kind, config_hash(dcfg))
            if key not in seen:
                seen.add(key)
                try:
                    cell.dataset.load(dcfg, cell.kind, opts.cache_dir)
                except Exception:  # the cell's worker meets the same error and records it
                    continue


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
