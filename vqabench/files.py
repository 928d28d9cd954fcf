"""Files written so that a kill never leaves half of one: one atomic-write helper for the project.

Everything goes to a temporary name in the target's directory and is renamed into place, so a
reader sees the old file or the new one, never a mix. JSON is strict (no NaN or Infinity, which
strict parsers reject).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

# What an OSError means for the user and what to do, by errno; the rest say their strerror.
_OS_HINTS = {
    errno.ENOSPC: ("no space left on device", "free space there, or write elsewhere (--out, --cache-dir)"),
    errno.EDQUOT: ("disk quota exceeded", "free space there, or write elsewhere (--out, --cache-dir)"),
    errno.EACCES: ("permission denied", "give this user access to it (chmod, chown), or choose another path"),
    errno.EPERM: ("operation not permitted", "give this user access to it (chmod, chown), or choose another path"),
    errno.EROFS: ("read-only file system", "choose a path on a writable file system"),
    errno.ENOTDIR: ("not a directory", "a part of the path is a file: choose another path, or move that file"),
    errno.EISDIR: ("is a directory", "give the path of a file, or move that directory"),
}


class WriteError(OSError):
    """A failed write whose message names the file and the fix (errno kept; never wrapped twice)."""


def describe_os_error(exc: OSError, path: Path | str | None = None, doing: str = "") -> str:
    """One line for ``exc``: what went wrong, on which path, and what to do about it."""
    if isinstance(exc, WriteError):
        return exc.strerror or str(exc)
    reason, hint = _OS_HINTS.get(exc.errno or 0, (exc.strerror or str(exc), ""))
    where = path if path is not None else exc.filename
    text = f"{reason} {doing} {where}" if doing else (f"{reason}: {where}" if where is not None else reason)
    # Where it failed, when that is not the file itself or its temporary name (a parent, say).
    if exc.filename is not None and path is not None and not Path(exc.filename).name.startswith(f".{Path(path).name}."):
        if str(exc.filename) != str(path):
            text += f" (at {exc.filename})"
    return f"{text}: {hint}" if hint else text


def write_error(exc: OSError, path: Path) -> OSError:
    """``exc`` as an OSError of the same errno whose message names ``path`` (e.g. disk full, errno 28)."""
    if isinstance(exc, WriteError):
        return exc
    message = describe_os_error(exc, path, "writing")
    return WriteError(exc.errno, message) if exc.errno is not None else WriteError(message)


def check_writable_dir(path: Path, flag: str) -> None:
    """Raise ValueError, naming ``flag`` and the path, when ``path`` cannot be a directory we write in.

    Checked before any work, so a run does not train for an hour and then fail on its first write.
    A directory that does not exist yet is fine when its nearest existing parent is writable.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = f"{path} is a file" if existing == path else f"{existing} is a file, so {path} cannot be created"
        raise ValueError(f"{flag} {path}: {what}; give a directory (or move the file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"{flag} {path}: {existing} is not writable by this user (permission denied); "
            f"choose another {flag} or make it writable"
        )


# --- temporary names and their writers -----------------------------------------------------------
#
# A temporary name says which process writes it: ".NAME.w<pid>-<machine>.<random>.tmp", where
# <machine> hashes the host name, the PID namespace and the boot. A later run may then delete a
# temporary entry as soon as its writer is gone, instead of waiting a day, without ever deleting
# one a live process (this or another run sharing the runs dir or the cache) is still writing:
# "no such process" is believed only when the PID means the same process here as where it was
# written (same host, same PID namespace, same boot). Anything else, an entry of another machine
# or one without a writer, is stale only once untouched for STALE_AFTER_S.
STALE_AFTER_S = 24 * 3600.0
_WRITER = re.compile(r"[.-]w(\d+)-([0-9a-f]{8})\.")


@functools.lru_cache(maxsize=1)
def _machine() -> str:
    parts = [socket.gethostname()]
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))  # e.g. "pid:[4026531836]"
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    except OSError:  # no /proc (macOS): the host name alone
        pass
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def writer_tag() -> str:
    """This process as the writer of a temporary name: ``w<pid>-<machine>``."""
    return f"w{os.getpid()}-{_machine()}"


