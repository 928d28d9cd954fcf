"""The image-folder dataset plugin: zero-shot classification on your own folder of class folders.

Point it at a directory laid out as torchvision's ``ImageFolder`` expects (``--data root=DIR``),
so a set prepared for torchvision or CLIP_benchmark is evaluated as it is, without conversion:

- ``root/<class>/...``: every image is in the ``test`` split (zero-shot evaluation only);
- ``root/train/<class>/...``, ``root/val/<class>/...``, ``root/test/<class>/...``: any of the
  three, but at least ``val`` or ``test``. Folders of both kinds side by side are an error, since
  a class named ``train`` would otherwise silently become a split.

As in torchvision, class folders are sorted by name and a class's index is its position in that
order (here: the sorted union of the class folders of every split, so one label means one class
in every split); images are found recursively, following symbolic links, by extension
(``extensions``, compared case-insensitively) and sorted. Names starting with "." are ignored.
Sample ids are ``<split>/<class folder>/<path inside the class folder>``; images are absolute paths.

Class names are the folder names with "_" read as spaces, unless ``class_names_file`` (relative to
the root, or absolute) names them: a ``.json`` file holding an object ``{"folder": "readable name"}``,
or any other file with one ``folder<TAB>readable name`` or ``folder,readable name`` per line
(blank lines skipped). Entries for folders that do not exist are allowed, so one file can serve
several subsets; a folder without a name is an error. Prompt templates are CLIP_benchmark's
``"a photo of a {c}."`` unless ``templates_file`` gives them: a ``.json`` list of strings, or one
template per line. Each must hold ``{}``, ``{c}`` or ``{0}`` where the class name goes and is kept
as written (only surrounding whitespace is stripped); the model formats it.

Everything is checked in ``load``, before any model is built, and each error names the file or
folder and the fix. Unreadable image bytes are found when the image store decodes them
(``vqabench.images.ImageDecodeError`` names the file), still before training.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqabench.files import describe_os_error
from vqabench.hookspecs import hookimpl
from vqabench.registry import DatasetSpec
from vqabench.tasks import TaskData, TaskKind

NAME = "image-folder"
# torchvision.datasets.folder.IMG_EXTENSIONS, so a tree made for ImageFolder loads the same files.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
DEFAULT_TEMPLATES = ("a photo of a {c}.",)  # CLIP_benchmark's default for a dataset without its own
PLACEHOLDERS = ("{}", "{c}", "{0}")
ROOT_FLAG = "--data root=DIR"


class DatasetError(ValueError):
    """An image folder that cannot be used as it is; the message names the path and the fix."""


@dataclass(frozen=True)
class ImageFolderConfig:
    """Where the folder is, and the optional files that name its classes and prompts."""

    root: str = ""  # required; empty only so that the config can be built before it is set
    class_names_file: str = ""
    templates_file: str = ""
    extensions: tuple[str, ...] = IMG_EXTENSIONS

    def __post_init__(self) -> None:
        bad = [e for e in self.extensions if not (isinstance(e, str) and e.startswith(".") and len(e) > 1)]
        if bad or not self.extensions:
            raise ValueError(
                f"image-folder config: extensions={','.join(map(str, self.extensions))!r} must be file endings "
                f"starting with '.', e.g. --data extensions=.jpg,.png"
            )


# --- the folder tree --------------------------------------------------------------------------------


def _root(config: ImageFolderConfig) -> Path:
    if not config.root:
        raise DatasetError(f"image-folder needs root=DIR: `{ROOT_FLAG}`")
    # Absolute but not resolved: sample paths, and the caches keyed by them, stay as the user named them.
    root = Path(config.root).expanduser().absolute()
    if not root.exists():
        raise DatasetError(f"image-folder root {root} does not exist; give the folder of class folders: `{ROOT_FLAG}`")
    if not root.is_dir():
        raise DatasetError(
            f"image-folder root {root} is not a directory; give the folder of class folders: `{ROOT_FLAG}`"
        )
    return root


def _listing_error(path: Path | str, exc: OSError) -> DatasetError:
    return DatasetError(f"image-folder: {describe_os_error(exc, path, 'listing')}")


def _folders(path: Path) -> list[str]:
    """The visible subdirectories of ``path`` (links to directories count, as in torchvision), sorted."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
    except OSError as exc:
        raise _listing_error(path, exc) from None


