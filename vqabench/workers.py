"""Worker processes that die with the process that started them.

A ``ProcessPoolExecutor`` worker waits for its next task on a queue that its sibling workers
also hold open, so when the process that owns the pool is killed (SIGKILL, the OOM killer) the
workers never see the end of that queue: they would live on, holding memory and open files,
until someone kills them. ``die_with_owner`` is the pool's initializer that prevents this.

With the spawn start method a worker's parent is the owner, and Linux can SIGKILL the worker
when its parent exits (``PR_SET_PDEATHSIG``). With forkserver (what vqabench uses on Linux) the
parent is the fork server, which does not exit with the owner: every worker holds a copy of the
pipe end whose closing would tell it to. So each worker also watches the owner itself, from a
daemon thread: it waits on a pidfd of the owner (Linux 5.3+: woken the moment the owner exits,
even before it is reaped), or else polls the owner's PID (not on Windows, where probing a PID
signals it: there, workers still outlive a killed owner).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading
import time

from vqabench.files import pid_alive

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 0.5  # how often the fallback looks for its owner


def _exit_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # no clean-up: what this worker wrote is its owner's to discard


def _wait_for_exit(owner: int) -> None:
    """Return once ``owner`` has exited."""
    try:
        fd = os.pidfd_open(owner)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # not Linux, an old kernel, or a sandbox that forbids it: poll
        while pid_alive(owner):
            time.sleep(POLL_S)
        return
    select.select([fd], [], [])  # readable once the process has exited


def _set_pdeathsig() -> None:
    """Ask Linux to SIGKILL this process when its parent exits (where prctl is available)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass


def die_with_owner(owner: int) -> None:
    """Pool initializer (``initargs=(os.getpid(),)`` in the owner): end this worker when the owner dies."""
    _set_pdeathsig()
    threading.Thread(target=_exit_with, args=(owner,), name="die-with-owner", daemon=True).start()


def _exit_with(owner: int) -> None:
    _wait_for_exit(owner)
    _exit_now()
