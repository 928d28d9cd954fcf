"""The feature cache: outputs of a model's frozen stems, computed once and reused across epochs,
runs and models.

``FeatureStore`` holds an image stem's output per image path, of any shape per row: pooled
vectors [N, D], patch tokens [N, T, D], activation maps [N, C, H, W]. ``TextFeatureStore`` holds
a text stem's output per distinct string: pooled [N, D], or token states [N, L, D] padded to the
longest sequence of the set, with a bool mask [N, L] (True for real tokens).

On disk, one directory per entry::

    <cache_dir>/features/<image|text>-<key>/features.npy   [N, ...] float16 (default) or float32
                                            mask.npy       [N, L] bool, text token states only
                                            meta.json      shape, dtype, stem, rows, row-key hash

``key`` hashes what the features depend on: the stem key (weights and preprocessing), dataset
revision, image size and resize mode, dtype, and the row keys. An entry is computed chunk by
chunk into memory-mapped files in a temporary directory that is renamed into place only once
complete (``files.atomic_dir``), so a killed computation never leaves an entry behind; an entry
whose meta.json or arrays do not match what is asked for is recomputed, never used. Entries are
loaded memory-mapped and moved to the GPU only when they fit (``place``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vqabench.device import autocast
from vqabench.files import atomic_dir, atomic_write_json, clean_partial, recover_dir
from vqabench.model import Stem, TextStem
from vqabench.transfer import rows_to, to_device

if TYPE_CHECKING:  # only a type here: the image store's module is not needed to load or build features
    from vqabench.data import ImageStore

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout of an entry changes: older entries then no longer match
DTYPES = {"float16": np.float16, "float32": np.float32}
_FP16_MAX = float(np.finfo(np.float16).max)
# A temporary entry directory untouched for this long belongs to a killed build (a live one
# writes a chunk every few seconds); the next build of the same entry removes it (at once when
# its name says its writer is dead).
_STALE_S = 3600.0

# One chunk of stem output: (first row, features [n, ...], mask [n, L] or None).
Chunk = tuple[int, torch.Tensor, "torch.Tensor | None"]


class _Float16Overflow(Exception):
    """A finite stem output beyond float16's range (65504): the entry is stored in float32."""


def keys_hash(keys: Sequence[str]) -> str:
    """SHA-256 of the row keys in order (length-prefixed: keys may hold any character)."""
    h = hashlib.sha256()
    for k in keys:
        b = k.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"feature cache dtype {dtype!r}: choose {' or '.join(DTYPES)}")


class FeatureStore:
    """An image stem's outputs [N, ...], one row per image path (``row`` maps a path to its row)."""

    def __init__(self, keys: Sequence[str], features: torch.Tensor, source: Path | None = None) -> None:
        self.keys = list(keys)
        self.row = {k: i for i, k in enumerate(self.keys)}
        self.features = features
        self.source = source  # the cache entry it was loaded from, None when computed in memory

    @property
    def paths(self) -> list[str]:
        return self.keys

    @property
    def nbytes(self) -> int:
        return self.features.nelement() * self.features.element_size()

    def to(self, device: torch.device) -> FeatureStore:
        return FeatureStore(self.keys, self.features.to(device), self.source)

    def place(self, device: torch.device) -> FeatureStore:
        """On the GPU when it takes under half its free memory; else on the host, where ``gather``
        stages each batch's rows in pinned memory (``transfer.rows_to``)."""
        if device.type != "cuda" or self.features.device.type == "cuda":
            return self
        free, _ = torch.cuda.mem_get_info(device)
        return self.to(device) if self.nbytes < free // 2 else self

    def gather(self, keys: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
        """float32 features of ``keys``, in that order, on ``device`` (default: the store's)."""
        rows = [self.row[k] for k in keys]
        return rows_to(self.features, rows, device or self.features.device).float()

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        stem: Stem,
        store: ImageStore,
        cache_dir: Path | None,
        revision: str,
        device: torch.device,
        precision: str = "auto",
        batch_size: int = 256,
        dtype: str = "float16",
    ) -> tuple[FeatureStore, bool]:
        """Load the cached features or compute them, placed for ``device``; returns (store, whether
        it was a cache hit). Without ``cache_dir`` they are computed into memory."""
        _check_dtype(dtype)
        keys = list(store.paths)
        ident = {
            "kind": "image",
            "stem_key": stem.key,
            "revision": revision,
            "image_size": int(store.images.shape[-1]),
            "resize": getattr(store, "resize", "squash"),
            "requested_dtype": dtype,
        }

        def chunks() -> Iterator[Chunk]:
            for start in range(0, len(keys), batch_size):
                images = to_device(store.images[start : start + batch_size], device).float().div_(255)
                with autocast(device, precision):
                    yield start, stem.encode(images), None

        arrays, hit, entry = _load_or_compute(cache_dir, ident, stem.name, keys, chunks)
        return cls(keys, torch.from_numpy(arrays["features"]), entry).place(device), hit


