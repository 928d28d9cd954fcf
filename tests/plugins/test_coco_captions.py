"""The coco-captions dataset: COCO 2014 captions on Karpathy's splits from the official files (the
fixture writer's copy of them), its references from either source, and an error naming the file,
record and field for each malformed input; one ``vqabench run`` end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli, run_in
from vqabench_plugins.caption_fixture import main, write_coco
from vqabench_plugins.coco_captions import CocoCaptionsConfig, DatasetError, load

from vqabench.results import cell_dir
from vqabench.tasks import get_task

KARPATHY = "dataset_coco.json"
TRAIN_ANN = "annotations/captions_train2014.json"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_coco(tmp_path_factory.mktemp("coco") / "data", train_images=8, val_images=9, image_size=16)


@pytest.fixture
def root(tmp_path, pristine) -> Path:
    """A fresh copy of the small COCO-shaped set, for a test to change."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def load_root(root: Path, **fields: Any):
    return load(CocoCaptionsConfig(root=str(root), **fields), "captioning", root.parent / "cache")


def read(root: Path, rel: str = KARPATHY) -> Any:
    return json.loads((root / rel).read_text())


def write(root: Path, content: Any, rel: str = KARPATHY) -> None:
    (root / rel).write_text(json.dumps(content))


def edit_record(i: int, **fields: Any):
    """Set fields of Karpathy record ``i`` (``None`` removes one)."""

    def damage(root: Path) -> None:
        top = read(root)
        for k, v in fields.items():
            if v is None:
                top["images"][i].pop(k, None)
            else:
                top["images"][i][k] = v
        write(root, top)

    return damage


# --- loading -------------------------------------------------------------------------------------------


def test_karpathy_splits_with_restval_in_train(root):
    data = load_root(root)
    records = read(root)["images"]
    by_split = {s: [str(r["cocoid"]) for r in records if r["split"] == s] for s in ("train", "restval", "val", "test")}
    assert (data.dataset, data.kind, data.root) == ("coco-captions", "captioning", root)
    assert [s.id for s in data.splits["train"]] == [
        str(r["cocoid"]) for r in records if r["split"] in ("train", "restval")
    ]  # file order, restval among them
    assert by_split["restval"] and set(by_split["restval"]) <= {s.id for s in data.splits["train"]}
    assert [s.id for s in data.splits["val"]] == by_split["val"]
    assert [s.id for s in data.splits["test"]] == by_split["test"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 11, "val": 3, "test": 3}
    get_task("captioning").check_data(data)


def test_samples_are_the_records_as_written(root):
    data = load_root(root)
    records = {str(r["cocoid"]): r for r in read(root)["images"]}
    for sample in (s for split in data.splits.values() for s in split):
        record = records[sample.id]
        assert sample.image == str(root / record["filepath"] / record["filename"]) and Path(sample.image).is_file()
        assert sample.captions == tuple(s["raw"] for s in record["sentences"])
        assert sample.domain == "source"
    assert {len(s.captions) for s in data.splits["train"]} == {5, 6}  # a few COCO images have six


def test_references_coco_are_the_annotation_captions(root):
    karpathy, coco = load_root(root), load_root(root, references="coco")
    assert karpathy.revision != coco.revision
    annotations = [
        a for rel in (TRAIN_ANN, "annotations/captions_val2014.json") for a in read(root, rel)["annotations"]
    ]
    for name, samples in coco.splits.items():
        assert [s.id for s in samples] == [s.id for s in karpathy.splits[name]]
        for sample, other in zip(samples, karpathy.splits[name]):
            # The same sentences; the annotation file's order.
            assert sample.captions == tuple(a["caption"] for a in annotations if str(a["image_id"]) == sample.id)
            assert sorted(sample.captions) == sorted(other.captions)


def test_the_split_file_alone_suffices(root):
    shutil.rmtree(root / "annotations")
    assert len(load_root(root).splits["test"]) == 3
    with pytest.raises(DatasetError) as err:
        load_root(root, references="coco")
    message = str(err.value)
    assert "annotations/captions_train2014.json" in message and "annotations/captions_val2014.json" in message
    assert "annotations_trainval2014.zip from https://cocodataset.org/#download" in message


def test_unknown_fields_are_ignored(root):
    raw = (root / TRAIN_ANN).read_text()
    assert all(f in raw for f in ('"info"', '"licenses"', '"coco_url"', '"height"', '"width"', '"flickr_url"'))
    top = read(root)
    assert all({"tokens", "sentid", "imgid"} <= set(s) for s in top["images"][0]["sentences"])
    top["vqabench_note"] = {"nested": [1]}
    top["images"][0]["extra"] = 3
    top["images"][1]["sentences"][0]["extra"] = None
    write(root, top)
    ann = read(root, TRAIN_ANN)
    ann["type"] = "captions"
    ann["annotations"][0]["segmentation"] = []
    write(root, ann, TRAIN_ANN)
    coco, karpathy = load_root(root, references="coco"), load_root(root)
    for name, samples in coco.splits.items():
        assert [(s.id, sorted(s.captions)) for s in samples] == [
            (s.id, sorted(s.captions)) for s in karpathy.splits[name]
        ]


def test_max_images_is_a_seeded_sample_per_split(root):
    full = load_root(root)
    small = load_root(root, max_images=2)
    assert {k: len(v) for k, v in small.splits.items()} == {"train": 2, "val": 2, "test": 2}
    for name, samples in small.splits.items():
        ids = [s.id for s in full.splits[name]]
        assert [ids.index(s.id) for s in samples] == sorted(ids.index(s.id) for s in samples)  # file order
    assert load_root(root, max_images=2).splits == small.splits
    others = [load_root(root, max_images=2, seed=s).splits["train"] for s in range(1, 6)]
    assert any(o != small.splits["train"] for o in others)
    assert len({full.revision, small.revision, load_root(root, max_images=2, seed=1).revision}) == 3


def test_revision_follows_the_files_not_the_root(root, tmp_path):
    moved = Path(shutil.copytree(root, tmp_path / "elsewhere"))
    assert load_root(root).revision == load_root(moved).revision
    edit_record(0, sentences=[{"raw": "A new caption.", "tokens": ["a", "new", "caption"]}])(moved)
    assert load_root(moved).revision != load_root(root).revision


def test_profiles_and_config_checks():
    from vqabench.config import apply_overrides
    from vqabench.plugins import load_plugins

    spec = load_plugins()[0].dataset("coco-captions")
    assert apply_overrides(spec.config_cls(), spec.profiles["quick"]).max_images == 1000
    assert apply_overrides(spec.config_cls(), spec.profiles["paper"]).max_images == 0
    with pytest.raises(ValueError, match="references='x' is not one of karpathy, coco"):
        CocoCaptionsConfig(references="x")
    with pytest.raises(ValueError, match="max_images=-1 must be >= 0"):
        CocoCaptionsConfig(max_images=-1)


def test_other_kinds_are_refused(root):
    with pytest.raises(DatasetError, match="coco-captions gives task kind captioning, not 'vqa'"):
        load(CocoCaptionsConfig(root=str(root)), "vqa", root.parent / "cache")


# --- errors ---------------------------------------------------------------------------------------------


def _rm(rel: str):
    def damage(root: Path) -> None:
        path = root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return damage


def _top(value: Any):
    return lambda root: write(root, value)


def _raw(data: bytes):
    return lambda root: (root / KARPATHY).write_bytes(data)


def _sentences(i: int, value: Any):
    return edit_record(i, sentences=value)


def _duplicate(root: Path) -> None:
    top = read(root)
    top["images"][3]["cocoid"] = top["images"][1]["cocoid"]
    write(root, top)


def _first_image_gone(root: Path) -> None:
    record = read(root)["images"][0]
    (root / record["filepath"] / record["filename"]).unlink()


