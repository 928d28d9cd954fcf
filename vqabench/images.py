"""Images as the image encoder expects them: decoded once into a uint8 store [N, 3, S, S].

Holds ``ImageStore`` (the store, and how batches read rows from it), ``decode_image`` (one file
in any PIL mode to RGB, fitted to S×S by squashing or by a CLIP-style resize and centre crop)
and the build that decodes a large photo set in worker processes straight into a memory-mapped
``.npy`` in the cache directory, so the whole set is never in RAM at once.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vqabench.files import atomic_path, clean_partial
from vqabench.workers import die_with_owner

# torch is imported inside ImageStore's methods only: worker processes import this module to
# decode, and a torch import (1.5 s or more) at each pool start costs more than decoding a few
# hundred images. Keep the module-level imports to numpy, PIL and the standard library.
if TYPE_CHECKING:
    import torch

RESIZE_MODES = ("squash", "center_crop")
# Below this many images a build decodes in-process: starting workers costs more than it saves.
PARALLEL_MIN = 64
# Paths per worker task: large enough to amortise the round trip, small enough to balance load.
CHUNK = 64
# 16-bit greyscale modes; PIL's own conversion to 8 bits clips at 255 instead of rescaling.
_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# What a broken, truncated or hostile file raises inside PIL (plugins use several of these).
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, UnidentifiedImageError)


class ImageDecodeError(ValueError):
    """An image that cannot be read, naming the file, the dataset and the fix."""

    def __init__(self, path: str, reason: str, dataset: str = "") -> None:
        self.path, self.reason, self.dataset = path, reason, dataset
        where = f" (dataset {dataset})" if dataset else ""
        super().__init__(
            f"cannot read image {path}{where}: {reason}; "
            f"re-download or re-prepare the dataset: vqabench data prepare {dataset or '<dataset>'}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its fields when it crosses back from a worker process.
        return (type(self), (self.path, self.reason, self.dataset))


def _to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB.

    Alpha is dropped (``convert("RGB")`` keeps the colour channels as they are), which is what
    CLIP's and Hugging Face's preprocessing do, so pixels match the encoder's training data.
    A palette image with a transparent entry goes through RGBA first: converting it straight to
    RGB gives the same colours but PIL warns. 16-bit greyscale keeps its top 8 bits (as
    torchvision's uint16 to uint8 conversion does) instead of PIL's clipping of every value
    over 255 to white. Other modes (CMYK, 1, I, F, ...) use PIL's own conversion.
    """
    if im.mode in _MODES_16BIT:
        return Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("P", "PA") and "transparency" in im.info:
        im = im.convert("RGBA")
    return im if im.mode == "RGB" else im.convert("RGB")


def _fit(im: Image.Image, size: int, resize: str) -> Image.Image:
    """``im`` at size×size: squashed, or shorter side to ``size`` then a centre crop.

    The crop follows torchvision's ``Resize(size, BICUBIC)`` + ``CenterCrop(size)`` on PIL
    images to the pixel (same rounding of the long side and of the crop offsets), without
    importing torch in the workers.
    """
    w, h = im.size
    if resize == "squash":
        return im if (w, h) == (size, size) else im.resize((size, size), Image.BICUBIC)
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return im.crop((left, top, left + size, top + size))


def decode_image(path: str, size: int, resize: str = "squash", dataset: str = "") -> np.ndarray:
    """One image file as uint8 [3, size, size]; ``ImageDecodeError`` when it cannot be read.

    Pure PIL and numpy, so worker processes never need torch.
    """
    try:
        # A decompression bomb only warns below twice PIL's pixel limit; here it is an error,
        # since decoding one would take gigabytes in every worker.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                # Converted before resizing: PIL resizes palette images with nearest neighbour.
                out = _fit(_to_rgb(im), size, resize)
                return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found", dataset) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(path, f"decompression bomb refused ({exc})", dataset) from None
    except _READ_ERRORS as exc:
        raise ImageDecodeError(path, f"{type(exc).__name__}: {exc}", dataset) from None


def _decode_chunk(
    paths: Sequence[str], size: int, resize: str, dataset: str, dest: str | None, start: int, max_pixels: int | None
) -> np.ndarray | None:
    """Worker task: decode ``paths`` into rows ``start:`` of the ``.npy`` at ``dest``, or return them.

    Writing into the shared memory-mapped file spares sending every pixel back through a pipe.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels  # the parent's bomb limit, which a fresh process would not have
    if dest is None:
        out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
        for i, p in enumerate(paths):
            out[i] = decode_image(p, size, resize, dataset)
        return out
    store = np.load(dest, mmap_mode="r+")
    for i, p in enumerate(paths):
        store[start + i] = decode_image(p, size, resize, dataset)
    del store  # unmapped; the pages are already in the shared page cache
    return None


def _mp_context() -> Any:
    """Forkserver where there is one, else spawn; never a plain fork.

    The parent has torch loaded (and maybe CUDA and OpenMP threads): forking it can deadlock on
    a lock another thread held. The fork server imports this module once and forks the workers
    from that clean process, so they start in milliseconds without importing anything again.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["__main__", __name__])  # no effect once the server runs
        return ctx
    return multiprocessing.get_context("spawn")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on (containers)
    except AttributeError:
        return os.cpu_count() or 1


