"""The vizwiz dataset: the official VizWiz VQA files as vqa and answerability data, its index cache,
its export for the evaluation server, the fixture writer, and an error naming file, record and field
for each malformed record."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from vqabench_plugins import vizwiz
from vqabench_plugins.vizwiz import DatasetError, VizWizConfig, export, load, prepare
from vqabench_plugins.vizwiz_fixture import COLOURS, main, write_fixture

from vqabench.config import apply_overrides
from vqabench.registry import DatasetSpec
from vqabench.tasks import get_task
from vqabench.vocab import describe_rule

SIZES = {"train": 20, "val": 8, "test": 5}
RECORD_FIX = "re-download Annotations.zip from https://vizwiz.org/tasks-and-datasets/vqa/"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("vizwiz") / "data", **SIZES, image_size=16)


@pytest.fixture
def root(tmp_path, pristine) -> Path:
    """A fresh copy of the small VizWiz-shaped set, for a test to change."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def load_root(root: Path, kind: str = "vqa", cache: Path | None = None, **fields: Any):
    return load(VizWizConfig(root=str(root), **fields), kind, cache or root.parent / "cache")


def records(root: Path, split: str) -> list[Any]:
    return json.loads((root / "Annotations" / f"{split}.json").read_text())


def rewrite(root: Path, split: str, items: list[Any]) -> None:
    (root / "Annotations" / f"{split}.json").write_text(json.dumps(items))


def flatten(root: Path) -> Path:
    """The same files with the annotations directly in the root (the other accepted layout)."""
    for path in (root / "Annotations").iterdir():
        path.rename(root / path.name)
    (root / "Annotations").rmdir()
    return root


# --- loading ------------------------------------------------------------------------------------------


def test_official_layout_gives_both_kinds_the_same_samples(root):
    vqa, answerability = load_root(root, "vqa"), load_root(root, "answerability")
    assert list(vqa.splits) == ["train", "val", "test", "challenge"]
    assert {k: len(v) for k, v in vqa.splits.items()} == {"train": 18, "val": 2, "test": 8, "challenge": 5}
    for data, kind in ((vqa, "vqa"), (answerability, "answerability")):
        assert (data.dataset, data.kind, data.root, data.vqa_mode) == ("vizwiz", kind, root, "vizwiz")
        assert data.unlabelled == frozenset({"challenge"})
        get_task(kind).check_data(data)  # the challenge's empty answers too
    assert vqa.splits == answerability.splits
    assert vqa.answer_vocab == answerability.answer_vocab and vqa.revision == answerability.revision
    # Unanswerable questions are kept, with "unanswerable" an ordinary answer.
    assert any(not s.answerable for s in vqa.splits["train"]) and "unanswerable" in vqa.answer_vocab


def test_labelled_samples_keep_every_record_field_as_written(root):
    data = load_root(root)
    official = records(root, "val")
    assert [s.id for s in data.splits["test"]] == [r["image"] for r in official]  # file order
    for sample, record in zip(data.splits["test"], official):
        assert sample.image == str(root / "val" / record["image"]) and Path(sample.image).is_file()
        assert sample.question == record["question"]
        assert sample.answers == tuple(a["answer"] for a in record["answers"]) and len(sample.answers) == 10
        assert sample.answer_confidences == tuple(a["answer_confidence"] for a in record["answers"])
        assert (sample.answer_type, sample.answerable) == (record["answer_type"], bool(record["answerable"]))
        assert sample.question_type == ""
    texts = {a for s in data.splits["test"] for a in s.answers}
    assert {"2 o'clock", "doesn't say"} <= texts  # apostrophes kept, not normalised


def test_challenge_is_official_test_without_answers(root):
    challenge = load_root(root).splits["challenge"]
    assert [(s.id, s.question) for s in challenge] == [(r["image"], r["question"]) for r in records(root, "test")]
    assert all(s.answers == () and s.answer_confidences == () for s in challenge)
    assert all(s.answerable and s.answer_type == "" for s in challenge)
    assert all(s.image == str(root / "test" / s.id) for s in challenge)


def test_without_test_json_there_is_no_challenge_split(root):
    (root / "Annotations" / "test.json").unlink()
    shutil.rmtree(root / "test")  # not needed either without test.json
    data = load_root(root)
    assert list(data.splits) == ["train", "val", "test"] and data.unlabelled == frozenset()


def test_flat_layout_gives_the_same_data(root, tmp_path):
    official = load_root(root, cache=tmp_path / "c1")
    flat = load_root(flatten(root), cache=tmp_path / "c2")
    assert flat.splits == official.splits and flat.revision == official.revision


def test_both_layouts_at_once_is_refused(root):
    shutil.copy(root / "Annotations" / "val.json", root / "val.json")
    with pytest.raises(DatasetError, match=r"both .*Annotations and .*data hold annotation files.*keep one"):
        load_root(root)


def test_extra_fields_and_boolean_answerable_are_accepted(root):
    raw = (root / "Annotations" / "train.json").read_text()
    assert "vqabench_fixture_note" in raw and "answer_id" in raw  # the fixture's unknown fields
    items = records(root, "train")
    items[0]["answerable"] = True
    items[1]["answerable"] = False
    items[2]["answers"][0]["extra"] = {"nested": [1, 2]}
    items[2]["question_id"] = 17
    rewrite(root, "train", items)
    samples = {s.id: s for split in ("train", "val") for s in load_root(root).splits[split]}
    assert samples[items[0]["image"]].answerable is True and samples[items[1]["image"]].answerable is False


# --- splits and vocabulary ----------------------------------------------------------------------------


def test_holdout_is_a_seeded_split_of_official_train_by_image(root):
    data = load_root(root)
    train, val = [s.id for s in data.splits["train"]], [s.id for s in data.splits["val"]]
    official = [r["image"] for r in records(root, "train")]
    assert sorted(train + val) == sorted(official) and not set(train) & set(val)
    assert train == [i for i in official if i in set(train)]  # file order kept
    order = sorted(official)
    assert set(val) == {order[i] for i in np.random.default_rng(0).permutation(len(order))[:2]}
    assert [s.id for s in load_root(root, cache=root.parent / "again").splits["val"]] == val
    other = {tuple(s.id for s in load_root(root, seed=seed).splits["val"]) for seed in range(1, 6)}
    assert other - {tuple(val)}  # another seed draws another holdout
    assert len(load_root(root, holdout_fraction=0.5).splits["val"]) == 10


def test_holdout_does_not_depend_on_record_order(root):
    before = {k: {s.id for s in v} for k, v in load_root(root).splits.items()}
    rewrite(root, "train", records(root, "train")[::-1])
    after = {k: {s.id for s in v} for k, v in load_root(root).splits.items()}
    assert after == before


def test_limit_train_keeps_the_first_images_of_the_permutation(root):
    data = load_root(root, limit_train=10)
    assert (len(data.splits["train"]), len(data.splits["val"])) == (9, 1)
    order = sorted(r["image"] for r in records(root, "train"))
    kept = {order[i] for i in np.random.default_rng(0).permutation(len(order))[:10]}
    assert {s.id for split in ("train", "val") for s in data.splits[split]} == kept
    assert len(data.splits["test"]) == 8 and len(data.splits["challenge"]) == 5  # not limited


def test_vocabulary_is_the_confident_rule_over_the_train_split(root):
    data = load_root(root)
    counts: Counter[str] = Counter()
    for s in data.splits["train"]:
        sure = [a for a, c in zip(s.answers, s.answer_confidences) if c == "yes"]
        if sure:
            counts[max(dict.fromkeys(sure), key=sure.count)] += 1
    assert data.answer_vocab == sorted(counts, key=lambda a: (-counts[a], a))
    assert data.vocab_rule == describe_rule("confident")


def test_holdout_answers_stay_out_of_the_vocabulary(root):
    val = {s.id for s in load_root(root).splits["val"]}
    items = records(root, "train")
    for item in items:
        if item["image"] in val:
            item["answers"] = [{"answer": "zebra", "answer_confidence": "yes"}] * 10
    rewrite(root, "train", items)
    data = load_root(root)
    assert {s.id for s in data.splits["val"]} == val and "zebra" not in data.answer_vocab


# --- revision and index -------------------------------------------------------------------------------


def test_revision_follows_the_files_and_config_not_the_root(root, tmp_path):
    rev = load_root(root).revision
    assert load_root(root).revision == rev
    copy = Path(shutil.copytree(root, tmp_path / "elsewhere"))
    assert load_root(copy, cache=tmp_path / "c").revision == rev
    assert len({rev, *(load_root(root, **f).revision for f in ({"seed": 1}, {"holdout_fraction": 0.2}))}) == 3
    assert load_root(root, limit_train=10).revision != rev
    path = root / "Annotations" / "val.json"
    path.write_text(path.read_text().replace("How many", "How  many", 1))
    assert load_root(root).revision != rev


def test_index_is_cached_and_reused(root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_root(root, cache=cache)
    index = cache / "vizwiz" / first.revision / "index.json"
    assert index.is_file() and [p.name for p in (cache / "vizwiz").iterdir()] == [first.revision]

    def no_parse(*args):
        raise AssertionError("parsed again although the index is cached")

    monkeypatch.setattr(vizwiz, "parse_file", no_parse)
    second = load_root(root, "answerability", cache=cache)
    assert second.splits == first.splits and second.answer_vocab == first.answer_vocab
    monkeypatch.undo()
    index.write_text('{"format": 1, "splits": {"train"')  # damaged: built again, not trusted
    assert load_root(root, cache=cache).splits == first.splits
    assert json.loads(index.read_text())["format"] == vizwiz.INDEX_FORMAT


def test_cached_index_still_checks_that_images_exist(root, tmp_path):
    load_root(root, cache=tmp_path / "cache")
    name = records(root, "val")[3]["image"]
    (root / "val" / name).unlink()
    with pytest.raises(DatasetError) as err:
        load_root(root, cache=tmp_path / "cache")
    message = str(err.value)
    assert f"{root / 'Annotations' / 'val.json'} record 3 field image: {root / 'val' / name} does not exist" in message
    assert "unzip it in" in message and "\n" not in message


# --- prepare ------------------------------------------------------------------------------------------


def test_prepare_checks_everything_and_writes_the_index_where_runs_look(root, tmp_path, monkeypatch):
    monkeypatch.setenv("VQABENCH_CACHE", str(tmp_path / "cache"))
    written = prepare(VizWizConfig(), root)
    rev = load_root(root, cache=tmp_path / "other").revision
    assert written == tmp_path / "cache" / "vizwiz" / rev and (written / "index.json").is_file()
    monkeypatch.setattr(vizwiz, "parse_file", lambda *a: pytest.fail("the prepared index was not used"))
    assert load_root(root, cache=tmp_path / "cache").revision == rev


def test_missing_files_are_listed_in_one_message(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as err:
        prepare(VizWizConfig(), tmp_path / "empty")
    message = str(err.value)
    assert "Annotations/train.json, Annotations/val.json, train/, val/;" in message
    assert "https://vizwiz.org/tasks-and-datasets/vqa/" in message
    assert "Annotations.zip, train.zip, val.zip, test.zip" in message and "\n" not in message


def test_missing_image_folders_are_listed_with_test_when_test_json_exists(root):
    for split in ("train", "test"):
        shutil.rmtree(root / split)
    with pytest.raises(DatasetError, match=r"lacks train/, test/; download Annotations.zip"):
        prepare(VizWizConfig(), root)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=r"vizwiz needs root=DIR.*`--data root=DIR`"):
        load(VizWizConfig(), "vqa", tmp_path)
    with pytest.raises(DatasetError, match=r"root .*nowhere does not exist;.*`--root DIR`"):
        prepare(VizWizConfig(), tmp_path / "nowhere")


# --- export -------------------------------------------------------------------------------------------

LINES = [
    {"id": "VizWiz_test_00000001.jpg", "answer": "2 o'clock", "answerable_score": 0.75, "question": "q"},
    {"id": "VizWiz_test_00000000.jpg", "answer": "unanswerable", "answerable_score": 0.125},
]


def test_export_writes_both_server_files_in_line_order(tmp_path):
    out = tmp_path / "sub" / "answers.json"
    assert export(VizWizConfig(), "challenge", LINES, out) == [out, tmp_path / "sub" / "answers-answerability.json"]
    assert out.read_text() == (
        "[\n"
        '  {\n    "answer": "2 o\'clock",\n    "image": "VizWiz_test_00000001.jpg"\n  },\n'
        '  {\n    "answer": "unanswerable",\n    "image": "VizWiz_test_00000000.jpg"\n  }\n'
        "]\n"
    )
    assert json.loads((tmp_path / "sub" / "answers-answerability.json").read_text()) == [
        {"image": "VizWiz_test_00000001.jpg", "answerable": 0.75},
        {"image": "VizWiz_test_00000000.jpg", "answerable": 0.125},
    ]
    assert sorted(p.name for p in out.parent.iterdir()) == ["answers-answerability.json", "answers.json"]


def test_export_writes_only_the_files_the_lines_carry(tmp_path):
    answers = [{"id": "a.jpg", "answer": "red"}]
    assert export(VizWizConfig(), "test", answers, tmp_path / "x.json") == [tmp_path / "x.json"]
    scores = [{"id": "a.jpg", "answerable_score": 1}]
    assert export(VizWizConfig(), "test", scores, tmp_path / "y.json") == [tmp_path / "y-answerability.json"]
    assert json.loads((tmp_path / "y-answerability.json").read_text()) == [{"image": "a.jpg", "answerable": 1.0}]
    assert not (tmp_path / "y.json").exists()


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        pytest.param([{"id": "a.jpg"}], "carry neither 'answer' (vqa) nor 'answerable_score'", id="neither"),
        pytest.param([], "no prediction lines", id="empty"),
        pytest.param([{"id": "a.jpg", "answer": "x"}, {"id": "b.jpg"}], "line 1 (id 'b.jpg') lacks", id="mixed"),
        pytest.param([{"id": "a.jpg", "answer": "x"}] * 2, "line 1 field id: 'a.jpg' repeats line 0", id="repeat"),
        pytest.param([{"answer": "x"}], "line 0 field id: None is not an image", id="no-id"),
        pytest.param([{"id": "a", "answer": 3}], "line 0 field answer: 3 is not a string", id="number"),
        pytest.param([{"id": "a", "answerable_score": float("nan")}], "nan is not a finite", id="nan"),
        pytest.param([{"id": "a", "answerable_score": True}], "True is not a finite number", id="bool"),
    ],
)
def test_export_refuses(tmp_path, lines, expected):
    with pytest.raises(ValueError, match="vizwiz export: ") as err:
        export(VizWizConfig(), "challenge", lines, tmp_path / "out.json")
    assert expected in str(err.value)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_export_refuses_an_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="no split 'dev'; vizwiz has train, val, test, challenge"):
        export(VizWizConfig(), "dev", LINES, tmp_path / "out.json")


