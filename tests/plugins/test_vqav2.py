"""The vqav2 dataset: the official VQA v2 files as vqa data in two setups (standard, report001), its two
vocabulary rules, its index cache and prepare step, the fixture writer and the scale benchmark's copy,
and an error naming file, question and field for each malformed record."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from vqabench_plugins import vqav2
from vqabench_plugins.vqav2 import DatasetError, VQAv2Config, load, prepare
from vqabench_plugins.vqav2_bench import write_full_size
from vqabench_plugins.vqav2_fixture import ANNOTATIONS, COLOURS, QUESTIONS, main, write_fixture

from vqabench.config import apply_overrides
from vqabench.metrics.vqa import normalize_answer
from vqabench.registry import DatasetSpec
from vqabench.tasks import get_task

SOURCE = "https://visualqa.org/download.html"
ZIPS = {
    ("questions", "train2014"): "Questions_Train_mscoco.zip",
    ("questions", "val2014"): "Questions_Val_mscoco.zip",
    ("annotations", "train2014"): "Annotations_Train_mscoco.zip",
    ("annotations", "val2014"): "Annotations_Val_mscoco.zip",
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("vqav2") / "data", image_size=16)


@pytest.fixture
def root(tmp_path, pristine) -> Path:
    """A fresh copy of the small VQA v2-shaped set (12 train2014 and 6 val2014 images, 3 questions each)."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def load_root(root: Path, cache: Path | None = None, **fields: Any):
    return load(VQAv2Config(root=str(root), **fields), "vqa", cache or root.parent / "cache")


def path_of(root: Path, role: str, split: str = "train2014") -> Path:
    return root / (QUESTIONS if role == "questions" else ANNOTATIONS).format(split)


def content(root: Path, role: str, split: str = "train2014") -> dict[str, Any]:
    return json.loads(path_of(root, role, split).read_text())


def records(root: Path, role: str, split: str = "train2014") -> list[dict[str, Any]]:
    return content(root, role, split)[role]


def rewrite(root: Path, role: str, split: str, items: list[Any]) -> None:
    top = content(root, role, split)
    top[role] = items
    path_of(root, role, split).write_text(json.dumps(top))


def sorted_images(root: Path) -> list[int]:
    return sorted({q["image_id"] for q in records(root, "questions")})


def permuted(ids: list[int], seed: int = 0) -> list[int]:
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]


def ids(samples) -> list[str]:
    return [s.id for s in samples]


# --- loading ------------------------------------------------------------------------------------------


def test_standard_setup_holds_out_train2014_images_and_tests_on_val2014(root):
    data = load_root(root)
    assert (data.dataset, data.kind, data.root, data.vqa_mode) == ("vqav2", "vqa", root, "vqa")
    assert list(data.splits) == ["train", "val", "test"] and data.unlabelled == frozenset()
    get_task("vqa").check_data(data)
    questions = records(root, "questions")
    held = set(permuted(sorted_images(root))[:1])  # holdout=2000, capped at a tenth of 12 images: 1
    assert ids(data.splits["val"]) == [str(q["question_id"]) for q in questions if q["image_id"] in held]
    assert ids(data.splits["train"]) == [str(q["question_id"]) for q in questions if q["image_id"] not in held]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 33, "val": 3, "test": 18}
    assert ids(data.splits["test"]) == [str(q["question_id"]) for q in records(root, "questions", "val2014")]


def test_samples_keep_every_human_answer_and_field_as_written(root):
    data = load_root(root)
    questions, annotations = records(root, "questions", "val2014"), records(root, "annotations", "val2014")
    for sample, q, a in zip(data.splits["test"], questions, annotations, strict=True):
        assert sample.image == str(root / "val2014" / f"COCO_val2014_{q['image_id']:012d}.jpg")
        assert Path(sample.image).is_file() and sample.question == q["question"]
        assert sample.answers == tuple(x["answer"] for x in a["answers"]) and len(sample.answers) == 10
        assert sample.answer_confidences == tuple(x["answer_confidence"] for x in a["answers"])
        assert (sample.question_type, sample.answer_type) == (a["question_type"], a["answer_type"])
        assert sample.answerable is True
    answers = {x for s in data.splits["test"] for x in s.answers}
    assert "two" in answers or "a circle" in answers or "a square" in answers  # not normalised on the samples