def _split_dirs(root: Path) -> dict[str, Path]:
    """Split name -> the folder holding that split's class folders."""
    folders = _folders(root)
    splits = [s for s in SPLITS if s in folders]
    if not splits:
        if not folders:
            raise DatasetError(
                f"image-folder: {root} has no class folders; put each class's images in {root}/<class>/ "
                f"(or use {root}/test/<class>/, with train/ and val/ beside it)"
            )
        return {"test": root}
    others = [f for f in folders if f not in SPLITS]
    if others:
        raise DatasetError(
            f"image-folder: {root} holds both split folders ({', '.join(splits)}) and other folders "
            f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}); put every class folder under "
            f"train/, val/ or test/, or use no split folders at all"
        )
    if "val" not in splits and "test" not in splits:
        raise DatasetError(
            f"image-folder: {root} has {', '.join(s + '/' for s in splits)} but neither val/ nor test/ to evaluate "
            f"on; add {root}/test/<class>/ (or val/), or put the class folders directly in {root}"
        )
    return {s: root / s for s in splits}


def _is_loop(path: str, top: Path) -> bool:
    """Whether directory ``path`` is a link back to itself or a directory above it (up to ``top``)."""
    real = os.path.realpath(path)
    parent = Path(path).parent
    while parent != top.parent and parent != parent.parent:
        if os.path.realpath(parent) == real:
            return True
        parent = parent.parent
    return False


def _images(class_dir: Path, extensions: tuple[str, ...]) -> list[tuple[str, os.stat_result]]:
    """(path inside ``class_dir``, stat) of every image below it, in torchvision's order."""

    def fail(exc: OSError) -> None:
        raise _listing_error(exc.filename or class_dir, exc)

    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=fail, followlinks=True):
        # Following links (as torchvision does) lets a link back up the tree recurse forever.
        dirnames[:] = [
            d for d in dirnames if not d.startswith(".") and not _is_loop(os.path.join(dirpath, d), class_dir)
        ]
        found.extend((dirpath, f) for f in filenames if not f.startswith(".") and f.lower().endswith(extensions))
    out = []
    # torchvision sorts os.walk's rows, then the names in each: files of a folder before its subfolders'.
    for dirpath, name in sorted(found):
        path = os.path.join(dirpath, name)
        try:
            info = os.stat(path)
        except FileNotFoundError:  # listed a moment ago: a link to nothing
            raise DatasetError(f"image-folder: {path} is a broken symbolic link; fix or remove it") from None
        except OSError as exc:
            raise DatasetError(f"image-folder: {describe_os_error(exc, path, 'reading')}") from None
        # A FIFO or device named like an image would block or never end the first read.
        if not stat.S_ISREG(info.st_mode):
            raise DatasetError(f"image-folder: {path} is not a regular file; remove it or rename it")
        out.append((Path(os.path.relpath(path, class_dir)).as_posix(), info))
    return out


Tree = dict[str, dict[str, list[tuple[str, os.stat_result]]]]  # split -> class folder -> its images


