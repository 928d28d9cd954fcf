import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqabench.data import Batches, ImageStore, limit_samples
from vqabench.tasks import TaskKind, get_task
from vqabench.tasks.base import CollateContext
from vqabench.tasks.captioning import CaptionBatch, CaptionSample
from vqabench.tasks.qa import QABatch, QASample
from vqabench.tasks.zeroshot import ImageBatch, ImageSample
from vqabench.vocab import AnswerTargets


def write_pngs(root, n, size=8):
    """``n`` solid-colour PNGs, image i filled with (10*i, 255-10*i, 7*i)."""
    paths = []
    for i in range(n):
        path = root / f"img{i}.png"
        Image.new("RGB", (size, size), (10 * i, 255 - 10 * i, 7 * i)).save(path)
        paths.append(str(path))
    return paths


def qa_samples(paths, per_image, answers=("yes", "no", "two", "blue")):
    """``per_image[i]`` questions on image i; answers cycle; question types cycle over a, b."""
    out = []
    for path, k in zip(paths, per_image):
        for _ in range(k):
            n = len(out)
            out.append(
                QASample(f"q{n}", path, f"question {n}?", (answers[n % len(answers)],), question_type="ab"[n % 2])
            )
    return out


@pytest.fixture
def store_and_paths(tmp_path):
    paths = write_pngs(tmp_path, 6)
    return ImageStore.build(paths, 8, None, "r0"), paths


def test_build_decodes_to_uint8(tmp_path):
    paths = write_pngs(tmp_path, 3)
    store = ImageStore.build(paths, 8, None, "r0")
    assert store.images.shape == (3, 3, 8, 8)
    assert store.images.dtype == torch.uint8
    assert store.images[2, :, 0, 0].tolist() == [20, 235, 14]
    assert store.paths == paths
    assert store.row == {p: i for i, p in enumerate(paths)}


def test_build_resizes(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (20, 10), (200, 100, 50)).save(path)
    store = ImageStore.build([str(path)], 6, None, "r0")
    assert store.images.shape == (1, 3, 6, 6)
    assert store.images[0, :, 3, 3].tolist() == [200, 100, 50]


def test_build_converts_grey_and_rgba(tmp_path):
    Image.new("L", (4, 4), 77).save(tmp_path / "g.png")
    Image.new("RGBA", (4, 4), (1, 2, 3, 128)).save(tmp_path / "a.png")
    store = ImageStore.build([str(tmp_path / "g.png"), str(tmp_path / "a.png")], 4, None, "r0")
    assert store.images[0, :, 0, 0].tolist() == [77, 77, 77]
    assert store.images[1, :, 0, 0].tolist() == [1, 2, 3]


def test_build_deduplicates_paths(tmp_path):
    paths = write_pngs(tmp_path, 2)
    store = ImageStore.build([paths[1], paths[0], paths[1]], 8, None, "r0")
    assert store.paths == [paths[1], paths[0]]
    assert store.images.shape[0] == 2


def test_build_caches_and_reuses(tmp_path):
    paths = write_pngs(tmp_path, 3)
    cache = tmp_path / "cache"
    first = ImageStore.build(paths, 8, cache, "r0")
    cached = list((cache / "images").glob("*.npy"))
    assert len(cached) == 1 and cached[0].name.endswith("-8px.npy")
    assert list((cache / "images").iterdir()) == cached  # no temporary file left
    for p in paths:
        Path(p).unlink()
    second = ImageStore.build(paths, 8, cache, "r0")
    assert torch.equal(second.images, first.images)


def test_cache_key_depends_on_revision_size_and_paths(tmp_path):
    paths = write_pngs(tmp_path, 3)
    cache = tmp_path / "cache"
    ImageStore.build(paths, 8, cache, "r0")
    ImageStore.build(paths, 8, cache, "r1")
    ImageStore.build(paths, 4, cache, "r0")
    ImageStore.build(paths[:2], 8, cache, "r0")
    assert len(list((cache / "images").glob("*.npy"))) == 4


def test_cache_is_not_used_for_another_revision(tmp_path):
    paths = write_pngs(tmp_path, 2)
    cache = tmp_path / "cache"
    ImageStore.build(paths, 8, cache, "r0")
    for p in paths:
        Path(p).unlink()
    with pytest.raises(ValueError, match="cannot read image"):
        ImageStore.build(paths, 8, cache, "r1")


def test_corrupt_image_names_the_file(tmp_path):
    paths = write_pngs(tmp_path, 2)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=rf"cannot read image {re.escape(str(bad))}.*vqabench data prepare"):
        ImageStore.build([*paths, str(bad)], 8, tmp_path / "cache", "r0")
    assert not (tmp_path / "cache" / "images").exists() or not list((tmp_path / "cache" / "images").iterdir())


def test_missing_image_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=rf"cannot read image {re.escape(str(tmp_path / 'nope.png'))}"):
        ImageStore.build([str(tmp_path / "nope.png")], 8, None, "r0")


def test_gather_returns_floats_in_order(store_and_paths):
    store, paths = store_and_paths
    x = store.gather([paths[3], paths[0], paths[3]])
    assert x.dtype == torch.float32 and x.shape == (3, 3, 8, 8)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([30, 225, 21]) / 255)
    assert torch.equal(x[0], x[2])
    assert torch.equal(x[1], store.images[0].float() / 255)


# -- limit_samples ----------------------------------------------------------------------------------


def typed(counts):
    """Samples with question types by count, e.g. {"a": 60, "b": 30, "c": 10}."""
    out = []
    for t, k in counts.items():
        out += [QASample(f"{t}{i}", f"/img/{t}{i}.png", "q?", ("x",), question_type=t) for i in range(k)]
    return out


def test_limit_none_or_large_returns_all():
    s = typed({"a": 5})
    assert limit_samples(s, None, 0) == s
    assert limit_samples(s, 5, 0) == s
    assert limit_samples(s, 50, 0) == s


@pytest.mark.parametrize("limit", [1, 7, 10, 33, 99])
def test_limit_exact_count_and_stratified(limit):
    s = typed({"a": 60, "b": 30, "c": 10})
    out = limit_samples(s, limit, 0)
    assert len(out) == limit
    assert len({x.id for x in out}) == limit
    counts = Counter(x.question_type for x in out)
    for t, n in {"a": 60, "b": 30, "c": 10}.items():
        assert abs(counts[t] - limit * n / 100) < 1, (t, counts)


def test_limit_keeps_the_original_order():
    s = typed({"a": 20, "b": 20})
    out = limit_samples(s, 10, 3)
    positions = [s.index(x) for x in out]
    assert positions == sorted(positions)


def test_limit_is_seeded():
    s = typed({"a": 50, "b": 50})
    assert limit_samples(s, 10, 0) == limit_samples(s, 10, 0)
    assert limit_samples(s, 10, 0) != limit_samples(s, 10, 1)


def test_limit_without_question_types():
    s = [ImageSample(f"i{k}", f"/img/{k}.png", k % 3) for k in range(20)]
    out = limit_samples(s, 6, 0)
    assert len(out) == 6 and set(out) <= set(s)


# -- Batches ----------------------------------------------------------------------------------------


def batches(kind, samples, store, batch_size, vocab=None, *, targets="hard", device=None, **kw):
    """``Batches`` of a kind over pixels from ``store`` (no feature caches), answer targets over ``vocab``."""
    ctx = CollateContext(store, None, None, AnswerTargets(vocab) if vocab else None, targets, device)
    return Batches(get_task(kind), samples, batch_size, ctx, **kw)


VOCAB = ["yes", "no", "two"]  # "blue" is out of the vocabulary


def vqa_batches(tmp_path, per_image=(3, 1, 4, 2, 2, 5), batch_size=6, **kw):
    paths = write_pngs(tmp_path, len(per_image))
    store = ImageStore.build(paths, 8, None, "r0")
    samples = qa_samples(paths, per_image)
    return batches(TaskKind.VQA, samples, store, batch_size, VOCAB, **kw), samples, store


