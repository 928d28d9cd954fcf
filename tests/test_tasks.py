"""The built-in Task objects: metrics and their directions, best-metric checks, baselines, collation."""

from __future__ import annotations

import math
import re

import pytest
import torch

from vqabench import tasks
from vqabench.metrics.base import METRICS, Metric
from vqabench.tasks import TaskData, TaskKind, all_tasks, builtin_tasks, get_task, kind_name, set_plugin_tasks
from vqabench.tasks.base import Batch, CollateContext, Streams, Task, most_common
from vqabench.tasks.captioning import CaptionBatch, CaptionSample
from vqabench.tasks.qa import QABatch, QASample, majority_answer
from vqabench.tasks.zeroshot import ImageBatch, ImageSample
from vqabench.vocab import AnswerTargets

KINDS = ["vqa", "answerability", "zeroshot", "captioning"]
PRIMARY = {"vqa": "vqa_accuracy", "answerability": "ap_unanswerable", "zeroshot": "top1", "captioning": "cider"}


# -- the registry of kinds --------------------------------------------------------------------------


def test_builtin_kinds_are_task_objects_named_by_plain_strings():
    assert list(builtin_tasks()) == KINDS
    for name, task in builtin_tasks().items():
        assert isinstance(task, Task) and task.name == name and task.description
    assert TaskKind.VQA == "vqa" and str(TaskKind.ZEROSHOT) == "zeroshot"
    assert get_task(TaskKind.VQA) is get_task("vqa")


def test_kind_name_of_a_kind_a_task_or_a_string():
    assert kind_name(TaskKind.ANSWERABILITY) == "answerability"
    assert kind_name(get_task("captioning")) == "captioning"
    assert kind_name("custom") == "custom" and type(kind_name(TaskKind.VQA)) is str


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(KeyError, match=r"unknown task kind 'vqq'; did you mean 'vqa'\?"):
        get_task("vqq")


class Counting(Task):
    name = "counting"
    primary_metric = "mae"
    metric_names = ("mae",)
    extra_metrics = {"mae": Metric("mae", higher_is_better=False)}


def test_plugin_kinds_join_the_builtin_ones_and_can_be_replaced():
    before = dict(tasks._PLUGIN)
    try:
        set_plugin_tasks({"counting": Counting()})
        assert get_task("counting").name == "counting"
        assert list(all_tasks()) == [*KINDS, "counting"]
        set_plugin_tasks({})
        with pytest.raises(KeyError, match="unknown task kind 'counting'"):
            get_task("counting")
    finally:
        set_plugin_tasks(before)


def test_task_data_kind_is_a_plain_string_and_split_errors_name_the_splits(tmp_path):
    data = TaskData("d", TaskKind.VQA, tmp_path, {"train": [], "val": []}, "r0")
    assert data.kind == "vqa" and type(data.kind) is str
    with pytest.raises(KeyError, match=r"dataset 'd' \(vqa\) has no split 'test'; it has: train, val"):
        data.split("test")


# -- metrics, directions and the best metric ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_primary_metric_is_among_the_metric_names(kind):
    task = get_task(kind)
    assert task.primary_metric == PRIMARY[kind]
    assert task.primary_metric in task.metric_names
    assert task.primary_metric in dict(task.columns)
    for name in task.metric_names:
        assert task.metric(name).name == name


@pytest.mark.parametrize("kind", KINDS)
def test_best_metric_defaults_to_the_primary_metric(kind):
    task = get_task(kind)
    assert task.check_best_metric("").name == PRIMARY[kind]
    assert task.check_best_metric("").higher_is_better


@pytest.mark.parametrize("kind", KINDS)
def test_best_metric_the_kind_does_not_produce_fails_naming_what_it_produces(kind):
    task = get_task(kind)
    produced = ", ".join([*task.metric_names, *task.run_score_prefixes, "val_loss"])
    with pytest.raises(
        ValueError,
        match=rf"selection metric 'bleu_9' \(train\.best_metric / train\.keep_best\) is not produced by task kind "
        rf"'{kind}'; it produces: {re.escape(produced)}$",
    ):
        task.check_best_metric("bleu_9")


