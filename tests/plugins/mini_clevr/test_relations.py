"""mini-clevr-relations: report 004's relation questions derived from the generated scenes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mini_clevr_fixtures import tiny_config, tiny_options, tiny_root  # noqa: F401 (fixtures)
from vqabench_plugins.mini_clevr import QUICK, load
from vqabench_plugins.mini_clevr.config import MiniClevrConfig
from vqabench_plugins.mini_clevr.manifest import DatasetError
from vqabench_plugins.mini_clevr.questions import select
from vqabench_plugins.mini_clevr.relations import (
    QUESTION,
    RELATIONS,
    _objects,
    load_relations,
    relation,
    scene_questions,
)
from vqabench_plugins.mini_clevr.taskdata import Reader

from vqabench.plugins import load_plugins
from vqabench.tasks import TaskKind, get_task


def obj(x: float, y: float, color: str = "red", shape: str = "circle", size: str = "small", radius: float = 2.0):
    return {"color": color, "shape": shape, "size": size, "pixel_coords": [x, y], "radius": radius}


@pytest.fixture(scope="module")
def data(tiny_root):  # noqa: F811 (fixture)
    return load_relations(MiniClevrConfig(root=str(tiny_root)), TaskKind.VQA, tiny_root.parent / "cache")


def test_relation_is_the_dominant_axis_in_image_coordinates():
    centre = obj(30, 30)
    assert relation(obj(10, 32), centre) == ("left of", "")
    assert relation(obj(50, 27), centre) == ("right of", "")
    assert relation(obj(31, 10), centre) == ("above", "")  # y grows downwards: a smaller y is higher
    assert relation(obj(28, 50), centre) == ("below", "")


def test_pairs_near_the_diagonal_or_too_close_are_not_asked():
    centre = obj(30, 30)
    assert relation(obj(45, 40), centre) == (None, "near_diagonal")  # 15 vs 10: less than twice
    assert relation(obj(50, 40), centre) == ("right of", "")  # 20 vs 10: exactly twice
    assert relation(obj(33, 30), centre) == (None, "too_close")  # 3 px apart, radii 2 + 2
    assert relation(obj(34, 30), centre) == ("right of", "")


def test_scene_questions_name_each_object_by_its_fewest_attributes_and_skip_ambiguous_ones():
    objects = [
        obj(10, 30, "red", "circle"),
        obj(50, 30, "red", "square"),  # only the shape tells the two apart
        obj(30, 5, "green", "triangle", "large"),
        obj(30, 55, "green", "triangle", "large"),  # the same attributes as the one above
    ]
    skipped: Counter = Counter()
    asked = scene_questions(objects, np.random.default_rng(0), skipped)
    # 6 pairs: the 5 with a twin triangle are ambiguous, the circle and square one is asked.
    assert skipped == Counter({"ambiguous_referent": 5})
    ((s, o, question, answer),) = asked
    names = {0: "the circle", 1: "the square"}
    assert question == QUESTION.format(subject=names[s], object=names[o])
    assert answer == ("left of" if s == 0 else "right of")


def test_directions_are_drawn_so_that_opposite_answers_balance():
    objects = [obj(10 + 20 * i, 30, color) for i, color in enumerate(["red", "blue", "green"])]
    answers = Counter()
    for seed in range(200):
        answers.update(a for *_, a in scene_questions(objects, np.random.default_rng(seed), Counter()))
    assert set(answers) == {"left of", "right of"} and abs(answers["left of"] - answers["right of"]) < 80


def test_every_answer_follows_from_the_scene(data, tiny_root):  # noqa: F811
    scenes = {}
    for split in ("train", "val", "test"):
        for line in (tiny_root / "scenes" / f"{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            scenes[f"{split}/{record['image_index']}"] = record
    assert list(data.splits) == ["train", "val", "test"]  # source domain only
    for samples in data.splits.values():
        assert samples and len({s.id for s in samples}) == len(samples)
        for s in samples:
            image, pair = s.id.rsplit("-", 2)[0], s.id.split("-")[-2:]
            scene = scenes[image]
            assert s.image == str(tiny_root / scene["image_filename"])
            subject, other = (scene["objects"][int(i)] for i in pair)
            assert s.answers == (relation(subject, other)[0],) and s.answers[0] in RELATIONS
            assert (s.question_type, s.answer_type) == ("relation", "other")
            assert s.question.startswith("What is the relationship between the ")
            # Each referent names exactly its own object.
            for attrs_of, target in ((subject, s.question.split(" and ")[0]), (other, s.question.split(" and ")[1])):
                words = target.split("between the ")[-1].rstrip("?").split()
                attrs = {k: w for w in words for k in ("shape", "color", "size") if w == attrs_of[k]}
                assert select(scene["objects"], attrs) == [attrs_of]


def test_counts_of_questions_and_skips_are_recorded(data):
    stats = data.notes["relations"]
    assert set(stats) == {"train", "val", "test"}
    for split, s in stats.items():
        assert s["questions"] == len(data.splits[split])
        assert set(s["skipped"]) == {"ambiguous_referent", "near_diagonal", "too_close"}
    assert data.answer_vocab == list(RELATIONS) and data.vocab_rule
    assert "hflip" in data.unsafe_augmentations
    get_task(TaskKind.VQA).check_data(data)


def test_same_images_splits_and_cache_as_mini_clevr(tmp_path):
    config = MiniClevrConfig(images=30, image_size=48, zeroshot_per_class=10, seed=5)
    plain = load(config, TaskKind.VQA, tmp_path)
    relations = load_relations(config, TaskKind.VQA, tmp_path)
    assert relations.root == plain.root  # one generated directory in the cache
    assert [p.name for p in tmp_path.iterdir()] == [plain.root.name]
    for split in ("train", "val", "test"):
        assert {s.image for s in relations.splits[split]} <= {s.image for s in plain.splits[split]}
    assert relations.revision != plain.revision
    again = load_relations(config, TaskKind.VQA, tmp_path)
    assert again.splits == relations.splits and again.revision == relations.revision


def test_only_the_vqa_kind(tiny_root):  # noqa: F811
    with pytest.raises(ValueError, match="gives task kind vqa"):
        load_relations(MiniClevrConfig(root=str(tiny_root)), TaskKind.ZEROSHOT, tiny_root.parent / "cache")


@pytest.mark.parametrize(
    ("objects", "field", "expected"),
    [
        ({"a": 1}, "objects", "not a list of objects"),
        ([3], "objects[0]", "not an object"),
        ([{k: v for k, v in obj(1, 2).items() if k != "radius"}], "objects[0].radius", "missing"),
        ([{**obj(1, 2), "pixel_coords": [1]}], "objects[0].pixel_coords", "is not a list [x, y]"),
        ([{**obj(1, 2), "color": None}], "objects[0].color", "None is not a string"),
    ],
)
def test_malformed_scene_objects_name_the_line_and_field(tmp_path, objects, field, expected):
    reader = Reader(tmp_path, {})
    with pytest.raises(DatasetError) as err:
        _objects(reader, "scenes/train.jsonl:3", {"objects": objects})
    message = str(err.value)
    assert f"scenes/train.jsonl:3 field {field}" in message and expected in message and "\n" not in message


def test_registered_beside_mini_clevr_with_its_config_and_profiles():
    registry, _ = load_plugins()
    spec, base = registry.dataset("mini-clevr-relations"), registry.dataset("mini-clevr")
    assert spec.task_kinds == (TaskKind.VQA,)
    assert spec.config_cls is base.config_cls and spec.profiles == base.profiles == {"quick": QUICK, "paper": {}}
    assert spec.prepare is base.prepare and spec.unsafe_augmentations == base.unsafe_augmentations
    assert Path(spec.load.__code__.co_filename).parent == Path(base.load.__code__.co_filename).parent
