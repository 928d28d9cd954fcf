"""Malformed inputs: a corpus of broken datasets, each refused with one line naming the file (and line
or field) and the fix, and of odd but valid ones (CMYK, 16-bit, palette images), which must work.

Every case damages a copy of a good dataset: a tiny Mini-CLEVR generated once per module with the
tiny config of ``tests/plugins/mini_clevr``, or the example plugin's ``example-colors`` cache.
Most cases call the dataset's ``load`` (and, for image contents, decode the images as a run does
before training). ``test_cli_*`` runs a representative subset through ``vqabench run`` in
subprocesses, over a runs directory that already holds a finished record, and checks that the
record, predictions, checkpoints and leaderboards there are byte-identical afterwards, that the
ledger changed only in the failed cell's entry, and that no temporary file is left.

Damaged tables are usually re-signed (the manifest rewritten to match them), as a hand-edited or
third-party directory would be: otherwise the manifest's hash check alone would catch them all and
the checks of each line, field and path would go untested.
"""

from __future__ import annotations

import builtins
import errno
import fnmatch
import hashlib
import importlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from helpers import add_distribution
from PIL import Image
from vqabench_plugins.mini_clevr import load as load_mini_clevr
from vqabench_plugins.mini_clevr.config import MiniClevrConfig
from vqabench_plugins.mini_clevr.generate import generate
from vqabench_plugins.mini_clevr.manifest import MANIFEST, DatasetError, digest, write_manifest

from vqabench.config import apply_overrides
from vqabench.files import UnsafePathError, contained
from vqabench.images import ImageDecodeError, ImageStore
from vqabench.tasks import get_task

TESTS = Path(__file__).parents[1]
EXAMPLE_DIR = TESTS / "example_plugin"


def _import_from(folder: Path, name: str) -> Any:
    """Module ``name`` from ``folder``, which stays off sys.path afterwards (other tests decide theirs)."""
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


# The tiny config of the Mini-CLEVR tests, so both test the same dataset (one source of truth).
TINY = _import_from(TESTS / "plugins" / "mini_clevr", "mini_clevr_fixtures").TINY
_example = _import_from(EXAMPLE_DIR, "vqabench_example")
ExampleConfig, load_example = _example.ExampleConfig, _example.load

# What a run may leave behind when interrupted (none may be left by a run that fails cleanly).
LEFTOVERS = ("*.tmp", ".*.tmp", "*.old", ".*.partial-*", "*.replaced", "status.json.corrupt-*")
# The exceptions an expected error may be: the CLI prints ValueError and RuntimeError as one line;
# anything else (TypeError, KeyError, AttributeError) is a crash or an unhelpful message.
EXPECTED = (DatasetError, ImageDecodeError, UnsafePathError, ValueError)
DROP = object()  # a field value that removes the field
FIX = "delete {root} and run `vqabench data prepare mini-clevr --root {root}`"


@pytest.fixture(autouse=True)
def _deadline():
    """A case that blocks (reading a FIFO or a device) fails after 30 s instead of hanging the suite."""

    def expired(signum, frame):
        raise TimeoutError("the case blocked for 30 s (reading a FIFO or a device?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --- the good datasets, made once per module -----------------------------------------------------------


@pytest.fixture(scope="module")
def mini_clevr(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mini-clevr") / "data"
    generate(MiniClevrConfig(**TINY, workers=1), root)  # one process: 0.2 s, no pool to start
    return root


@pytest.fixture(scope="module")
def example_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("example-cache")
    load_example(ExampleConfig(), "vqa", cache)
    return cache


def _solid_png(path: Path, rgb=(200, 30, 90), size: int = 8) -> None:
    Image.new("RGB", (size, size), rgb).save(path, "PNG")


@pytest.fixture
def mc(tmp_path, mini_clevr, monkeypatch) -> SimpleNamespace:
    """A fresh copy of the tiny Mini-CLEVR and the names cases refer to."""
    root = tmp_path / "data"
    shutil.copytree(mini_clevr, root, symlinks=True)
    outside = tmp_path / "outside.png"  # a valid image outside the dataset
    _solid_png(outside)
    img = sorted((root / "images" / "val").iterdir())[0].relative_to(root).as_posix()
    return SimpleNamespace(root=root, tmp=tmp_path, outside=outside, img=img, monkeypatch=monkeypatch)


def load_mc(c: SimpleNamespace, kind: str):
    return load_mini_clevr(MiniClevrConfig(**TINY, root=str(c.root)), kind, c.tmp / "cache")


def decode(data) -> ImageStore:
    """Every image of ``data`` decoded as a run does before training (in this process)."""
    task = get_task(data.kind)
    paths = [task.image_of(s) for samples in data.splits.values() for s in samples]
    return ImageStore.build(paths, 16, None, data.revision, dataset=data.dataset, workers=1)


# --- damage -----------------------------------------------------------------------------------------------


def resign(root: Path, extra: dict[str, dict] | None = None, drop: tuple[str, ...] = ()) -> None:
    """Rewrite the manifest to match the files as they are now (plus ``extra`` entries, less ``drop``)."""
    files = json.loads((root / MANIFEST).read_text())["files"]
    for rel in files:
        if os.path.isfile(root / rel):  # follows links; never reads a FIFO or a device
            files[rel] = digest((root / rel).read_bytes())
    files.update(extra or {})
    write_manifest(root, {k: v for k, v in sorted(files.items()) if k not in drop})


def _names(c: SimpleNamespace, path: Path | None = None) -> dict[str, Any]:
    """What a case's templates may name: {root}, {img}, {outside}, {tmp}, and {name} of ``path``."""
    return {"root": c.root, "img": c.img, "outside": c.outside, "tmp": c.tmp, "name": path.name if path else ""}


def _path(c: SimpleNamespace, rel: str) -> Path:
    return c.root / rel.format(img=c.img)


def lines(rel: str, change: Callable[[list[str]], None]):
    """Change the lines of a table in place (``change(rows)``), then re-sign."""

    def damage(c):
        path = c.root / rel
        rows = path.read_text().splitlines()
        change(rows)
        path.write_text("".join(r + "\n" for r in rows))
        resign(c.root)

    return damage


def put(number: int, text: str) -> Callable[[list[str]], None]:
    """Line ``number`` (from 1) becomes ``text``."""
    return lambda rows: rows.__setitem__(number - 1, text)


def cut_last(rows: list[str]) -> None:
    rows[-1] = rows[-1][:40]  # a write that stopped part-way through the last line


def repeat_first(rows: list[str]) -> None:
    rows[1] = rows[0]  # line 2 repeats line 1, index included


def row(rel: str, number: int, **fields: Any):
    """Set (or, with DROP, remove) fields of one row; a callable value is called with the case."""

    def damage(c):
        path = c.root / rel
        rows = path.read_text().splitlines()
        record = json.loads(rows[number - 1])
        for k, v in fields.items():
            if v is DROP:
                del record[k]
            else:
                record[k] = v(c) if callable(v) else v
        rows[number - 1] = json.dumps(record)
        path.write_text("".join(r + "\n" for r in rows))
        resign(c.root)

    return damage


def document(rel: str, change: Callable[[Any], Any]):
    """Replace a JSON document by ``change(document)`` and re-sign."""

    def damage(c):
        path = c.root / rel
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
        resign(c.root)

    return damage


def manifest(change: Callable[[dict], dict]):
    """Edit manifest.json itself (its revision is left as it was)."""

    def damage(c):
        path = c.root / MANIFEST
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return damage


def size_as_text(m: dict) -> dict:
    m["files"]["answer2idx.json"]["size"] = str(m["files"]["answer2idx.json"]["size"])
    return m


def other_sha(m: dict) -> dict:
    m["files"]["answer2idx.json"]["sha256"] = "0" * 64
    return m


def meta_split(name: str) -> Callable[[dict], dict]:
    def change(meta: dict) -> dict:
        meta["splits"][name] = meta["splits"]["val"]
        return meta

    return change


def raw(rel: str, data: bytes | Callable[[bytes], bytes], sign: bool = True):
    """Write bytes (or ``data(old bytes)``) to a file; re-sign unless ``sign`` is false."""

    def damage(c):
        path = _path(c, rel)
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)
        if sign:
            resign(c.root)

    return damage


def bad_byte_on(number: int) -> Callable[[bytes], bytes]:
    """A byte that is not UTF-8 (0xff) in line ``number`` (from 1)."""

    def change(data: bytes) -> bytes:
        rows = data.split(b"\n")
        rows[number - 1] = rows[number - 1].replace(b"zeroshot_val", b"zeroshot_v\xffl")
        return b"\n".join(rows)

    return change


def flip_last_bit(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])  # same size, other content


