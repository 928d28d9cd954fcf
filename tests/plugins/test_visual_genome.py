"""The visual-genome dataset: report 004's relation questions from the official Visual Genome files, the
skipped ambiguous pairs and their counts, the seeded split by image, the vocabulary, the fixture writer,
and an error naming file, record and field for each malformed record."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from vqabench_plugins import visual_genome
from vqabench_plugins.vg_fixture import main, write_fixture
from vqabench_plugins.visual_genome import DatasetError, VisualGenomeConfig, load, prepare

from vqabench.config import apply_overrides
from vqabench.registry import DatasetSpec
from vqabench.tasks import get_task

SOURCE = "https://homes.cs.washington.edu/~ranjay/visualgenome/api.html"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("vg") / "data", images=12, image_size=16)


@pytest.fixture
def root(tmp_path, pristine) -> Path:
    """A fresh copy of the small Visual Genome-shaped set (12 images)."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def load_root(root: Path, **fields: Any):
    return load(VisualGenomeConfig(root=str(root), **fields), "vqa", root.parent / "cache")


def records(root: Path, name: str = "relationships.json") -> list[dict[str, Any]]:
    return json.loads((root / name).read_text())


def rewrite(root: Path, name: str, change) -> None:
    data = records(root, name)
    change(data)
    (root / name).write_text(json.dumps(data))


def _name(obj: dict[str, Any]) -> str:
    return " ".join((obj["name"] if "name" in obj else obj["names"][0]).lower().split())


def expected_questions(root: Path) -> tuple[dict[int, set[tuple[str, str, str]]], Counter]:
    """The questions per image and the skip counts, recomputed from the file by the documented rules."""
    out, skipped = {}, Counter()
    for record in records(root):
        rels = record["relationships"]
        ids: dict[str, set[int]] = {}
        for r in rels:
            for end in ("subject", "object"):
                ids.setdefault(_name(r[end]), set()).add(r[end]["object_id"])
        predicates: dict[tuple[str, str], set[str]] = {}
        for r in rels:
            predicates.setdefault((_name(r["subject"]), _name(r["object"])), set()).add(
                " ".join(r["predicate"].split())
            )
        kept = set()
        for r in rels:
            s, o, p = _name(r["subject"]), _name(r["object"]), " ".join(r["predicate"].lower().split())
            if len(ids[s]) > 1 or len(ids[o]) > 1:
                skipped["ambiguous_name"] += 1
            elif len({x.lower() for x in predicates[s, o]}) > 1:
                skipped["several_predicates"] += 1
            elif (s, o, p) in kept:
                skipped["duplicate"] += 1
            else:
                kept.add((s, o, p))
        out[record.get("image_id", record.get("id"))] = kept
    return out, skipped


# --- questions -----------------------------------------------------------------------------------


def test_questions_are_the_unambiguous_relationships_with_their_predicates(root):
    data = load_root(root)
    expected, skipped = expected_questions(root)
    got: dict[int, set[tuple[str, str, str]]] = {}
    for samples in data.splits.values():
        for s in samples:
            image_id = int(s.id.split("-")[0])
            subject, obj = s.question[len("What is the relationship between the ") : -1].split(" and the ")
            assert s.question == f"What is the relationship between the {subject} and the {obj}?"
            assert (s.question_type, s.answer_type, len(s.answers)) == ("relation", "other", 1)
            got.setdefault(image_id, set()).add((subject, obj, s.answers[0]))
    assert got == {k: v for k, v in expected.items() if v}
    stats = data.notes["relations"]
    assert stats["skipped"] == {
        "ambiguous_name": skipped["ambiguous_name"],
        "empty": 0,
        **{k: skipped[k] for k in ("several_predicates", "duplicate")},
    }
    assert min(stats["skipped"][k] for k in ("ambiguous_name", "several_predicates", "duplicate")) > 0
    assert stats["questions"] == {split: len(samples) for split, samples in data.splits.items()}
    assert stats["relationships"] == sum(len(r["relationships"]) for r in records(root))
    get_task("vqa").check_data(data)


def test_names_and_predicates_are_normalised(root):
    data = load_root(root)
    answers = {s.answers[0] for samples in data.splits.values() for s in samples}
    assert answers == {"above", "below", "on"}  # " Below " and "ON" in the files
    questions = [s.question for samples in data.splits.values() for s in samples]
    assert questions and not any("frame" in q for q in questions)  # the pair with two predicates


def test_both_id_and_name_forms_and_both_image_folders_are_read(root):
    rels, images = records(root), records(root, "image_data.json")
    assert {"id", "image_id"} <= {k for r in rels for k in r} and {"id", "image_id"} <= {k for r in images for k in r}
    objects = [r[end] for rec in rels for r in rec["relationships"] for end in ("subject", "object")]
    assert any("name" in o for o in objects) and any("names" in o for o in objects)
    data = load_root(root)
    folders = {Path(s.image).parent.name for samples in data.splits.values() for s in samples}
    assert folders == {"VG_100K", "VG_100K_2"}
    for samples in data.splits.values():
        for s in samples:
            image_id = s.id.split("-")[0]
            assert Path(s.image).name == f"{image_id}.jpg" and Path(s.image).is_file()
            assert Path(s.image).parent.parent == root


