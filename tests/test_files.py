"""vqabench.files: the one atomic-write helper set (files and directories)."""

from __future__ import annotations

import os

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


def test_clean_partial_removes_temporary_files_and_directories(tmp_path):
    (tmp_path / ".x.npy.abc.tmp").write_text("half")
    (tmp_path / ".last.def.tmp").mkdir()
    (tmp_path / "kept.npy").write_text("whole")
    removed = clean_partial(tmp_path)
    assert sorted(p.name for p in removed) == [".last.def.tmp", ".x.npy.abc.tmp"]
    assert os.listdir(tmp_path) == ["kept.npy"]
    assert clean_partial(tmp_path / "missing") == []


def test_dumps_json_is_sorted_and_strict():
    assert files.dumps_json({"b": 1, "a": 2}, indent=None) == '{"a": 2, "b": 1}'
    with pytest.raises(ValueError, match=r"cannot write strict JSON.*NaN or infinite"):
        files.dumps_json({"loss": float("nan")})


def test_atomic_write_text_refuses_non_text(tmp_path):
    with pytest.raises(TypeError, match=r"expected str, got bytes"):
        files.atomic_write_text(tmp_path / "t.txt", b"x")  # type: ignore[arg-type]