class TextFeatureStore:
    """A text stem's outputs per distinct string: features [N, ...] and, for token states, a bool
    mask [N, L]; ``row`` maps a string to its row."""

    def __init__(
        self, keys: Sequence[str], features: torch.Tensor, mask: torch.Tensor | None, source: Path | None = None
    ) -> None:
        self.keys = list(keys)
        self.row = {k: i for i, k in enumerate(self.keys)}
        self.features = features
        self.mask = mask
        self.source = source

    @property
    def nbytes(self) -> int:
        mask = 0 if self.mask is None else self.mask.nelement()
        return self.features.nelement() * self.features.element_size() + mask

    def to(self, device: torch.device) -> TextFeatureStore:
        mask = None if self.mask is None else self.mask.to(device)
        return TextFeatureStore(self.keys, self.features.to(device), mask, self.source)

    def place(self, device: torch.device) -> TextFeatureStore:
        """On the GPU when it takes under half its free memory, as ``FeatureStore.place``."""
        if device.type != "cuda" or self.features.device.type == "cuda":
            return self
        free, _ = torch.cuda.mem_get_info(device)
        return self.to(device) if self.nbytes < free // 2 else self

    def gather(
        self, strings: Sequence[str], device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(float32 features, bool mask or None) of ``strings``, in that order, on ``device``.

        Token states keep the store's full padded length L (trimming to the batch's longest
        would need a host sync on the GPU); the mask marks the real tokens.
        """
        rows = [self.row[s] for s in strings]
        device = device or self.features.device
        feats = rows_to(self.features, rows, device).float()
        return feats, None if self.mask is None else rows_to(self.mask, rows, device)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        stem: TextStem,
        strings: Sequence[str],
        cache_dir: Path | None,
        device: torch.device,
        precision: str = "auto",
        batch_size: int = 256,
        dtype: str = "float16",
    ) -> tuple[TextFeatureStore, bool]:
        """Load the cached outputs of ``stem`` for the distinct ``strings`` or compute them, placed
        for ``device``; returns (store, whether it was a cache hit).

        Chunks of token states may come back with different lengths L: each is written padded to
        the longest length seen so far, and when a chunk is longer the rows written until then are
        copied once into arrays of the new length (no second encoding pass, no tokenizer needed).
        """
        _check_dtype(dtype)
        keys = list(dict.fromkeys(strings))
        ident = {"kind": "text", "stem_key": stem.key, "requested_dtype": dtype}

        def chunks() -> Iterator[Chunk]:
            for start in range(0, len(keys), batch_size):
                with autocast(device, precision):
                    feats, mask = stem.encode(keys[start : start + batch_size])
                yield start, feats, mask

        arrays, hit, entry = _load_or_compute(cache_dir, ident, stem.name, keys, chunks)
        mask = arrays.get("mask")
        store = cls(keys, torch.from_numpy(arrays["features"]), None if mask is None else torch.from_numpy(mask), entry)
        return store.place(device), hit


# --- entries on disk ---------------------------------------------------------------------------


def _entry_dir(cache_dir: Path, ident: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_dir) / "features" / f"{ident['kind']}-{key}"


def _load_or_compute(
    cache_dir: Path | None,
    ident: dict[str, Any],
    name: str,
    keys: list[str],
    chunks: Callable[[], Iterator[Chunk]],
) -> tuple[dict[str, np.ndarray], bool, Path | None]:
    """The arrays of an entry (memory-mapped), whether they came from the cache, and the entry."""
    ident = {**ident, "format": FORMAT, "rows": len(keys), "keys_sha256": keys_hash(keys)}
    if not keys:  # nothing to encode, and an empty file cannot be memory-mapped
        return {"features": np.zeros((0,), DTYPES[ident["requested_dtype"]])}, False, None
    if cache_dir is None:
        arrays, _ = _compute(None, ident, chunks)
        return {k: a.array for k, a in arrays.items()}, False, None
    entry = _entry_dir(cache_dir, ident)
    found = _load_entry(entry, ident)
    if found is not None:
        return found, True, entry
    _remove_stale(entry)
    with atomic_dir(entry) as tmp:
        arrays, stored = _compute(tmp, ident, chunks)
        meta = {
            **ident,
            "stem": name,
            "dtype": stored,
            "shape": list(arrays["features"].shape),
            "mask_shape": list(arrays["mask"].shape) if "mask" in arrays else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(tmp / "meta.json", meta)  # last: an entry without it is never used
    found = _load_entry(entry, ident)
    if found is None:
        raise RuntimeError(f"feature cache entry {entry} does not read back after writing it")
    return found, False, entry


def _compute(directory: Path | None, ident: dict[str, Any], chunks: Callable[[], Iterator[Chunk]]):
    """Fill the entry's arrays from the stem's chunks: in ``dtype``, else in float32 when an output
    overflows float16 (the entry's meta then says dtype float32, requested float16)."""
    dtype = ident["requested_dtype"]
    try:
        return _fill(directory, chunks(), ident["rows"], DTYPES[dtype]), dtype
    except _Float16Overflow:
        log.warning("stem outputs exceed float16's range; caching them in float32")
        for f in directory.glob("*.npy") if directory else []:
            f.unlink()
        return _fill(directory, chunks(), ident["rows"], np.float32), "float32"


def _load_entry(entry: Path, ident: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The memory-mapped arrays of a complete entry matching ``ident``, else None (it is then
    recomputed: a cache that cannot be trusted is never used, and never an error)."""
    try:
        if recover_dir(entry) is None:
            return None
        meta = json.loads((entry / "meta.json").read_text())
        differ = [k for k, v in ident.items() if meta.get(k) != v]
        if differ:
            log.warning("feature cache entry %s does not match (%s); recomputing it", entry, ", ".join(differ))
            return None
        arrays = {"features": np.load(entry / "features.npy", mmap_mode="c")}  # copy-on-write: torch needs writable
        if meta["mask_shape"] is not None:
            arrays["mask"] = np.load(entry / "mask.npy", mmap_mode="c")
        ok = (
            list(arrays["features"].shape) == meta["shape"]
            and arrays["features"].dtype == np.dtype(meta["dtype"])
            and meta["shape"][0] == ident["rows"]
            and ("mask" not in arrays or list(arrays["mask"].shape) == meta["mask_shape"] == meta["shape"][:2])
            and ("mask" not in arrays or arrays["mask"].dtype == np.bool_)
        )
        if not ok:
            log.warning("feature cache entry %s has arrays unlike its meta.json; recomputing it", entry)
            return None
        return arrays
    except Exception as exc:  # truncated or corrupt files, unreadable JSON: recompute
        if entry.exists():
            log.warning("feature cache entry %s is unreadable (%s); recomputing it", entry, exc)
        return None


def _remove_stale(entry: Path) -> None:
    """Delete temporary directories of ``entry`` left by killed builds: at once when the name says
    its writer is dead, else once untouched for an hour (``files.is_stale``)."""
    clean_partial(entry.parent, pattern=f".{entry.name}.*.tmp", max_age_s=_STALE_S)


class _Rows:
    """An [N, ...] array filled chunk by chunk: an .npy file, or an array in memory without a path.

    The file is memory-mapped anew for every chunk, so written pages leave the process's resident
    set once flushed instead of accumulating up to the whole file.
    """

    def __init__(self, path: Path | None, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.ram = np.zeros(self.shape, self.dtype) if path is None else None
        if path is not None:  # a sparse file of zeros: padding never needs writing
            np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=self.shape).flush()

    @property
    def array(self) -> np.ndarray:
        return self.ram if self.ram is not None else np.load(self.path, mmap_mode="c")

    def write(self, start: int, rows: np.ndarray) -> None:
        """Rows from ``start``; rows shorter than the array along a dimension fill its beginning."""
        target = self.ram if self.ram is not None else np.lib.format.open_memmap(self.path, mode="r+")
        target[(slice(start, start + len(rows)), *(slice(0, s) for s in rows.shape[1:]))] = rows
        if self.ram is None:
            target.flush()

    def grown(self, shape: tuple[int, ...], rows: int, step: int) -> _Rows:
        """A copy with a larger ``shape`` holding this one's first ``rows`` rows, in its place."""
        path = None if self.path is None else self.path.with_suffix(".grow.npy")
        new = _Rows(path, shape, self.dtype)
        source = self.array
        for start in range(0, rows, step):
            new.write(start, np.asarray(source[start : min(start + step, rows)]))
        del source
        if path is not None:
            os.replace(path, self.path)
            new.path = self.path
        return new


def _host(values: torch.Tensor, dtype: Any) -> np.ndarray:
    """A chunk of stem output as a host array, raising ``_Float16Overflow`` when a finite value
    does not fit in float16. On the CPU it stays as the stem made it (float32): numpy casts it
    while writing it into the file, so no converted copy of the chunk is ever made."""
    values = values.detach()
    if dtype == np.float16 and values.is_floating_point() and values.numel():
        lo, hi = torch.aminmax(values)  # two scalars; the exact test below only runs when they exceed
        if max(-lo.item(), hi.item()) > _FP16_MAX and bool(((values.abs() > _FP16_MAX) & values.isfinite()).any()):
            raise _Float16Overflow
    if values.device.type != "cpu" or values.dtype not in (torch.float16, torch.float32):
        # On a GPU: convert there, so half the bytes cross the bus; bfloat16 has no numpy type.
        values = values.to(torch.float16 if dtype == np.float16 else torch.float32)
    return values.cpu().numpy()


def _fill(directory: Path | None, chunks: Iterator[Chunk], n: int, dtype: Any) -> dict[str, _Rows]:
    """Write every chunk as it comes: only one chunk of stem output is ever held in memory."""
    arrays: dict[str, _Rows] = {}
    done = 0
    for start, feats, mask in chunks:
        f = _host(feats, dtype)
        m = None if mask is None else mask.detach().to(torch.bool).cpu().numpy()
        if start != done or not 0 < len(f) <= n - start or (m is not None and (f.ndim < 2 or m.shape != f.shape[:2])):
            raise ValueError(
                f"stem returned {tuple(f.shape)} features"
                + ("" if m is None else f" and a {tuple(m.shape)} mask")
                + f" for rows {start}.. of {n}; expected [rows, ...] (and a [rows, L] mask)"
            )
        if not arrays:
            path = (lambda name: None) if directory is None else (lambda name: directory / f"{name}.npy")
            arrays["features"] = _Rows(path("features"), (n, *f.shape[1:]), dtype)
            if m is not None:
                arrays["mask"] = _Rows(path("mask"), (n, m.shape[1]), np.bool_)
        have = arrays["features"].shape
        if (m is not None) != ("mask" in arrays):
            raise ValueError("text stem returned a mask for some chunks and none for others")
        if m is not None and f.shape[2:] == have[2:] and f.shape[1] > have[1]:
            # A longer sequence than any so far: re-lay the rows written until now at the new length.
            step = max(len(f), 1)
            arrays["features"] = arrays["features"].grown((n, *f.shape[1:]), done, step)
            arrays["mask"] = arrays["mask"].grown((n, f.shape[1]), done, step)
            have = arrays["features"].shape
        if f.shape[2 if m is not None else 1 :] != have[2 if m is not None else 1 :]:
            raise ValueError(f"stem output shape changed between chunks: {tuple(f.shape[1:])} after {have[1:]}")
        arrays["features"].write(start, f)
        if m is not None:
            arrays["mask"].write(start, m)
        done = start + len(f)
        del feats, mask, f, m  # before the next chunk is encoded: one chunk in memory at a time
    if done != n:
        raise ValueError(f"stem returned {done} rows for {n} inputs")
    return arrays


# --- what the runner calls ---------------------------------------------------------------------


def clear(cache_dir: Path, what: str = "features") -> list[Path]:
    """Delete one part of the cache ("features", "images", "pretrained", "data" or "all"); return what went.

    "features" is the directory of feature entries (image and text), one directory each;
    "pretrained" the pretrainings (``vqabench pretrain``); "data" everything else.
    """
    parts = {
        "features": ["features"],
        "images": ["images"],
        "pretrained": ["pretrained"],
        "all": [p.name for p in cache_dir.iterdir()] if cache_dir.exists() else [],
    }
    if what == "data":
        names = (
            [p.name for p in cache_dir.iterdir() if p.name not in ("features", "images", "pretrained")]
            if cache_dir.exists()
            else []
        )
    elif what in parts:
        names = parts[what]
    else:
        raise ValueError(f"unknown cache part {what!r}; choose features, images, pretrained, data or all")
    removed = []
    for name in names:
        path = cache_dir / name
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path)
    return removed


def cache_for(
    model: Any,
    store: ImageStore,
    augment: list[str],
    cache_dir: Path | None,
    disabled: bool,
    revision: str,
    device: torch.device,
    precision: str,
) -> tuple[FeatureStore | None, dict[str, Any]]:
    """The model's cached stem features when its stem is frozen and the input not augmented,
    with a note for the result record saying what was cached or why not."""
    stem = model.image_stem()
    note: dict[str, Any] = {"image": None, "text": model.text_cache_info(), "off": None}
    if stem is None:
        note["off"] = "no frozen image stem"
    elif disabled:
        note["off"] = "--no-cache"
    elif augment:
        note["off"] = f"augmentation on ({', '.join(augment)})"
    else:
        features, hit = FeatureStore.build(stem, store, cache_dir, revision, device, precision)
        note["image"] = f"{stem.name} ({'cache hit' if hit else 'computed'})"
        return features, note
    return None, note


def text_cache_for(
    model: Any,
    strings: Sequence[str],
    cache_dir: Path | None,
    disabled: bool,
    device: torch.device,
    precision: str,
) -> tuple[TextFeatureStore | None, str | None]:
    """The model's text stem outputs for the distinct ``strings`` (e.g. every question of the
    run's splits) and a note for the record's ``cached.text``; (None, None) when the model has no
    text stem or the cache is off."""
    stem = model.text_stem()
    if stem is None or disabled:
        return None, None
    features, hit = TextFeatureStore.build(stem, strings, cache_dir, device, precision)
    return features, f"{stem.name} ({'cache hit' if hit else 'computed'})"