def test_subfolder_layout_gives_the_same_data_and_revision(tmp_path, pristine):
    flat = load_root(Path(shutil.copytree(pristine, tmp_path / "flat")))
    nested = write_fixture(tmp_path / "nested", image_size=16, subfolders=True)
    assert (nested / "Questions" / QUESTIONS.format("train2014")).is_file()
    assert (nested / "Annotations" / ANNOTATIONS.format("val2014")).is_file()
    data = load_root(nested)
    assert data.revision == flat.revision and data.answer_vocab == flat.answer_vocab
    assert [(s.id, s.answers) for s in data.splits["train"]] == [(s.id, s.answers) for s in flat.splits["train"]]


def test_one_file_in_both_places_is_refused(root):
    (root / "Annotations").mkdir()
    shutil.copy(path_of(root, "annotations"), root / "Annotations")
    with pytest.raises(DatasetError, match=r"both .*data/v2_mscoco_train2014_annotations.json and .*Annotations/"):
        load_root(root)


def test_report001_samples_a_quarter_of_the_images_and_divides_it_as_the_report(root):
    data = load_root(root, setup="report001")
    sample = set(permuted(sorted_images(root))[:3])  # round(0.25 * 12)
    qids = sorted(q["question_id"] for q in records(root, "questions") if q["image_id"] in sample)
    # 9 questions: train the first round(9 * 100/110) = 8, val the last round(9 * 9/110) -> at least 1
    assert ids(data.splits["train"]) == [str(q) for q in qids[:8]] and ids(data.splits["val"]) == [str(qids[-1])]
    assert len(data.splits["test"]) == 18


def test_report001_leaves_a_gap_between_train_and_val_as_the_report(tmp_path):
    root = write_fixture(tmp_path / "big", train_images=40, val_images=2, questions_per_image=5, image_size=8)
    data = load_root(root, setup="report001", vocab="all")
    sample = set(permuted(sorted_images(root))[:10])
    qids = [str(q) for q in sorted(q["question_id"] for q in records(root, "questions") if q["image_id"] in sample)]
    assert len(qids) == 50  # train round(50 * 100/110) = 45, val round(50 * 9/110) = 4, one question unused
    assert ids(data.splits["train"]) == qids[:45] and ids(data.splits["val"]) == qids[46:]
    # The vocabulary counts the whole sample, the unused question too, as the report's 9,214 answers did.
    pool = set(qids)
    assert data.answer_vocab == by_count(mc_counts(root, normalised=False, splits=("train2014",), keep=pool))


def test_holdout_is_capped_at_a_tenth_of_the_images(tmp_path):
    root = write_fixture(tmp_path / "big", train_images=40, val_images=2, questions_per_image=1, image_size=8)
    order = permuted(sorted_images(root))
    image_of = {str(q["question_id"]): q["image_id"] for q in records(root, "questions")}
    for fields, held in (({}, 4), ({"holdout": 2}, 2), ({"holdout": 9}, 4)):
        data = load_root(root, **fields)
        assert {image_of[i] for i in ids(data.splits["val"])} == set(order[:held])
        assert len(data.splits["train"]) == 40 - held


def test_limit_train_keeps_the_first_images_of_the_seeded_pool(root):
    data = load_root(root, limit_train=5)
    order = permuted(sorted_images(root))
    image_of = {str(q["question_id"]): q["image_id"] for q in records(root, "questions")}
    assert {image_of[i] for i in ids(data.splits["val"])} == {order[0]}
    assert {image_of[i] for i in ids(data.splits["train"])} == set(order[1:5])
    assert len(data.splits["test"]) == 18  # not limited
    report = load_root(root, setup="report001", limit_train=2)  # 2 of the 3 sampled images
    assert {image_of[i] for s in ("train", "val") for i in ids(report.splits[s])} <= set(order[:2])


def test_draw_does_not_depend_on_record_order(root):
    before = {f: {k: ids(v) for k, v in load_root(root, setup=f).splits.items()} for f in vqav2.SETUPS}
    for role in ("questions", "annotations"):
        rewrite(root, role, "train2014", records(root, role)[::-1])
    after = {f: {k: ids(v) for k, v in load_root(root, setup=f).splits.items()} for f in vqav2.SETUPS}
    assert after["report001"] == before["report001"]  # ordered by question_id
    assert {k: set(v) for k, v in after["standard"].items()} == {k: set(v) for k, v in before["standard"].items()}


def test_another_seed_draws_other_images(root):
    first, second = load_root(root, setup="report001"), load_root(root, setup="report001", seed=1)
    assert set(ids(first.splits["train"])) != set(ids(second.splits["train"]))


# --- vocabularies -------------------------------------------------------------------------------------


def mc_counts(root: Path, normalised: bool, splits=("train2014", "val2014"), keep=None) -> Counter[str]:
    counts: Counter[str] = Counter()
    for split in splits:
        for a in records(root, "annotations", split):
            if keep is None or str(a["question_id"]) in keep:
                answer = a["multiple_choice_answer"]
                counts[normalize_answer(answer) if normalised else answer] += 1
    return counts


def by_count(counts: Counter[str], least: int = 1) -> list[str]:
    return sorted((a for a, n in counts.items() if n >= least), key=lambda a: (-counts[a], a))


@pytest.mark.parametrize("min_count", [9, 3, 1])
def test_top_rule_counts_normalised_multiple_choice_answers_of_train_and_val(root, min_count):
    data = load_root(root, min_count=min_count)
    expected = by_count(mc_counts(root, normalised=True), min_count)
    assert data.answer_vocab == expected and expected
    assert "count >= " + str(min_count) in data.vocab_rule and "train2014+val2014" in data.vocab_rule
    assert load_root(root, min_count=min_count, top_k=2).answer_vocab == expected[:2]


def test_top_rule_merges_answers_the_official_evaluation_normalises(root):
    items = records(root, "annotations")
    for i, item in enumerate(items[:9]):  # "two" five times and "2" four times: neither raw form reaches 9
        item["multiple_choice_answer"] = "two" if i < 5 else "2"
    items[9]["multiple_choice_answer"] = "A Dog."
    items[10]["multiple_choice_answer"] = "dog"
    rewrite(root, "annotations", "train2014", items)
    vocab = load_root(root).answer_vocab
    assert "2" in vocab and "two" not in vocab
    assert "dog" in load_root(root, min_count=2).answer_vocab


def test_all_rule_is_every_raw_multiple_choice_answer_of_the_pool(root):
    standard = load_root(root, vocab="all")
    assert standard.answer_vocab == by_count(mc_counts(root, normalised=False, splits=("train2014",)))
    report = load_root(root, setup="report001", vocab="all")
    drawn = {s.id for split in ("train", "val") for s in report.splits[split]}
    sample = set(permuted(sorted_images(root))[:3])
    pool = {str(q["question_id"]) for q in records(root, "questions") if q["image_id"] in sample}
    assert drawn <= pool
    assert report.answer_vocab == by_count(mc_counts(root, normalised=False, splits=("train2014",), keep=pool))
    assert report.vocab_rule.startswith("every multiple_choice_answer")


def test_all_rule_keeps_raw_spellings_apart(root):
    items = records(root, "annotations")
    items[0]["multiple_choice_answer"], items[1]["multiple_choice_answer"] = "two", "2"
    rewrite(root, "annotations", "train2014", items)
    assert {"two", "2"} <= set(load_root(root, vocab="all").answer_vocab)


def test_a_rule_that_keeps_nothing_is_refused(root):
    with pytest.raises(DatasetError, match=r"vocab=top keeps no answer: .* occurs 1000 times.*--data min_count=1"):
        load_root(root, min_count=1000)


# --- revision and index -------------------------------------------------------------------------------


def test_revision_follows_the_files_and_the_fields_that_matter(root, tmp_path):
    rev = load_root(root).revision
    assert load_root(root).revision == rev
    assert load_root(Path(shutil.copytree(root, tmp_path / "elsewhere")), cache=tmp_path / "c").revision == rev
    changed = [{"seed": 1}, {"holdout": 1}, {"min_count": 3}, {"top_k": 1}, {"vocab": "all"}, {"limit_train": 6}]
    changed += [{"setup": "report001"}]
    revs = {load_root(root, **f).revision for f in changed}
    assert len(revs) == len(changed) and rev not in revs
    assert load_root(root, sample_fraction=0.5).revision == rev  # standard ignores it
    report = load_root(root, setup="report001", vocab="all").revision
    assert load_root(root, setup="report001", vocab="all", min_count=2, holdout=5).revision == report
    assert load_root(root, setup="report001", vocab="all", sample_fraction=0.5).revision != report
    path = path_of(root, "questions", "val2014")
    path.write_text(path.read_text().replace("How many", "How  many", 1))
    assert load_root(root).revision != rev


