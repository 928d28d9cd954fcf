"""Files written so that a kill never leaves half of one: one atomic-write helper for the project.

Everything goes to a temporary name in the target's directory and is renamed into place, so a
reader sees the old file or the new one, never a mix. JSON is strict (no NaN or Infinity, which
strict parsers reject).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path``; renamed onto ``path`` when the block ends without error.

    For writers that want a file name (safetensors, numpy). On an error the temporary file is
    removed and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    if not isinstance(text, str):
        raise TypeError(f"atomic_write_text({path}): expected str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON (``allow_nan=False``): a NaN or infinite value raises, naming the problem."""
    try:
        return json.dumps(obj, indent=indent, sort_keys=True, default=str, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"cannot write strict JSON: {exc} (a metric or loss is NaN or infinite)") from None


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict, sorted, indented JSON through a temporary file and a rename."""
    atomic_write_text(path, dumps_json(obj) + "\n")


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """A temporary directory next to ``path``, moved onto ``path`` when the block succeeds.

    An existing ``path`` is replaced only after the new one is complete: it is first renamed to
    ``<path>.old`` (which ``recover_dir`` restores if a kill lands between the two renames).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(path.name + ".old")
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(path: Path) -> Path | None:
    """``path`` if it exists, else its ``.old`` copy left by a kill inside ``atomic_dir``, else None."""
    path = Path(path)
    if path.exists():
        return path
    old = path.with_name(path.name + ".old")
    if old.exists():
        os.replace(old, path)
        return path
    return None


def clean_partial(directory: Path) -> list[Path]:
    """Remove temporary files and directories a killed writer left in ``directory``."""
    removed = []
    if Path(directory).is_dir():
        for p in Path(directory).glob(".*.tmp"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed
