"""Fault injection: a run killed with SIGKILL at any moment, then rerun, ends as an uninterrupted run.

Each case kills ``vqabench run`` of the example plugin's two-stage model (dropout on, so a resumed
run matches only if every RNG is restored) at one moment, reruns the same command to completion
and compares with one uninterrupted run: the record field by field, the predictions byte by byte,
the ledger, and that no temporary file is left anywhere. The kills are injected from outside the
production code by ``fault_runner.py`` (a patched function SIGKILLs its own process); the other
tests kill a parent of worker processes from outside, and make writes fail with a full disk.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
from helpers import add_distribution

from vqabench import cli
from vqabench.results import RECORD_FIELDS, cell_dir

HERE = Path(__file__).parent
EXAMPLE_DIR = HERE.parent / "example_plugin"

# 96 images: enough for the image store to be decoded by worker processes (64 or more).
RUN = ["run", "--models", "example-staged", "--tasks", "example-colors/vqa", "--data", "images=96", "--no-progress"]
CELL = ("example-colors", "vqa", "example-staged", "quick", 0)

# Record fields that differ between any two runs of one command, killed or not.
PER_RUN = {
    "timing": "wall-clock seconds and throughput measured by the process that wrote the record",
    "finished": "the time the record was written",
    "memory": "peak memory of the process that wrote the record (a resumed one did part of the work)",
    "resumed_from": "where the rerun resumed (checked on its own below); null for an uninterrupted run",
}
PER_EPOCH = {"seconds": "each epoch's wall-clock time, in history"}
# In "cached": whether each stem's features were found in the feature cache or computed depends on
# what the cache held when the process started (a second uninterrupted run says "cache hit").
CACHE_OUTCOMES = (" (cache hit)", " (computed)")

ADAPT_2 = 3 * 12 + 12 + 5  # the loss call of step 5 of epoch 2 of stage "adapt": 12 steps per epoch, 3 head epochs

# name: (fault, where the rerun resumes: the record's resumed_from as (stage, epoch), None when it
# resumes no epoch checkpoint: killed before training, or every stage it resumes had finished).
# A write's nth 2 is a checkpoint replacing the previous epoch's, which must stay usable.
KILL_POINTS = {
    "generating-the-dataset": ({"call": "PIL.Image:Image.save", "nth": 20}, None),  # the example's PNGs
    "decoding-images-in-workers": ({"call": "vqabench.images:wait", "nth": 2}, None),  # a chunk is decoded
    "in-a-training-step": ({"call": "vqabench_example.models:StagedBow.loss", "nth": ADAPT_2}, ("adapt", 4)),
    "writing-weights.safetensors": (
        {"write": "*/2-adapt/.last.*.tmp/weights.safetensors", "nth": 2},
        ("adapt", 4),
    ),
    "writing-optimizer.safetensors": (
        {"write": "*/1-head/.last.*.tmp/optimizer.safetensors", "nth": 2},
        ("head", 1),
    ),
    # Stage 2's first epoch set: the rerun starts stage 2 again from stage 1's end ("done").
    "writing-rng.safetensors": ({"write": "*/2-adapt/.last.*.tmp/rng.safetensors", "nth": 1}, None),
    # Stage 1's end: the rerun resumes its last epoch set, then writes the end.
    "writing-checkpoint.json": ({"write": "*/1-head/.done.*.tmp/checkpoint.json", "nth": 1}, ("head", 3)),
    # The previous set renamed to last.old, the new one not yet renamed to last.
    "between-the-renames-of-a-checkpoint": ({"rename": "*/2-adapt/last", "nth": 2}, ("adapt", 4)),
    # Stage 1's last epoch set in place, the one it replaced (last.old) not yet deleted.
    "after-the-renames-of-a-checkpoint": ({"rename": "*/1-head/last", "nth": 3, "after": True}, ("head", 3)),
    "writing-best.safetensors": ({"write": "*/2-adapt/.best.safetensors.*.tmp", "nth": 1}, None),
    "writing-predictions": ({"write": "*/.predictions-test.jsonl.*.tmp", "nth": 1}, None),  # val's are written
    "writing-the-record": ({"write": "*/.record.json.*.tmp", "nth": 1}, None),
    "writing-the-ledger": ({"write": "*/.status.json.*.tmp", "nth": 3}, None),  # its "done", after the record
}

# What no killed-then-rerun run may leave (pathlib's * matches names starting with a dot too).
LEFTOVERS = ("*.tmp", "*.old", ".*.partial-*", "*.replaced")


class Runner:
    """The ``fault_runner.py`` process: runs ``vqabench.cli.main`` in forked children."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "fault_runner.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self.buffer = b""

    def _answer(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"fault_runner.py exited with {self.proc.wait()}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, where: Path, fault: dict | None = None, timeout: float = 120) -> int:
        """``vqabench run`` of RUN into ``where``/runs with cache ``where``/cache; its exit status."""
        argv = [*RUN, "--out", str(where / "runs"), "--cache-dir", str(where / "cache")]
        argv += ["--leaderboards", str(where / "leaderboards")]
        request = {"argv": argv, "log": str(where / "log"), "fault": fault}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        pid = self._answer(60)["pid"]
        try:
            return self._answer(timeout)["status"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self._answer(60)
            raise AssertionError(f"the run did not end in {timeout} s; its output:\n{log(where)}") from None

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def log(where: Path) -> str:
    return (where / "log").read_text() if (where / "log").exists() else "(no output)"


def example_env(site: Path, **extra: str) -> dict[str, str]:
    """The environment of a process that sees only the example plugin (as ``only_example`` sets it up)."""
    add_distribution(site, "vqabench-example", {"example": "vqabench_example"})
    path = os.pathsep.join([str(site), str(EXAMPLE_DIR), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "VQABENCH_PLUGINS": "example", **extra}


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    # One thread per run: the runs are tiny, and two threads on two shared cores only contend.
    env = example_env(tmp_path_factory.mktemp("site"), OMP_NUM_THREADS="1")
    runner = Runner(env)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def reference(runner, tmp_path_factory) -> Path:
    """One uninterrupted run: what every killed and rerun one must end as."""
    where = tmp_path_factory.mktemp("reference")
    assert runner.run(where) == 0, log(where)
    return where


def the_cell(where: Path) -> Path:
    return cell_dir(where / "runs", *CELL)


def comparable(record: dict) -> dict:
    """``record`` without the fields that differ between any two runs (PER_RUN, PER_EPOCH)."""
    out = {k: v for k, v in record.items() if k not in PER_RUN}
    out["history"] = [{k: v for k, v in h.items() if k not in PER_EPOCH} for h in record["history"]]
    out["cached"] = json.loads(
        json.dumps(record["cached"]).replace(CACHE_OUTCOMES[0], "").replace(CACHE_OUTCOMES[1], "")
    )
    return out


def leftovers(*roots: Path) -> list[Path]:
    return sorted({p for root in roots for pattern in LEFTOVERS for p in root.rglob(pattern)})


def assert_nothing_half_written(runs: Path) -> None:
    """Every file a reader would open (no temporary name) reads whole."""
    for path in runs.rglob("*"):
        if any(part.startswith(".") for part in path.relative_to(runs).parts) or not path.is_file():
            continue  # a temporary file or something inside a temporary directory: nobody reads it
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]
        elif path.suffix == ".safetensors":
            safetensors.torch.load_file(str(path))


def test_the_excluded_fields_are_record_fields():
    assert set(PER_RUN) <= set(RECORD_FIELDS)


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_run_killed_then_rerun_ends_as_the_uninterrupted_run(point, runner, reference, tmp_path):
    fault, resumes_from = KILL_POINTS[point]
    assert runner.run(tmp_path, fault) == -signal.SIGKILL, f"the run was not killed {point}:\n{log(tmp_path)}"
    assert outlived(f"VQABENCH_FAULT_RUN={tmp_path / 'log'}") == set()  # no worker or fork server of it
    runs, cell = tmp_path / "runs", the_cell(tmp_path)
    assert_nothing_half_written(runs)
    if "write" in fault:  # killed in the middle of that file: its half is under a temporary name
        assert [p for p in runs.rglob("*") if fnmatch.fnmatch(str(p), fault["write"])]
    if "rename" in fault:  # the previous set is in last.old, the new one in place only after the second rename
        stage = cell / "ckpt" / ("1-head" if fault.get("after") else "2-adapt")
        assert (stage / "last.old").is_dir() and (stage / "last").exists() == bool(fault.get("after"))
    assert (cell / "record.json").exists() == (point == "writing-the-ledger")

    assert runner.run(tmp_path) == 0, log(tmp_path)
    record = json.loads((cell / "record.json").read_text())
    want = json.loads((the_cell(reference) / "record.json").read_text())
    assert comparable(record) == comparable(want)
    assert record["resumed_from"] == (None if resumes_from is None else dict(zip(("stage", "epoch"), resumes_from)))
    predictions = sorted(p.name for p in cell.glob("predictions-*.jsonl"))
    assert predictions == sorted(p.name for p in the_cell(reference).glob("predictions-*.jsonl")) != []
    for name in predictions:
        assert (cell / name).read_bytes() == (the_cell(reference) / name).read_bytes(), name
    ledger = json.loads((runs / "status.json").read_text())["cells"]
    assert [v["state"] for v in ledger.values()] == ["done"]
    assert leftovers(runs, tmp_path / "cache") == []


# --- worker processes die with the process that started them --------------------------------------

HANG = """
import importlib, pathlib, sys, time
import vqabench.images
vqabench.images._cpu_count = lambda: 2  # a decode pool of two workers on any machine
module, _, name = sys.argv[1].partition(":")
owner = importlib.import_module(module)
*parents, attr = name.split(".")
for part in parents:
    owner = getattr(owner, part)
def hang(*args, **kwargs):
    pathlib.Path(sys.argv[2]).touch()
    time.sleep(600)
setattr(owner, attr, hang)
from vqabench.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, state), from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
            out[int(entry.name)] = (int(ppid), state)
    return out


def descendants(pid: int) -> set[int]:
    table, found, todo = _processes(), set(), [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _) in table.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def outlived(variable: str) -> set[int]:
    """The processes still running 5 s from now with ``variable`` (NAME=VALUE) in their environment;
    they are killed, so that a failing test leaves none behind."""
    if not sys.platform.startswith("linux"):
        return set()  # reads /proc
    deadline, needle = time.monotonic() + 5, variable.encode() + b"\0"
    while True:
        found = set()
        for pid in running(set(_processes())):
            try:
                if needle in Path(f"/proc/{pid}/environ").read_bytes():
                    found.add(pid)
            except OSError:
                continue  # gone, or not ours to read
        if not found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in found:
        os.kill(pid, signal.SIGKILL)
    return found


def running(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie has ended: only its exit status waits to be read)."""
    table = _processes()
    return {p for p in pids if p in table and table[p][1] not in "ZX"}


def kill_while_workers_run(tmp_path: Path, hang: str, argv: list[str], env: dict[str, str]) -> set[int]:
    """Start ``vqabench ARGV`` with ``hang`` blocking it once its worker pool runs, SIGKILL it there,
    and return the processes it had started that are still running 5 s later."""
    marker = tmp_path / "hanging"
    proc = subprocess.Popen([sys.executable, "-c", HANG, hang, str(marker), *argv], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run never reached its worker pool"
            time.sleep(0.05)
        children = descendants(proc.pid)
        assert len(children) >= 2, "no worker processes"  # a fork server and its workers
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while running(children) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = running(children)
    for pid in survivors:  # do not leave them behind: the assertion reports them
        os.kill(pid, signal.SIGKILL)
    return survivors


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_image_decoding_workers_die_with_a_killed_run(tmp_path):
    env = example_env(tmp_path / "site")
    argv = [*RUN, "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    assert kill_while_workers_run(tmp_path, "vqabench.images:wait", argv, env) == set()


TINY = ["--images", "40", "--image-size", "64", "--seed", "3"]
TINY_DATA = {"zeroshot_per_class": 10, "target_train_fraction": 0.25}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_data_prepare_leaves_no_workers_and_its_rerun_cleans_up_and_completes(tmp_path):
    from vqabench_plugins.mini_clevr.config import MiniClevrConfig
    from vqabench_plugins.mini_clevr.generate import generate

    from vqabench import files

    root = tmp_path / "data" / "mini-clevr"
    argv = ["data", "prepare", "mini-clevr", "--root", str(root), *TINY, "--data", "workers=2"]
    argv += [a for k, v in TINY_DATA.items() for a in ("--data", f"{k}={v}")]
    env = {**os.environ, "VQABENCH_PLUGINS": "mini_clevr"}
    hang = "vqabench_plugins.mini_clevr.generate:_Tables.add"  # the parent writing the tables as results come
    assert kill_while_workers_run(tmp_path, hang, argv, env) == set()
    killed = list(root.parent.glob(".mini-clevr.partial-*"))
    assert len(killed) == 1 and not root.exists()
    live = root.parent / f".mini-clevr.partial-{files.writer_tag()}.live"  # a generation still running
    live.mkdir()

    done = subprocess.run([sys.executable, "-m", "vqabench.cli", *argv], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(root.parent.iterdir()) == sorted([root, live])  # the killed one's partial is gone, not the live one's
    reference = tmp_path / "reference"
    generate(MiniClevrConfig(images=40, image_size=64, seed=3, workers=1, **TINY_DATA), reference)
    assert (root / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()


# --- nothing is deleted before its replacement is written -------------------------------------------


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("failing", ["every-write-in-the-cell", "the-first-checkpoint"])
def test_force_on_a_cell_that_cannot_be_written_keeps_its_checkpoints(failing, tmp_path, only_example, monkeypatch):
    where = ["--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    argv = ["run", "--models", "example-bow", "--tasks", "example-colors/vqa", *where]
    argv += ["--leaderboards", str(tmp_path / "lb")]
    assert cli.main(argv) == 0
    cell = cell_dir(tmp_path / "runs", "example-colors", "vqa", "example-bow", "quick", 0)
    before, record = _files(cell / "ckpt"), (cell / "record.json").read_bytes()
    assert any(name.endswith("weights.safetensors") for name in before)

    # A full disk where it matters (tests run as root: chmod would not stop a write): creating a
    # file or directory there fails, while renames and deletions still work, as on a full disk.
    full = cell if failing == "every-write-in-the-cell" else cell / "ckpt" / "1-train"
    real_open, real_mkdir = os.open, os.mkdir

    def no_space(path) -> None:
        if Path(os.fsdecode(path)).resolve().is_relative_to(full.resolve()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fsdecode(path))

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            no_space(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        no_space(path)
        return real_mkdir(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "open", open_)
        m.setattr(os, "mkdir", mkdir)
        assert cli.main([*argv, "--force"]) == 1  # the cell failed
    ledger = json.loads((tmp_path / "runs" / "status.json").read_text())["cells"]
    assert "no space left on device" in next(iter(ledger.values()))["error"]
    assert (cell / "record.json").read_bytes() == record
    kept = cell / "ckpt" if failing == "every-write-in-the-cell" else cell / "ckpt.replaced"
    assert _files(kept) == before  # every old checkpoint file, byte for byte

    # Space again: the forced rerun trains anew, and only now are the old checkpoints deleted.
    assert cli.main([*argv, "--force"]) == 0
    ledger = json.loads((tmp_path / "runs" / "status.json").read_text())["cells"]
    assert [(v["state"], v.get("reason")) for v in ledger.values()] == [("done", None)]  # not "already done"
    assert not (cell / "ckpt.replaced").exists()
    assert leftovers(tmp_path / "runs") == []