def test_index_is_cached_once_for_every_config_and_reused(root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_root(root, cache=cache)
    (digest,) = [p.name for p in (cache / "vqav2").iterdir()]
    assert (cache / "vqav2" / digest / "index.npz").is_file()

    def no_parse(*args):
        raise AssertionError("parsed again although the index is cached")

    monkeypatch.setattr(vqav2, "build_index", no_parse)
    again = load_root(root, cache=cache)
    assert [(s.id, s.answers, s.answer_confidences) for s in again.splits["train"]] == [
        (s.id, s.answers, s.answer_confidences) for s in first.splits["train"]
    ]
    assert again.answer_vocab == first.answer_vocab and again.revision == first.revision
    load_root(root, cache=cache, setup="report001", vocab="all")  # another config, the same index
    assert [p.name for p in (cache / "vqav2").iterdir()] == [digest]
    monkeypatch.undo()
    (cache / "vqav2" / digest / "index.npz").write_bytes(b"PK\x03\x04 damaged")  # built again, not trusted
    assert ids(load_root(root, cache=cache).splits["train"]) == ids(first.splits["train"])
    index = vqav2.read_index(cache / "vqav2" / digest / "index.npz")
    assert index is not None
    index.splits["val2014"]["answers"][0] = len(index.answers)  # whole as a file, but a code points nowhere
    vqav2.write_index(index, cache / "vqav2" / digest)
    assert vqav2.read_index(cache / "vqav2" / digest / "index.npz") is None
    assert load_root(root, cache=cache).splits["test"][0].answers == first.splits["test"][0].answers


def test_cached_index_still_checks_that_images_exist(root, tmp_path):
    load_root(root, cache=tmp_path / "cache")
    question = records(root, "questions", "val2014")[4]
    (root / "val2014" / f"COCO_val2014_{question['image_id']:012d}.jpg").unlink()
    with pytest.raises(DatasetError, match=r"val2014_questions.json question 3 \(question_id \d+\) field image_id"):
        load_root(root, cache=tmp_path / "cache")


# --- prepare ------------------------------------------------------------------------------------------


def test_prepare_checks_everything_and_writes_the_index_where_runs_look(root, tmp_path, monkeypatch):
    monkeypatch.setenv("VQABENCH_CACHE", str(tmp_path / "cache"))
    written = prepare(VQAv2Config(setup="report001"), root)
    files = vqav2.locate(root)
    assert written == tmp_path / "cache" / "vqav2" / vqav2.files_digest(files) and (written / "index.npz").is_file()
    monkeypatch.setattr(vqav2, "build_index", lambda *a: pytest.fail("the prepared index was not used"))
    assert load_root(root, cache=tmp_path / "cache").splits["train"]


def test_missing_files_are_listed_in_one_message_with_their_zips(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as err:
        prepare(VQAv2Config(), tmp_path / "empty")
    message = str(err.value)
    assert "\n" not in message and SOURCE in message
    for (role, split), zipname in ZIPS.items():
        name = (QUESTIONS if role == "questions" else ANNOTATIONS).format(split)
        assert f"{name} (from {zipname})" in message
    assert "train2014/ (from train2014.zip), val2014/ (from val2014.zip);" in message


def test_only_the_missing_files_are_listed(root):
    path_of(root, "annotations", "val2014").unlink()
    shutil.rmtree(root / "train2014")
    with pytest.raises(DatasetError) as err:
        load_root(root)
    assert (
        f"lacks v2_mscoco_val2014_annotations.json (from Annotations_Val_mscoco.zip), train2014/ (from train2014.zip); "
        f"download them from {SOURCE} and unzip them in {root}"
    ) in str(err.value)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=r"vqav2 needs root=DIR.*`--data root=DIR`"):
        load(VQAv2Config(), "vqa", tmp_path)
    with pytest.raises(DatasetError, match=r"root .*nowhere does not exist;.*`--root DIR`"):
        prepare(VQAv2Config(), tmp_path / "nowhere")


def test_only_the_vqa_kind(root):
    with pytest.raises(DatasetError, match="vqav2 gives task kind vqa, not 'answerability'"):
        load(VQAv2Config(root=str(root)), "answerability", root.parent / "cache")


# --- tolerance ----------------------------------------------------------------------------------------


def test_extra_fields_fewer_answers_and_extra_annotations_are_accepted(root):
    assert "vqabench_fixture_note" in path_of(root, "questions").read_text()
    assert "vqabench_fixture_note" in path_of(root, "annotations").read_text()
    items = records(root, "annotations")
    items[0]["answers"] = items[0]["answers"][:3]  # any non-empty list
    items[1]["answers"][0]["extra"] = {"nested": [1, 2]}
    del items[1]["answers"][1]["answer_id"]  # not used
    items.append({**items[2], "question_id": 999_999_999})  # an annotation of no question: ignored
    rewrite(root, "annotations", "train2014", items)
    top = content(root, "questions")
    del top["data_subtype"]
    path_of(root, "questions").write_text(json.dumps(top))
    samples = {s.id: s for split in ("train", "val") for s in load_root(root).splits[split]}
    assert len(samples[str(items[0]["question_id"])].answers) == 3 and "999999999" not in samples


def test_hard_links_and_links_inside_the_root_are_regular_images(root):
    question = records(root, "questions", "val2014")[0]
    name = f"COCO_val2014_{question['image_id']:012d}.jpg"
    (root / "store").mkdir()
    (root / "val2014" / name).rename(root / "store" / name)
    os.link(root / "store" / name, root / "val2014" / name)
    assert load_root(root).splits["test"][0].image == str(root / "val2014" / name)
    (root / "val2014" / name).unlink()
    (root / "val2014" / name).symlink_to(root / "store" / name)
    load_root(root)
    (root / "val2014").rename(root / "store" / "val2014")
    (root / "val2014").symlink_to(root / "store" / "val2014")  # a folder link that stays inside
    load_root(root)


# --- malformed files and records ----------------------------------------------------------------------

DROP = object()  # a field value that removes the field


def _set(role: str, split: str, i: int, path: tuple[Any, ...], value: Any):
    """A damage: set (or, with value DROP, delete) the field at ``path`` of record ``i``."""

    def damage(root: Path) -> None:
        items = records(root, role, split)
        target = items
        for key in (i, *path[:-1]):
            target = target[key]
        if value is DROP:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        rewrite(root, role, split, items)

    return damage


def _top(role: str, split: str, change):
    def damage(root: Path) -> None:
        top = content(root, role, split)
        change(top)
        path_of(root, role, split).write_text(json.dumps(top))

    return damage


def _text(role: str, split: str, text: str):
    return lambda root: path_of(root, role, split).write_text(text)


def _replace_record(role: str, i: int, value: Any):
    def damage(root: Path) -> None:
        items = records(root, role)
        items[i] = value
        rewrite(root, role, "train2014", items)

    return damage


def _repeat(role: str):
    def damage(root: Path) -> None:
        items = records(root, role)
        items[5]["question_id"] = items[3]["question_id"]
        rewrite(root, role, "train2014", items)

    return damage


Q, A, T, V = "questions", "annotations", "train2014", "val2014"
# (damage, role and split of the file named, expected parts); {qid3} is question 3's question_id.
MALFORMED = [
    pytest.param(_text(Q, T, '{"questions": ['), (Q, T), ["is not valid UTF-8 JSON"], id="q-bad-json"),
    pytest.param(_text(A, V, "[]"), (A, V), ["holds a JSON list, not an object with 'annotations'"], id="a-list"),
    pytest.param(_top(Q, T, lambda t: t.pop("questions")), (Q, T), ["field questions: is missing"], id="q-none"),
    pytest.param(
        _top(A, T, lambda t: t.update(annotations={})),
        (A, T),
        ["field annotations: is a dict, not a list"],
        id="a-dict",
    ),
    pytest.param(_top(Q, V, lambda t: t.update(questions=[])), (Q, V), ["field questions: holds no records"], id="q0"),
    pytest.param(
        _top(Q, T, lambda t: t.update(data_subtype="val2014")),
        (Q, T),
        ["field data_subtype: is 'val2014', not 'train2014': the file holds another split"],
        id="subtype",
    ),
    pytest.param(_replace_record(Q, 3, "q"), (Q, T), ["question 3: is a str, not an object"], id="q-not-object"),
    pytest.param(_set(Q, T, 3, ("question_id",), DROP), (Q, T), ["question 3 field question_id: is missing"], id="qid"),
    pytest.param(
        _set(Q, T, 3, ("question_id",), "7"),
        (Q, T),
        ["question 3 field question_id: is '7', not a non-negative"],
        id="qid-str",
    ),
    pytest.param(_set(Q, T, 3, ("question_id",), True), (Q, T), ["field question_id: is True, not"], id="qid-bool"),
    pytest.param(_set(Q, T, 3, ("question_id",), -4), (Q, T), ["field question_id: is -4, not"], id="qid-negative"),
    pytest.param(
        _set(Q, T, 3, ("image_id",), DROP),
        (Q, T),
        ["question 3 (question_id {qid3}) field image_id: is missing"],
        id="i",
    ),
    pytest.param(_set(Q, V, 1, ("image_id",), 1.5), (Q, V), ["field image_id: is 1.5, not a non-negative"], id="i-f"),
    pytest.param(
        _set(Q, T, 3, ("question",), 5), (Q, T), ["(question_id {qid3}) field question: is 5, not a string"], id="text"
    ),
    pytest.param(_set(Q, T, 3, ("question",), DROP), (Q, T), ["field question: is missing"], id="no-text"),
    pytest.param(_repeat(Q), (Q, T), ["5 (question_id {qid3}) field question_id: repeats question 3"], id="rq"),
    pytest.param(_replace_record(A, 2, None), (A, T), ["annotation 2: is a NoneType, not an object"], id="a-none"),
    pytest.param(
        _set(A, T, 2, ("question_id",), DROP), (A, T), ["annotation 2 field question_id: is missing"], id="a-qid"
    ),
    pytest.param(
        _repeat(A),
        (A, T),
        ["annotation 5 (question_id {qid3}) field question_id: annotates the question of annotation 3 again"],
        id="a-repeat",
    ),
    pytest.param(
        _set(A, T, 3, ("question_type",), DROP),
        (A, T),
        ["annotation 3 (question_id {qid3}) field question_type"],
        id="qt",
    ),
    pytest.param(
        _set(A, T, 3, ("multiple_choice_answer",), 2),
        (A, T),
        ["field multiple_choice_answer: is 2, not a string"],
        id="mc-int",
    ),
    pytest.param(
        _set(A, T, 3, ("answer_type",), "color"),
        (A, T),
        ["field answer_type: is 'color', not one of yes/no, number, other"],
        id="answer-type",
    ),
    pytest.param(_set(A, V, 0, ("answer_type",), DROP), (A, V), ["field answer_type: is missing"], id="no-at"),
    pytest.param(_set(A, T, 3, ("answers",), DROP), (A, T), ["field answers: is missing, not a non-empty"], id="no-as"),
    pytest.param(_set(A, T, 3, ("answers",), []), (A, T), ["field answers: is [], not a non-empty list"], id="empty"),
    pytest.param(_set(A, T, 3, ("answers",), "yes"), (A, T), ["field answers: is 'yes'"], id="answers-str"),
    pytest.param(
        _set(A, T, 3, ("answers", 2), "yes"), (A, T), ["field answers[2]: is a str, not an object"], id="item-str"
    ),
    pytest.param(
        _set(A, T, 3, ("answers", 2, "answer"), 2), (A, T), ["field answers[2].answer: is 2, not a string"], id="num"
    ),
    pytest.param(
        _set(A, T, 3, ("answers", 2, "answer"), DROP), (A, T), ["field answers[2].answer: is missing"], id="no-answer"
    ),
    pytest.param(
        _set(A, T, 3, ("answers", 4, "answer_confidence"), "sure"),
        (A, T),
        ["annotation 3 (question_id {qid3}) field answers[4].answer_confidence: is 'sure', not 'yes', 'maybe' or 'no'"],
        id="confidence",
    ),
    pytest.param(
        _set(A, V, 1, ("answers", 0, "answer_confidence"), DROP),
        (A, V),
        ["field answers[0].answer_confidence: is missing"],
        id="no-confidence",
    ),
    pytest.param(
        _set(A, T, 3, ("answers", 0, "answer_confidence"), ["yes"]),
        (A, T),
        ["field answers[0].answer_confidence: is ['yes']"],
        id="confidence-list",
    ),
]


@pytest.mark.parametrize(("damage", "named", "expected"), MALFORMED)
def test_malformed_file_or_record_is_refused_naming_file_record_and_field(root, damage, named, expected):
    qid3 = records(root, "questions")[3]["question_id"]
    damage(root)
    with pytest.raises(DatasetError) as err:
        load_root(root)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"vqav2: {path_of(root, *named)}")
    assert f"re-download {ZIPS[named]} from {SOURCE}" in message
    for part in expected:
        part = part.format(qid3=qid3)
        assert part in message, f"{part!r} not in {message!r}"