def test_an_empty_predicate_or_name_is_skipped_and_counted(root):
    def blank(rels):
        rels[0]["relationships"][0]["predicate"] = "  "

    rewrite(root, "relationships.json", blank)
    assert load_root(root).notes["relations"]["skipped"]["empty"] == 1


# --- splits and vocabulary -----------------------------------------------------------------------


def _images(data) -> dict[str, set[str]]:
    return {split: {s.id.split("-")[0] for s in samples} for split, samples in data.splits.items()}


def test_split_is_seeded_by_image(root):
    data = load_root(root)
    images = _images(data)
    assert [len(images[s]) for s in ("train", "val", "test")] == [10, 1, 1]  # 12 x (0.8, 0.1, 0.1)
    assert not (images["train"] & images["val"]) and not (images["train"] & images["test"])
    assert _images(load_root(root)) == images
    assert _images(load_root(root, seed=1)) != images
    # The draw does not depend on the order of the records.
    rewrite(root, "relationships.json", lambda rels: rels.reverse())
    assert _images(load_root(root)) == images


def test_max_images_keeps_the_first_of_the_seeded_order(root):
    full, few = _images(load_root(root)), _images(load_root(root, max_images=5, split_fractions=(0.6, 0.2, 0.2)))
    assert sum(len(v) for v in few.values()) == 5
    with pytest.raises(DatasetError, match="leave split val empty"):
        load_root(root, max_images=3)
    assert full != few


def test_vocabulary_is_the_top_k_training_predicates(root):
    data = load_root(root)
    counts = Counter(s.answers[0] for s in data.splits["train"])
    assert data.answer_vocab == sorted(counts, key=lambda a: (-counts[a], a))
    assert data.vocab_rule == "every training predicate (report 004)"
    top = load_root(root, top_k=2)
    assert top.answer_vocab == data.answer_vocab[:2] and top.vocab_rule == "top 2 training predicates by count"
    assert top.revision != data.revision


def test_revision_follows_the_files(root):
    before = load_root(root).revision
    rewrite(root, "image_data.json", lambda images: images[0].update(width=99))
    assert load_root(root).revision != before


# --- bad input -----------------------------------------------------------------------------------


