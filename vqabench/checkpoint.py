"""Training checkpoints without pickle, written as one unit.

A checkpoint is one directory, written through ``files.atomic_dir`` so that a reader (a resumed
run) sees the previous complete set or the new one, never the weights of one epoch with the
optimizer of another::

    <directory>/
        checkpoint.json        format + version, tensor counts, optimizer param_groups and
                               scalar state, scheduler state, numpy/Python RNG states, meta
        weights.safetensors    the tensors given as ``weights``
        optimizer.safetensors  every tensor of the optimizer state (``state.<param_index>.<name>``)
        rng.safetensors        ``generator.<name>``, ``torch`` (global CPU RNG), ``cuda.<device>``

Only ``safetensors`` and ``json`` read it back: a checkpoint directory is data, so a planted or
corrupted file fails with a ``CheckpointError`` instead of running code the way a pickle would.

JSON can say less than Python, so a few values are tagged to come back as they went in:
``{"__tuple__": [...]}`` (AdamW's ``betas``), ``{"__float__": "inf"}`` (a "best so far" of
``-inf``, ReduceLROnPlateau's ``best``) and ``{"__tensor__": KEY}`` (a tensor inside the optimizer
state, stored in optimizer.safetensors under KEY). Anything else that is not plain JSON is refused
when saving, naming where it is, rather than written as a string that cannot be restored.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch  # called as safetensors.torch.save_file so that tests can make it fail
import torch
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler

from vqabench import files

FORMAT = "vqabench-checkpoint"
VERSION = 1

CHECKPOINT_JSON = "checkpoint.json"
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
TENSOR_FILES = (WEIGHTS_FILE, OPTIMIZER_FILE, RNG_FILE)

_TAGS = ("__tuple__", "__float__", "__tensor__")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, of another version, or not ours."""


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` hands back; optimizer, scheduler and RNGs are restored in place."""

    directory: Path
    weights: dict[str, Tensor]  # on ``map_location``
    meta: dict[str, Any]  # as given to ``save_checkpoint``
    version: int


# --- JSON with tags ---------------------------------------------------------------------------


def _encode(value: Any, where: str, tensors: dict[str, Tensor] | None = None) -> Any:
    """``value`` as plain JSON types, tagging tuples, non-finite floats and (with a sink) tensors.

    ``where`` is the dotted path of ``value``; it names the offending entry in errors and keys the
    tensors sent to ``tensors``.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}  # 'inf', '-inf', 'nan'
    if isinstance(value, np.generic) and isinstance(value.item(), (bool, int, float)):
        return _encode(value.item(), where, tensors)  # a metric computed with numpy
    if isinstance(value, Tensor):
        if tensors is None:
            raise TypeError(f"{where} is a tensor; only the optimizer state may hold tensors in a checkpoint")
        if where in tensors:
            raise ValueError(f"{where}: two tensors of the checkpoint would be stored under the same key")
        tensors[where] = value
        return {"__tensor__": where}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{where} has a key {bad[0]!r} of type {type(bad[0]).__name__}; checkpoint keys are str")
        if len(value) == 1 and next(iter(value)) in _TAGS:
            raise ValueError(f"{where} is a dict with the single key {next(iter(value))!r}, reserved for tags")
        return {k: _encode(v, f"{where}.{k}", tensors) for k, v in value.items()}
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which a checkpoint cannot hold "
        "(plain JSON values, tuples and, in the optimizer state, tensors only)"
    )


def _decode(value: Any, where: str, tensors: dict[str, Tensor] | None = None) -> Any:
    """The inverse of ``_encode``; a malformed tag raises ValueError naming where it is."""
    if isinstance(value, list):
        return [_decode(v, f"{where}.{i}", tensors) for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and next(iter(value)) in _TAGS:
        tag, inner = next(iter(value.items()))
        if tag == "__tuple__" and isinstance(inner, list):
            return tuple(_decode(v, f"{where}.{i}", tensors) for i, v in enumerate(inner))
        if tag == "__float__" and inner in ("inf", "-inf", "nan"):
            return float(inner)
        if tag == "__tensor__" and tensors is not None and isinstance(inner, str):
            if inner not in tensors:
                raise ValueError(f"{where} refers to tensor {inner!r}, which {OPTIMIZER_FILE} lacks")
            return tensors[inner]
        raise ValueError(f"{where} holds a malformed {tag} entry")
    return {k: _decode(v, f"{where}.{k}", tensors) for k, v in value.items()}


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


# --- saving -------------------------------------------------------------------------------------


def _storable(tensors: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """CPU, contiguous tensors that share no memory: what ``safetensors`` agrees to write."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, t in tensors.items():
        if not isinstance(key, str) or not isinstance(t, Tensor):
            raise TypeError(f"{where}: {key!r} is not a str -> Tensor entry ({type(t).__name__})")
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()  # tied weights: safetensors refuses tensors that share memory
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def _write_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})
    _fsync(path)


def _fsync(path: Path) -> None:
    # The rename that publishes the directory must not reach the disk before the data does, or a
    # power cut leaves a complete-looking directory of empty files.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rng_state(generators: dict[str, torch.Generator]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """RNG states as tensors (torch generators) and JSON (numpy, Python)."""
    tensors = {}
    for name, gen in generators.items():
        if not isinstance(gen, torch.Generator):
            raise TypeError(f"generators[{name!r}] is a {type(gen).__name__}, not a torch.Generator")
        tensors[f"generator.{name}"] = gen.get_state()
    tensors["torch"] = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    for i, state in enumerate(cuda):
        tensors[f"cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, state, gauss_next = random.getstate()
    info = {
        "generators": sorted(generators),
        "cuda_devices": len(cuda),
        "numpy": {
            "kind": str(kind),
            "keys": np.asarray(keys).tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "state": list(state), "gauss_next": gauss_next},
    }
    return tensors, info


def save_checkpoint(
    directory: Path,
    *,
    weights: dict[str, Tensor],
    optimizer: torch.optim.Optimizer | None,
    scheduler: LRScheduler | None,
    generators: dict[str, torch.Generator],
    meta: dict[str, Any],
) -> None:
    """Write ``directory`` as one unit: the old checkpoint stays until the new one is complete.

    ``weights`` are the model tensors (moved to the CPU for writing); ``optimizer`` and
    ``scheduler`` are saved through their ``state_dict()``; ``generators`` are named torch
    generators (a data order, an augmentation stream). The global torch CPU and CUDA, numpy and
    Python RNGs are saved too. ``meta`` is a JSON-able dict (epoch, stage, history).

    Everything is converted before anything is written, so a value a checkpoint cannot hold (a
    function kept in a scheduler's state, a tensor in ``meta``) raises TypeError and leaves the
    existing checkpoint as it was. One writer per directory.
    """
    directory = Path(directory)
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, not {type(meta).__name__}")
    meta_json = _encode(meta, "meta")
    weight_tensors = _storable(weights, "weights")

    opt_tensors: dict[str, Tensor] = {}
    opt_json = None
    if optimizer is not None:
        state = optimizer.state_dict()
        opt_json = {
            "class": type(optimizer).__name__,
            # Optimizer state is keyed by parameter index (int); JSON keys are str.
            "state": {str(i): _encode(s, f"state.{i}", opt_tensors) for i, s in state["state"].items()},
            "param_groups": _encode(state["param_groups"], "param_groups", opt_tensors),
        }
        opt_tensors = _storable(opt_tensors, "optimizer state")

    sched_json = None
    if scheduler is not None:
        # LambdaLR keeps None for plain functions and the __dict__ of callable objects; a value
        # that JSON cannot hold is refused here by name.
        sched_json = {"class": type(scheduler).__name__, "state": _encode(scheduler.state_dict(), "scheduler")}

    rng_tensors, rng_json = _rng_state(generators)
    rng_tensors = _storable(rng_tensors, "rng")

    record = {
        "format": FORMAT,
        "version": VERSION,
        "files": {
            WEIGHTS_FILE: {"tensors": len(weight_tensors)},
            OPTIMIZER_FILE: {"tensors": len(opt_tensors)},
            RNG_FILE: {"tensors": len(rng_tensors)},
        },
        "optimizer": opt_json,
        "scheduler": sched_json,
        "rng": rng_json,
        "meta": meta_json,
    }
    text = files.dumps_json(record) + "\n"  # all values are plain JSON by now; nothing goes through str()

    # A writer killed earlier left its temporary directory behind; only this name's are ours.
    for stale in directory.parent.glob(f".{directory.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    with files.atomic_dir(directory) as tmp:
        _write_tensors(tmp / WEIGHTS_FILE, weight_tensors)
        _write_tensors(tmp / OPTIMIZER_FILE, opt_tensors)
        _write_tensors(tmp / RNG_FILE, rng_tensors)
        (tmp / CHECKPOINT_JSON).write_text(text, encoding="utf-8")
        _fsync(tmp / CHECKPOINT_JSON)
        _fsync(tmp)
    try:
        _fsync(directory.parent)  # makes the rename itself durable
    except OSError:
        pass  # not every file system lets a directory be opened for fsync


# --- loading ------------------------------------------------------------------------------------


def _fail(file: Path, problem: str, remove: Path) -> CheckpointError:
    return CheckpointError(f"checkpoint file {file}: {problem}; delete {remove} to retrain from the start")


def _read_tensors(path: Path, device: str, remove: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise _fail(path, "is missing", remove)
    try:
        return safetensors.torch.load_file(str(path), device=device)
    except safetensors.SafetensorError as exc:  # truncated, not safetensors at all (a pickle), bad header
        raise _fail(path, f"is not a readable safetensors file ({exc})", remove) from None


def _device(map_location: str | torch.device) -> str:
    return str(torch.device(map_location))


def load_weights_file(path: Path, *, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The tensors of one safetensors file (``best.safetensors``); a bad file raises CheckpointError."""
    path = Path(path)
    return _read_tensors(path, _device(map_location), path)


def _read_record(directory: Path) -> dict[str, Any]:
    path = directory / CHECKPOINT_JSON
    if not path.is_file():
        raise _fail(path, "is missing (an incomplete or foreign checkpoint directory)", directory)
    try:
        record = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _fail(path, f"is not readable JSON ({exc})", directory) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise _fail(path, f"is not a {FORMAT} record", directory)
    if record.get("version") != VERSION:
        raise _fail(
            path, f"has format version {record.get('version')!r}, this vqabench reads version {VERSION}", directory
        )
    for key in ("files", "optimizer", "scheduler", "rng", "meta"):
        if key not in record:
            raise _fail(path, f"lacks the {key!r} entry", directory)
    return record


def _check_count(record: dict[str, Any], directory: Path, name: str, tensors: dict[str, Tensor]) -> None:
    listed = record["files"].get(name) if isinstance(record["files"], dict) else None
    expected = listed.get("tensors") if isinstance(listed, dict) else None
    if expected != len(tensors):
        raise _fail(directory / name, f"holds {len(tensors)} tensors, {CHECKPOINT_JSON} says {expected}", directory)


def load_checkpoint(
    directory: Path,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    generators: dict[str, torch.Generator] | None = None,
    restore_global_rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Read ``directory`` written by ``save_checkpoint`` and restore what is passed in place.

    ``optimizer`` and ``scheduler`` must be of the classes saved and built over the same
    parameters (fresh ones, as at the start of training); ``generators`` are restored by name,
    each of which must be in the checkpoint. With ``restore_global_rng`` the global torch CPU,
    CUDA, numpy and Python RNGs continue where they were saved. Weights come back on
    ``map_location``; optimizer state goes where torch's ``load_state_dict`` puts it (the device
    and, for floating state, the dtype of each parameter).

    A kill between the two renames of ``atomic_dir`` is repaired first (``files.recover_dir``).
    Everything is read and checked before anything is restored, so a CheckpointError leaves the
    optimizer, scheduler and RNGs untouched.
    """
    directory = Path(directory)
    if files.recover_dir(directory) is None:
        raise CheckpointError(f"no checkpoint at {directory} (neither it nor {directory.name}.old exists)")
    device = _device(map_location)
    record = _read_record(directory)
    json_path = directory / CHECKPOINT_JSON

    weights = _read_tensors(directory / WEIGHTS_FILE, device, directory)
    opt_tensors = _read_tensors(directory / OPTIMIZER_FILE, "cpu", directory)
    rng_tensors = _read_tensors(directory / RNG_FILE, "cpu", directory)  # set_state takes CPU bytes
    for name, tensors in ((WEIGHTS_FILE, weights), (OPTIMIZER_FILE, opt_tensors), (RNG_FILE, rng_tensors)):
        _check_count(record, directory, name, tensors)

    try:
        meta = _decode(record["meta"], "meta")
        opt_state = _optimizer_state(record["optimizer"], optimizer, opt_tensors)
        sched_state = _scheduler_state(record["scheduler"], scheduler)
        rng = _rng_plan(record["rng"], rng_tensors, generators or {}, restore_global_rng)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise _fail(json_path, f"does not match this run ({exc})", directory) from None

    try:
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)  # casts state to each parameter's device and dtype
        if sched_state is not None:
            scheduler.load_state_dict(sched_state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise _fail(json_path, f"does not fit the optimizer or scheduler of this run ({exc})", directory) from None
    rng()
    return Checkpoint(directory=directory, weights=weights, meta=meta, version=record["version"])


def _optimizer_state(
    saved: dict[str, Any] | None, optimizer: torch.optim.Optimizer | None, tensors: dict[str, Tensor]
) -> dict[str, Any] | None:
    if optimizer is None:
        return None
    if saved is None:
        raise ValueError("the checkpoint holds no optimizer state")
    if saved["class"] != type(optimizer).__name__:
        raise ValueError(f"the optimizer saved is a {saved['class']}, this run's is a {type(optimizer).__name__}")
    state = {int(i): _decode(s, f"state.{i}", tensors) for i, s in saved["state"].items()}
    groups = _decode(saved["param_groups"], "param_groups", tensors)
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(
            f"{len(groups)} parameter groups saved, this run's optimizer has {len(optimizer.param_groups)}"
        )
    for i, (g, ours) in enumerate(zip(groups, optimizer.param_groups)):
        if len(g["params"]) != len(ours["params"]):
            raise ValueError(
                f"parameter group {i} saved {len(g['params'])} parameters, this run's has {len(ours['params'])}"
            )
    return {"state": state, "param_groups": groups}


def _scheduler_state(saved: dict[str, Any] | None, scheduler: LRScheduler | None) -> dict[str, Any] | None:
    if scheduler is None:
        return None
    if saved is None:
        raise ValueError("the checkpoint holds no scheduler state")
    if saved["class"] != type(scheduler).__name__:
        raise ValueError(f"the scheduler saved is a {saved['class']}, this run's is a {type(scheduler).__name__}")
    return _decode(saved["state"], "scheduler")


def _rng_plan(
    saved: dict[str, Any], tensors: dict[str, Tensor], generators: dict[str, torch.Generator], restore_global: bool
):
    """Check every RNG state against what it will be set on; return the function that sets them.

    Each state is first set on a fresh generator of the same kind, so a corrupt one raises here,
    before any RNG of this process has changed.
    """
    for name, gen in generators.items():
        key = f"generator.{name}"
        if key not in tensors:
            raise ValueError(f"generator {name!r} is not in the checkpoint (it has {', '.join(saved['generators'])})")
        torch.Generator(device=gen.device).set_state(tensors[key])
    if "torch" not in tensors:
        raise ValueError("the global torch RNG state is missing")
    torch.Generator().set_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(int(saved["cuda_devices"]))]
    np_saved, py_saved = saved["numpy"], saved["python"]
    np_state = (
        str(np_saved["kind"]),
        np.asarray(np_saved["keys"], dtype=np.uint32),
        int(np_saved["pos"]),
        int(np_saved["has_gauss"]),
        float(np_saved["cached_gaussian"]),
    )
    np.random.RandomState().set_state(np_state)
    gauss = py_saved["gauss_next"]
    py_state = (
        int(py_saved["version"]),
        tuple(int(v) for v in py_saved["state"]),
        None if gauss is None else float(gauss),
    )
    random.Random().setstate(py_state)

    def restore() -> None:
        for name, gen in generators.items():
            gen.set_state(tensors[f"generator.{name}"])
        if not restore_global:
            return
        torch.set_rng_state(tensors["torch"])
        if cuda:
            if not torch.cuda.is_available():
                warnings.warn(
                    "the checkpoint holds CUDA RNG states but CUDA is not available; not restored", stacklevel=3
                )
            else:
                count = torch.cuda.device_count()
                if count != len(cuda):
                    warnings.warn(
                        f"the checkpoint holds the RNG states of {len(cuda)} CUDA devices, this machine has {count}; "
                        "restoring the first ones",
                        stacklevel=3,
                    )
                for i, state in enumerate(cuda[:count]):
                    torch.cuda.set_rng_state(state, i)
        np.random.set_state(np_state)
        random.setstate(py_state)

    return restore


# --- a cell's checkpoint directory ----------------------------------------------------------------


def replaced_dir(ckpt_dir: Path) -> Path:
    """Where ``start_checkpoints`` keeps the checkpoints it replaces: ``<ckpt_dir>.replaced``."""
    ckpt_dir = Path(ckpt_dir)
    return ckpt_dir.with_name(ckpt_dir.name + ".replaced")


def holds_checkpoint(ckpt_dir: Path) -> bool:
    """Whether a run's checkpoint directory holds a set it can resume from (a stage's ``last`` or ``done``)."""
    return any(
        p.is_dir() for pattern in ("*/last", "*/last.old", "*/done", "*/done.old") for p in Path(ckpt_dir).glob(pattern)
    )


def start_checkpoints(ckpt_dir: Path, config_hash: str, *, force: bool = False) -> None:
    """Make ``ckpt_dir`` the checkpoint directory of a run of ``config_hash``, keeping what it may resume.

    Checkpoints of another config (all of them with ``force``) must not be resumed, but they are
    not deleted before this run can replace them: they are moved to ``replaced_dir`` and deleted
    once this run has a checkpoint of its own (seen here at its next start) or its record
    (``drop_replaced``). So a run that cannot write (a full disk, a read-only directory) or is
    killed before its first checkpoint loses nothing: a write of the config hash that fails here
    puts them back at once, and the next start puts them back when the run that set them aside
    wrote no checkpoint.
    """
    ckpt_dir = Path(ckpt_dir)
    aside = replaced_dir(ckpt_dir)
    if aside.exists():
        _settle_replaced(ckpt_dir, aside)
    hash_file = ckpt_dir / "config_hash"
    other_config = hash_file.exists() and hash_file.read_text() != config_hash
    if ckpt_dir.exists() and (other_config or force):
        os.replace(ckpt_dir, aside)
    try:
        files.atomic_write_text(hash_file, config_hash)
    except OSError:
        if aside.exists():
            _settle_replaced(ckpt_dir, aside)
        raise


def _settle_replaced(ckpt_dir: Path, aside: Path) -> None:
    """Drop the set-aside checkpoints if ``ckpt_dir`` has its own by now, else put them back."""
    if holds_checkpoint(ckpt_dir):
        shutil.rmtree(aside)
        return
    if ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # a config hash, maybe a best.safetensors: nothing to resume from
    os.replace(aside, ckpt_dir)


def drop_replaced(ckpt_dir: Path) -> None:
    """Delete the checkpoints ``start_checkpoints`` set aside: the run's record has replaced them."""
    shutil.rmtree(replaced_dir(ckpt_dir), ignore_errors=True)