def test_question_without_annotation_names_both_files_and_the_question_id(root):
    items = records(root, "annotations")
    gone = items.pop(4)
    rewrite(root, "annotations", "train2014", items)
    with pytest.raises(DatasetError) as err:
        load_root(root)
    assert str(err.value) == (
        f"vqav2: {path_of(root, 'annotations')} has no annotation for question_id {gone['question_id']} "
        f"({path_of(root, 'questions')} question 4); the two files must be of one release: re-download "
        f"Annotations_Train_mscoco.zip and Questions_Train_mscoco.zip from {SOURCE}"
    )


def test_annotation_of_another_image_is_refused(root):
    items = records(root, "annotations", "val2014")
    image = items[2]["image_id"]
    items[2]["image_id"] = image + 1
    rewrite(root, "annotations", "val2014", items)
    with pytest.raises(DatasetError) as err:
        load_root(root)
    message = str(err.value)
    assert f"annotation 2 (question_id {items[2]['question_id']}) field image_id: {image + 1} differs" in message
    assert f"from image_id {image} of {path_of(root, 'questions', 'val2014')} question 2;" in message


def test_missing_image_file_is_refused_naming_the_question(root):
    questions = records(root, "questions")
    for i in (4, 10):  # the images of questions 3-5 and 9-11
        (root / "train2014" / f"COCO_train2014_{questions[i]['image_id']:012d}.jpg").unlink()
    with pytest.raises(DatasetError) as err:
        load_root(root)
    image = root / "train2014" / f"COCO_train2014_{questions[3]['image_id']:012d}.jpg"
    assert str(err.value) == (
        f"vqav2: {path_of(root, 'questions')} question 3 (question_id {questions[3]['question_id']}) field image_id: "
        f"{image} does not exist, nor do 1 other images its questions name; download train2014.zip "
        f"(linked from {SOURCE}) and unzip it in {root}"
    )