# --- malformed records --------------------------------------------------------------------------------


DROP = object()  # a field value that removes the field


def _set(split: str, i: int, path: tuple[Any, ...], value: Any):
    """A damage: set (or, with value DROP, delete) the field at ``path`` of record ``i`` of ``split``."""

    def damage(root: Path) -> None:
        items = records(root, split)
        target = items
        for key in (i, *path[:-1]):
            target = target[key]
        if value is DROP:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        rewrite(root, split, items)

    return damage


def _write(split: str, text: str):
    return lambda root: (root / "Annotations" / f"{split}.json").write_text(text)


def _repeat(root: Path) -> None:
    items = records(root, "train")
    items[5]["image"] = items[3]["image"]
    rewrite(root, "train", items)


def _not_an_object(root: Path) -> None:
    items = records(root, "train")
    items[3] = items[3]["image"]
    rewrite(root, "train", items)


# (damage, file, expected parts): every message also names the file and, for a record, the fix.
MALFORMED = [
    pytest.param(_not_an_object, "train", ["train.json record 3:", "is a str, not an object"], id="not-object"),
    pytest.param(_set("train", 3, ("image",), DROP), "train", ["record 3 field image: is missing"], id="no-image"),
    pytest.param(_set("val", 2, ("question",), DROP), "val", ["record 2 field question: is missing"], id="no-question"),
    pytest.param(_set("train", 3, ("question",), 5), "train", ["field question: 5 is not a string"], id="question-int"),
    pytest.param(
        _set("test", 1, ("question",), DROP), "test", ["record 1 field question: is missing"], id="test-no-question"
    ),
    pytest.param(
        _set("train", 3, ("answers",), DROP),
        "train",
        ["record 3 field answers: is missing", "needs its human answers"],
        id="no-answers",
    ),
    pytest.param(_set("val", 0, ("answers",), []), "val", ["record 0 field answers: is []"], id="empty-answers"),
    pytest.param(_set("train", 3, ("answers",), "red"), "train", ["field answers: is 'red'"], id="answers-str"),
    pytest.param(
        _set("train", 3, ("answers", 2), "red"), "train", ["field answers[2]: is a str, not an object"], id="item-str"
    ),
    pytest.param(
        _set("train", 3, ("answers", 2, "answer"), 2), "train", ["answers[2].answer: is 2, not a string"], id="num"
    ),
    pytest.param(
        _set("train", 3, ("answers", 2, "answer"), DROP), "train", ["answers[2].answer: is missing"], id="no-answer"
    ),
    pytest.param(
        _set("train", 3, ("answers", 4, "answer_confidence"), "sure"),
        "train",
        ["record 3 field answers[4].answer_confidence: is 'sure', not 'yes', 'maybe' or 'no'"],
        id="confidence",
    ),
    pytest.param(
        _set("val", 1, ("answers", 0, "answer_confidence"), DROP),
        "val",
        ["record 1 field answers[0].answer_confidence: is missing"],
        id="no-confidence",
    ),
    pytest.param(_set("train", 3, ("answerable",), 2), "train", ["field answerable: 2 is not 0, 1"], id="answerable-2"),
    pytest.param(
        _set("train", 3, ("answerable",), "1"), "train", ["field answerable: '1' is not"], id="answerable-str"
    ),
    pytest.param(
        _set("train", 3, ("answerable",), 1.0), "train", ["field answerable: 1.0 is not"], id="answerable-1.0"
    ),
    pytest.param(
        _set("train", 3, ("answerable",), DROP), "train", ["field answerable: is missing"], id="no-answerable"
    ),
    pytest.param(
        _set("train", 3, ("answer_type",), "colour"),
        "train",
        ["record 3 field answer_type: is 'colour', not one of other, yes/no, number, unanswerable"],
        id="answer-type",
    ),
    pytest.param(_set("val", 3, ("answer_type",), DROP), "val", ["field answer_type: is missing"], id="no-answer-type"),
    pytest.param(
        _set("train", 3, ("image",), "../val/VizWiz_val_00000000.jpg"),
        "train",
        ["record 3 field image: '../val/VizWiz_val_00000000.jpg' leaves the dataset root"],
        id="dotdot",
    ),
    pytest.param(
        _set("test", 0, ("image",), "/etc/passwd"), "test", ["field image: '/etc/passwd' is an absolute"], id="abs"
    ),
    pytest.param(_set("train", 3, ("image",), 7), "train", ["field image: 7 is a number"], id="image-int"),
    pytest.param(
        _repeat,
        "train",
        ["record 5 field image: 'VizWiz_train_00000003.jpg' is also the image of record 3"],
        id="repeat",
    ),
    pytest.param(_write("train", '[{"image": '), "train", ["is not valid UTF-8 JSON"], id="bad-json"),
    pytest.param(_write("val", '{"image": "x.jpg"}'), "val", ["holds a JSON dict, not a list of records"], id="object"),
    pytest.param(_write("test", "[]"), "test", ["holds no records"], id="empty-file"),
]