def remove(rel: str):
    def damage(c):
        _path(c, rel).unlink()

    return damage


def remove_first(folder: str):
    def damage(c):
        sorted((c.root / folder).iterdir())[0].unlink()

    return damage


def png_of(im: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def bomb() -> bytes:
    """A PNG whose header claims 100,000 x 100,000 pixels (10 gigapixels) and holds none."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _replace(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def link(target: str, rel: str = "{img}", sign: bool = True):
    """Replace a file (or folder) by a symbolic link to ``target`` (a template), then re-sign, so the
    manifest matches what the link points to and only the containment check can refuse it."""

    def damage(c):
        path = _path(c, rel)
        _replace(path)
        path.symlink_to(target.format(**_names(c, path)))
        if sign:
            resign(c.root)

    return damage


def fifo(rel: str = "{img}"):
    def damage(c):
        path = _path(c, rel)
        _replace(path)
        os.mkfifo(path)

    return damage


def folder(rel: str = "{img}"):
    def damage(c):
        path = _path(c, rel)
        _replace(path)
        path.mkdir()

    return damage


def listed(name: str):
    """Add a manifest entry naming ``name`` (a template), with its digest and a matching revision."""

    def damage(c):
        name_here = name.format(**_names(c))
        target = os.path.join(c.root, name_here)
        entry = digest(Path(target).read_bytes()) if os.path.isfile(target) else digest(b"")
        resign(c.root, {name_here: entry})

    return damage


def deny(rel: str = "{img}"):
    """The file cannot be opened (permission denied), as chmod 000 does for a user other than root."""

    def damage(c):
        target = str(_path(c, rel))
        real = builtins.open

        def guarded(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and os.fspath(file) == target:
                raise PermissionError(errno.EACCES, "Permission denied", target)
            return real(file, *args, **kwargs)

        c.monkeypatch.setattr(builtins, "open", guarded)
        c.monkeypatch.setattr(io, "open", guarded)  # pathlib opens through io.open

    return damage


def chmod_000(rel: str = "{img}"):
    def damage(c):
        os.chmod(_path(c, rel), 0)

    return damage


# --- the Mini-CLEVR corpus ------------------------------------------------------------------------------------

# Every file the manifest lists, but one image per image folder (all images are alike).
SPLITS = ("train", "val", "test", "target_train", "target_val", "target_test")
TABLES = [
    "answer2idx.json",
    "meta.json",
    "zeroshot/classes.json",
    *(f"{t}/{s}.jsonl" for t in ("questions", "captions", "scenes") for s in SPLITS),
    *(f"zeroshot/{s}.jsonl" for s in SPLITS[:3]),
]
IMAGE_FOLDERS = [*(f"images/{s}" for s in SPLITS), *(f"zeroshot/images/{s}" for s in SPLITS[:3])]

QV, ZS = "questions/val.jsonl", "zeroshot/val.jsonl"
PASSWD = "images/../../../../../../../../../../etc/passwd"
# What messages name, as templates of the case's paths.
V, Z, C = f"{{root}}/{QV}", f"{{root}}/{ZS}", "{root}/captions/val.jsonl"
A, K, META, M = "{root}/answer2idx.json", "{root}/zeroshot/classes.json", "{root}/meta.json", "{root}/manifest.json"
IMG = "{root}/{img}"


def case(name: str, kind: str, damage: Callable[[SimpleNamespace], None], *expected: str, **options: Any):
    """A load case: ``damage`` a copy, then ``load(kind)`` must fail saying every ``expected`` part
    (formatted with root, img, outside and tmp of the case)."""
    return pytest.param(kind, damage, list(expected), id=name, **options)


NOT_AS_ROOT = pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod-000 file")

FAILING = [
    # Every file the manifest lists is needed: missing ones are named.
    *(case(f"missing-{rel}", "vqa", remove(rel), f"{{root}}/{rel} is missing", FIX) for rel in TABLES),
    *(
        case(f"missing-image-in-{d}", "vqa", remove_first(d), f"{{root}}/{d}/", " is missing", FIX)
        for d in IMAGE_FOLDERS
    ),
    case("missing-manifest", "vqa", remove(MANIFEST), f"{M} is missing", FIX),
    # Broken JSON and JSONL
    case("jsonl-bad-line", "vqa", lines("questions/val.jsonl", put(2, "{broken")), f"{V}:2: not valid JSON", FIX),
    case(
        "jsonl-truncated", "vqa", lines("questions/train.jsonl", cut_last), "{root}/questions/train.jsonl:131: not val"
    ),
    case("jsonl-blank-line", "vqa", lines("questions/val.jsonl", put(5, "")), f"{V}:5: not valid JSON"),
    case("jsonl-row-a-list", "captioning", lines("captions/val.jsonl", put(1, "[1, 2]")), f"{C}:1: not a JSON object"),
    case("jsonl-not-utf8", "zeroshot", raw("zeroshot/val.jsonl", bad_byte_on(3)), f"{Z}:3: not UTF-8 (byte 0xff at"),
    case("meta-truncated", "vqa", raw("meta.json", lambda b: b[: len(b) // 2]), f"{META} is unreadable", FIX),
    case("meta-not-utf8", "vqa", raw("meta.json", lambda b: b"\xfe" + b), f"{META} is unreadable"),
    case("answer2idx-truncated", "vqa", raw("answer2idx.json", b'{"red": 0,'), f"{A}: not valid UTF-8 JSON", FIX),
    case("classes-binary", "zeroshot", raw("zeroshot/classes.json", b"\x00\x01"), f"{K}: not valid UTF-8 JSON"),
    case("manifest-truncated", "vqa", raw(MANIFEST, lambda b: b[:100], sign=False), f"{M} is malformed", FIX),
    case("manifest-not-utf8", "vqa", raw(MANIFEST, b"\xff{}", sign=False), f"{M} is malformed (UnicodeDecodeError"),
    case("manifest-entry-bad", "vqa", manifest(size_as_text), f"{M} is malformed", "entry 'answer2idx.json': {{'sha"),
    case("manifest-files-a-list", "vqa", manifest(lambda m: {**m, "files": []}), f"{M} is malformed", "files is list"),
    # A row without a field its kind needs
    case("row-no-answer", "vqa", row("questions/val.jsonl", 1, answer=DROP), f"{V}:1: missing field(s) answer", FIX),
    case("row-no-image", "vqa", row("questions/val.jsonl", 3, image_filename=DROP), f"{V}:3: missing field(s) image_"),
    case("row-no-label", "zeroshot", row("zeroshot/val.jsonl", 2, label=DROP), f"{Z}:2: missing field(s) label"),
    case("row-no-captions", "captioning", row("captions/val.jsonl", 2, captions=DROP), f"{C}:2: missing field(s) capt"),
    # A field of the wrong type, or out of range
    case("answer-a-number", "vqa", row("questions/val.jsonl", 1, answer=2), f"{V}:1 field answer: 2 is not a str", FIX),
    case("question-null", "vqa", row("questions/val.jsonl", 2, question=None), f"{V}:2 field question: None is not a"),
    case(
        "answerable-a-string",
        "answerability",
        row("questions/val.jsonl", 2, answerable="no"),
        f"{V}:2 field answerable: 'no' is not true or false",
    ),
    case(
        "negative-question-index",
        "vqa",
        row("questions/val.jsonl", 4, question_index=-1),
        f"{V}:4 field question_index: -1 is not an integer >= 0",
    ),
    case(
        "image-index-a-string",
        "captioning",
        row("captions/val.jsonl", 1, image_index="32"),
        f"{C}:1 field image_index: '32' is not an integer >= 0",
    ),
    case("label-too-big", "zeroshot", row(ZS, 2, label=99), f"{Z}:2 field label: 99 is not a class index (0 to 23)"),
    case("label-negative", "zeroshot", row(ZS, 2, label=-3), f"{Z}:2 field label: -3 is not an integer >= 0"),
    case("label-a-string", "zeroshot", row(ZS, 2, label="3"), f"{Z}:2 field label: '3' is not an integer >= 0"),
    case(
        "captions-a-string",
        "captioning",
        row("captions/val.jsonl", 1, captions="a red circle"),
        f"{C}:1 field captions: 'a red circle' is not a non-empty list of strings",
    ),
    case("image-a-number", "vqa", row(QV, 1, image_filename=7), f"{V}:1 field image_filename: 7 is a number, not a"),
    case("image-a-list", "vqa", row(QV, 1, image_filename=["a.png"]), f"{V}:1 field image_filename: ['a.png'] is a"),
    case("answer2idx-a-list", "vqa", document("answer2idx.json", list), f"{A}: holds ['0', '1'"),
    case("answer2idx-index-text", "vqa", document("answer2idx.json", lambda d: {**d, "red": "0"}), f"{A} field red"),
    case(
        "answer2idx-index-twice",
        "vqa",
        document("answer2idx.json", lambda d: {**d, "red": 1}),
        f"{A}: the indices are not 0 to 14, each once",
    ),
    case(
        "class-names-a-string",
        "zeroshot",
        document("zeroshot/classes.json", lambda d: {**d, "class_names": "red circle"}),
        f"{K} field class_names: 'red circle' is not a non-empty list of strings",
    ),
    # Repeated ids
    case("repeated-question", "vqa", lines(QV, repeat_first), f"{V}:2 field question_index: ", " repeats line 1"),
    case("repeated-image", "zeroshot", lines(ZS, repeat_first), f"{Z}:2 field image_index: ", " repeats line 1"),
    # Splits
    case(
        "unknown-split",
        "vqa",
        document("meta.json", meta_split("bogus")),
        f"{META} field splits: unknown split 'bogus'; Mini-CLEVR's splits are train, val, test, target_train",
    ),
    case(
        "split-name-escapes",
        "vqa",
        document("meta.json", meta_split("../../../etc/passwd")),
        f"{META} field splits: unknown split '../../../etc/passwd'",
    ),
    case(
        "unknown-zeroshot-split",
        "zeroshot",
        document("meta.json", lambda m: {**m, "zeroshot": {"images": {"target_val": 3}}}),
        f"{META} field zeroshot.images: unknown split 'target_val'",
    ),
    case(
        "meta-without-splits",
        "captioning",
        document("meta.json", lambda m: {k: v for k, v in m.items() if k != "splits"}),
        f"{META} field splits: is None, not an object of split names",
    ),
    case("empty-split", "vqa", raw("questions/val.jsonl", b""), f"{V}: is empty; every Mini-CLEVR split has rows"),
    case(
        "table-not-in-manifest",
        "vqa",
        lambda c: resign(c.root, drop=("questions/val.jsonl",)),
        f"{M}: does not list questions/val.jsonl (meta.json lists split val)",
    ),
    # The manifest's own checks
    case("image-altered", "vqa", raw("{img}", flip_last_bit, sign=False), f"{IMG} does not match manifest.json", FIX),
    case("table-altered", "vqa", raw(QV, lambda b: b.replace(b"blue", b"cyan", 1), sign=False), f"{V} does not match"),
    case("size-mismatch", "vqa", raw("answer2idx.json", lambda b: b + b" ", sign=False), f"{A} does not match manife"),
    case("revision-mismatch", "vqa", manifest(other_sha), f"{M}: the file table does not match its revision hash"),
    # Paths that leave the root or are not files, named by the manifest
    case("manifest-dotdot", "vqa", listed("../outside.png"), f"{M} field files: '../outside.png' leaves the data", FIX),
    case("manifest-etc-passwd", "vqa", listed(PASSWD), f"{M} field files: '{PASSWD}' leaves the dataset root"),
    case("manifest-absolute", "vqa", listed("{outside}"), f"{M} field files: '{{outside}}' is an absolute path"),
    case("manifest-dev-zero", "vqa", listed("/dev/zero"), f"{M} field files: '/dev/zero' is an absolute path"),
    case(
        "symlink-out", "vqa", link("{outside}"), f"{M} field files: '{{img}}' is, or goes through, a symbolic link to"
    ),
    case("symlink-dev-zero", "vqa", link("/dev/zero"), f"{M} field files: '{{img}}' ", "a symbolic link to /dev/zero"),
    case("symlink-loop", "vqa", link("{name}"), f"{M} field files: '{{img}}' is a loop of symbolic links"),
    case("folder-link-out", "vqa", link("{tmp}", "images/val"), f"{M} field files: 'images/val/", "link to {tmp}/"),
    case("fifo-as-image", "vqa", fifo(), f"{M} field files: '{{img}}' is a FIFO (named pipe), not a regular file"),
    case("folder-as-image", "vqa", folder(), f"{M} field files: '{{img}}' is a directory, not a regular file"),
    case("folder-as-table", "vqa", folder(QV), f"{M} field files: '{QV}' is a directory, not a regular file"),
    case("folder-as-manifest", "vqa", folder(MANIFEST), f"{M}: 'manifest.json' is a directory, not a regular file"),
    # Paths that leave the root or are not files, named by a row (whose manifest is fine)
    case("row-etc-passwd", "vqa", row(QV, 2, image_filename=PASSWD), f"{V}:2 field image_filename: '{PASSWD}' leaves"),
    case("row-dev-zero", "vqa", row(QV, 2, image_filename="/dev/zero"), f"{V}:2 field image_filename: '/dev/zero' is"),
    case(
        "row-outside-image",
        "vqa",
        row(QV, 2, image_filename=lambda c: str(c.outside)),
        f"{V}:2 field image_filename: '{{outside}}' is an absolute path",
    ),
    case(
        "row-names-a-folder",
        "captioning",
        row("captions/val.jsonl", 2, image_filename="images/val"),
        f"{C}:2 field image_filename: 'images/val' is a directory, not a regular file",
    ),
    case(
        "row-image-not-listed",
        "vqa",
        row(QV, 2, image_filename="meta.json/../answer2idx.json"),
        f"{V}:2 field image_filename: image 'meta.json/../answer2idx.json' is not part of the dataset",
    ),
    # Files that cannot be read
    case("unreadable-image", "vqa", deny(), f"permission denied reading {IMG}", FIX),
    case("unreadable-table", "vqa", deny(QV), f"permission denied reading {V}"),
    case("unreadable-manifest", "vqa", deny(MANIFEST), f"permission denied reading {M}"),
    case("chmod-000-image", "vqa", chmod_000(), f"permission denied reading {IMG}", marks=NOT_AS_ROOT),
]


def _expect(c: SimpleNamespace, expected: list[str]) -> list[str]:
    return [e.format(**_names(c)) for e in expected]


def assert_one_line_naming(exc: BaseException, expected: list[str]) -> None:
    assert isinstance(exc, EXPECTED), f"{type(exc).__name__} is a crash, not an expected error: {exc}"
    message = str(exc)
    assert "\n" not in message, message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize(("kind", "damage", "expected"), FAILING)
def test_mini_clevr_refuses(mc, kind, damage, expected):
    damage(mc)
    with pytest.raises(Exception) as err:
        load_mc(mc, kind)
    assert_one_line_naming(err.value, _expect(mc, [*expected, FIX]))


# Image contents: the manifest matches (re-signed), so only decoding, before training, can tell.
def _truncated_png(c):
    return (c.root / c.img).read_bytes()[:60]


BROKEN_IMAGES = [
    pytest.param(lambda c: b"this is a text file, not a PNG\n", "UnidentifiedImageError", id="text-bytes"),
    pytest.param(_truncated_png, "", id="truncated-png"),
    pytest.param(lambda c: b"", "UnidentifiedImageError", id="zero-byte-png"),
    pytest.param(lambda c: bomb(), "decompression bomb refused", id="decompression-bomb"),
]


@pytest.mark.parametrize(("make", "reason"), BROKEN_IMAGES)
def test_mini_clevr_broken_image_is_refused_before_training(mc, make, reason):
    (mc.root / mc.img).write_bytes(make(mc))
    resign(mc.root)
    data = load_mc(mc, "vqa")
    with pytest.raises(ImageDecodeError) as err:
        decode(data)
    expected = [f"cannot read image {mc.root / mc.img} (dataset mini-clevr): {reason}", "vqabench data prepare"]
    assert_one_line_naming(err.value, expected)


# Odd but valid images: every PIL mode becomes RGB (16-bit keeps its top 8 bits).
ODD_IMAGES = [
    pytest.param(lambda: png_of(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "TIFF"), (255, 0, 0), id="cmyk-tiff"),
    pytest.param(
        lambda: png_of(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95), (255, 0, 0), id="cmyk-jpeg"
    ),
    pytest.param(lambda: png_of(Image.fromarray(np.full((8, 8), 0x8040, np.uint16))), (128, 128, 128), id="16-bit"),
    pytest.param(lambda: png_of(_palette(transparent=True)), (10, 200, 30), id="palette-with-transparency"),
    pytest.param(lambda: png_of(_palette(transparent=False)), (10, 200, 30), id="palette"),
    pytest.param(lambda: png_of(Image.new("LA", (8, 8), (90, 128))), (90, 90, 90), id="grey-alpha"),
    pytest.param(lambda: png_of(Image.new("RGBA", (8, 8), (1, 2, 3, 0))), (1, 2, 3), id="rgba"),
    pytest.param(lambda: png_of(Image.new("1", (8, 8), 1)), (255, 255, 255), id="1-bit"),
]


def _palette(transparent: bool) -> Image.Image:
    im = Image.new("P", (8, 8), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    if transparent:
        im.info["transparency"] = 0
    return im


@pytest.mark.parametrize(("make", "rgb"), ODD_IMAGES)
def test_mini_clevr_odd_image_modes_work(mc, make, rgb):
    (mc.root / mc.img).write_bytes(make())
    resign(mc.root)
    data = load_mc(mc, "vqa")
    get_task(data.kind).check_data(data)
    store = decode(data)
    pixels = store.images[store.row[str(mc.root / mc.img)]].numpy()
    assert np.abs(pixels.reshape(3, -1).mean(1) - np.array(rgb)).max() <= 3, pixels[:, 0, 0]


def test_mini_clevr_symlink_inside_the_root_works(mc):
    """A link is refused only when it leaves the root: one to another file of the dataset is fine."""
    moved = mc.root / "elsewhere" / "image.png"
    moved.parent.mkdir()
    (mc.root / mc.img).rename(moved)
    (mc.root / mc.img).symlink_to(Path("../..") / "elsewhere" / "image.png")
    data = load_mc(mc, "vqa")
    decode(data)
    assert str(mc.root / mc.img) in {s.image for s in data.splits["val"]}


def test_mini_clevr_undamaged_copy_loads_every_kind(mc):
    """The control: the copies the cases damage load and decode when left alone."""
    for kind in ("vqa", "answerability", "zeroshot", "captioning"):
        data = load_mc(mc, kind)
        get_task(kind).check_data(data)
    decode(data)


# --data KEY=VALUE gives strings: applied as the runner applies them, before anything is read.
CONFIGS = [
    pytest.param({"images": "-1"}, "mini-clevr config: images=-1 is too small", id="images-negative"),
    pytest.param({"image_size": "8"}, "mini-clevr config: image_size=8 must be at least 32", id="image-size-small"),
    pytest.param({"png_compress_level": "12"}, "png_compress_level=12 must lie in [0, 9]", id="compress-level"),
    pytest.param({"seed": "-2"}, "mini-clevr config: seed=-2 must be >= 0", id="seed-negative"),
    pytest.param({"images": "many"}, "dataset mini-clevr (--data).images", id="images-not-a-number"),
]


@pytest.mark.parametrize(("options", "expected"), CONFIGS)
def test_mini_clevr_config_out_of_range(options, expected):
    with pytest.raises(ValueError) as err:
        apply_overrides(MiniClevrConfig(**TINY), options, where="dataset mini-clevr (--data)")
    assert_one_line_naming(err.value, [expected])


@pytest.mark.parametrize("what", ["missing", "a-file"])
def test_mini_clevr_root_that_is_not_a_dataset(tmp_path, what):
    root = tmp_path / "nowhere"
    if what == "a-file":
        root.write_text("not a directory")
    with pytest.raises(DatasetError) as err:
        load_mini_clevr(MiniClevrConfig(**TINY, root=str(root)), "vqa", tmp_path / "cache")
    assert_one_line_naming(
        err.value, [f"{root}: not a directory; run `vqabench data prepare mini-clevr --root {root}`"]
    )


# --- the example plugin's example-colors ----------------------------------------------------------------------


@pytest.fixture
def ex(tmp_path, example_cache, monkeypatch) -> SimpleNamespace:
    cache = tmp_path / "cache"
    shutil.copytree(example_cache, cache, symlinks=True)
    (root,) = cache.iterdir()
    outside = tmp_path / "outside.png"
    _solid_png(outside)
    return SimpleNamespace(
        root=root, cache=cache, tmp=tmp_path, outside=outside, img="images/3.png", monkeypatch=monkeypatch
    )


def labels(change: Callable[[list], Any]):
    def damage(c):
        path = c.root / "labels.json"
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return damage


def _set(rows, n, **fields):
    rows[n] = {**rows[n], **fields}
    return rows


L = "{root}/labels.json"
EXAMPLE_FAILING = [
    pytest.param(
        raw("labels.json", lambda b: b[: len(b) // 2], sign=False),
        [f"{L}: not valid UTF-8 JSON"],
        id="labels-truncated",
    ),
    pytest.param(
        raw("labels.json", lambda b: b"\xff" + b, sign=False), [f"{L}: not valid UTF-8 JSON"], id="labels-not-utf8"
    ),
    pytest.param(labels(lambda rows: {}), [f"{L}: expected a non-empty list of rows"], id="labels-an-object"),
    pytest.param(
        labels(lambda rows: [{"index": 0}, *rows[1:]]),
        [f"{L} row 0: expected an object with fields index and color"],
        id="row-missing-color",
    ),
    pytest.param(
        labels(lambda rows: _set(rows, 3, color="purple")),
        [f"{L} row 3 field color: 'purple' is not one of red, green, blue, yellow"],
        id="unknown-colour",
    ),
    pytest.param(
        labels(lambda rows: _set(rows, 3, color=["red"])),
        [f"{L} row 3 field color: ['red'] is not one of red, green"],
        id="colour-a-list",
    ),
    pytest.param(
        labels(lambda rows: _set(rows, 3, index="3")),
        [f"{L} row 3 field index: '3' is not an integer >= 0"],
        id="index-a-string",
    ),
    pytest.param(
        labels(lambda rows: _set(rows, 3, index=-1)),
        [f"{L} row 3 field index: -1 is not an integer >= 0"],
        id="index-negative",
    ),
    pytest.param(
        labels(lambda rows: _set(rows, 50, index="../../outside")),
        [f"{L} row 50 field index: '../../outside' is not \"t<integer>\""],
        id="target-index-escapes",
    ),
    pytest.param(
        labels(lambda rows: _set(rows, 4, index=3)), [f"{L} row 4 field index: 3 appears twice"], id="duplicate-index"
    ),
    pytest.param(
        remove("images/3.png"),
        [f"{L} row 3 field index: 'images/3.png' does not exist"],
        id="missing-image",
    ),
    pytest.param(
        link("{outside}", sign=False),
        [f"{L} row 3 field index: 'images/3.png' is, or goes through, a symbolic link to {{outside}}"],
        id="symlink-out-of-root",
    ),
    pytest.param(
        link("/dev/zero", sign=False),
        [f"{L} row 3 field index: ", "symbolic link to /dev/zero"],
        id="dev-zero-as-image",
    ),
    pytest.param(fifo(), [f"{L} row 3 field index: 'images/3.png' is a FIFO"], id="fifo-as-image"),
    pytest.param(folder(), [f"{L} row 3 field index: 'images/3.png' is a directory"], id="directory-as-image"),
    pytest.param(deny("labels.json"), [f"permission denied reading {L}"], id="unreadable-labels"),
]


@pytest.mark.parametrize(("damage", "expected"), EXAMPLE_FAILING)
def test_example_colors_refuses(ex, damage, expected):
    damage(ex)
    with pytest.raises(Exception) as err:
        load_example(ExampleConfig(), "vqa", ex.cache)
    assert_one_line_naming(err.value, _expect(ex, [*expected, "delete {root} to regenerate it"]))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda: b"GIF89a but not really", "UnidentifiedImageError", id="not-an-image"),
        pytest.param(lambda: png_of(Image.new("RGB", (16, 16)))[:50], "", id="truncated-png"),
        pytest.param(bomb, "decompression bomb refused", id="decompression-bomb"),
    ],
)
def test_example_colors_broken_image_is_refused_before_training(ex, make, reason):
    (ex.root / ex.img).write_bytes(make())
    data = load_example(ExampleConfig(), "vqa", ex.cache)
    with pytest.raises(ImageDecodeError) as err:
        decode(data)
    assert_one_line_naming(err.value, [f"cannot read image {ex.root / ex.img} (dataset example-colors): {reason}"])


def test_example_colors_cmyk_image_works(ex):
    (ex.root / ex.img).write_bytes(png_of(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "TIFF"))
    store = decode(load_example(ExampleConfig(), "zeroshot", ex.cache))
    assert tuple(store.images[store.row[str(ex.root / ex.img)]][:, 0, 0].tolist()) == (255, 0, 0)


def test_example_colors_without_labels_is_regenerated(ex):
    """A cache entry that lost its labels.json is incomplete: it is made again, not half-merged."""
    (ex.root / "labels.json").unlink()
    data = load_example(ExampleConfig(), "vqa", ex.cache)
    assert (ex.root / "labels.json").is_file() and data.splits["train"]
    assert [p.name for p in ex.cache.iterdir()] == [ex.root.name]  # no temporary directory left


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param({"images": "-1"}, "example-colors config: images=-1 must be >= 6", id="images-negative"),
        pytest.param({"image_size": "0"}, "example-colors config: image_size=0 must be >= 3", id="image-size-zero"),
        pytest.param({"annotators": "0"}, "example-colors config: annotators=0 must be >= 1", id="no-annotators"),
    ],
)
def test_example_colors_config_out_of_range(options, expected):
    with pytest.raises(ValueError) as err:
        apply_overrides(ExampleConfig(), options, where="dataset example-colors (--data)")
    assert_one_line_naming(err.value, [expected])


# --- the helper itself, on what no dataset above names ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("", "'' is not a usable file name (empty, or holds a NUL byte)", id="empty"),
        pytest.param("a\0b", "is not a usable file name", id="nul-byte"),
        pytest.param(None, "None is null, not a relative path", id="null"),
        pytest.param("C:\\data\\x.png", "is an absolute path", id="windows-drive"),
        pytest.param("sub/../../x", "'sub/../../x' leaves the dataset root ('..')", id="dotdot-after-a-folder"),
        pytest.param("missing.png", "'missing.png' does not exist", id="missing-when-required"),
    ],
)
def test_contained_refuses(tmp_path, name, expected):
    (tmp_path / "sub").mkdir()
    with pytest.raises(UnsafePathError) as err:
        contained(tmp_path, name, where="data.jsonl:7 field image", must_exist=True)
    assert str(err.value).startswith("data.jsonl:7 field image: ") and expected in str(err.value)


def test_contained_accepts_names_inside_and_returns_them_unresolved(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"x")
    (tmp_path / "alias").symlink_to("sub")
    for name in ("sub/a.png", "alias/a.png", "sub/../sub/a.png", "not-yet.png"):
        assert contained(tmp_path, name, where="w") == tmp_path / name


# --- through the command line, over a runs directory holding a finished record --------------------------------


def run_cli(env: dict[str, str], *argv: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vqabench.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


GOOD_CELL = "example-bow|mini-clevr/vqa|quick|seed0"
MC_RUN = ("--models", "example-bow", "--tasks", "mini-clevr/vqa")
EX_RUN = ("--models", "example-bow", "--tasks", "example-colors/vqa")


def _case(cases: list, name: str) -> tuple:
    """The damage and expected message of the load case ``name`` (the last two of its values)."""
    return next(p for p in cases if p.id == name).values[-2:]


def _image(make: Callable[[], bytes]):
    def damage(c):
        (c.root / c.img).write_bytes(make())
        resign(c.root)

    return damage


# (dataset, damage, extra arguments, exit code, what the error says): a representative subset of the
# cases above, as a user meets them. A bad dataset fails its cell (exit 1, the ledger says failed);
# a bad --data value stops the run before anything is read or written (exit 2).
CLI_CASES = [
    pytest.param("mini-clevr", *_case(FAILING, "jsonl-bad-line"), (), 1, id="jsonl-bad-line"),
    pytest.param("mini-clevr", *_case(FAILING, "answer-a-number"), (), 1, id="answer-a-number"),
    pytest.param("mini-clevr", *_case(FAILING, "manifest-dotdot"), (), 1, id="manifest-dotdot"),
    pytest.param("mini-clevr", *_case(FAILING, "row-dev-zero"), (), 1, id="row-dev-zero"),
    pytest.param("mini-clevr", *_case(FAILING, "symlink-out"), (), 1, id="symlink-out-of-root"),
    pytest.param("mini-clevr", *_case(FAILING, "fifo-as-image"), (), 1, id="fifo-as-image"),
    pytest.param(
        "mini-clevr",
        _image(lambda: b"text, not a PNG"),
        ["cannot read image {root}/{img}"],
        (),
        1,
        id="image-not-an-image",
    ),
    pytest.param(
        "mini-clevr",
        _image(bomb),
        ["cannot read image {root}/{img}", "decompression bomb refused"],
        (),
        1,
        id="decompression-bomb",
    ),
    pytest.param(
        "mini-clevr",
        lambda c: None,
        ["mini-clevr config: images=-1 is too small"],
        ("images=-1",),
        2,
        id="images-negative",
    ),
    pytest.param("example-colors", *_case(EXAMPLE_FAILING, "labels-truncated"), (), 1, id="example-labels-truncated"),
    pytest.param(
        "example-colors",
        lambda c: None,
        ["example-colors config: images=-1 must be >= 6"],
        ("images=-1",),
        2,
        id="example-images-negative",
    ),
]


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict[str, str]:
    """A process environment that sees the example plugin (installed-looking) and Mini-CLEVR only."""
    site = tmp_path_factory.mktemp("site")
    add_distribution(site, "vqabench-example", {"example": "vqabench_example"})
    path = os.pathsep.join([str(site), str(EXAMPLE_DIR), os.environ.get("PYTHONPATH", "")])
    # One thread per run: several runs share two cores.
    return {**os.environ, "PYTHONPATH": path, "VQABENCH_PLUGINS": "example,mini_clevr", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def good_runs(tmp_path_factory, mini_clevr, cli_env) -> Path:
    """A runs directory holding the finished record (checkpoints, predictions, leaderboard) of a good run."""
    where = tmp_path_factory.mktemp("good")
    argv = ["run", *MC_RUN, "--data", f"root={mini_clevr}", "--out", where / "runs", "--cache-dir", where / "cache"]
    proc = run_cli(cli_env, *argv, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((where / "runs" / "status.json").read_text())["cells"][GOOD_CELL]["state"] == "done"
    return where / "runs"


@pytest.fixture(scope="module")
def cli_results(request, tmp_path_factory, mini_clevr, example_cache, good_runs, cli_env) -> dict[str, Any]:
    """Every selected CLI case, run three at a time (each in its own copy of the runs directory)."""
    wanted = {i.callspec.id for i in request.session.items if i.originalname == "test_cli_run_changes_nothing"}
    cases = {p.id: p.values for p in CLI_CASES if p.id in wanted}

    def one(name: str) -> dict[str, Any]:
        dataset, damage, expected, data, code = cases[name]
        where = tmp_path_factory.mktemp("cli")
        shutil.copytree(good_runs, where / "runs")
        outside = where / "outside.png"
        _solid_png(outside)
        if dataset == "mini-clevr":
            root, cache = where / "data", where / "cache"
            shutil.copytree(mini_clevr, root)
            img = sorted((root / "images" / "val").iterdir())[0].relative_to(root).as_posix()
            argv = [*MC_RUN, "--data", f"root={root}"]
        else:
            cache = where / "cache"
            shutil.copytree(example_cache, cache)
            (root,) = cache.iterdir()
            img, argv = "images/3.png", list(EX_RUN)
        c = SimpleNamespace(root=root, tmp=where, outside=outside, img=img, monkeypatch=None)
        damage(c)
        before = file_hashes(where / "runs")
        for value in data:
            argv += ["--data", value]
        proc = run_cli(cli_env, "run", *argv, "--out", where / "runs", "--cache-dir", cache, "--no-progress")
        return {"proc": proc, "where": where, "before": before, "expected": _expect(c, expected), "code": code}

    ledger = json.loads((good_runs / "status.json").read_text())["cells"]

    with ThreadPoolExecutor(max_workers=3) as pool:
        return {name: {**result, "ledger": ledger} for name, result in zip(cases, pool.map(one, cases))}


@pytest.mark.parametrize(("dataset", "damage", "expected", "data", "code"), CLI_CASES)
def test_cli_run_changes_nothing(cli_results, request, dataset, damage, expected, data, code):
    result = cli_results[request.node.callspec.id]
    proc, where, before = result["proc"], result["where"], result["before"]
    assert proc.returncode == result["code"], proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    said = [ln for ln in proc.stderr.splitlines() if ln.startswith(("FAILED ", "error: "))]
    assert len(said) == 1, proc.stderr
    for part in result["expected"]:
        assert part in said[0], f"{part!r} not in {said[0]!r}"

    # Nothing already written changed: every file byte for byte, none added or removed (so no
    # temporary file is left), the ledger aside, which records the failed cell and nothing else.
    after = file_hashes(where / "runs")
    assert set(after) == set(before)
    assert {k: v for k, v in after.items() if k != "status.json"} == {
        k: v for k, v in before.items() if k != "status.json"
    }
    leftovers = [p for p in where.rglob("*") if any(fnmatch.fnmatch(p.name, pat) for pat in LEFTOVERS)]
    assert not leftovers
    if code == 2:  # refused before the ledger was opened
        assert after["status.json"] == before["status.json"]
        return
    cells = json.loads((where / "runs" / "status.json").read_text())["cells"]
    failed = GOOD_CELL if dataset == "mini-clevr" else "example-bow|example-colors/vqa|quick|seed0"
    assert cells.pop(failed)["state"] == "failed"
    old = {k: v for k, v in result["ledger"].items() if k != failed}
    assert cells == old


# --- vizwiz: the official VizWiz files, as the plugin's fixture writer lays them out --------------------------


@pytest.fixture(scope="module")
def vizwiz_files(tmp_path_factory) -> Path:
    from vqabench_plugins.vizwiz_fixture import write_fixture

    return write_fixture(tmp_path_factory.mktemp("vizwiz") / "data", train=10, val=4, test=2, image_size=16)


@pytest.fixture
def vw(tmp_path, vizwiz_files) -> SimpleNamespace:
    """A fresh copy of the small VizWiz set; ``img`` is the image of official val record 1."""
    root = tmp_path / "data"
    shutil.copytree(vizwiz_files, root)
    record = json.loads((root / "Annotations" / "val.json").read_text())[1]
    return SimpleNamespace(root=root, tmp=tmp_path, img=f"val/{record['image']}")


def load_vw(c: SimpleNamespace, kind: str = "vqa"):
    from vqabench_plugins.vizwiz import VizWizConfig, load

    return load(VizWizConfig(root=str(c.root)), kind, c.tmp / "cache")


def _jpeg(im: Image.Image) -> bytes:
    return png_of(im, "JPEG", quality=90)


# The annotation files are fine, so only decoding, before training, can tell.
VIZWIZ_BROKEN_IMAGES = [
    pytest.param(lambda c: b"this is a text file, not a JPEG\n", "UnidentifiedImageError", id="text-bytes"),
    pytest.param(lambda c: (c.root / c.img).read_bytes()[:200], "", id="truncated-jpeg"),
    pytest.param(lambda c: b"", "UnidentifiedImageError", id="zero-byte-jpeg"),
    pytest.param(lambda c: bomb(), "decompression bomb refused", id="decompression-bomb"),
]


@pytest.mark.parametrize(("make", "reason"), VIZWIZ_BROKEN_IMAGES)
def test_vizwiz_broken_image_is_refused_before_training(vw, make, reason):
    (vw.root / vw.img).write_bytes(make(vw))
    data = load_vw(vw)
    with pytest.raises(ImageDecodeError) as err:
        decode(data)
    expected = [f"cannot read image {vw.root / vw.img} (dataset vizwiz): {reason}", "vqabench data prepare vizwiz"]
    assert_one_line_naming(err.value, expected)


def test_vizwiz_cmyk_jpeg_works(vw):
    (vw.root / vw.img).write_bytes(_jpeg(Image.new("CMYK", (16, 16), (0, 255, 255, 0))))
    store = decode(load_vw(vw, "answerability"))
    pixels = store.images[store.row[str(vw.root / vw.img)]].numpy()
    assert np.abs(pixels.reshape(3, -1).mean(1) - np.array((255, 0, 0))).max() <= 3


def _vw_image_name(c: SimpleNamespace, name: str) -> None:
    path = c.root / "Annotations" / "val.json"
    records = json.loads(path.read_text())
    records[1]["image"] = name
    path.write_text(json.dumps(records))


def _vw_fifo(c: SimpleNamespace) -> None:
    (c.root / c.img).unlink()
    os.mkfifo(c.root / c.img)


def _vw_link_out(c: SimpleNamespace) -> None:
    outside = c.tmp / "outside.jpg"
    (c.root / c.img).rename(outside)
    (c.root / c.img).symlink_to(outside)


VIZWIZ_FAILING = [
    pytest.param(_vw_fifo, ["record 1 field image", "is a FIFO (named pipe), not a regular file"], id="fifo-image"),
    pytest.param(_vw_link_out, ["record 1 field image", "symbolic link to", "outside the dataset root"], id="link-out"),
    pytest.param(
        lambda c: _vw_image_name(c, "../../outside.jpg"),
        ["record 1 field image", "leaves the dataset root"],
        id="dotdot",
    ),
    pytest.param(
        lambda c: _vw_image_name(c, "/dev/zero"), ["record 1 field image", "is an absolute path"], id="dev-zero"
    ),
    pytest.param(
        lambda c: _vw_image_name(c, None), ["record 1 field image", "is null, not a relative path"], id="null"
    ),
]


@pytest.mark.parametrize(("damage", "expected"), VIZWIZ_FAILING)
def test_vizwiz_refuses_image_names(vw, damage, expected):
    damage(vw)
    with pytest.raises(Exception) as err:
        load_vw(vw)
    assert_one_line_naming(err.value, [f"vizwiz: {vw.root / 'Annotations' / 'val.json'}", *expected])


def test_vizwiz_undamaged_copy_loads_and_decodes(vw):
    """The control: the copies the vizwiz cases damage load, pass the kind checks and decode when left alone."""
    for kind in ("vqa", "answerability"):
        data = load_vw(vw, kind)
        get_task(kind).check_data(data)
    decode(data)


# --- vqav2: the official VQA v2 files, as the plugin's fixture writer lays them out --------------------------


@pytest.fixture(scope="module")
def vqav2_files(tmp_path_factory) -> Path:
    from vqabench_plugins.vqav2_fixture import write_fixture

    return write_fixture(tmp_path_factory.mktemp("vqav2") / "data", train_images=6, val_images=3, image_size=16)


@pytest.fixture
def vq(tmp_path, vqav2_files) -> SimpleNamespace:
    """A fresh copy of the small VQA v2 set; ``img`` is the image of val2014 question 3 (the first of its image)."""
    root = tmp_path / "data"
    shutil.copytree(vqav2_files, root)
    question = json.loads((root / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"][3]
    return SimpleNamespace(root=root, tmp=tmp_path, img=f"val2014/COCO_val2014_{question['image_id']:012d}.jpg")


def load_vq(c: SimpleNamespace):
    from vqabench_plugins.vqav2 import VQAv2Config, load

    return load(VQAv2Config(root=str(c.root), min_count=1), "vqa", c.tmp / "cache")


# The JSON files are fine and the image is a regular file, so only decoding, before training, can tell.
VQAV2_BROKEN_IMAGES = [
    pytest.param(lambda c: b"this is a text file, not a JPEG\n", "UnidentifiedImageError", id="text-bytes"),
    pytest.param(lambda c: (c.root / c.img).read_bytes()[:200], "", id="truncated-jpeg"),
    pytest.param(lambda c: b"", "UnidentifiedImageError", id="zero-byte-jpeg"),
    pytest.param(lambda c: bomb(), "decompression bomb refused", id="decompression-bomb"),
]


@pytest.mark.parametrize(("make", "reason"), VQAV2_BROKEN_IMAGES)
def test_vqav2_broken_image_is_refused_before_training(vq, make, reason):
    (vq.root / vq.img).write_bytes(make(vq))
    data = load_vq(vq)
    with pytest.raises(ImageDecodeError) as err:
        decode(data)
    expected = [f"cannot read image {vq.root / vq.img} (dataset vqav2): {reason}", "vqabench data prepare vqav2"]
    assert_one_line_naming(err.value, expected)


def _vq_link_out(c: SimpleNamespace) -> None:
    outside = c.tmp / "outside.jpg"
    (c.root / c.img).rename(outside)
    (c.root / c.img).symlink_to(outside)


def _vq_fifo(c: SimpleNamespace) -> None:
    (c.root / c.img).unlink()
    os.mkfifo(c.root / c.img)


def _vq_folder_out(c: SimpleNamespace) -> None:
    (c.root / "val2014").rename(c.tmp / "shared-coco-val2014")
    (c.root / "val2014").symlink_to(c.tmp / "shared-coco-val2014")


def _vq_image_id(c: SimpleNamespace, value: Any) -> None:
    path = c.root / "v2_OpenEnded_mscoco_val2014_questions.json"
    top = json.loads(path.read_text())
    top["questions"][3]["image_id"] = value
    path.write_text(json.dumps(top))


# Image names are built from integer ids, so a bad name can only come from a bad id or from the file system.
VQAV2_FAILING = [
    pytest.param(_vq_fifo, ["question 3 (question_id", "is a FIFO (named pipe), not a regular file"], id="fifo-image"),
    pytest.param(_vq_link_out, ["question 3 (question_id", "symbolic link to", "outside the dataset root"], id="link"),
    pytest.param(_vq_folder_out, ["field image_id", "symbolic link to", "outside the dataset root"], id="folder-out"),
    pytest.param(
        lambda c: _vq_image_id(c, "../../etc/passwd"),
        ["question 3 (question_id", "field image_id: is '../../etc/passwd', not a non-negative integer"],
        id="path-as-id",
    ),
    pytest.param(lambda c: _vq_image_id(c, None), ["field image_id: is None, not a non-negative integer"], id="null"),
    pytest.param(lambda c: _vq_image_id(c, -1), ["field image_id: is -1, not a non-negative integer"], id="negative"),
]


@pytest.mark.parametrize(("damage", "expected"), VQAV2_FAILING)
def test_vqav2_refuses_image_names(vq, damage, expected):
    damage(vq)
    with pytest.raises(Exception) as err:
        load_vq(vq)
    assert_one_line_naming(err.value, [f"vqav2: {vq.root / 'v2_OpenEnded_mscoco_val2014_questions.json'}", *expected])


def test_vqav2_undamaged_copy_loads_and_decodes(vq):
    """The control: the copies the vqav2 cases damage load, pass the kind checks and decode when left alone."""
    data = load_vq(vq)
    get_task("vqa").check_data(data)
    decode(data)


# --- coco-captions and flickr30k: Karpathy's split files, as the caption fixture writer lays them out ---------


@pytest.fixture(scope="module")
def caption_files(tmp_path_factory) -> dict[str, Path]:
    from vqabench_plugins.caption_fixture import write_coco, write_flickr30k

    where = tmp_path_factory.mktemp("captions")
    return {
        "coco-captions": write_coco(where / "coco", train_images=3, val_images=3, image_size=16),
        "flickr30k": write_flickr30k(where / "f30k", train_images=3, val_images=1, test_images=1, image_size=16),
    }


CAPTION_SPLIT_FILES = {"coco-captions": "dataset_coco.json", "flickr30k": "dataset_flickr30k.json"}


@pytest.fixture(params=sorted(CAPTION_SPLIT_FILES))
def cap(request, tmp_path, caption_files) -> SimpleNamespace:
    """A fresh copy of one small caption set; ``img`` is the image of split-file record 1."""
    name = request.param
    root = tmp_path / "data"
    shutil.copytree(caption_files[name], root)
    split_file = root / CAPTION_SPLIT_FILES[name]
    record = json.loads(split_file.read_text())["images"][1]
    img = f"{record.get('filepath', 'flickr30k-images')}/{record['filename']}"
    return SimpleNamespace(dataset=name, root=root, tmp=tmp_path, img=img, split_file=split_file)


def load_cap(c: SimpleNamespace):
    from vqabench_plugins import coco_captions, flickr30k

    module = coco_captions if c.dataset == "coco-captions" else flickr30k
    config = coco_captions.CocoCaptionsConfig if c.dataset == "coco-captions" else flickr30k.Flickr30kConfig
    return module.load(config(root=str(c.root)), "captioning", c.tmp / "cache")


# The split file is fine and the image is a regular file, so only decoding, before training, can tell.
@pytest.mark.parametrize(("make", "reason"), VQAV2_BROKEN_IMAGES)
def test_caption_datasets_broken_image_is_refused_before_training(cap, make, reason):
    (cap.root / cap.img).write_bytes(make(cap))
    data = load_cap(cap)
    with pytest.raises(ImageDecodeError) as err:
        decode(data)
    expected = [f"cannot read image {cap.root / cap.img} (dataset {cap.dataset}): {reason}"]
    assert_one_line_naming(err.value, [*expected, f"vqabench data prepare {cap.dataset}"])


def _cap_record(c: SimpleNamespace, **fields: Any) -> None:
    top = json.loads(c.split_file.read_text())
    top["images"][1].update(fields)
    c.split_file.write_text(json.dumps(top))


def _cap_fifo(c: SimpleNamespace) -> None:
    (c.root / c.img).unlink()
    os.mkfifo(c.root / c.img)


def _cap_link_out(c: SimpleNamespace) -> None:
    outside = c.tmp / "outside.jpg"
    (c.root / c.img).rename(outside)
    (c.root / c.img).symlink_to(outside)


CAPTION_FAILING = [
    pytest.param(_cap_fifo, ["images[1] field filename", "is a FIFO (named pipe), not a regular file"], id="fifo"),
    pytest.param(
        _cap_link_out, ["images[1] field filename", "symbolic link to", "outside the dataset root"], id="link"
    ),
    pytest.param(
        lambda c: _cap_record(c, filename="../../outside.jpg"),
        ["images[1] field filename", "leaves the dataset root"],
        id="dotdot",
    ),
    pytest.param(lambda c: _cap_record(c, filename=None), ["images[1] field filename: is None"], id="null"),
    pytest.param(lambda c: _cap_record(c, split="dev"), ["images[1] field split: is 'dev', not one of"], id="split"),
    pytest.param(lambda c: _cap_record(c, sentences=[]), ["images[1] field sentences: is empty"], id="no-caption"),
    pytest.param(lambda c: _cap_record(c, sentences=[{"tokens": []}]), ["sentences[0].raw: is missing"], id="no-raw"),
    pytest.param(lambda c: c.split_file.write_text("{"), ["is not valid UTF-8 JSON"], id="not-json"),
    pytest.param(lambda c: c.split_file.unlink(), ["lacks dataset_", "caption_datasets.zip"], id="missing"),
]


@pytest.mark.parametrize(("damage", "expected"), CAPTION_FAILING)
def test_caption_datasets_refuse_malformed_input(cap, damage, expected):
    damage(cap)
    with pytest.raises(Exception) as err:
        load_cap(cap)
    assert_one_line_naming(err.value, [f"{cap.dataset}: ", *expected])


def test_caption_datasets_undamaged_copy_loads_and_decodes(cap):
    """The control: the copies the caption cases damage load, pass the kind checks and decode when left alone."""
    data = load_cap(cap)
    get_task("captioning").check_data(data)
    decode(data)


# --- visual-genome: the official Visual Genome files, as the plugin's fixture writer lays them out -----------


@pytest.fixture(scope="module")
def vg_files(tmp_path_factory) -> Path:
    from vqabench_plugins.vg_fixture import write_fixture

    return write_fixture(tmp_path_factory.mktemp("vg") / "data", images=6, image_size=16)


@pytest.fixture
def vg(tmp_path, vg_files) -> SimpleNamespace:
    """A fresh copy of the small Visual Genome set; ``img`` is the image of image_data.json record 1."""
    root = tmp_path / "data"
    shutil.copytree(vg_files, root)
    url = json.loads((root / "image_data.json").read_text())[1]["url"]
    return SimpleNamespace(root=root, tmp=tmp_path, img="/".join(url.rsplit("/", 2)[-2:]))


def load_vg(c: SimpleNamespace):
    from vqabench_plugins.visual_genome import VisualGenomeConfig, load

    return load(VisualGenomeConfig(root=str(c.root), split_fractions=(0.5, 0.25, 0.25)), "vqa", c.tmp / "cache")


# The JSON files are fine and the image is a regular file, so only decoding, before training, can tell.
VG_BROKEN_IMAGES = [
    pytest.param(lambda c: b"this is a text file, not a JPEG\n", "UnidentifiedImageError", id="text-bytes"),
    pytest.param(lambda c: (c.root / c.img).read_bytes()[:200], "", id="truncated-jpeg"),
    pytest.param(lambda c: b"", "UnidentifiedImageError", id="zero-byte-jpeg"),
    pytest.param(lambda c: bomb(), "decompression bomb refused", id="decompression-bomb"),
]


@pytest.mark.parametrize(("make", "reason"), VG_BROKEN_IMAGES)
def test_visual_genome_broken_image_is_refused_before_training(vg, make, reason):
    (vg.root / vg.img).write_bytes(make(vg))
    data = load_vg(vg)
    with pytest.raises(ImageDecodeError) as err:
        decode(data)
    expected = [f"cannot read image {vg.root / vg.img} (dataset visual-genome): {reason}"]
    assert_one_line_naming(err.value, [*expected, "vqabench data prepare visual-genome"])


def _vg_url(c: SimpleNamespace, url: Any) -> None:
    path = c.root / "image_data.json"
    records = json.loads(path.read_text())
    records[1]["url"] = url
    path.write_text(json.dumps(records))


def _vg_fifo(c: SimpleNamespace) -> None:
    (c.root / c.img).unlink()
    os.mkfifo(c.root / c.img)


def _vg_link_out(c: SimpleNamespace) -> None:
    outside = c.tmp / "outside.jpg"
    (c.root / c.img).rename(outside)
    (c.root / c.img).symlink_to(outside)


def _vg_folder_out(c: SimpleNamespace) -> None:
    folder = c.img.split("/")[0]
    (c.root / folder).rename(c.tmp / "shared-vg")
    (c.root / folder).symlink_to(c.tmp / "shared-vg")


# Image names come from each record's url: its last two parts name the folder and the file.
VG_FAILING = [
    pytest.param(_vg_fifo, ["record 1 (image_id", "is a FIFO (named pipe), not a regular file"], id="fifo-image"),
    pytest.param(_vg_link_out, ["record 1 (image_id", "symbolic link to", "outside the dataset root"], id="link-out"),
    pytest.param(_vg_folder_out, ["field url", "symbolic link to", "outside the dataset root"], id="folder-out"),
    pytest.param(
        lambda c: _vg_url(c, "https://cs.stanford.edu/people/rak248/VG_100K/../../../etc/passwd"),
        ["record 1 (image_id", "field url", "does not end in VG_100K/<file>"],
        id="dotdot",
    ),
    pytest.param(
        lambda c: _vg_url(c, "https://cs.stanford.edu/VG_100K/.."),
        ["record 1 (image_id", "field url", "not a regular file"],
        id="folder-as-file",
    ),
    pytest.param(lambda c: _vg_url(c, None), ["record 1 (image_id", "field url: None is not a URL"], id="null"),
]


@pytest.mark.parametrize(("damage", "expected"), VG_FAILING)
def test_visual_genome_refuses_image_names(vg, damage, expected):
    damage(vg)
    with pytest.raises(Exception) as err:
        load_vg(vg)
    assert_one_line_naming(err.value, [f"visual-genome: {vg.root / 'image_data.json'}", *expected])


def test_visual_genome_undamaged_copy_loads_and_decodes(vg):
    """The control: the copies the visual-genome cases damage load, pass the kind checks and decode when left alone."""
    data = load_vg(vg)
    get_task("vqa").check_data(data)
    decode(data)