K = "{root}/dataset_coco.json"
ERRORS = [
    pytest.param(
        _rm(KARPATHY), [f"{{root}} lacks {KARPATHY} (caption_datasets.zip from https://cs.stanford"], id="no-split-file"
    ),
    pytest.param(
        _rm("val2014"),
        ["lacks val2014/ (val2014.zip from https://cocodataset.org/#download)", "unzip them in {root}"],
        id="no-image-folder",
    ),
    pytest.param(_raw(b'{"images": [}'), [K, "is not valid UTF-8 JSON"], id="not-json"),
    pytest.param(_raw(b"\xff\xfe"), [K, "is not valid UTF-8 JSON"], id="not-utf8"),
    pytest.param(_top([1, 2]), [K, "is not a Karpathy split file"], id="top-a-list"),
    pytest.param(
        _top({"images": [], "dataset": "coco"}), [f"{K} field images: holds no image records"], id="no-images"
    ),
    pytest.param(
        _top({"images": [{}], "dataset": "flickr30k"}),
        [f"{K} field dataset: is 'flickr30k': the split file of another dataset, not 'coco'"],
        id="other-dataset",
    ),
    pytest.param(edit_record(2, filename=None), [f"{K} images[2] field filename: is missing"], id="no-filename"),
    pytest.param(
        edit_record(2, filename=7), [f"{K} images[2] field filename: is 7, not a file name"], id="filename-int"
    ),
    pytest.param(edit_record(2, filepath=None), [f"{K} images[2] field filepath: is missing"], id="no-filepath"),
    pytest.param(edit_record(2, cocoid=None), [f"{K} images[2] field cocoid: is missing"], id="no-cocoid"),
    pytest.param(
        edit_record(2, cocoid="123"),
        [f"{K} images[2] field cocoid: is '123', not a non-negative integer"],
        id="cocoid-str",
    ),
    pytest.param(
        edit_record(2, cocoid=True), [f"{K} images[2] field cocoid: is True, not a non-negative"], id="cocoid-bool"
    ),
    pytest.param(
        edit_record(2, split="validation"),
        [f"{K} images[2] field split: is 'validation', not one of train, restval, val, test"],
        id="unknown-split",
    ),
    pytest.param(edit_record(2, split=None), [f"{K} images[2] field split: is missing"], id="no-split"),
    pytest.param(edit_record(2, sentences=None), [f"{K} images[2] field sentences: is missing"], id="no-sentences"),
    pytest.param(
        _sentences(2, []), [f"{K} images[2] field sentences: is empty: the image has no caption"], id="no-caption"
    ),
    pytest.param(
        _sentences(2, [{"raw": "a cat"}, {"tokens": ["a"]}]),
        [f"{K} images[2] field sentences[1].raw: is missing"],
        id="no-raw",
    ),
    pytest.param(
        _sentences(2, [{"raw": 3}]), [f"{K} images[2] field sentences[0].raw: is 3, not a non-empty"], id="raw-int"
    ),
    pytest.param(_sentences(2, [{"raw": "  "}]), [f"{K} images[2] field sentences[0].raw: is '  '"], id="raw-blank"),
    pytest.param(
        _sentences(2, ["a cat"]), [f"{K} images[2] field sentences[0].raw: is not an object"], id="sentence-str"
    ),
    pytest.param(
        edit_record(2, **{"filepath": "val2014", "filename": "../../outside.jpg"}),
        [f"{K} images[2] field filename", "leaves the dataset root"],
        id="dotdot",
    ),
    pytest.param(
        edit_record(2, filepath="/etc"), [f"{K} images[2] field filename", "is an absolute path"], id="absolute"
    ),
    pytest.param(_duplicate, [f"{K} images[3] field cocoid: repeats image", "of images[1]"], id="duplicate"),
    pytest.param(
        _first_image_gone,
        [f"{K} images[0] field filename: {{root}}/train2014/COCO_train2014_", "does not exist", "train2014.zip"],
        id="missing-image",
    ),
]


@pytest.mark.parametrize(("damage", "expected"), ERRORS)
def test_malformed_input_is_one_line_naming_file_record_and_field(root, damage, expected):
    damage(root)
    with pytest.raises(DatasetError) as err:
        load_root(root)
    message = str(err.value)
    assert "\n" not in message and message.startswith("coco-captions")
    for part in expected:
        assert part.format(root=root) in message, message


def _annotation(rel: str, change):
    def damage(root: Path) -> None:
        top = read(root, rel)
        change(top)
        write(root, top, rel)

    return damage


