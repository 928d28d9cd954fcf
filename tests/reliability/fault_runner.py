"""Runs of ``vqabench.cli.main`` for the fault-injection tests, each in a fresh process forked from this one.

Started once per test module (``python fault_runner.py``), this process imports vqabench and its
heavy dependencies (torch, scikit-learn, pandas, matplotlib: about 5 s on 2 cores) and then, for
each request it reads on stdin, forks a child that runs ``vqabench.cli.main(argv)`` as
``python -m vqabench.cli ARGV`` would, optionally with a fault that SIGKILLs it at a chosen
moment. A run of the example plugin's models takes under a second, so the suite's two dozen
runs cost seconds instead of two minutes of imports. Forking is safe here: this process has only
imported modules (one thread, no torch operation run, no fork server started), so each child
starts as a fresh interpreter would, only without the import time.

Protocol, one JSON object per line each way. Request: ``{"argv": [...], "log": PATH, "fault":
FAULT or null}``; answers: ``{"pid": PID}`` once the child runs, then ``{"status": S}``, S being its
exit code or minus the signal that ended it (as ``subprocess.Popen.returncode``).

FAULT: the child kills itself with SIGKILL, as ``kill -9`` or the OOM killer would:

- ``{"call": "MODULE:QUALNAME", "nth": N}``: just before the Nth call of that function or method;
- ``{"write": GLOB, "nth": N}``: at the Nth write of a file whose path matches GLOB, once half of
  its bytes are on disk (``Path.write_bytes`` / ``write_text`` and ``safetensors.torch.save_file``:
  how vqabench writes its results, ledger and checkpoint files);
- ``{"rename": GLOB, "nth": N}``: just before the Nth ``os.replace`` onto a path matching GLOB
  (with ``"after": true``: just after it).

Every process a child starts has ``VQABENCH_FAULT_RUN`` set to the run's log path in its
environment. Every child sees two CPUs in ``vqabench.images``, so image stores are decoded by a pool of two
worker processes on any machine (the decode kill point kills the parent of live workers).
"""

from __future__ import annotations

import atexit
import fnmatch
import importlib
import json
import os
import pathlib
import signal
import sys
import traceback
from typing import Any

# Everything a run of the example plugin imports, so that no child pays for it.
import matplotlib.pyplot  # noqa: F401 (the leaderboard's curves)
import pandas  # noqa: F401
import safetensors.torch
import sklearn.metrics  # noqa: F401
import torch._dynamo  # noqa: F401 (imported by the first optimizer)
import vqabench_example.models  # noqa: F401

import vqabench.cli
import vqabench.images
import vqabench.leaderboard  # noqa: F401
import vqabench.runner  # noqa: F401
import vqabench.tasks.vqa  # noqa: F401

vqabench.images._cpu_count = lambda: 2

RUN_TAG = "VQABENCH_FAULT_RUN"  # environment variable: the run's log path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _counter(glob: str, nth: int):
    """A predicate that is true for the ``nth`` path matching ``glob`` it is shown (once)."""
    seen = [0]

    def hit(path: Any) -> bool:
        if not fnmatch.fnmatch(str(path), glob):
            return False
        seen[0] += 1
        return seen[0] == nth

    return hit


def install(fault: dict[str, Any]) -> None:
    nth = int(fault.get("nth", 1))
    if "call" in fault:
        module, _, name = fault["call"].partition(":")
        owner: Any = importlib.import_module(module)
        *parents, attr = name.split(".")
        for part in parents:
            owner = getattr(owner, part)
        real, calls = getattr(owner, attr), [0]

        def call(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == nth:
                _die()
            return real(*args, **kwargs)

        setattr(owner, attr, call)
    elif "write" in fault:
        hit = _counter(fault["write"], nth)
        write_bytes, write_text = pathlib.Path.write_bytes, pathlib.Path.write_text
        save_file = safetensors.torch.save_file

        def half_bytes(self: pathlib.Path, data: bytes) -> int:
            if hit(self):
                write_bytes(self, bytes(data)[: len(data) // 2])
                _die()
            return write_bytes(self, data)

        def half_text(self: pathlib.Path, data: str, *args: Any, **kwargs: Any) -> int:
            if hit(self):
                write_text(self, data[: len(data) // 2], *args, **kwargs)
                _die()
            return write_text(self, data, *args, **kwargs)

        def half_tensors(tensors: Any, filename: str, *args: Any, **kwargs: Any) -> None:
            save_file(tensors, filename, *args, **kwargs)
            if hit(filename):
                os.truncate(filename, os.path.getsize(filename) // 2)
                _die()

        pathlib.Path.write_bytes, pathlib.Path.write_text = half_bytes, half_text
        safetensors.torch.save_file = half_tensors
    elif "rename" in fault:
        hit, replace = _counter(fault["rename"], nth), os.replace

        def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            now = hit(dst)
            if now and not fault.get("after"):
                _die()
            replace(src, dst, *args, **kwargs)
            if now:
                _die()

        os.replace = rename
    else:
        raise ValueError(f"unknown fault {fault}")


def child(request: dict[str, Any]) -> int:
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    # Inherited by every process the run starts (fork server, workers), so a test can find them.
    os.environ[RUN_TAG] = request["log"]
    # As `python -m vqabench.cli ARGV` sets them: worker processes import the main module by name.
    sys.modules["__main__"], sys.argv = vqabench.cli, [vqabench.cli.__file__, *request["argv"]]
    try:
        if request.get("fault"):
            install(request["fault"])
        code = vqabench.cli.main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # what interpreter exit would run (multiprocessing's clean-up among them)
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os._exit(child(request))
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
