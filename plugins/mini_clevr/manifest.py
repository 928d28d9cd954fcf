"""The integrity manifest: sha256 and size of every file, and a top hash used as the revision.

``manifest.json`` is written last, inside the temporary directory, just before the directory is
renamed into place; a directory without a manifest that matches its files is never used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vqabench.files import UnsafePathError, contained, describe_os_error, file_sha256

MANIFEST = "manifest.json"
FORMAT = "mini-clevr-manifest/1"


class DatasetError(RuntimeError):
    """A Mini-CLEVR directory is missing, incomplete, altered or malformed; the message says how to fix it."""


def fix_hint(root: Path) -> str:
    """What to do about a broken dataset directory."""
    return f"delete {root} and run `vqabench data prepare mini-clevr --root {root}` (or let the cache regenerate it)"


def dumps(obj: Any) -> str:
    """Canonical JSON: sorted keys, no spaces; the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(data: bytes) -> dict[str, Any]:
    """A manifest entry for some bytes."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def top_hash(files: Mapping[str, Mapping[str, Any]]) -> str:
    """The revision: sha256 of the canonical file table."""
    return hashlib.sha256(dumps(dict(files)).encode()).hexdigest()


def write_manifest(root: Path, files: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Write ``root/manifest.json`` for ``files`` (path relative to root -> digest) and return it."""
    manifest = {"format": FORMAT, "files": dict(files), "revision": top_hash(files)}
    (root / MANIFEST).write_text(dumps(manifest) + "\n", encoding="utf-8")
    return manifest


def verify(root: Path, *, full: bool = True) -> dict[str, Any]:
    """Check every file against ``root/manifest.json``; return the manifest or raise DatasetError.

    ``full`` hashes every file (about 1 s for the default 11,464 files); otherwise only presence
    and sizes are checked.
    """
    path = root / MANIFEST
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory; run `vqabench data prepare mini-clevr --root {root}`")
    try:  # a manifest that is a directory, a FIFO or a link out of the root is refused, not read
        contained(root, MANIFEST, where=str(path))
    except UnsafePathError as exc:
        raise DatasetError(f"{exc}; {fix_hint(root)}") from None
    if not path.is_file():
        raise DatasetError(f"{path} is missing, so {root} is incomplete (interrupted generation?); {fix_hint(root)}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files, revision = manifest["files"], manifest["revision"]
        if manifest.get("format") != FORMAT:
            raise ValueError(f"unknown format {manifest.get('format')!r}")
        _check_table(files)
    except OSError as exc:
        raise DatasetError(f"{describe_os_error(exc, path, 'reading')}; {fix_hint(root)}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path} is malformed ({type(exc).__name__}: {exc}); {fix_hint(root)}") from None
    if top_hash(files) != revision:
        raise DatasetError(f"{path}: the file table does not match its revision hash; {fix_hint(root)}")
    for rel, expected in files.items():
        try:
            # Every name is data: checked to be a regular file inside root before it is opened, so a
            # manifest cannot make this read /dev/zero forever or hash a file outside the dataset.
            file = contained(root, rel, where=f"{path} field files")
        except UnsafePathError as exc:
            raise DatasetError(f"{exc}; {fix_hint(root)}") from None
        try:
            # Sizes first: a file of the wrong size is never read (it may be huge).
            altered = file.stat().st_size != expected["size"] or (full and _sha256(file) != expected["sha256"])
        except FileNotFoundError:
            raise DatasetError(f"{file} is missing; {fix_hint(root)}") from None
        except OSError as exc:  # permission denied, an I/O error: say which, not "missing"
            raise DatasetError(f"{describe_os_error(exc, file, 'reading')}; {fix_hint(root)}") from None
        if altered:
            raise DatasetError(f"{file} does not match {MANIFEST} (altered or partly written); {fix_hint(root)}")
    return manifest


def _check_table(files: Any) -> None:
    """ValueError unless ``files`` is {relative path: {"sha256": hex, "size": int}}."""
    if not isinstance(files, dict):
        raise ValueError(f"field files is {type(files).__name__}, not an object of file entries")
    for rel, entry in files.items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("size"), int)
            and not isinstance(entry.get("size"), bool)
        ):
            raise ValueError(f"field files, entry {rel!r}: {entry!r} is not {{'sha256': HEX, 'size': BYTES}}")


def _sha256(path: Path) -> str:
    return file_sha256(path).hex()