def _scan(root: Path, extensions: tuple[str, ...]) -> tuple[dict[str, Path], Tree]:
    """(split -> its folder, split -> class folder -> images); every class folder must hold an image."""
    extensions = tuple(e.lower() for e in extensions)
    dirs = _split_dirs(root)
    tree = {}
    for split, split_dir in dirs.items():
        classes = _folders(split_dir)
        if not classes:
            raise DatasetError(
                f"image-folder: {split_dir} has no class folders; put each class's images in {split_dir}/<class>/"
            )
        tree[split] = {c: _images(split_dir / c, extensions) for c in classes}
    # All of them at once, as torchvision does: a user fixing a tree should not have to rerun per folder.
    empty = [str(dirs[s] / c) for s, classes in tree.items() for c, files in classes.items() if not files]
    if empty:
        raise DatasetError(
            f"image-folder: class folder(s) {', '.join(empty)} hold no image files ({' '.join(extensions)}); "
            f"add images, remove the folder(s), or allow other endings with --data extensions=.jpg,.png,..."
        )
    return dirs, tree


# --- class names and templates ------------------------------------------------------------------------

NAMES_JSON = 'an object {"folder": "readable name", ...}'
NAMES_LINE = "FOLDER<TAB>NAME or FOLDER,NAME"


def _read(root: Path, field: str, value: str) -> tuple[Path, bytes]:
    """The file a config field names (relative to the root, or absolute), and its bytes."""
    path = Path(value).expanduser()
    path = path if path.is_absolute() else root / path
    fix = f"give a file relative to {root} or an absolute path: --data {field}=FILE"
    try:
        mode = os.stat(path).st_mode
        # A FIFO would block the read below forever, a directory fails it with a less clear message.
        if not stat.S_ISREG(mode):
            raise DatasetError(f"image-folder: {field} {path} is not a regular file; {fix}")
        return path, path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"image-folder: {field} {path} does not exist; {fix}") from None
    except OSError as exc:
        raise DatasetError(f"image-folder: {field}: {describe_os_error(exc, path, 'reading')}") from None


def _text(path: Path, data: bytes, field: str) -> str:
    try:
        return data.decode("utf-8-sig")  # a byte-order mark, as some editors write, is not part of line 1
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"image-folder: {field} {path} is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); "
            f"save it as UTF-8"
        ) from None