def temp_prefix(name: str) -> str:
    """The start of a temporary name for ``name`` written by this process (hidden, tagged with the writer)."""
    return f".{name}.{writer_tag()}."


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` (on this machine) exists and has not ended; a zombie has ended.

    Always True on Windows, where signal 0 is CTRL_C_EVENT: asking would interrupt the process.
    """
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user's process
        return True
    try:  # a killed process its parent has not reaped yet is a zombie: it writes nothing any more
        proc_stat = Path(f"/proc/{pid}/stat").read_text()
        return proc_stat[proc_stat.rindex(")") + 2] not in "ZX"
    except (OSError, ValueError, IndexError):
        return True


def _age(path: Path) -> float:
    """Seconds since ``path`` (or, for a directory, the newest entry in it) was last modified."""
    newest = path.lstat().st_mtime
    if path.is_dir():
        newest = max([newest, *(p.lstat().st_mtime for p in path.iterdir())])
    return time.time() - newest


def is_stale(path: Path, max_age_s: float = STALE_AFTER_S) -> bool:
    """Whether the temporary entry ``path`` belongs to no live writer (see the note above ``STALE_AFTER_S``)."""
    path = Path(path)
    found = _WRITER.search(path.name)
    if found and found.group(2) == _machine():
        pid = int(found.group(1))
        if pid == os.getpid():
            return False  # this process's own, being written now
        if not pid_alive(pid):
            return True
        # Alive: the writer, or an unrelated process that got its PID; the age decides.
    try:
        return _age(path) > max_age_s
    except OSError:  # removed meanwhile (its writer renamed it into place)
        return False


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
    except OSError as exc:
        raise write_error(exc, path) from exc
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        # A disk-full or permission error must name the file it was writing, not a temporary name.
        if isinstance(exc, OSError):
            raise write_error(exc, path) from exc
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as exc:
        raise write_error(exc, path) from exc
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise write_error(exc, path) from exc
        raise
    old = path.with_name(path.name + ".old")
    try:
        if path.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(exc, path) from exc
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(path: Path) -> Path | None:
    """``path`` if it exists, else its ``.old`` copy left by a kill inside ``atomic_dir``, else None.

    When both exist, a kill came after the new ``path`` was in place and before the superseded
    ``.old`` was deleted; that copy is deleted now (nothing else would: a finished stage's
    checkpoint is never written again).
    """
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if path.exists():
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        return path
    if old.exists():
        os.replace(old, path)
        return path
    return None


def clean_partial(
    directory: Path, *, recursive: bool = False, pattern: str = ".*.tmp", max_age_s: float = STALE_AFTER_S
) -> list[Path]:
    """Remove the temporary files and directories (``pattern``) killed writers left in ``directory``.

    Only stale ones (``is_stale``): a dead writer's at once, any other only once untouched for
    ``max_age_s``, so a temporary entry a live process is writing is never deleted under it.
    ``recursive`` looks in every subdirectory too. Returns what was removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = sorted(directory.rglob(pattern) if recursive else directory.glob(pattern))
    removed: list[Path] = []
    for p in found:
        if any(parent in removed for parent in p.parents) or not is_stale(p, max_age_s):
            continue  # inside a directory removed already, or still being written
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


# --- paths named by data files --------------------------------------------------------------------
#
# A dataset's own files name other files: the image of each question row, the file list of a
# manifest, a split's table. Such a name is data, not a trusted path: written by hand, by another
# tool or by someone else, it may be absolute ("/dev/zero"), climb out ("../../etc/passwd"), go
# through a symbolic link to somewhere else, or name a FIFO that blocks the first read forever.
# Every dataset plugin resolves such names with ``contained``, so a run never reads, hashes or
# trains on anything outside the directory the user pointed it at, and the error names the file,
# line and field that gave the bad name.

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
_JSON_TYPES = {
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
    list: "a list",
    dict: "an object",
}


class UnsafePathError(ValueError):
    """A path named by a data file that is not a regular file inside its dataset root (see ``contained``)."""


def _inside(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def file_sha256(path: Path) -> bytes:
    """The sha256 of a file's bytes, read in 1 MiB blocks (never all at once)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            hasher.update(block)
    return hasher.digest()


def check_regular_file(path: Path, *, dataset: str, fix: str, error: type[Exception] = ValueError) -> None:
    """``error`` naming ``path`` unless it is a regular file (it is read whole later).

    A FIFO would block the first read forever; a directory would fail it less clearly.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise error(f"{dataset}: {describe_os_error(exc, path, 'reading')}") from None
    if not stat.S_ISREG(mode):
        raise error(f"{dataset}: {path} is not a regular file; {fix}")


def dataset_root(value: str, *, dataset: str, holds: str, flag: str, error: type[Exception] = ValueError) -> Path:
    """The directory a dataset's ``root`` config names, or ``error`` naming the flag and what the folder holds.

    Absolute but not resolved: sample paths, and the caches keyed by them, stay as the user named them.
    """
    if not value:
        raise error(f"{dataset} needs root=DIR, the folder holding {holds}: `{flag}`")
    root = Path(value).expanduser().absolute()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise error(f"{dataset} root {root} {what}; give the folder holding {holds}: `{flag}`")
    return root


def contained(root: Path | str, relative: Any, *, where: str, must_exist: bool = False) -> Path:
    """``root / relative``, once it is known to be a file a data file may name; else ``UnsafePathError``.

    ``relative`` is a file name read from a data file under ``root`` (a dataset's root directory);
    ``where`` says where it was read, as ``"FILE:LINE field NAME"`` (``"FILE field NAME"`` for a
    file without lines), and starts the error message, which also gives the offending value. Refused:

    - anything but a non-empty string without NUL bytes (a number, null, a list);
    - an absolute path (``/etc/passwd``, ``C:\\data``): names are relative to ``root``;
    - a path that leaves ``root`` once ``..`` is applied (``../../etc/passwd``), or once symbolic
      links are followed (a link, or a link among its parent directories, pointing outside
      ``root``); links that stay inside ``root`` are fine;
    - when it exists (after following links): anything but a regular file, i.e. a directory, a FIFO
      (which would block the first read forever), a device (``/dev/zero`` never ends) or a socket;
    - with ``must_exist``: a path that does not exist. Without it a missing file is the caller's
      to report (a plugin usually says "missing" in its own words, with its fix).

    The path returned is ``root / relative`` as given, not resolved, so sample paths (and the
    cache keys made from them) do not change with where links point. The check is made once, here:
    a file swapped for a link afterwards is not caught (this guards against malformed data, not
    against a concurrent attacker). A plugin wraps the error in its own exception when it wants to
    add its fix (e.g. "re-prepare the dataset"); ``UnsafePathError`` is a ``ValueError``, which the
    CLI prints as one ``error:`` line.
    """

    def refuse(why: str) -> UnsafePathError:
        return UnsafePathError(f"{where}: {relative!r} {why}; a data file names files by paths relative to {root}")

    if not isinstance(relative, str):
        # Names come from JSON: say what the value is in its words.
        what = _JSON_TYPES.get(type(relative), f"a {type(relative).__name__}")
        raise refuse(f"is {what}, not a relative path (a string)")
    if not relative or "\0" in relative:
        raise refuse("is not a usable file name (empty, or holds a NUL byte)")
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).anchor:
        raise refuse("is an absolute path")
    base = os.path.realpath(root)
    candidate = os.path.join(base, relative)
    if not _inside(os.path.normpath(candidate), base):
        raise refuse("leaves the dataset root ('..')")
    real = os.path.realpath(candidate)  # follows every link on the way; a loop is left for stat to find
    if not _inside(real, base):
        raise refuse(f"is, or goes through, a symbolic link to {real}, outside the dataset root")
    try:
        mode = os.stat(real).st_mode
    except (FileNotFoundError, NotADirectoryError):
        if must_exist:
            raise refuse("does not exist") from None
        return Path(root) / relative
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # realpath leaves a loop as it is; stat finds it
            raise refuse("is a loop of symbolic links") from None
        return Path(root) / relative  # e.g. permission denied on a parent: the caller's read names the path
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        raise refuse(f"is {kind}, not a regular file")
    return Path(root) / relative