def test_a_run_level_score_can_select_checkpoints():
    # CLIPScore needs the run's scorer, so it is not among the kind's stored-prediction metrics.
    assert get_task("captioning").check_best_metric("clipscore").higher_is_better
    with pytest.raises(ValueError, match="'clipscore' .* task kind 'vqa'"):
        get_task("vqa").check_best_metric("clipscore")


def test_a_metric_another_kind_produces_is_not_a_best_metric():
    with pytest.raises(
        ValueError,
        match=r"'top1' \(train.best_metric / train.keep_best\) is not produced by task kind 'vqa'; it produces: vqa_",
    ):
        get_task("vqa").check_best_metric("top1")
    assert get_task("vqa").check_best_metric("weighted_f1").name == "weighted_f1"


@pytest.mark.parametrize("kind", KINDS)
def test_val_loss_is_a_lower_is_better_best_metric_of_every_kind(kind):
    metric = get_task(kind).check_best_metric("val_loss")
    assert metric.name == "val_loss" and metric.higher_is_better is False
    assert get_task(kind).metric("val_loss").higher_is_better is False


@pytest.mark.parametrize("kind", ["vqa", "answerability"])
def test_aurc_is_lower_is_better(kind):
    assert get_task(kind).metric("aurc").higher_is_better is False
    assert METRICS["aurc"].higher_is_better is False


def test_per_type_metrics_take_the_direction_of_the_primary_metric():
    vqa = get_task("vqa")
    assert vqa.metric("acc/count").higher_is_better
    with pytest.raises(KeyError, match=r"task kind 'zeroshot' does not produce metric 'acc/count'; it produces: top1"):
        get_task("zeroshot").metric("acc/count")


def test_extra_metrics_of_a_kind_give_their_direction():
    task = Counting()
    assert task.metric("mae").higher_is_better is False
    assert task.check_best_metric("").name == "mae"


# -- baselines ----------------------------------------------------------------------------------------


def qa(id, *answers, answerable=True, qtype=""):
    return QASample(id, f"/img/{id}.png", "q?", tuple(answers), question_type=qtype, answerable=answerable)


def data(kind, **kw):
    return TaskData("d", kind, "/root", {}, "r0", **kw)


def test_vqa_baseline_is_the_majority_consensus_answer():
    train = [qa("a", "yes", "yes", "no"), qa("b", "no"), qa("c", "two"), qa("d", "no", "no", "yes")]
    label, prediction = get_task("vqa").baseline(train, data("vqa"))
    assert (label, prediction) == ('Majority answer ("no")', {"answer": "no", "confidence": 1.0})


@pytest.mark.parametrize("kind", ["vqa", "answerability"])
def test_baseline_metrics_do_not_depend_on_the_model_predictions_they_are_merged_over(kind):
    # The runner and ``vqabench score`` score the baseline on the model's stored lines with the
    # baseline's prediction fields on top: nothing of the model's may leak into the baseline's aurc.
    task = get_task(kind)
    train = [qa("a", "yes"), qa("b", "yes"), qa("c", "no", answerable=False)]
    _, prediction = task.baseline(train, data(kind))
    refs = [
        task.reference_fields(qa(f"t{i}", *["yes" if i % 2 else "no"] * 10, answerable=i % 3 > 0)) for i in range(12)
    ]
    model = {"answer": "no", "answerable_score": 0.5}
    up = [{**r, **model, "confidence": i / 12} for i, r in enumerate(refs)]
    down = [{**r, **model, "confidence": 1 - i / 12} for i, r in enumerate(refs)]
    a = task.score([{**ln, **prediction} for ln in up])
    b = task.score([{**ln, **prediction} for ln in down])
    assert "aurc" in a and a["aurc"] == b["aurc"]


