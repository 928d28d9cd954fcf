"""The flickr30k dataset: Karpathy's Flickr30k split file and flickr30k-images/ (the fixture writer's
copy), read by the reader it shares with coco-captions, and an error naming the file, record and field
for each malformed input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli
from vqabench_plugins.caption_fixture import main, write_flickr30k
from vqabench_plugins.flickr30k import Flickr30kConfig, load
from vqabench_plugins.karpathy import DatasetError

from vqabench.tasks import get_task

KARPATHY = "dataset_flickr30k.json"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_flickr30k(tmp_path_factory.mktemp("f30k") / "data", train_images=6, val_images=3, test_images=3)


@pytest.fixture
def root(tmp_path, pristine) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def load_root(root: Path, **fields: Any):
    return load(Flickr30kConfig(root=str(root), **fields), "captioning", root.parent / "cache")


def read(root: Path) -> Any:
    return json.loads((root / KARPATHY).read_text())


def edit_record(i: int, **fields: Any):
    def damage(root: Path) -> None:
        top = read(root)
        for k, v in fields.items():
            if v is None:
                top["images"][i].pop(k, None)
            else:
                top["images"][i][k] = v
        (root / KARPATHY).write_text(json.dumps(top))

    return damage


def test_karpathy_splits_ids_and_images(root):
    data = load_root(root)
    records = read(root)["images"]
    assert "filepath" not in records[0] and "cocoid" not in records[0]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 6, "val": 3, "test": 3}
    for name, samples in data.splits.items():
        expected = [r for r in records if r["split"] == name]
        assert [s.id for s in samples] == [os.path.splitext(r["filename"])[0] for r in expected]
        for sample, record in zip(samples, expected):
            assert sample.image == str(root / "flickr30k-images" / record["filename"]) and Path(sample.image).is_file()
            assert sample.captions == tuple(s["raw"] for s in record["sentences"]) and len(sample.captions) == 5
    get_task("captioning").check_data(data)


def test_restval_joins_train_and_extra_fields_are_ignored(root):
    top = read(root)
    top["images"][7]["split"] = "restval"  # a val image
    top["images"][0]["extra"] = {"nested": [1]}
    top["images"][0]["sentences"][0]["extra"] = 1
    top["version"] = 2
    (root / KARPATHY).write_text(json.dumps(top))
    data = load_root(root)
    moved = os.path.splitext(top["images"][7]["filename"])[0]
    assert moved in [s.id for s in data.splits["train"]] and moved not in [s.id for s in data.splits["val"]]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 7, "val": 2, "test": 3}


def test_max_images_and_revision(root, tmp_path):
    small = load_root(root, max_images=2)
    assert {k: len(v) for k, v in small.splits.items()} == {"train": 2, "val": 2, "test": 2}
    assert small.revision != load_root(root).revision
    moved = Path(shutil.copytree(root, tmp_path / "elsewhere"))
    assert load_root(moved, max_images=2).revision == small.revision


K = "{root}/dataset_flickr30k.json"


def _no_folder(root: Path) -> None:
    shutil.rmtree(root / "flickr30k-images")


def _image_gone(root: Path) -> None:
    (root / "flickr30k-images" / read(root)["images"][4]["filename"]).unlink()


def _duplicate(root: Path) -> None:
    top = read(root)
    top["images"][5]["filename"] = top["images"][2]["filename"]
    (root / KARPATHY).write_text(json.dumps(top))


ERRORS = [
    pytest.param(lambda r: (r / KARPATHY).unlink(), [f"lacks {KARPATHY} (caption_datasets.zip"], id="no-split-file"),
    pytest.param(
        _no_folder,
        ["lacks flickr30k-images/ (flickr30k-images.tar.gz from https://shannon.cs.illinois.edu/DenotationGraph/)"],
        id="no-image-folder",
    ),
    pytest.param(
        lambda r: (r / KARPATHY).write_text(json.dumps({"images": [{}], "dataset": "flickr8k"})),
        [f"{K} field dataset: is 'flickr8k': the split file of another dataset, not 'flickr30k'"],
        id="other-dataset",
    ),
    pytest.param(edit_record(1, filename=None), [f"{K} images[1] field filename: is missing"], id="no-filename"),
    pytest.param(
        edit_record(1, split="dev"), [f"{K} images[1] field split: is 'dev', not one of train, restval"], id="bad-split"
    ),
    pytest.param(edit_record(1, sentences=[]), [f"{K} images[1] field sentences: is empty: the image has no caption"]),
    pytest.param(edit_record(1, sentences=[{"raw": None}]), [f"{K} images[1] field sentences[0].raw: is None"]),
    pytest.param(
        edit_record(1, filename="../../outside.jpg"), [f"{K} images[1] field filename", "leaves the dataset root"]
    ),
    pytest.param(_duplicate, [f"{K} images[5] field filename: repeats image", "of images[2]"], id="duplicate"),
    pytest.param(_image_gone, [f"{K} images[4] field filename", "does not exist", "flickr30k-images.tar.gz"]),
]


@pytest.mark.parametrize(("damage", "expected"), ERRORS)
def test_malformed_input_is_one_line_naming_file_record_and_field(root, damage, expected):
    damage(root)
    with pytest.raises(DatasetError) as err:
        load_root(root)
    message = str(err.value)
    assert "\n" not in message and message.startswith("flickr30k")
    for part in expected:
        assert part.format(root=root) in message, message


def test_a_link_out_of_the_root_is_refused(root, tmp_path):
    name = read(root)["images"][0]["filename"]
    outside = tmp_path / "outside.jpg"
    (root / "flickr30k-images" / name).rename(outside)
    (root / "flickr30k-images" / name).symlink_to(outside)
    with pytest.raises(DatasetError, match=r"images\[0\] field filename.*symbolic link to .*outside the dataset root"):
        load_root(root)


def test_fixture_writer_and_prepare(tmp_path):
    assert (
        main(["--out", str(tmp_path / "f"), "--dataset", "flickr30k", "--train-images", "2", "--val-images", "1"]) == 0
    )
    record = read(tmp_path / "f")["images"][0]
    assert {"sentids", "imgid", "sentences", "split", "filename"} == set(record)
    assert {"tokens", "raw", "imgid", "sentid"} == set(record["sentences"][0])
    done = run_cli("data", "prepare", "flickr30k", "--root", str(tmp_path / "f"))
    assert done.returncode == 0 and "prepared flickr30k" in done.stdout, done.stderr