def _decode_all(
    paths: list[str],
    size: int,
    resize: str,
    dataset: str,
    out: np.ndarray,
    dest: str | None,
    workers: int,
    parallel_min: int,
    bar: Any,
) -> None:
    """Fill ``out`` (``dest`` is its file when it is memory-mapped) with every image."""
    chunk = max(1, min(CHUNK, -(-len(paths) // (workers * 4))))  # >= 4 tasks per worker to balance
    workers = min(workers, -(-len(paths) // chunk))
    if workers < 2 or len(paths) < parallel_min:
        for i, p in enumerate(paths):
            out[i] = decode_image(p, size, resize, dataset)
            bar.update(1)
        return
    # Workers die with this process: a SIGKILL here must not leave them waiting for tasks forever.
    with ProcessPoolExecutor(
        workers, mp_context=_mp_context(), initializer=die_with_owner, initargs=(os.getpid(),)
    ) as pool:
        pending = {
            pool.submit(_decode_chunk, paths[s : s + chunk], size, resize, dataset, dest, s, Image.MAX_IMAGE_PIXELS): s
            for s in range(0, len(paths), chunk)
        }
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    s = pending.pop(fut)
                    rows = fut.result()  # re-raises a worker's ImageDecodeError
                    if rows is not None:
                        out[s : s + len(rows)] = rows
                    bar.update(min(chunk, len(paths) - s))
        except ImageDecodeError as exc:
            pool.shutdown(wait=True, cancel_futures=True)
            # Raised afresh: the worker's remote traceback says nothing the message does not.
            raise ImageDecodeError(exc.path, exc.reason, exc.dataset) from None
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _cache_file(cache_dir: Path, paths: list[str], size: int, revision: str, resize: str) -> Path:
    # "squash" keeps the key and name stores had before resize modes existed, so a cache of
    # tens of thousands of decoded photos stays valid; other modes add themselves to both.
    mode = "" if resize == "squash" else f"{resize}|"
    key = hashlib.sha256(f"{revision}|{size}|{mode}".encode() + "\n".join(paths).encode()).hexdigest()[:20]
    suffix = "" if resize == "squash" else f"-{resize}"
    return Path(cache_dir) / "images" / f"{key}-{size}px{suffix}.npy"


class ImageStore:
    """uint8 images [N, 3, S, S], one row per distinct image path."""

    def __init__(self, paths: Sequence[str], array: np.ndarray | torch.Tensor, resize: str = "squash") -> None:
        import torch

        self.resize = resize  # how the images were fitted: part of the feature cache's key
        self.paths = list(paths)
        self.row = {p: i for i, p in enumerate(self.paths)}
        self.images = torch.from_numpy(np.asarray(array)) if isinstance(array, np.ndarray) else array

    @classmethod
    def build(
        cls,
        paths: Sequence[str],
        size: int,
        cache_dir: Path | None,
        revision: str,
        progress: bool = False,
        *,
        resize: str = "squash",
        dataset: str = "",
        workers: int | None = None,
        parallel_min: int = PARALLEL_MIN,
    ) -> ImageStore:
        """Decode and fit every image once; reuse the cached store when it exists.

        ``resize`` is one of ``RESIZE_MODES``; ``dataset`` names the dataset in errors. With a
        ``cache_dir`` the store is written to a temporary ``.npy`` there, renamed into place once
        complete and opened memory-mapped; without one it is an in-memory array. ``parallel_min``
        or more images are decoded by ``workers`` processes (default: one per usable core).
        """
        if resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {resize!r}; expected one of: {', '.join(RESIZE_MODES)}")
        paths = list(dict.fromkeys(paths))
        shape = (len(paths), 3, size, size)
        target = _cache_file(cache_dir, paths, size, revision, resize) if cache_dir and paths else None
        if target is not None and target.exists():
            arr = np.load(target, mmap_mode="c")  # copy-on-write: torch needs a writable array
            if arr.shape == shape:
                return cls(paths, arr, resize)
        from tqdm.auto import tqdm

        workers = workers or _cpu_count()
        with tqdm(total=len(paths), desc=f"decode {size}px", unit="img", disable=not progress) as bar:
            if target is None:
                out = np.empty(shape, dtype=np.uint8)
                _decode_all(paths, size, resize, dataset, out, None, workers, parallel_min, bar)
                return cls(paths, out, resize)
            # A kill before the rename leaves only a hidden temporary file, never a store in use;
            # the next build removes those whose writer is gone (files.is_stale).
            clean_partial(target.parent)
            with atomic_path(target) as tmp:
                mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
                _decode_all(paths, size, resize, dataset, mm, str(tmp), workers, parallel_min, bar)
                mm.flush()
                del mm
        return cls(paths, np.load(target, mmap_mode="c"), resize)

    def to(self, device: torch.device) -> ImageStore:
        return ImageStore(self.paths, self.images.to(device), self.resize)

    def place(self, device: torch.device) -> ImageStore:
        """On the GPU when it takes under half its free memory (batches then never cross the bus)."""
        if device.type != "cuda":
            return self
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return self.to(device) if self.images.nelement() * self.images.element_size() < free // 2 else self

    def gather(self, paths: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
        """Float images in [0, 1] for the given paths, on ``device`` (default: the store's).

        Rows cross to the GPU as uint8, a quarter of the bytes, and become floats there.
        """
        from vqabench.transfer import rows_to

        rows = [self.row[p] for p in paths]
        return rows_to(self.images, rows, device or self.images.device).float().div_(255)