def test_majority_answer_ties_are_alphabetical_and_consensus_ties_go_to_the_first_answer():
    assert majority_answer([qa("a", "yes"), qa("b", "no")]) == "no"
    assert qa("x", "red", "blue", "blue", "red").consensus == "red"
    assert most_common(["b", "a", "a", "b"]) == "b"


def test_answerability_baseline_is_the_prior_and_the_majority_answer():
    train = [qa("a", "yes"), qa("b", "yes"), qa("c", "unanswerable", answerable=False), qa("d", "no")]
    label, prediction = get_task("answerability").baseline(train, data("answerability"))
    assert label == "Prior (answerable 0.75)"
    assert prediction == {"answerable_score": 0.75, "answer": "yes"}


def test_zeroshot_baseline_ranks_classes_by_training_frequency():
    classes = [f"c{i}" for i in range(7)]
    labels = [3, 3, 3, 1, 1, 5, 5, 0, 6]
    train = [ImageSample(f"i{k}", "/x.png", c) for k, c in enumerate(labels)]
    task = get_task("zeroshot")
    label, prediction = task.baseline(train, data("zeroshot", class_names=classes))
    assert label == 'Most frequent class ("c3")'
    logits = prediction["logits"]
    assert len(logits) == 7
    # Most frequent first; the 1 / 5 tie goes to the lower index, as argmax does.
    ranked = sorted(range(7), key=lambda c: -logits[c])
    assert ranked[:5] == [3, 1, 5, 0, 6]
    lines = [{"id": f"t{k}", "label": c, **prediction} for k, c in enumerate([3, 3, 1, 2, 4])]
    scored = task.score(lines, **task.score_options(data("zeroshot", class_names=classes)))
    assert scored["top1"] == pytest.approx(0.4) and scored["top5"] == pytest.approx(0.6)


def test_zeroshot_baseline_needs_training_samples_and_class_names():
    task = get_task("zeroshot")
    assert task.baseline([], data("zeroshot", class_names=["a"])) is None
    assert task.baseline([ImageSample("i", "/x.png", 0)], data("zeroshot")) is None


def test_captioning_baseline_is_the_training_caption_with_the_best_validation_cider():
    train = [
        CaptionSample("a", "/a.png", ("a red square", "a blue circle")),
        CaptionSample("b", "/b.png", ("a blue circle", "a red square", "two shapes")),
    ]
    val = [
        CaptionSample("v", "/v.png", ("two shapes on grey", "two shapes")),
        CaptionSample("w", "/w.png", ("shapes",)),
    ]
    task = get_task("captioning")
    # The rarest training caption is the only one that matches the validation references.
    with_val = TaskData("d", "captioning", "/root", {"train": train, "val": val}, "r0")
    assert task.baseline(train, with_val) == (
        'Best single training caption ("two shapes")',
        {"caption": "two shapes"},
    )
    # Without a val split the training references are scored. Captions in every image's references have
    # idf 0 there, so CIDEr-D gives them 0 and the caption only one image has wins.
    assert task.baseline(train, data("captioning"))[1] == {"caption": "two shapes"}
    assert task.baseline([], data("captioning")) is None


@pytest.mark.parametrize("kind", ["vqa", "answerability"])
def test_qa_baselines_score_through_the_kind(kind):
    train = [qa("a", "yes", answerable=True), qa("b", "yes"), qa("c", "no", answerable=False)]
    task = get_task(kind)
    _, prediction = task.baseline(train, data(kind, vqa_mode="vqa"))
    test = [qa("t0", *["yes"] * 10), qa("t1", *["no"] * 10, answerable=False)]
    lines = [{**task.reference_fields(s), **prediction} for s in test]
    scored = task.score(lines, **task.score_options(data(kind, vqa_mode="vqa")))
    # vqa: "yes" is right on one of two; answerability: a constant score has AP = the positive rate.
    assert scored[task.primary_metric] == pytest.approx(0.5)
    if kind == "answerability":
        assert scored["vqa_accuracy"] == pytest.approx(0.5)


# -- scoring and reference fields ---------------------------------------------------------------------