def test_batches_built_on_a_device_equal_the_plain_ones(tmp_path):
    plain, _, store = vqa_batches(tmp_path)
    placed = batches(TaskKind.VQA, plain.samples, store, plain.batch_size, VOCAB, device=torch.device("cpu"))
    for a, b in zip(plain, placed, strict=True):
        assert a.ids == b.ids and a.questions == b.questions
        for name in ("images", "image_index", "labels", "answerable"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and torch.equal(x, y), name


def test_vqa_batch_images_one_row_per_distinct_image(tmp_path):
    batches, samples, store = vqa_batches(tmp_path)
    by_id = {s.id: s for s in samples}
    for b in batches:
        assert isinstance(b, QABatch)
        qs = [by_id[i] for i in b.ids]
        distinct = list(dict.fromkeys(q.image for q in qs))
        assert b.images.shape == (len(distinct), 3, 8, 8)
        assert b.image_index.dtype == torch.long and b.image_index.shape == (len(qs),)
        for q, row in zip(qs, b.image_index.tolist()):
            assert torch.equal(b.images[row], store.images[store.row[q.image]].float() / 255)
        assert b.questions == [q.question for q in qs]
        assert b.question_types == [q.question_type for q in qs]


def test_vqa_batch_sizes_and_coverage(tmp_path):
    batches, samples, _ = vqa_batches(tmp_path, shuffle=True, seed=3)
    for _epoch in range(3):
        expected = len(batches)
        got = [b.ids for b in batches]
        assert len(got) == expected
        assert all(len(ids) <= 6 for ids in got)
        flat = [i for ids in got for i in ids]
        assert sorted(flat) == sorted(s.id for s in samples)


def test_vqa_questions_of_one_image_stay_together(tmp_path):
    batches, samples, _ = vqa_batches(tmp_path, shuffle=True, seed=1)
    image_of = {s.id: s.image for s in samples}
    seen: dict[str, int] = {}
    for n, b in enumerate(batches):
        for i in b.ids:
            assert seen.setdefault(image_of[i], n) == n


def test_vqa_batch_never_exceeds_batch_size(tmp_path):
    batches, _, _ = vqa_batches(tmp_path, per_image=(5, 1), batch_size=2)
    assert max(len(b.ids) for b in batches) <= 2


def test_vqa_shuffle_differs_between_epochs_and_is_reproducible(tmp_path):
    per_image = tuple([1] * 12)
    a, samples, store = vqa_batches(tmp_path, per_image=per_image, shuffle=True, seed=7)
    b = batches(TaskKind.VQA, samples, store, 6, shuffle=True, seed=7)
    order_a = [[i for x in a for i in x.ids] for _ in range(3)]
    order_b = [[i for x in b for i in x.ids] for _ in range(3)]
    assert order_a == order_b
    assert order_a[0] != order_a[1] != order_a[2]


def test_vqa_other_seed_shuffles_differently(tmp_path):
    per_image = tuple([1] * 12)
    a, _, _ = vqa_batches(tmp_path, per_image=per_image, shuffle=True, seed=7)
    b, _, _ = vqa_batches(tmp_path, per_image=per_image, shuffle=True, seed=8)
    assert [i for x in a for i in x.ids] != [i for x in b for i in x.ids]


def test_vqa_adjacent_seeds_do_not_share_epoch_orders(tmp_path):
    per_image = tuple([1] * 12)
    a, _, _ = vqa_batches(tmp_path, per_image=per_image, shuffle=True, seed=0)
    b, _, _ = vqa_batches(tmp_path, per_image=per_image, shuffle=True, seed=1)
    list(a)  # seed 0, epoch 0
    assert [i for x in a for i in x.ids] != [i for x in b for i in x.ids]


def test_vqa_no_shuffle_keeps_sample_order(tmp_path):
    batches, samples, _ = vqa_batches(tmp_path)
    for _ in range(2):
        assert [i for b in batches for i in b.ids] == [s.id for s in samples]
    assert [len(b.ids) for b in batches] == [4, 6, 2, 5]  # images of 3+1 | 4+2 | 2 | 5 questions


def test_vqa_labels_and_answerable(tmp_path):
    batches, samples, _ = vqa_batches(tmp_path)
    expected = {"yes": 0, "no": 1, "two": 2, "blue": -1}
    by_id = {s.id: s for s in samples}
    labels = {}
    for b in batches:
        assert b.labels.dtype == torch.long
        assert b.answerable.tolist() == [1.0] * len(b.ids)
        labels.update(zip(b.ids, b.labels.tolist()))
    assert labels == {i: expected[s.answers[0]] for i, s in by_id.items()}
    assert -1 in labels.values()


def test_vqa_without_vocabulary_labels_are_minus_one(tmp_path):
    paths = write_pngs(tmp_path, 2)
    store = ImageStore.build(paths, 8, None, "r0")
    batch = next(iter(batches(TaskKind.VQA, qa_samples(paths, (2, 1)), store, 8)))
    assert batch.labels.tolist() == [-1, -1, -1]


def test_answerability_batches(tmp_path):
    paths = write_pngs(tmp_path, 2)
    store = ImageStore.build(paths, 8, None, "r0")
    samples = [
        QASample("a", paths[0], "q?", ("yes",), answerable=True),
        QASample("b", paths[1], "q?", ("unanswerable",), answerable=False),
        QASample("c", paths[0], "q?", ("no",), answerable=True),
    ]
    batch = next(iter(batches(TaskKind.ANSWERABILITY, samples, store, 8, ["yes", "no"])))
    assert batch.ids == ["a", "c", "b"]
    assert batch.answerable.tolist() == [1.0, 1.0, 0.0]
    assert batch.labels.tolist() == [0, 1, -1]
    assert batch.image_index.tolist() == [0, 0, 1]


def test_zeroshot_batches(tmp_path):
    paths = write_pngs(tmp_path, 5)
    store = ImageStore.build(paths, 8, None, "r0")
    samples = [ImageSample(f"i{k}", paths[k], k % 2) for k in range(5)]
    got = list(batches(TaskKind.ZEROSHOT, samples, store, 2))
    assert all(isinstance(b, ImageBatch) for b in got)
    assert [b.ids for b in got] == [["i0", "i1"], ["i2", "i3"], ["i4"]]
    assert got[1].labels.tolist() == [0, 1]
    assert torch.equal(got[1].images, store.gather([paths[2], paths[3]]))


def test_zeroshot_shuffle_is_seeded(tmp_path):
    paths = write_pngs(tmp_path, 8)
    store = ImageStore.build(paths, 8, None, "r0")
    samples = [ImageSample(f"i{k}", paths[k], 0) for k in range(8)]
    a = batches(TaskKind.ZEROSHOT, samples, store, 3, shuffle=True, seed=2)
    b = batches(TaskKind.ZEROSHOT, samples, store, 3, shuffle=True, seed=2)
    ea = [[i for x in a for i in x.ids] for _ in range(2)]
    eb = [[i for x in b for i in x.ids] for _ in range(2)]
    assert ea == eb
    assert ea[0] != ea[1]
    assert sorted(ea[0]) == sorted(s.id for s in samples)


def test_captioning_batches(tmp_path):
    paths = write_pngs(tmp_path, 3)
    store = ImageStore.build(paths, 8, None, "r0")
    samples = [
        CaptionSample(f"c{k}", paths[k], (f"cap {k}", "other"), domain="target" if k else "source") for k in range(3)
    ]
    got = list(batches(TaskKind.CAPTIONING, samples, store, 2))
    assert all(isinstance(b, CaptionBatch) for b in got)
    assert [b.ids for b in got] == [["c0", "c1"], ["c2"]]
    assert got[0].captions == [["cap 0", "other"], ["cap 1", "other"]]
    assert got[0].domains == ["source", "target"]
    assert torch.equal(got[1].images, store.gather([paths[2]]))


@pytest.mark.parametrize(
    ("kind", "sample"),
    [
        ("vqa", QASample("a", "/x.png", "q?", ("yes",))),
        ("answerability", QASample("a", "/x.png", "q?", ("yes",))),
        ("zeroshot", ImageSample("a", "/x.png", 0)),
        ("captioning", CaptionSample("a", "/x.png", ("a cap",))),
    ],
)
def test_image_of_every_kind(kind, sample):
    assert get_task(kind).image_of(sample) == "/x.png"


def test_limit_samples_uses_numpy_rng_not_global_state():
    s = typed({"a": 30})
    np.random.seed(0)
    first = limit_samples(s, 5, 4)
    np.random.seed(99)
    assert limit_samples(s, 5, 4) == first


def test_len_before_iterating_is_the_epoch_batch_count(tmp_path):
    # engine.train_epoch takes len() before iterating to know the last accumulation step.
    batches, _, _ = vqa_batches(tmp_path, shuffle=True, seed=0)
    for _epoch in range(3):
        expected = len(batches)
        assert sum(1 for _ in batches) == expected


def test_shuffle_depends_on_seed_and_epoch_alone(tmp_path):
    # The engine sets ``epoch`` before each epoch, so a resumed run sees the same orders.
    per_image = tuple([1] * 12)
    a, samples, store = vqa_batches(tmp_path, per_image=per_image, shuffle=True, seed=5)
    orders = [[i for x in a for i in x.ids] for _ in range(3)]
    b = batches(TaskKind.VQA, samples, store, 6, VOCAB, shuffle=True, seed=5)
    b.epoch = 2
    assert [i for x in b for i in x.ids] == orders[2]
    b.epoch = 0
    assert [i for x in b for i in x.ids] == orders[0]


def test_soft_target_batches(tmp_path):
    paths = write_pngs(tmp_path, 1)
    store = ImageStore.build(paths, 8, None, "r0")
    ten = ("yes",) * 2 + ("no",) * 7 + ("blue",)
    samples = [QASample("a", paths[0], "q?", ten), QASample("b", paths[0], "q?", ("blue",) * 10)]
    soft = next(iter(batches(TaskKind.VQA, samples, store, 8, VOCAB, targets="soft")))
    hard = next(iter(batches(TaskKind.VQA, samples, store, 8, VOCAB)))
    assert hard.soft_labels is None and hard.labels.tolist() == [1, -1]
    assert soft.labels.tolist() == [1, -1]
    assert soft.soft_labels.shape == (2, 3) and soft.soft_labels.dtype == torch.float32
    assert soft.soft_labels[0].tolist() == pytest.approx([0.6, 1.0, 0.0])
    assert soft.soft_labels[1].tolist() == [0.0, 0.0, 0.0]