@pytest.mark.parametrize(("damage", "split", "expected"), MALFORMED)
def test_malformed_record_is_refused_naming_file_record_and_field(root, damage, split, expected):
    damage(root)
    with pytest.raises(DatasetError) as err:
        load_root(root)
    message = str(err.value)
    assert "\n" not in message and message.startswith("vizwiz: ")
    assert str(root / "Annotations" / f"{split}.json") in message and RECORD_FIX in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_missing_image_file_is_refused_naming_the_record(root):
    name = records(root, "train")[4]["image"]
    (root / "train" / name).unlink()
    (root / "train" / records(root, "train")[6]["image"]).unlink()
    with pytest.raises(DatasetError) as err:
        load_root(root)
    assert str(err.value) == (
        f"vizwiz: {root / 'Annotations' / 'train.json'} record 4 field image: {root / 'train' / name} does not exist, "
        f"nor do 1 other images it names; download train.zip from https://vizwiz.org/tasks-and-datasets/vqa/ "
        f"and unzip it in {root}"
    )


def test_image_link_out_of_the_root_is_refused(root, tmp_path):
    name = records(root, "val")[2]["image"]
    outside = tmp_path / "outside.jpg"
    (root / "val" / name).rename(outside)
    (root / "val" / name).symlink_to(outside)
    with pytest.raises(DatasetError, match=r"val.json record 2 field image: .* symbolic link to .*outside the dataset"):
        load_root(root)


