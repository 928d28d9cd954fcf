"""The image-folder dataset: torchvision's ImageFolder layout as zero-shot data, and its errors."""

from __future__ import annotations

import json
import os
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vqabench_plugins import image_folder
from vqabench_plugins.image_folder import DatasetError, ImageFolderConfig, load

from vqabench.config import apply_overrides
from vqabench.images import ImageDecodeError, ImageStore
from vqabench.tasks import TaskKind, get_task

CLASSES = ("cat", "golden_retriever", "zebra")


def image(path: Path, shade: int = 0) -> Path:
    """A 16x16 image; JPEG or PNG by the name's ending."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), shade, dtype=np.uint8)).save(
        path, format="PNG" if path.suffix == ".png" else "JPEG"
    )
    return path


def folder(root: Path, classes=CLASSES) -> Path:
    """``root/<class>/{a.png,b.jpg}`` for each class."""
    for i, c in enumerate(classes):
        image(root / c / "a.png", 10 * i)
        image(root / c / "b.jpg", 10 * i + 5)
    return root


def load_dir(root: Path, **fields) -> object:
    return load(ImageFolderConfig(root=str(root), **fields), TaskKind.ZEROSHOT, root / "unused-cache")


def test_flat_layout_is_a_test_split_in_torchvision_class_order(tmp_path):
    root = folder(tmp_path / "pets", classes=("zebra", "cat", "golden_retriever"))
    data = load_dir(root)
    get_task("zeroshot").check_data(data)
    assert data.dataset == "image-folder" and data.kind == "zeroshot" and data.root == root
    assert list(data.splits) == ["test"]
    assert data.class_names == ["cat", "golden retriever", "zebra"]
    assert data.templates == ["a photo of a {c}."]
    samples = data.split("test")
    assert [s.id for s in samples][:3] == ["test/cat/a.png", "test/cat/b.jpg", "test/golden_retriever/a.png"]
    assert [s.label for s in samples] == [0, 0, 1, 1, 2, 2]
    assert all(Path(s.image).is_absolute() and Path(s.image).is_file() for s in samples)
    assert samples[0].image == str(root / "cat" / "a.png")


def test_relative_root_gives_absolute_image_paths(tmp_path, monkeypatch):
    folder(tmp_path / "pets")
    monkeypatch.chdir(tmp_path)
    data = load(ImageFolderConfig(root="pets"), TaskKind.ZEROSHOT, tmp_path)
    assert data.root == tmp_path / "pets" and data.split("test")[0].image == str(tmp_path / "pets" / "cat" / "a.png")


def test_split_layout_labels_classes_by_the_union_of_every_split(tmp_path):
    root = tmp_path / "ds"
    folder(root / "train")
    folder(root / "val", classes=("cat", "zebra"))
    folder(root / "test", classes=("aardvark", "zebra"))
    data = load_dir(root)
    assert list(data.splits) == ["train", "val", "test"]
    assert data.class_names == ["aardvark", "cat", "golden retriever", "zebra"]
    assert [(s.id, s.label) for s in data.split("val")][::2] == [("val/cat/a.png", 1), ("val/zebra/a.png", 3)]
    assert {s.label for s in data.split("test")} == {0, 3} and {s.label for s in data.split("train")} == {1, 2, 3}


def test_images_are_found_recursively_by_extension_in_any_case(tmp_path):
    root = folder(tmp_path / "ds")
    image(root / "cat" / "more" / "c.JPG")
    image(root / "cat" / "z.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("files beside the class folders are ignored")
    ids = [s.id for s in load_dir(root).split("test") if s.label == 0]
    # torchvision's order: the files of a folder before those of its subfolders.
    assert ids == ["test/cat/a.png", "test/cat/b.jpg", "test/cat/z.png", "test/cat/more/c.JPG"]
    only_png = load_dir(root, extensions=(".png",))
    assert [s.id for s in only_png.split("test") if s.label == 0] == ["test/cat/a.png", "test/cat/z.png"]


def test_hidden_files_and_folders_are_ignored(tmp_path):
    root = folder(tmp_path / "ds")
    image(root / ".thumbnails" / "x.png")
    image(root / "cat" / ".hidden" / "x.png")
    image(root / "cat" / "._b.jpg")
    data = load_dir(root)
    assert data.class_names == ["cat", "golden retriever", "zebra"] and len(data.split("test")) == 6


def test_a_link_back_up_the_tree_does_not_recurse_forever(tmp_path):
    root = folder(tmp_path / "ds")
    os.symlink(root / "cat", root / "cat" / "loop")
    assert len(load_dir(root).split("test")) == 6


def test_class_names_from_json_or_text_files(tmp_path):
    root = folder(tmp_path / "ds")
    names = {"cat": "tabby cat", "golden_retriever": "golden retriever dog", "zebra": "zebra", "absent": "unused"}
    (root / "names.json").write_text(json.dumps(names))
    assert load_dir(root, class_names_file="names.json").class_names == ["tabby cat", "golden retriever dog", "zebra"]
    text = tmp_path / "names.txt"  # absolute, outside the root; tabs and commas, names may hold commas after a tab
    text.write_text("cat,tabby cat\n\ngolden_retriever\tretriever, golden\nzebra , zebra\n")
    data = load_dir(root, class_names_file=str(text))
    assert data.class_names == ["tabby cat", "retriever, golden", "zebra"]


def test_class_names_file_must_name_every_folder(tmp_path):
    root = folder(tmp_path / "ds")
    (root / "names.txt").write_text("cat\ttabby cat\n")
    with pytest.raises(DatasetError) as err:
        load_dir(root, class_names_file="names.txt")
    message = str(err.value)
    assert str(root / "names.txt") in message and "golden_retriever, zebra" in message and "FOLDER<TAB>NAME" in message


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("names.json", "{not json", "is not valid JSON"),
        ("names.json", '["cat"]', "holds a list, not an object"),
        ("names.json", '{"cat": ""}', "field 'cat': '' is not a non-empty string"),
        ("names.txt", "cat tabby\n", "names.txt:1: 'cat tabby' is not FOLDER<TAB>NAME or FOLDER,NAME"),
        ("names.txt", "cat,a\ncat,b\n", "names.txt:2: folder 'cat' repeats line 1"),
        ("names.txt", b"cat,\xff\n", "is not UTF-8 text"),
    ],
)
def test_malformed_class_names_file_names_the_file(tmp_path, name, content, expected):
    root = folder(tmp_path / "ds")
    path = root / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DatasetError, match="class_names_file") as err:
        load_dir(root, class_names_file=name)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_missing_or_unreadable_named_files(tmp_path):
    root = folder(tmp_path / "ds")
    with pytest.raises(DatasetError, match=r"class_names_file .*missing.txt does not exist; give a file relative to"):
        load_dir(root, class_names_file="missing.txt")
    with pytest.raises(DatasetError, match=r"templates_file .*cat is not a regular file"):
        load_dir(root, templates_file="cat")


def test_templates_from_json_or_text_files(tmp_path):
    root = folder(tmp_path / "ds")
    templates = ["a photo of a {c}.", "a drawing of the {}.", "itap of a {0}."]
    (root / "t.json").write_text(json.dumps(templates))
    assert load_dir(root, templates_file="t.json").templates == templates
    (root / "t.txt").write_text("\n".join(templates) + "\n\n")
    assert load_dir(root, templates_file="t.txt").templates == templates


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("t.txt", "a photo of a {c}.\na photo of a thing.\n", "t.txt:2: 'a photo of a thing.' has no {}, {c} or {0}"),
        ("t.json", '["a {c}", "no placeholder"]', "t.json item 2: 'no placeholder' has no {}"),
        ("t.json", '{"a": "{c}"}', "is not a JSON list of non-empty strings"),
        ("t.txt", "\n\n", "holds no template"),
    ],
)
def test_bad_templates_name_the_file_and_line(tmp_path, name, content, expected):
    root = folder(tmp_path / "ds")
    (root / name).write_text(content)
    with pytest.raises(DatasetError, match="templates_file") as err:
        load_dir(root, templates_file=name)
    assert str(root / name) in str(err.value) and expected in str(err.value)


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = folder(tmp_path / "ds")
    (root / "yak").mkdir()
    (root / "yak" / "notes.txt").write_text("no images")
    (root / "emu").mkdir()
    with pytest.raises(DatasetError) as err:
        load_dir(root)
    message = str(err.value)
    assert f"class folder(s) {root / 'emu'}, {root / 'yak'} hold no image files" in message
    assert "--data extensions=" in message


def test_root_errors_name_the_path_and_the_flag(tmp_path):
    with pytest.raises(DatasetError, match=r"^image-folder needs root=DIR: `--data root=DIR`$"):
        load(ImageFolderConfig(), TaskKind.ZEROSHOT, tmp_path)
    with pytest.raises(DatasetError, match=f"image-folder root {tmp_path / 'nowhere'} does not exist.*--data root"):
        load_dir(tmp_path / "nowhere")
    (tmp_path / "file").write_text("")
    with pytest.raises(DatasetError, match="is not a directory"):
        load_dir(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=f"{tmp_path / 'empty'} has no class folders"):
        load_dir(tmp_path / "empty")


def test_split_folders_need_val_or_test_and_no_class_folders_beside_them(tmp_path):
    folder(tmp_path / "a" / "train")
    with pytest.raises(DatasetError, match="has train/ but neither val/ nor test/"):
        load_dir(tmp_path / "a")
    folder(tmp_path / "b" / "test")
    folder(tmp_path / "b", classes=("cat",))
    with pytest.raises(DatasetError, match=r"holds both split folders \(test\) and other folders \(cat\)"):
        load_dir(tmp_path / "b")


def test_revision_is_stable_and_changes_with_the_images_and_files(tmp_path):
    root = folder(tmp_path / "ds")
    first = load_dir(root).revision
    assert load_dir(root).revision == first and len(first) == 64
    image(root / "zebra" / "c.png")
    added = load_dir(root).revision
    assert added != first
    (root / "names.txt").write_text("cat,cat\ngolden_retriever,dog\nzebra,zebra\n")
    named = load_dir(root, class_names_file="names.txt").revision
    assert named != added
    (root / "names.txt").write_text("cat,cat\ngolden_retriever,retriever\nzebra,zebra\n")
    assert load_dir(root, class_names_file="names.txt").revision != named


def test_an_unreadable_image_fails_in_the_image_store_naming_the_file(tmp_path):
    root = folder(tmp_path / "ds")
    bad = root / "cat" / "bad.jpg"
    bad.write_bytes(b"this is not a JPEG")
    data = load_dir(root)  # the tree is fine; the bytes are read when the store decodes them
    paths = [s.image for s in data.split("test")]
    assert str(bad) in paths
    with pytest.raises(ImageDecodeError) as err:
        ImageStore.build(paths, 8, None, data.revision, dataset=data.dataset, parallel_min=10_000)
    assert err.value.path == str(bad) and str(bad) in str(err.value) and "image-folder" in str(err.value)


def test_config_takes_command_line_overrides_and_checks_extensions(tmp_path):
    cfg = apply_overrides(ImageFolderConfig(), {"root": str(tmp_path), "extensions": ".png,.JPG"})
    assert cfg.root == str(tmp_path) and cfg.extensions == (".png", ".JPG")
    with pytest.raises(ValueError, match="must be file endings starting with '.'"):
        ImageFolderConfig(extensions=("png",))


def test_registered_as_a_zero_shot_dataset():
    (ep,) = [e for e in entry_points(group="vqabench") if e.name == "image_folder"]
    assert ep.value == "vqabench_plugins.image_folder"
    specs = []
    image_folder.register_datasets(specs.append)
    (spec,) = specs
    assert spec.name == "image-folder" and spec.task_kinds == (TaskKind.ZEROSHOT,)
    assert spec.config_cls is ImageFolderConfig and set(spec.profiles) == {"quick", "paper"} and spec.load is load
