"""vqabench.files: the one atomic-write helper set (files and directories)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vqabench import files
from vqabench.files import atomic_dir, atomic_path, clean_partial, recover_dir


def test_atomic_path_renames_on_success_and_makes_ordinary_files(tmp_path):
    target = tmp_path / "sub" / "w.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".w.bin.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"
    assert os.listdir(target.parent) == ["w.bin"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_path_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "w.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["w.bin"]


def test_atomic_dir_replaces_a_directory_only_when_complete(tmp_path):
    target = tmp_path / "ckpt" / "last"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert [p.name for p in target.iterdir()] == ["a"]
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("killed")
    assert [p.name for p in target.iterdir()] == ["a"]  # the previous complete set
    with atomic_dir(target) as tmp:
        (tmp / "c").write_text("3")
    assert [p.name for p in target.iterdir()] == ["c"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["last"]  # no .old, no temporary left


def test_recover_dir_restores_the_old_copy_a_kill_between_the_renames_leaves(tmp_path):
    target = tmp_path / "last"
    assert recover_dir(target) is None
    old = tmp_path / "last.old"
    old.mkdir()
    (old / "weights").write_text("w")
    assert recover_dir(target) == target
    assert (target / "weights").read_text() == "w" and not old.exists()
    assert recover_dir(target) == target


def test_recover_dir_deletes_the_superseded_copy_a_kill_after_the_second_rename_leaves(tmp_path):
    target, old = tmp_path / "last", tmp_path / "last.old"
    for where, text in ((target, "new"), (old, "superseded")):
        where.mkdir()
        (where / "weights").write_text(text)
    assert recover_dir(target) == target
    assert (target / "weights").read_text() == "new" and not old.exists()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the PID names no process any more
    return child.pid


def _tag(pid: int, machine: str | None = None) -> str:
    return f"w{pid}-{machine or files._machine()}"


def test_clean_partial_removes_what_dead_writers_left_at_once_and_the_rest_only_when_old(tmp_path):
    dead = _tag(_dead_pid())
    killed_file, killed_dir = f".x.npy.{dead}.abc.tmp", f".last.{dead}.def.tmp"
    ours = f".y.npy.{_tag(os.getpid())}.ghi.tmp"  # being written by this process
    live = f".z.npy.{_tag(os.getppid())}.jkl.tmp"  # by another live process
    far = f".far.npy.{_tag(_dead_pid(), 'f00dcafe')}.mno.tmp"  # a PID of another machine: unknown here
    untagged = ".untagged.abc.tmp"  # an older vqabench's: no writer in the name
    for name in (killed_file, ours, live, far, untagged):
        (tmp_path / name).write_text("half")
    (tmp_path / killed_dir).mkdir()
    (tmp_path / killed_dir / "weights.safetensors").write_text("half")
    (tmp_path / "kept.npy").write_text("whole")
    nested = tmp_path / "ckpt" / "1-train"
    nested.mkdir(parents=True)
    (nested / f".best.safetensors.{dead}.pqr.tmp").write_text("half")

    assert sorted(p.name for p in clean_partial(tmp_path)) == sorted([killed_dir, killed_file])
    assert clean_partial(tmp_path, recursive=True) == [nested / f".best.safetensors.{dead}.pqr.tmp"]
    assert sorted(os.listdir(tmp_path)) == sorted([ours, live, far, untagged, "ckpt", "kept.npy"])

    day_old = time.time() - files.STALE_AFTER_S - 60
    for name in os.listdir(tmp_path):
        os.utime(tmp_path / name, (day_old, day_old))
    # Untouched for a day: stale whoever wrote them, except this process's own.
    assert sorted(p.name for p in clean_partial(tmp_path)) == sorted([live, far, untagged])
    assert sorted(os.listdir(tmp_path)) == sorted([ours, "ckpt", "kept.npy"])
    assert clean_partial(tmp_path / "missing") == []


def test_a_killed_writer_that_is_not_reaped_yet_counts_as_dead(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        entry = tmp_path / f".x.npy.{_tag(child.pid)}.abc.tmp"
        entry.write_text("half")
        assert not files.is_stale(entry)  # its writer is alive
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1].startswith("Z"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert files.is_stale(entry)  # a zombie writes nothing any more
    finally:
        child.kill()
        child.wait()


def test_temporary_names_carry_their_writer(tmp_path):
    with atomic_path(tmp_path / "record.json") as tmp:
        assert tmp.name.startswith(f".record.json.w{os.getpid()}-")
        assert not files.is_stale(tmp)
    with atomic_dir(tmp_path / "last") as tmp:
        assert tmp.name.startswith(f".last.w{os.getpid()}-")


def test_dumps_json_is_sorted_and_strict():
    assert files.dumps_json({"b": 1, "a": 2}, indent=None) == '{"a": 2, "b": 1}'
    with pytest.raises(ValueError, match=r"cannot write strict JSON.*NaN or infinite"):
        files.dumps_json({"loss": float("nan")})


def test_atomic_write_text_refuses_non_text(tmp_path):
    with pytest.raises(TypeError, match=r"expected str, got bytes"):
        files.atomic_write_text(tmp_path / "t.txt", b"x")  # type: ignore[arg-type]