def test_vqa_score_with_confidence_adds_the_risk_coverage_curve():
    task = get_task("vqa")
    samples = [qa("a", *["yes"] * 10, qtype="yn"), qa("b", *["two"] * 10, qtype="count")]
    lines = [
        {**task.reference_fields(samples[0]), "answer": "yes", "confidence": 0.9},
        {**task.reference_fields(samples[1]), "answer": "three", "confidence": 0.1},
    ]
    scored = task.score(lines)
    assert scored["vqa_accuracy"] == 0.5
    assert scored["acc/yn"] == 1.0 and scored["acc/count"] == 0.0
    assert 0 < scored["aurc"] < 0.5 and scored["aurc"] == scored["risk_coverage"]["aurc"]
    assert "aurc" not in task.score([{k: v for k, v in ln.items() if k != "confidence"} for ln in lines])


def test_reference_fields_keep_what_rescoring_needs():
    s = QASample("q", "/x.png", "what?", ("a", "b"), "qt", "other", False)
    assert get_task("vqa").reference_fields(s) == {
        "id": "q",
        "question": "what?",
        "answers": ["a", "b"],
        "question_type": "qt",
        "answer_type": "other",
        "answerable": False,
    }
    assert get_task("zeroshot").reference_fields(ImageSample("i", "/x.png", 2)) == {"id": "i", "label": 2}
    cap = CaptionSample("c", "/x.png", ("one", "two"), domain="target")
    assert get_task("captioning").reference_fields(cap) == {"id": "c", "references": ["one", "two"], "domain": "target"}


def test_check_predictions_names_the_missing_fields():
    class Model:
        pass

    with pytest.raises(RuntimeError, match=r"Model\.predict for task kind 'vqa' lacks answer \(a vqa prediction"):
        get_task("vqa").check_predictions(Model(), [{"confidence": 1.0}])
    get_task("vqa").check_predictions(Model(), [{"answer": "yes"}])
    get_task("vqa").check_predictions(Model(), [])


# -- collation: pixels or cached features, targets, texts ----------------------------------------------


class Store:
    """Pixels by path: image i is filled with i / 255."""

    def gather(self, paths, device=None):
        return torch.stack([torch.full((3, 2, 2), float(p.split("/")[-1][0]) / 255) for p in paths])


class Features:
    def __init__(self):
        self.asked: list[list[str]] = []

    def gather(self, paths, device=None):
        self.asked.append(list(paths))
        return torch.ones(len(paths), 5)


class Texts:
    def gather(self, strings, device=None):
        return torch.zeros(len(strings), 4, 8), torch.ones(len(strings), 4, dtype=torch.bool)


def qa_at(id, image, *answers):
    return QASample(id, f"/img/{image}.png", f"question {id}?", tuple(answers))


def test_qa_collation_encodes_each_image_once_and_targets_by_the_rule():
    samples = [qa_at("a", 1, "yes"), qa_at("b", 2, *["no"] * 6, *["yes"] * 4), qa_at("c", 1, "cat")]
    ctx = CollateContext(Store(), answers=AnswerTargets(["yes", "no"]))
    batch = get_task("vqa").collate(samples, ctx)
    assert isinstance(batch, QABatch)
    assert batch.images.shape == (2, 3, 2, 2) and batch.image_index.tolist() == [0, 1, 0]
    assert batch.labels.tolist() == [0, 1, -1]
    assert batch.image_features is None and batch.soft_labels is None and batch.text_features is None
    assert batch.num_samples == 3 and batch.num_images == 2