def _first_train_image(top: dict) -> None:
    gone = top["images"].pop(0)["id"]
    top["annotations"] = [a for a in top["annotations"] if a["image_id"] != gone]


A = "{root}/annotations/captions_train2014.json"
ANNOTATION_ERRORS = [
    pytest.param(
        _annotation(TRAIN_ANN, _first_train_image), [f"{K} images[0] field cocoid", "is in neither"], id="no-image"
    ),
    pytest.param(
        _annotation(TRAIN_ANN, lambda t: t["images"][0].update(file_name="other.jpg")),
        [f"{K} images[0] field cocoid", "is 'other.jpg' in the annotation file"],
        id="other-file-name",
    ),
    pytest.param(
        _annotation(TRAIN_ANN, lambda t: t["annotations"][4].pop("caption")),
        [f"{A} annotations[4] field caption: is missing"],
        id="no-caption",
    ),
    pytest.param(
        _annotation(TRAIN_ANN, lambda t: t["annotations"][4].update(image_id=-5)),
        [f"{A} annotations[4] field image_id: -5 is not in the file's images"],
        id="unknown-image",
    ),
    pytest.param(
        _annotation(TRAIN_ANN, lambda t: t.pop("annotations")), [f"{A} field annotations is missing"], id="no-list"
    ),
]


@pytest.mark.parametrize(("damage", "expected"), ANNOTATION_ERRORS)
def test_malformed_annotation_files_with_references_coco(root, damage, expected):
    damage(root)
    load_root(root)  # the split file alone is fine
    with pytest.raises(DatasetError) as err:
        load_root(root, references="coco")
    for part in expected:
        assert part.format(root=root) in str(err.value), str(err.value)


def test_root_must_be_given_and_exist(tmp_path):
    with pytest.raises(DatasetError, match=r"coco-captions needs root=DIR.*--data root=DIR"):
        load(CocoCaptionsConfig(), "captioning", tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load(CocoCaptionsConfig(root=str(tmp_path / "nowhere")), "captioning", tmp_path)


# --- the fixture writer and the CLI -----------------------------------------------------------------------


def test_fixture_writer_command(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "c"), "--train-images", "2", "--val-images", "3"]) == 0
    assert "--data root=" in capsys.readouterr().out
    top = read(tmp_path / "c")
    assert top["dataset"] == "coco" and [r["split"] for r in top["images"]] == [
        "train",
        "train",
        "val",
        "test",
        "restval",
    ]
    record = top["images"][0]
    assert {"filepath", "filename", "imgid", "sentids", "split", "sentences", "cocoid"} == set(record)
    assert record["sentids"] == [s["sentid"] for s in record["sentences"]]
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "d"), "--val-images", "2"])


def test_data_prepare_checks_the_files(root):
    done = run_cli("data", "prepare", "coco-captions", "--root", str(root))
    assert done.returncode == 0 and f"prepared coco-captions in {root}" in done.stdout, done.stderr
    (root / KARPATHY).unlink()
    failed = run_cli("data", "prepare", "coco-captions", "--root", str(root))
    assert failed.returncode == 2 and failed.stderr.startswith("error: coco-captions:"), failed.stderr
    assert "caption_datasets.zip" in failed.stderr and "Traceback" not in failed.stderr


def test_run_end_to_end_with_a_captioning_model(tmp_path, pristine, only_example, monkeypatch):
    monkeypatch.setenv("VQABENCH_PLUGINS", "example,coco_captions")
    done = run_in(tmp_path, "example-colorname", "coco-captions", "--data", f"root={pristine}")
    assert done.returncode == 0, done.stderr
    record = json.loads(
        (
            cell_dir(tmp_path / "runs", "coco-captions", "captioning", "example-colorname", "quick", 0) / "record.json"
        ).read_text()
    )
    assert record["dataset"] == "coco-captions" and record["config"]["dataset"]["max_images"] == 1000
    test = record["final"]["test"]
    assert {"bleu_4", "meteor", "rouge_l", "cider"} <= set(test) and 0 <= test["cider"] <= 10
    baseline = record["baseline"]["test"]
    assert baseline["label"].startswith('Best single training caption ("') and baseline["cider"] > 0