def test_missing_files_are_listed_in_one_message_with_where_to_download(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as err:
        load_root(tmp_path / "empty")
    message = str(err.value)
    for part in ["relationships.json (from relationships.json.zip)", "image_data.json (from image_data.json.zip)"]:
        assert part in message
    for part in ["VG_100K/ (from images.zip)", "VG_100K_2/ (from images2.zip)", SOURCE]:
        assert part in message
    assert "\n" not in message


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="--data root=DIR"):
        load(VisualGenomeConfig(), "vqa", tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_root(tmp_path / "nowhere")


def test_only_the_vqa_kind(root):
    with pytest.raises(DatasetError, match="gives task kind vqa"):
        load(VisualGenomeConfig(root=str(root)), "answerability", root.parent / "cache")


def _set(path: list, value: Any):
    """A change that sets (or, with DROP, removes) the field at ``path`` in the first record."""

    def change(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        if value is DROP:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return change


DROP = object()
R = "relationships.json"
I = "image_data.json"  # noqa: E741
MALFORMED = [
    pytest.param(R, _set([0], 7), "record 0: is a int, not a JSON object", id="record-not-object"),
    pytest.param(R, _set([0, "image_id"], DROP), "record 0 field image_id | id: missing", id="no-id"),
    pytest.param(R, _set([0, "image_id"], "12"), "record 0 field image_id: '12' is not an integer", id="id-text"),
    pytest.param(R, _set([0, "relationships"], {}), "field relationships: {} is not a list", id="rels-not-list"),
    pytest.param(
        R, _set([0, "relationships", 1, "predicate"], None), "relationships[1].predicate: None is not", id="predicate"
    ),
    pytest.param(R, _set([0, "relationships", 2, "object"], DROP), "relationships[2].object: missing", id="no-object"),
    pytest.param(
        R,
        _set([0, "relationships", 0, "subject", "object_id"], DROP),
        "relationships[0].subject.object_id | id: missing",
        id="no-object-id",
    ),
    pytest.param(
        R, _set([0, "relationships", 0, "subject", "name"], DROP), "subject.name | names: missing", id="no-name"
    ),
    pytest.param(
        R,
        _set([0, "relationships", 0, "object", "names"], []),
        "object.names: [] is not a non-empty list",
        id="empty-names",
    ),
    pytest.param(
        R,
        _set([0, "relationships", 0, "object", "names"], [3]),
        "object.names[0]: 3 is not a string",
        id="name-not-text",
    ),
    pytest.param(I, _set([1, "url"], None), "record 1 (image_id", id="url-null"),
    pytest.param(I, _set([1, "url"], "https://x/other/1.jpg"), "does not end in VG_100K/<file>", id="url-folder"),
]


@pytest.mark.parametrize(("name", "damage", "expected"), MALFORMED)
def test_malformed_record_is_refused_naming_file_record_and_field(root, name, damage, expected):
    rewrite(root, name, damage)
    with pytest.raises(DatasetError) as err:
        load_root(root)
    message = str(err.value)
    assert f"visual-genome: {root / name} record " in message and expected in message and "\n" not in message


def test_file_that_is_not_json_or_not_a_list_is_refused(root):
    (root / R).write_text("[{")
    with pytest.raises(DatasetError, match="is not valid UTF-8 JSON"):
        load_root(root)
    (root / R).write_text("{}")
    with pytest.raises(DatasetError, match="holds a JSON dict, not the official list"):
        load_root(root)


def test_image_without_a_record_in_image_data_is_refused(root):
    rewrite(root, I, lambda images: images.pop(0))
    with pytest.raises(DatasetError, match="has no record of image_id .* which relationships.json names"):
        load_root(root)


def test_missing_image_file_names_the_record_and_the_zip(root):
    url = records(root, I)[1]["url"]
    folder, name = url.rsplit("/", 2)[-2:]
    (root / folder / name).unlink()
    with pytest.raises(DatasetError) as err:
        load_root(root)
    zipname = visual_genome.IMAGE_FOLDERS[folder]
    assert f"{root / I} record 1 (image_id" in str(err.value) and f"download {zipname}" in str(err.value)


def test_image_link_out_of_the_root_is_refused(root, tmp_path):
    folder, name = records(root, I)[1]["url"].rsplit("/", 2)[-2:]
    (root / folder / name).rename(tmp_path / "outside.jpg")
    (root / folder / name).symlink_to(tmp_path / "outside.jpg")
    with pytest.raises(DatasetError, match="record 1 .*outside the dataset root"):
        load_root(root)


def test_link_inside_the_root_is_a_regular_image(root):
    folder, name = records(root, I)[1]["url"].rsplit("/", 2)[-2:]
    os.replace(root / folder / name, root / "kept.jpg")
    (root / folder / name).symlink_to(root / "kept.jpg")
    assert load_root(root).splits["train"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"split_fractions": (0.8, 0.1, 0.2)}, "split_fractions"),
        ({"split_fractions": (1.0, 0.0, 0.0)}, "split_fractions"),
        ({"top_k": -1}, "top_k=-1"),
        ({"max_images": -1}, "max_images=-1"),
    ],
)
def test_config_out_of_range(options, expected):
    with pytest.raises(ValueError, match=expected):
        VisualGenomeConfig(**options)


# --- registration, prepare and the fixture -------------------------------------------------------


def test_registered_through_the_entry_point_with_prepare_and_profiles():
    (ep,) = [e for e in entry_points(group="vqabench") if e.name == "visual_genome"]
    found: list[DatasetSpec] = []
    ep.load().register_datasets(register=found.append)
    (spec,) = found
    assert (spec.name, spec.task_kinds, spec.prepare) == ("visual-genome", ("vqa",), prepare)
    assert "hflip" in spec.unsafe_augmentations
    for overrides in spec.profiles.values():
        apply_overrides(VisualGenomeConfig(), overrides)
    quick = apply_overrides(VisualGenomeConfig(), spec.profiles["quick"])
    assert quick.max_images and quick.top_k and spec.profiles["paper"] == {}


def test_prepare_checks_every_record_and_image(root):
    assert prepare(VisualGenomeConfig(), root) == root
    folder, name = records(root, I)[0]["url"].rsplit("/", 2)[-2:]
    (root / folder / name).unlink()
    with pytest.raises(DatasetError, match="does not exist"):
        prepare(VisualGenomeConfig(), root)


def test_fixture_is_deterministic_with_real_jpegs(tmp_path, pristine):
    again = write_fixture(tmp_path / "again", images=12, image_size=16)
    for name in ("relationships.json", "image_data.json"):
        assert (again / name).read_bytes() == (pristine / name).read_bytes()
    for record in records(pristine, I):
        folder, name = record["url"].rsplit("/", 2)[-2:]
        with Image.open(pristine / folder / name) as im:
            assert im.format == "JPEG" and im.size == (16, 16)
    with pytest.raises(ValueError, match="images=2"):
        write_fixture(tmp_path / "few", images=2)


def test_fixture_command_line(tmp_path, capsys):
    assert main([str(tmp_path / "cli"), "--images", "4"]) == 0
    assert "--data root=" in capsys.readouterr().out
    assert len(records(tmp_path / "cli")) == 4