def _image(root: Path, i: int = 3) -> Path:
    """The image of val2014 question ``i`` (questions 3-5 share the image of question 3)."""
    return root / "val2014" / f"COCO_val2014_{records(root, 'questions', 'val2014')[i]['image_id']:012d}.jpg"


def test_image_link_out_of_the_root_is_refused(root, tmp_path):
    outside = tmp_path / "outside.jpg"
    _image(root).rename(outside)
    _image(root).symlink_to(outside)
    with pytest.raises(DatasetError, match=r"val2014_questions.json question 3 \(question_id \d+\) field image_id: "):
        load_root(root)
    with pytest.raises(DatasetError, match=r"link to .*outside the dataset root; .*; put the image file itself there"):
        load_root(root)


def test_image_folder_linked_out_of_the_root_is_refused(root, tmp_path):
    (root / "val2014").rename(tmp_path / "coco-val2014")
    (root / "val2014").symlink_to(tmp_path / "coco-val2014")
    with pytest.raises(DatasetError, match=r"field image_id: 'val2014/COCO_val2014_\d{12}.jpg' is, or goes through"):
        load_root(root)


def test_image_that_is_a_fifo_is_refused(root):
    _image(root, 0).unlink()
    os.mkfifo(_image(root, 0))
    with pytest.raises(DatasetError, match=r"question 0 .*is a FIFO \(named pipe\), not a regular file"):
        load_root(root)


