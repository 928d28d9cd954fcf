"""What the generator promises about scenes, questions, captions and pixels."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from itertools import combinations

import numpy as np
import pytest
from mini_clevr_fixtures import tiny_config, tiny_options, tiny_root, tiny_tables  # noqa: F401 (fixtures)
from PIL import Image
from vqabench_plugins.mini_clevr import questions as q
from vqabench_plugins.mini_clevr import render, scene
from vqabench_plugins.mini_clevr.config import BACKGROUND, COLORS, SHAPES, UNANSWERABLE, MiniClevrConfig

NAMES = list(COLORS)
PALETTE = np.array([COLORS[n] for n in NAMES], dtype=np.float64)


def nearest_color(rgb) -> str:
    return NAMES[int(np.argmin(((PALETTE - np.asarray(rgb, dtype=np.float64)) ** 2).sum(axis=1)))]


@pytest.fixture(scope="module")
def many_scenes():
    """2,000 scenes with their questions, sampled in memory (no rendering): for statistics."""
    config = MiniClevrConfig(image_size=64)
    out = []
    for index in range(2000):
        rng = np.random.default_rng([11, 0, index])
        objects = scene.sample_scene(rng, config, accept=q.is_askable)
        out.append((objects, q.make_questions(objects, rng, index % 2 == 0, config.unanswerable_fraction)))
    return out


def test_programs_reproduce_every_answer(tiny_tables):
    _, scenes, questions = tiny_tables
    n = 0
    for split, rows in questions.items():
        for row in rows:
            assert q.execute(row["program"], scenes[split, row["image_index"]]) == row["answer"], row
            n += 1
    assert n > 100


def test_referents_are_unique_and_minimal(tiny_tables):
    _, scenes, questions = tiny_tables
    for split, rows in questions.items():
        for row in rows:
            objects = scenes[split, row["image_index"]]["objects"]
            program = row["program"]
            if program["op"] == "count":
                assert list(program["target"]) == ["color"]
                continue
            referents = (
                [program["target"]] if program["op"] == "query_color" else [program["subject"], program["object"]]
            )
            if program["op"] == "query_color":
                assert "color" not in program["target"], "the question would give its answer away"
            matches = [len(q.select(objects, attrs)) for attrs in referents]
            if not row["answerable"]:
                assert row["answer"] == UNANSWERABLE and 0 in matches and set(matches) <= {0, 1}
                continue
            assert matches == [1] * len(referents)
            for attrs in referents:
                for k in range(1, len(attrs)):
                    for sub in combinations(attrs, k):
                        assert len(q.select(objects, {a: attrs[a] for a in sub})) != 1, (attrs, sub)


def test_left_right_pairs_are_clearly_apart(tiny_tables):
    _, scenes, questions = tiny_tables
    for rows in questions.values():
        for row in rows:
            if row["question_type"] == "left_of" and row["answerable"]:
                objects = scenes[row["split"], row["image_index"]]["objects"]
                (a,), (b,) = q.select(objects, row["program"]["subject"]), q.select(objects, row["program"]["object"])
                assert abs(a["pixel_coords"][0] - b["pixel_coords"][0]) >= a["radius"] + b["radius"]


def test_geometry_clearance_canvas_and_radii(tiny_tables):
    meta, scenes, _ = tiny_tables
    size, scale = meta["image_size"], meta["image_size"] / 224
    assert meta["clearance"] == pytest.approx(2 * scale, abs=1e-3)
    for s in scenes.values():
        objects = s["objects"]
        assert 3 <= len(objects) <= 6
        for o in objects:
            x, y = o["pixel_coords"]
            r = o["radius"]
            assert r <= x <= size - 1 - r and r <= y <= size - 1 - r
            lo, hi = (14, 18) if o["size"] == "small" else (24, 30)
            assert lo - 0.01 <= r / scale <= hi + 0.01
            assert o["shape"] in SHAPES and o["color"] in COLORS
        for a, b in combinations(objects, 2):
            gap = math.dist(a["pixel_coords"], b["pixel_coords"]) - a["radius"] - b["radius"]
            assert gap >= 2 * scale - 1e-9


def test_radius_scales_at_full_size():
    config = MiniClevrConfig()
    for index in range(200):
        for o in scene.sample_scene(np.random.default_rng([0, 0, index]), config):
            assert (14 <= o["radius"] <= 18) if o["size"] == "small" else (24 <= o["radius"] <= 30)


def test_three_or_four_questions_per_image(tiny_tables):
    _, _, questions = tiny_tables
    per_image = {}
    for row in questions["train"] + questions["val"] + questions["test"]:
        per_image.setdefault(row["image_index"], []).append(row)
    assert len(per_image) == 40
    for rows in per_image.values():
        kinds = Counter(r["question_type"] for r in rows if r["answerable"])
        assert kinds["query_color"] == 1 and kinds["left_of"] == 1 and kinds["count"] in (1, 2)
        assert sum(not r["answerable"] for r in rows) <= 1


def test_answers_are_balanced(many_scenes, tiny_tables):
    answers = Counter(x["answer"] for _, qs in many_scenes for x in qs if x["answerable"])
    total = sum(answers.values())
    assert abs(answers["yes"] - answers["no"]) <= 0.02 * (answers["yes"] + answers["no"])
    top, count = answers.most_common(1)[0]
    assert count / total < 0.2, f"answering {top!r} always would score {count / total:.2f}"
    assert set(answers) >= set(COLORS) | {"yes", "no", "0", "1", "2", "3"}
    per_image = [len(qs) for _, qs in many_scenes]
    assert 3.7 < np.mean([sum(x["answerable"] for x in qs) for _, qs in many_scenes]) < 4.0
    unanswerable = sum(not x["answerable"] for _, qs in many_scenes for x in qs)
    assert 0.07 < unanswerable / total < 0.13 and max(per_image) <= 5
    # The tiny dataset too: no answer near a quarter.
    _, _, questions = tiny_tables
    tiny = Counter(r["answer"] for r in questions["train"] + questions["val"] + questions["test"] if r["answerable"])
    assert tiny.most_common(1)[0][1] / sum(tiny.values()) < 0.25


def test_question_text_names_the_referents(tiny_tables):
    _, _, questions = tiny_tables
    for row in questions["train"]:
        program = row["program"]
        for key in ("target", "subject", "object"):
            if key in program and program["op"] != "count":
                assert q.describe(program[key]) in row["question"]
        if program["op"] == "count":
            assert program["target"]["color"] in row["question"]


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_pixels_agree_with_the_scene(tiny_root, tiny_tables):
    _, scenes, _ = tiny_tables
    for (_split, _), s in scenes.items():
        pixels = _rgb(tiny_root / s["image_filename"])
        assert pixels.shape == (64, 64, 3)
        for o in s["objects"]:
            x, y = o["pixel_coords"]
            if s["domain"] == "source":
                assert tuple(pixels[y, x]) == COLORS[o["color"]]
            else:  # changed lighting: the colour must stay recognisable
                assert nearest_color(pixels[y, x]) == o["color"], (s["image_filename"], o)
        if s["domain"] == "source":
            assert tuple(pixels[0, 0]) == BACKGROUND


def _distinct_colors(pixels: np.ndarray) -> int:
    packed = pixels.astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    return len(np.unique(packed))


def test_target_domain_looks_different_but_keeps_colours():
    config = MiniClevrConfig(image_size=96)
    for index in range(300):
        objects = scene.sample_scene(np.random.default_rng([5, 0, index]), config)
        source = render.render_source(objects, 96).rgb()
        target = render.render_target(objects, 96, np.random.default_rng([5, 2, index])).rgb()
        assert np.abs(source.astype(int) - target.astype(int)).mean() > 10
        assert _distinct_colors(target) > _distinct_colors(source)  # the background is textured
        for o in objects:
            x, y = o["pixel_coords"]
            assert nearest_color(target[y, x]) == o["color"]


def test_png_encoder_round_trips():
    for size in (64, 65):
        config = MiniClevrConfig(image_size=size)
        objects = scene.sample_scene(np.random.default_rng(1), config)
        for picture in (
            render.render_source(objects, size),
            render.render_target(objects, size, np.random.default_rng(2)),
        ):
            decoded = Image.open(io.BytesIO(render.encode_png(picture, 1)))
            assert decoded.size == (size, size)
            assert np.array_equal(np.asarray(decoded.convert("RGB")), picture.rgb())


def test_captions(tiny_root, tiny_tables):
    _, scenes, _ = tiny_tables
    relations = 0
    for line in (tiny_root / "captions" / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        objects = scenes["train", row["image_index"]]["objects"]
        assert len(row["captions"]) == 5 and len(set(row["captions"])) == 5
        text = " ".join(row["captions"])
        assert all(o["color"] in text and o["shape"] in text for o in objects)
        relations += " left" in text or " right" in text
    assert relations == 32


def test_meta_and_answer_vocabulary(tiny_root, tiny_tables):
    meta, _, questions = tiny_tables
    assert meta["colors"] == {k: list(v) for k, v in COLORS.items()} and meta["shapes"] == list(SHAPES)
    assert meta["radius_scales"]["small"] == pytest.approx([14 * 64 / 224, 18 * 64 / 224], abs=1e-3)
    assert set(meta["splits"]) == {"train", "val", "test", "target_train", "target_val", "target_test"}
    assert meta["splits"]["train"]["images"] == 32 and meta["splits"]["target_train"]["images"] == 8
    vocab = json.loads((tiny_root / "answer2idx.json").read_text())
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert {r["answer"] for rows in questions.values() for r in rows if r["answerable"]} <= set(vocab)
    for split, rows in questions.items():
        assert meta["splits"][split]["questions"] == len(rows)
        assert all(r["split"] == split for r in rows)
