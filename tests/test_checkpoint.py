"""vqabench.checkpoint: exact resume, no pickle on the load path, and one-unit writes."""

from __future__ import annotations

import ast
import copy
import json
import math
import os
import pathlib
import pickle
import random
import types
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, StepLR

from vqabench.checkpoint import (
    CHECKPOINT_JSON,
    OPTIMIZER_FILE,
    RNG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    load_weights_file,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _keep_global_rngs():
    """These tests seed and restore the global RNGs; the tests after them get theirs back."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    yield
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])


# --- a tiny training loop that draws from every RNG a checkpoint restores -----------------------


def _model(seed: int, device: str = "cpu") -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.Linear(16, 1)).to(device).train()


def _optimizer(model: nn.Module) -> torch.optim.AdamW:
    # Two named groups with their own learning rates, as engine.make_optimizer builds them.
    return torch.optim.AdamW(
        [
            {"params": model[0].parameters(), "lr": 1e-2, "name": "body"},
            {"params": model[2].parameters(), "lr": 3e-2, "name": "head"},
        ],
        weight_decay=0.05,
    )


def _warmup_cosine(total: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


SCHEDULERS = {
    "warmup_cosine": lambda opt: LambdaLR(opt, _warmup_cosine(total=12, warmup=3)),
    "step_decay": lambda opt: StepLR(opt, step_size=2, gamma=0.5),
}


def _train(model, opt, sched, gen: torch.Generator, steps: int) -> torch.Tensor:
    """``steps`` steps; the losses depend on the named generator (data), the global torch RNG
    (dropout), numpy and Python's RNGs (a noisy target), so each must be restored to match."""
    device = next(model.parameters()).device
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 6, generator=gen).to(device)
        y = x.sum(1, keepdim=True) + float(np.random.standard_normal())  # odd draws: numpy's gauss cache in use
        scale = 1.0 + 0.1 * random.gauss(0.0, 1.0)  # Python keeps a cached gaussian too
        loss = ((model(x) * scale - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
    return torch.stack(losses).cpu()


def _trained(tmp_path: Path, scheduler: str, *, steps: int = 4, device: str = "cpu"):
    """A run saved after ``steps`` steps, and the losses of the 3 steps it went on to make."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = _model(0, device)
    opt = _optimizer(model)
    sched = SCHEDULERS[scheduler](opt)
    gen = torch.Generator().manual_seed(7)
    _train(model, opt, sched, gen, steps)
    directory = tmp_path / "ckpt"
    meta = {"epoch": steps, "stage": "finetune", "best_value": -math.inf, "history": [{"loss": 1.5}]}
    save_checkpoint(
        directory, weights=model.state_dict(), optimizer=opt, scheduler=sched, generators={"data": gen}, meta=meta
    )
    # state_dict() shares the live tensors, which the steps below update in place
    saved = copy.deepcopy({"opt": opt.state_dict(), "sched": sched.state_dict()})
    after = _train(model, opt, sched, gen, 3)
    return directory, meta, saved, after, model


def _fresh(scheduler: str, seed: int, device: str = "cpu"):
    """A new process's view: other weights, a fresh optimizer/scheduler/generator, other global RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    model = _model(seed, device)
    opt = _optimizer(model)
    return model, opt, SCHEDULERS[scheduler](opt), torch.Generator().manual_seed(seed)


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_resume_continues_bit_for_bit(tmp_path, scheduler):
    directory, meta, saved, after, trained = _trained(tmp_path, scheduler)

    model, opt, sched, gen = _fresh(scheduler, seed=123)
    ck = load_checkpoint(directory, optimizer=opt, scheduler=sched, generators={"data": gen})
    model.load_state_dict(ck.weights)
    assert ck.meta == meta  # -inf comes back as a float, not a string
    assert ck.directory == directory

    # The restored optimizer is the saved one: same keys, values, dtypes and devices.
    restored = opt.state_dict()
    assert restored["param_groups"] == saved["opt"]["param_groups"]  # betas a tuple again
    for i, state in saved["opt"]["state"].items():
        assert state.keys() == restored["state"][i].keys() == {"step", "exp_avg", "exp_avg_sq"}
        for name, value in state.items():
            got = restored["state"][i][name]
            assert (got.dtype, got.device) == (value.dtype, value.device), name
            assert torch.equal(got, value), name
    assert sched.state_dict() == saved["sched"]

    resumed = _train(model, opt, sched, gen, 3)
    assert torch.equal(resumed, after), (resumed, after)
    for a, b in zip(model.parameters(), trained.parameters()):
        assert torch.equal(a, b)


def test_resume_without_the_global_rngs_diverges(tmp_path):
    """The control for the test above: dropout and the noisy target do depend on the global RNGs."""
    directory, _, _, after, _ = _trained(tmp_path, "warmup_cosine")
    model, opt, sched, gen = _fresh("warmup_cosine", seed=123)
    ck = load_checkpoint(directory, optimizer=opt, scheduler=sched, generators={"data": gen}, restore_global_rng=False)
    model.load_state_dict(ck.weights)
    assert not torch.equal(_train(model, opt, sched, gen, 3), after)


def test_float_step_of_an_older_torch_round_trips(tmp_path):
    """AdamW kept ``step`` as a Python float before torch 1.12; such state is stored in the JSON."""
    directory, _, saved, _, _ = _trained(tmp_path, "warmup_cosine")
    model, opt, sched, gen = _fresh("warmup_cosine", seed=1)
    load_checkpoint(directory, optimizer=opt)
    for state in opt.state.values():
        state["step"] = float(state["step"])
    save_checkpoint(directory, weights=model.state_dict(), optimizer=opt, scheduler=None, generators={}, meta={})
    record = json.loads((directory / CHECKPOINT_JSON).read_text())
    assert record["optimizer"]["state"]["0"]["step"] == 4.0
    assert record["files"][OPTIMIZER_FILE]["tensors"] == 8  # exp_avg, exp_avg_sq of 4 parameters

    model, opt, sched, gen = _fresh("warmup_cosine", seed=2)
    load_checkpoint(directory, optimizer=opt)
    for i, state in opt.state_dict()["state"].items():
        # torch's AdamW turns a float step into its float32 tensor when loading
        assert torch.equal(state["step"], saved["opt"]["state"][i]["step"])
    _train(model, opt, sched, gen, 1)  # and the optimizer steps with it


def test_meta_keeps_tuples_and_non_finite_floats_and_refuses_objects(tmp_path):
    meta = {"best": -math.inf, "nan_loss": math.nan, "shape": (3, 224, 224), "np": np.float32(0.5)}
    save_checkpoint(tmp_path / "c", weights={}, optimizer=None, scheduler=None, generators={}, meta=meta)
    text = (tmp_path / "c" / CHECKPOINT_JSON).read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in strict JSON"))
    got = load_checkpoint(tmp_path / "c").meta
    assert got["best"] == -math.inf and math.isnan(got["nan_loss"])
    assert got["shape"] == (3, 224, 224) and got["np"] == 0.5

    with pytest.raises(TypeError, match=r"meta\.out is a pathlib"):
        save_checkpoint(
            tmp_path / "d", weights={}, optimizer=None, scheduler=None, generators={}, meta={"out": Path("x")}
        )
    with pytest.raises(TypeError, match=r"meta\.w is a tensor"):
        save_checkpoint(
            tmp_path / "d", weights={}, optimizer=None, scheduler=None, generators={}, meta={"w": torch.ones(1)}
        )
    assert not (tmp_path / "d").exists()


def test_a_scheduler_state_json_cannot_hold_is_refused_before_writing(tmp_path):
    directory, meta, *_ = _trained(tmp_path, "step_decay")
    before = {p.name: p.read_bytes() for p in directory.iterdir()}

    class Decay:  # a callable object: LambdaLR saves its __dict__
        def __init__(self) -> None:
            self.schedule = types.SimpleNamespace(kind="cosine")

        def __call__(self, step: int) -> float:
            return 1.0

    model, opt, _, gen = _fresh("step_decay", seed=1)
    sched = LambdaLR(opt, [Decay(), Decay()])
    with pytest.raises(TypeError, match=r"scheduler\.lr_lambdas\.0\.schedule is a types\.SimpleNamespace"):
        save_checkpoint(directory, weights=model.state_dict(), optimizer=opt, scheduler=sched, generators={}, meta={})
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


def test_load_weights_file(tmp_path):
    path = tmp_path / "best.safetensors"
    safetensors.torch.save_file({"w": torch.arange(4.0)}, str(path))
    assert torch.equal(load_weights_file(path)["w"], torch.arange(4.0))

    with pytest.raises(CheckpointError, match=f"{tmp_path / 'gone.safetensors'}.*is missing.*delete"):
        load_weights_file(tmp_path / "gone.safetensors")
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CheckpointError, match=f"{path}.*not a readable safetensors.*delete {path} to retrain"):
        load_weights_file(path)


# --- no code runs on load -----------------------------------------------------------------------


class _Plant:
    """Unpickling this touches ``marker``: what a planted trainer.pt could do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_the_planted_payload_is_live(tmp_path):
    """The control for the tests below: pickle and torch.load(weights_only=False) do run it."""
    pickle.loads(pickle.dumps(_Plant(tmp_path / "by_pickle")))
    assert (tmp_path / "by_pickle").exists()
    torch.save(_Plant(tmp_path / "by_torch_load"), tmp_path / "trainer.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "trainer.pt", weights_only=True)
    assert not (tmp_path / "by_torch_load").exists()
    torch.load(tmp_path / "trainer.pt", weights_only=False)
    assert (tmp_path / "by_torch_load").exists()


def test_a_planted_trainer_pt_is_ignored(tmp_path):
    directory, meta, *_ = _trained(tmp_path, "warmup_cosine")
    marker = tmp_path / "pwned"
    torch.save(_Plant(marker), tmp_path / "trainer.pt")  # where engine.py kept its trainer state
    torch.save(_Plant(marker), directory / "trainer.pt")  # and a stray file inside the set
    model, opt, sched, gen = _fresh("warmup_cosine", seed=1)
    assert load_checkpoint(directory, optimizer=opt, scheduler=sched, generators={"data": gen}).meta == meta
    assert not marker.exists()


@pytest.mark.parametrize("name", [WEIGHTS_FILE, OPTIMIZER_FILE, RNG_FILE, CHECKPOINT_JSON])
def test_a_pickle_planted_in_the_set_is_refused(tmp_path, name):
    directory, *_ = _trained(tmp_path, "warmup_cosine")
    marker = tmp_path / "pwned"
    (directory / name).write_bytes(pickle.dumps(_Plant(marker)))
    model, opt, sched, gen = _fresh("warmup_cosine", seed=1)
    gen_state = gen.get_state()
    with pytest.raises(CheckpointError, match=f"{directory / name}.*delete {directory} to retrain from the start"):
        load_checkpoint(directory, optimizer=opt, scheduler=sched, generators={"data": gen})
    assert not marker.exists()
    # Checked before restored: nothing of the run changed.
    assert not opt.state and torch.equal(gen.get_state(), gen_state)


def _unsafe_loads(path: Path) -> list[str]:
    """``torch.load`` calls without ``weights_only=True`` and ``np.load`` with ``allow_pickle=True``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            found += [f"{path}:{node.lineno} imports {a.name}" for a in node.names if a.name == "load"]
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"):
            continue
        owner = ast.unparse(node.func.value)
        kwargs = {k.arg: k.value for k in node.keywords}
        if owner in ("torch", "torch.serialization"):
            safe = isinstance(kwargs.get("weights_only"), ast.Constant) and kwargs["weights_only"].value is True
            if not safe:
                found.append(f"{path}:{node.lineno} {ast.unparse(node)}")
        if owner in ("np", "numpy"):
            pickled = kwargs.get("allow_pickle")
            if pickled is not None and not (isinstance(pickled, ast.Constant) and pickled.value is False):
                found.append(f"{path}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_unsafe_torch_load_in_the_project():
    sources = sorted([*(ROOT / "vqabench").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")])
    assert ROOT / "vqabench" / "engine.py" in sources
    assert [f for p in sources for f in _unsafe_loads(p)] == []


def test_the_checkpoint_module_never_unpickles():
    path = ROOT / "vqabench" / "checkpoint.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    unpicklers = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & unpicklers
    attributes = {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not {"torch.load", "torch.serialization", "np.load", "numpy.load"} & attributes
    assert _unsafe_loads(path) == []


# --- one unit -----------------------------------------------------------------------------------


def test_a_write_failing_midway_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    directory, meta, *_ = _trained(tmp_path, "warmup_cosine")
    old_weights = load_checkpoint(directory, restore_global_rng=False).weights

    real, calls = safetensors.torch.save_file, []

    def failing_second_call(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise OSError("No space left on device (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", failing_second_call)
    model, opt, sched, gen = _fresh("warmup_cosine", seed=5)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(
            directory, weights=model.state_dict(), optimizer=opt, scheduler=sched, generators={}, meta={"epoch": 9}
        )
    assert len(calls) == 2  # weights were written, the optimizer file failed
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary directory, no .old
    ck = load_checkpoint(directory, optimizer=opt, scheduler=sched, generators={"data": gen})
    assert ck.meta == meta
    assert ck.weights.keys() == old_weights.keys()
    assert all(torch.equal(ck.weights[k], old_weights[k]) for k in old_weights)


def test_a_kill_between_the_renames_recovers_the_previous_set(tmp_path):
    directory, meta, *_ = _trained(tmp_path, "warmup_cosine")
    # atomic_dir renames DIR to DIR.old, then the complete temporary directory to DIR; killed in
    # between, DIR is missing and the new set lies under a temporary name.
    os.replace(directory, tmp_path / "ckpt.old")
    (tmp_path / ".ckpt.k1ll3d.tmp").mkdir()
    (tmp_path / ".ckpt.k1ll3d.tmp" / WEIGHTS_FILE).write_bytes(b"")
    model, opt, sched, gen = _fresh("warmup_cosine", seed=1)
    assert load_checkpoint(directory, optimizer=opt, scheduler=sched, generators={"data": gen}).meta == meta
    assert directory.is_dir() and not (tmp_path / "ckpt.old").exists()

    # The next save clears what the killed writer left.
    save_checkpoint(directory, weights={}, optimizer=None, scheduler=None, generators={}, meta={"epoch": 5})
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert load_checkpoint(directory).meta == {"epoch": 5}


# --- errors name the file and the fix -----------------------------------------------------------


def _edit_json(directory: Path, edit) -> None:
    record = json.loads((directory / CHECKPOINT_JSON).read_text())
    edit(record)
    (directory / CHECKPOINT_JSON).write_text(json.dumps(record))


def _remove(d):
    (d / CHECKPOINT_JSON).unlink()


def _truncate(d):
    (d / WEIGHTS_FILE).write_bytes((d / WEIGHTS_FILE).read_bytes()[:100])


def _not_json(d):
    (d / CHECKPOINT_JSON).write_text('{"format": "vqabench-checkpoint", "version": 1,')


def _nan_constant(d):
    (d / CHECKPOINT_JSON).write_text((d / CHECKPOINT_JSON).read_text().replace('"epoch": 4', '"epoch": NaN'))


def _extra_tensor(d):
    tensors = safetensors.torch.load_file(str(d / RNG_FILE))
    safetensors.torch.save_file({**tensors, "planted": torch.zeros(1)}, str(d / RNG_FILE))


def _drop_tensor(d):
    tensors = safetensors.torch.load_file(str(d / OPTIMIZER_FILE))
    tensors.pop("state.0.exp_avg")
    safetensors.torch.save_file(tensors, str(d / OPTIMIZER_FILE))


CORRUPTIONS = {
    "missing checkpoint.json": (_remove, CHECKPOINT_JSON, "is missing"),
    "truncated safetensors": (_truncate, WEIGHTS_FILE, "not a readable safetensors file"),
    "unreadable json": (_not_json, CHECKPOINT_JSON, "not readable JSON"),
    "NaN in json": (_nan_constant, CHECKPOINT_JSON, "not readable JSON"),
    "wrong version": (lambda d: _edit_json(d, lambda r: r.update(version=99)), CHECKPOINT_JSON, "version 99"),
    "foreign json": (lambda d: _edit_json(d, lambda r: r.update(format="other")), CHECKPOINT_JSON, "not a vqabench"),
    "extra tensor": (_extra_tensor, RNG_FILE, "holds 3 tensors, checkpoint.json says 2"),
    "missing tensor": (_drop_tensor, OPTIMIZER_FILE, "holds 11 tensors, checkpoint.json says 12"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_damaged_checkpoint_names_the_file_and_the_fix(tmp_path, case):
    corrupt, name, problem = CORRUPTIONS[case]
    directory, *_ = _trained(tmp_path, "warmup_cosine")
    corrupt(directory)
    model, opt, sched, gen = _fresh("warmup_cosine", seed=1)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory, optimizer=opt, scheduler=sched, generators={"data": gen})
    message = str(info.value)
    assert f"checkpoint file {directory / name}:" in message and problem in message, message
    assert message.endswith(f"delete {directory} to retrain from the start"), message
    assert not opt.state


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    directory, *_ = _trained(tmp_path, "warmup_cosine")
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*nothing \(neither it nor nothing\.old exists\)"):
        load_checkpoint(tmp_path / "nothing")
    model = _model(0)
    with pytest.raises(CheckpointError, match="optimizer saved is a AdamW, this run's is a SGD"):
        load_checkpoint(directory, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(CheckpointError, match="scheduler saved is a LambdaLR, this run's is a StepLR"):
        load_checkpoint(directory, scheduler=StepLR(_optimizer(model), 2))
    with pytest.raises(CheckpointError, match="2 parameter groups saved, this run's optimizer has 1"):
        load_checkpoint(directory, optimizer=torch.optim.AdamW(model.parameters()))
    with pytest.raises(CheckpointError, match="generator 'augment' is not in the checkpoint"):
        load_checkpoint(directory, generators={"augment": torch.Generator()})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resume_on_cuda_restores_the_cuda_rng_and_state_devices(tmp_path):
    directory, _, saved, after, _ = _trained(tmp_path, "warmup_cosine", device="cuda")
    record = json.loads((directory / CHECKPOINT_JSON).read_text())
    assert record["rng"]["cuda_devices"] == torch.cuda.device_count()
    model, opt, sched, gen = _fresh("warmup_cosine", seed=123, device="cuda")
    torch.cuda.manual_seed_all(123)  # dropout on the GPU draws from the CUDA RNG
    ck = load_checkpoint(directory, optimizer=opt, scheduler=sched, generators={"data": gen}, map_location="cuda")
    assert all(t.is_cuda for t in ck.weights.values())
    model.load_state_dict(ck.weights)
    for i, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            assert (value.dtype, value.device) == (
                saved["opt"]["state"][i][name].dtype,
                saved["opt"]["state"][i][name].device,
            )
    assert torch.equal(_train(model, opt, sched, gen, 3), after)


# --- a cell's checkpoint directory: nothing deleted before it is replaced ---------------------------


def _a_set(ckpt: Path, config: str) -> None:
    (ckpt / "1-train" / "last").mkdir(parents=True)
    (ckpt / "1-train" / "last" / "weights.safetensors").write_text(f"weights of {config}")
    (ckpt / "config_hash").write_text(config)


def test_checkpoints_of_another_config_are_set_aside_until_the_new_run_has_its_own(tmp_path):
    from vqabench.checkpoint import drop_replaced, replaced_dir, start_checkpoints

    ckpt = tmp_path / "ckpt"
    _a_set(ckpt, "A")
    start_checkpoints(ckpt, "A")  # the same config: resumed, nothing moves
    assert (ckpt / "1-train" / "last").is_dir() and not replaced_dir(ckpt).exists()

    start_checkpoints(ckpt, "B")  # another config: A's set is moved aside, not deleted
    assert (replaced_dir(ckpt) / "1-train" / "last" / "weights.safetensors").read_text() == "weights of A"
    assert sorted(p.name for p in ckpt.iterdir()) == ["config_hash"] and (ckpt / "config_hash").read_text() == "B"

    # The run of B died before its first checkpoint: the next start puts A's set back, and a run
    # of A resumes it.
    start_checkpoints(ckpt, "A")
    assert (ckpt / "1-train" / "last" / "weights.safetensors").read_text() == "weights of A"
    assert not replaced_dir(ckpt).exists()

    start_checkpoints(ckpt, "B", force=True)
    (ckpt / "1-train" / "last").mkdir(parents=True)  # B's first checkpoint: A's set is no longer needed
    start_checkpoints(ckpt, "B")
    assert not replaced_dir(ckpt).exists() and (ckpt / "1-train" / "last").is_dir()

    start_checkpoints(ckpt, "B", force=True)  # --force: even this config's set goes aside first
    assert replaced_dir(ckpt).is_dir() and not (ckpt / "1-train").exists()
    drop_replaced(ckpt)  # the run's record is written
    assert not replaced_dir(ckpt).exists()