def test_collation_with_cached_features_carries_no_pixels():
    feats = Features()
    ctx = CollateContext(Store(), features=feats, text_features=Texts(), answers=AnswerTargets(["yes"]))
    batch = get_task("vqa").collate([qa_at("a", 1, "yes"), qa_at("b", 1, "no")], ctx)
    assert batch.images.shape == (1, 0) and batch.image_features.shape == (1, 5)
    assert feats.asked == [["/img/1.png"]]
    assert batch.text_features.shape == (2, 4, 8) and batch.text_mask.dtype == torch.bool
    # Augmentation leaves cached features alone.
    batch.map_images(lambda x: x + 1)
    assert batch.images.shape == (1, 0)
    for kind, sample in (
        ("zeroshot", ImageSample("i", "/img/1.png", 0)),
        ("captioning", CaptionSample("c", "/img/1.png", ("x",))),
    ):
        b = get_task(kind).collate([sample], CollateContext(Store(), features=Features()))
        assert b.images.numel() == 0 and b.image_features.shape == (1, 5)


def test_zeroshot_and_captioning_collation():
    zs = get_task("zeroshot").collate(
        [ImageSample("i", "/img/1.png", 2), ImageSample("j", "/img/3.png", 0)], CollateContext(Store())
    )
    assert isinstance(zs, ImageBatch) and zs.labels.tolist() == [2, 0] and zs.images.shape == (2, 3, 2, 2)
    assert zs.images[1, 0, 0, 0].item() == pytest.approx(3 / 255)
    cap = get_task("captioning").collate(
        [CaptionSample("c", "/img/1.png", ("a", "b"), "target")], CollateContext(Store())
    )
    assert isinstance(cap, CaptionBatch) and cap.captions == [["a", "b"]] and cap.domains == ["target"]


def test_batch_to_copies_every_tensor_and_map_images_changes_pixels():
    batch = get_task("zeroshot").collate([ImageSample("i", "/img/1.png", 2)], CollateContext(Store()))
    moved = batch.to(torch.device("cpu"))
    assert type(moved) is ImageBatch and moved is not batch and moved.ids == ["i"]
    assert torch.equal(moved.images, batch.images) and moved.image_features is None
    batch.map_images(lambda x: x * 0)
    assert batch.images.abs().sum() == 0 and isinstance(batch, Batch)


def test_streams_follow_the_batch_protocol():
    ctx = CollateContext(Store(), answers=AnswerTargets(["yes"]))
    a = get_task("vqa").collate([qa_at("a", 1, "yes"), qa_at("b", 1, "yes"), qa_at("c", 2, "no")], ctx)
    b = get_task("vqa").collate([qa_at("d", 3, "yes")], ctx)
    streams = Streams({"train": a, "target_train": b})
    assert streams.num_samples == 4 and streams.num_images == 3
    moved = streams.to(torch.device("cpu"))
    assert isinstance(moved, Streams) and list(moved) == ["train", "target_train"]
    streams.map_images(lambda x: x + 1)
    assert all(s.images.min() >= 1 for s in streams.values())


def test_soft_targets_in_a_batch_equal_the_vqa_metric():
    from vqabench.metrics import vqa_score

    answers = ("yes",) * 3 + ("no",) * 7
    ctx = CollateContext(Store(), answers=AnswerTargets(["no", "yes", "two"]), targets="soft")
    batch = get_task("answerability").collate([qa_at("a", 1, *answers)], ctx)
    expected = [vqa_score(a, list(answers)) for a in ("no", "yes", "two")]
    assert batch.soft_labels.tolist()[0] == pytest.approx(expected)
    assert math.isclose(expected[1], 0.9) and batch.labels.tolist() == [0]


def test_answerability_metrics_undefined_on_one_class_are_recorded_as_null(tmp_path):
    from vqabench.files import atomic_write_json

    task = get_task("answerability")
    lines = [
        {**task.reference_fields(qa(f"t{i}", "yes")), "answerable_score": s, "answer": "yes"}
        for i, s in enumerate((0.9, 0.2, 0.6))
    ]
    scored = task.score(lines)
    # Every question is answerable: AP and AUROC of the unanswerable class are undefined.
    assert scored["ap_unanswerable"] is None and scored["auroc"] is None
    assert scored["accuracy"] == pytest.approx(2 / 3) and scored["vqa_accuracy"] == 1.0
    atomic_write_json(tmp_path / "record.json", {"final": {"test": scored}})  # strict JSON: no NaN