def test_holdout_that_leaves_nothing_to_train_on(root):
    with pytest.raises(DatasetError, match=r"holdout_fraction=0.1 of 1 train questions leaves none to train on"):
        load_root(root, limit_train=1)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"holdout_fraction": "0"}, "holdout_fraction=0.0 must lie strictly between 0 and 1"),
        ({"holdout_fraction": "1"}, "holdout_fraction=1.0 must lie strictly between 0 and 1"),
        ({"seed": "-1"}, "seed=-1 must be >= 0"),
        ({"limit_train": "-5"}, "limit_train=-5 must be >= 0"),
    ],
)
def test_config_out_of_range(options, expected):
    with pytest.raises(ValueError, match="vizwiz config: ") as err:
        apply_overrides(VizWizConfig(), options, where="dataset vizwiz (--data)")
    assert expected in str(err.value)


# --- registration -------------------------------------------------------------------------------------


def test_registered_through_the_entry_point_with_prepare_and_export():
    (ep,) = [e for e in entry_points(group="vqabench") if e.name == "vizwiz"]
    assert ep.value == "vqabench_plugins.vizwiz"
    specs: list[DatasetSpec] = []
    vizwiz.register_datasets(specs.append)
    (spec,) = specs
    assert spec.name == "vizwiz" and tuple(spec.task_kinds) == ("vqa", "answerability")
    assert (spec.load, spec.prepare, spec.export, spec.config_cls) == (load, prepare, export, VizWizConfig)
    assert set(spec.profiles) == {"quick", "paper"}


# --- the fixture writer -------------------------------------------------------------------------------


def test_fixture_is_the_official_layout_and_deterministic(tmp_path, pristine):
    again = write_fixture(tmp_path / "again", **SIZES, image_size=16)
    for split, count in SIZES.items():
        assert (again / "Annotations" / f"{split}.json").read_bytes() == (
            pristine / "Annotations" / f"{split}.json"
        ).read_bytes()
        names = sorted(p.name for p in (again / split).iterdir())
        assert names == [f"VizWiz_{split}_{i:08d}.jpg" for i in range(count)]
    assert all(set(r) == {"image", "question"} | ({"vqabench_fixture_note"} & set(r)) for r in records(again, "test"))
    labelled = records(again, "train") + records(again, "val")
    assert {r["answer_type"] for r in labelled} == {"other", "yes/no", "number", "unanswerable"}
    assert all(r["answerable"] == (r["answer_type"] != "unanswerable") for r in labelled)


def test_fixture_images_carry_the_answers(pristine):
    """Colour questions are answered by the square's colour, unanswerable ones come with dark photos."""
    for split in ("train", "val"):
        for r in records(pristine, split):
            pixels = np.asarray(Image.open(pristine / split / r["image"]).convert("RGB"), dtype=float)
            if r["question"].startswith("What colo"):
                centre = pixels[6:10, 6:10].reshape(-1, 3).mean(0)
                nearest = min(COLOURS, key=lambda c: np.abs(centre - COLOURS[c]).sum())
                assert nearest == Counter(a["answer"] for a in r["answers"]).most_common(1)[0][0]
            elif r["answer_type"] == "unanswerable":
                assert pixels.mean() < 40


def test_fixture_command_line(tmp_path, capsys):
    assert main([str(tmp_path / "cli"), "--train", "12", "--val", "3", "--test", "2", "--image-size", "8"]) == 0
    assert "--data root=" in capsys.readouterr().out
    data = load_root(tmp_path / "cli")
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 11, "val": 1, "test": 3, "challenge": 2}
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad"), "--train", "0"])