def test_annotations_file_that_is_a_folder_is_refused(root):
    path_of(root, "annotations").unlink()
    path_of(root, "annotations").mkdir()
    with pytest.raises(DatasetError, match=r"v2_mscoco_train2014_annotations.json is not a regular file"):
        load_root(root)


def test_setup_that_leaves_nothing_to_train_on(root):
    with pytest.raises(DatasetError, match=r"1 train2014 image\(s\) leave none to train on once 1 are held out"):
        load_root(root, limit_train=1)
    one = write_fixture(root.parent / "one", train_images=4, val_images=1, questions_per_image=1, image_size=8)
    with pytest.raises(DatasetError, match=r"the report001 sample holds 1 question\(s\), too few for train and val"):
        load_root(one, setup="report001", limit_train=1)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"setup": "paper"}, "setup='paper' is not one of standard, report001"),
        ({"vocab": "confident"}, "vocab='confident' is not one of top, all"),
        ({"sample_fraction": "0"}, "sample_fraction=0.0 must lie in (0, 1]"),
        ({"sample_fraction": "1.5"}, "sample_fraction=1.5 must lie in (0, 1]"),
        ({"seed": "-1"}, "seed=-1 must be >= 0"),
        ({"min_count": "0"}, "min_count=0 must be >= 1"),
        ({"top_k": "-1"}, "top_k=-1 must be >= 0"),
        ({"holdout": "0"}, "holdout=0 must be >= 1"),
        ({"limit_train": "-5"}, "limit_train=-5 must be >= 0"),
    ],
)
def test_config_out_of_range(options, expected):
    with pytest.raises(ValueError, match="vqav2 config: ") as err:
        apply_overrides(VQAv2Config(), options, where="dataset vqav2 (--data)")
    assert expected in str(err.value)