def _json(path: Path, text: str, field: str, shape: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:  # names line and column
        raise DatasetError(
            f"image-folder: {field} {path} is not valid JSON ({exc}); write {shape}, "
            f"or give a file not ending in .json with one entry per line"
        ) from None


def _name_table(path: Path, text: str) -> dict[str, str]:
    """Folder -> readable name, from a .json object or from FOLDER<TAB>NAME / FOLDER,NAME lines."""
    field = "class_names_file"
    if path.suffix.lower() == ".json":
        table = _json(path, text, field, NAMES_JSON)
        if not isinstance(table, dict):
            raise DatasetError(f"image-folder: {field} {path} holds a {type(table).__name__}, not {NAMES_JSON}")
        for folder, name in table.items():
            if not isinstance(name, str) or not name.strip():
                raise DatasetError(f"image-folder: {field} {path} field {folder!r}: {name!r} is not a non-empty string")
        return {folder: name.strip() for folder, name in table.items()}
    table: dict[str, str] = {}
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        # A tab wins over a comma, so that a tab-separated name may hold commas.
        folder, sep, name = line.partition("\t" if "\t" in line else ",")
        folder, name = folder.strip(), name.strip()
        if not sep or not folder or not name:
            raise DatasetError(f"image-folder: {field} {path}:{number}: {line!r} is not {NAMES_LINE}")
        if folder in seen:
            raise DatasetError(f"image-folder: {field} {path}:{number}: folder {folder!r} repeats line {seen[folder]}")
        seen[folder] = number
        table[folder] = name
    return table


def _class_names(root: Path, folders: list[str], value: str) -> tuple[list[str], bytes]:
    """The readable name of each class folder, and the bytes they came from (for the revision)."""
    if not value:
        return [f.replace("_", " ") for f in folders], b""
    path, data = _read(root, "class_names_file", value)
    table = _name_table(path, _text(path, data, "class_names_file"))
    missing = [f for f in folders if f not in table]
    if missing:
        raise DatasetError(
            f"image-folder: class_names_file {path} gives no name for class folder(s) {', '.join(missing)}; "
            f"add a line {NAMES_LINE} (a key, in a .json file) for each"
        )
    return [table[f] for f in folders], data


def _templates(root: Path, value: str) -> tuple[list[str], bytes]:
    """The prompt templates, and the bytes they came from (for the revision)."""
    if not value:
        return list(DEFAULT_TEMPLATES), b""
    field = "templates_file"
    path, data = _read(root, field, value)
    text = _text(path, data, field)
    if path.suffix.lower() == ".json":
        items = _json(path, text, field, 'a list of templates such as ["a photo of a {c}."]')
        if not isinstance(items, list) or not all(isinstance(t, str) and t.strip() for t in items):
            raise DatasetError(f"image-folder: {field} {path} is not a JSON list of non-empty strings")
        entries = [(f"{path} item {i}", t) for i, t in enumerate(items, 1)]
    else:
        entries = [(f"{path}:{n}", line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not entries:
        raise DatasetError(
            f"image-folder: {field} {path} holds no template; write one per line, e.g. a photo of a {{c}}."
        )
    for where, template in entries:
        if not any(p in template for p in PLACEHOLDERS):
            raise DatasetError(
                f"image-folder: {field} {where}: {template!r} has no {{}}, {{c}} or {{0}} where the class name goes, "
                f'e.g. "a photo of a {{c}}."'
            )
    return [t.strip() for _, t in entries], data


def _revision(tree: Tree, names: bytes, templates: bytes) -> str:
    """A stat-based key of the data: sha256 of every image's (path, size, mtime) and the two files' bytes.

    Hashing every image's bytes would read the whole set on each load; a changed, added, removed or
    renamed image changes its size, its mtime or the list. An edit that keeps both is not seen.
    """
    digest = hashlib.sha256()
    for split, classes in sorted(tree.items()):
        for folder, images in sorted(classes.items()):
            for rel, info in images:
                line = f"{split}/{folder}/{rel}\0{info.st_size}\0{info.st_mtime_ns}\n"
                digest.update(line.encode("utf-8", "surrogateescape"))  # file names need not be UTF-8
    for label, data in ((b"class_names", names), (b"templates", templates)):
        digest.update(label + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


# --- the plugin ---------------------------------------------------------------------------------------


def load(config: ImageFolderConfig, kind: str, cache_dir: Path) -> TaskData:
    """The zero-shot TaskData of the folder ``config.root``; reads the tree, writes nothing."""
    # Imported here: the task module pulls in torch, which `vqabench plugins` does not need.
    from vqabench.tasks.zeroshot import ImageSample

    root = _root(config)
    dirs, tree = _scan(root, config.extensions)
    folders = sorted({folder for classes in tree.values() for folder in classes})
    class_names, names_bytes = _class_names(root, folders, config.class_names_file)
    templates, templates_bytes = _templates(root, config.templates_file)
    label = {folder: i for i, folder in enumerate(folders)}
    splits = {
        split: [
            ImageSample(id=f"{split}/{folder}/{rel}", image=str(dirs[split] / folder / rel), label=label[folder])
            for folder, images in classes.items()
            for rel, _ in images
        ]
        for split, classes in tree.items()
    }
    return TaskData(
        dataset=NAME,
        kind=TaskKind.ZEROSHOT,
        root=root,
        splits=splits,
        revision=_revision(tree, names_bytes, templates_bytes),
        class_names=class_names,
        templates=templates,
    )


@hookimpl
def register_datasets(register):
    """Register the image-folder dataset."""
    register(
        DatasetSpec(
            name=NAME,
            task_kinds=(TaskKind.ZEROSHOT,),
            config_cls=ImageFolderConfig,
            load=load,
            profiles={"quick": {}, "paper": {}},
            description="Your own images for zero-shot classification: root/<class>/*.jpg, or train/, val/ and "
            "test/ folders of class folders (torchvision ImageFolder layout); --data root=DIR",
        )
    )