# --- registration -------------------------------------------------------------------------------------


def test_registered_through_the_entry_point_with_prepare_and_profiles():
    (ep,) = [e for e in entry_points(group="vqabench") if e.name == "vqav2"]
    assert ep.value == "vqabench_plugins.vqav2"
    specs: list[DatasetSpec] = []
    vqav2.register_datasets(specs.append)
    (spec,) = specs
    assert spec.name == "vqav2" and tuple(spec.task_kinds) == ("vqa",)
    assert (spec.load, spec.prepare, spec.config_cls) == (load, prepare, VQAv2Config)
    paper = apply_overrides(VQAv2Config(), spec.profiles["paper"])
    assert (paper.setup, paper.vocab, paper.sample_fraction) == ("report001", "all", 0.25)
    assert apply_overrides(VQAv2Config(), spec.profiles["quick"]).setup == "standard"


# --- the fixture writer and the benchmark's copy ------------------------------------------------------


def test_fixture_is_the_official_layout_and_deterministic(tmp_path, pristine):
    again = write_fixture(tmp_path / "again", image_size=16)
    for split, images in (("train2014", 12), ("val2014", 6)):
        for role in ("questions", "annotations"):
            assert path_of(again, role, split).read_bytes() == path_of(pristine, role, split).read_bytes()
        questions, annotations = records(again, "questions", split), records(again, "annotations", split)
        assert len(questions) == 3 * images and content(again, "questions", split)["data_subtype"] == split
        names = sorted(p.name for p in (again / split).iterdir())
        assert names == sorted({f"COCO_{split}_{q['image_id']:012d}.jpg" for q in questions}) and len(names) == images
        for q, a in zip(questions, annotations, strict=True):
            assert {"image_id", "question", "question_id"} <= set(q) and q["question_id"] // 1000 == q["image_id"]
            assert (a["question_id"], a["image_id"]) == (q["question_id"], q["image_id"])
            assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            assert {x["answer_confidence"] for x in a["answers"]} <= {"yes", "maybe", "no"}
            counts = Counter(x["answer"] for x in a["answers"])
            assert counts[a["multiple_choice_answer"]] == max(counts.values())
    labelled = records(again, "annotations") + records(again, "annotations", "val2014")
    assert {a["answer_type"] for a in labelled} == {"yes/no", "number", "other"}
    assert {a["question_type"] for a in labelled} == {"what color is the", "how many", "is the", "what is the"}
    assert {"two", "2"} & {a["multiple_choice_answer"] for a in labelled}


def test_fixture_images_carry_the_answers(pristine):
    """The shape's colour answers colour questions; the white dots along the bottom answer "how many"."""
    for split in ("train2014", "val2014"):
        for q, a in zip(records(pristine, "questions", split), records(pristine, "annotations", split)):
            pixels = np.asarray(Image.open(pristine / split / f"COCO_{split}_{q['image_id']:012d}.jpg"), dtype=float)
            if a["question_type"] == "what color is the":
                centre = pixels[6:8, 5:7].reshape(-1, 3).mean(0)
                assert min(COLOURS, key=lambda c: np.abs(centre - COLOURS[c]).sum()) == a["multiple_choice_answer"]
            elif a["question_type"] == "how many":
                dots = sum(pixels[13:15, 4 * k + 1 : 4 * k + 3].mean() > 150 for k in range(4))
                assert str(dots) == normalize_answer(a["multiple_choice_answer"])


def test_fixture_command_line(tmp_path, capsys):
    argv = [str(tmp_path / "cli"), "--train-images", "10", "--val-images", "2", "--questions-per-image", "2"]
    assert main([*argv, "--image-size", "8", "--subfolders"]) == 0
    assert "--data root=" in capsys.readouterr().out
    data = load_root(tmp_path / "cli", min_count=1)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 18, "val": 2, "test": 4}
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad"), "--train-images", "0"])


def test_benchmark_copy_is_official_and_loads_at_any_scale(tmp_path):
    root = write_full_size(tmp_path / "full", scale=0.002)
    data = load_root(root, min_count=1)
    assert len(data.splits["train"]) + len(data.splits["val"]) == round(443_757 * 0.002)
    assert len(data.splits["test"]) == round(214_354 * 0.002)
    assert len({s.image for s in data.splits["test"]}) == round(40_504 * 0.002)
    assert all(len(s.answers) == 10 for s in data.splits["train"])
