"""CLIP-linear (report 002): raw frozen CLIP embeddings, the gated head, one model for vqa and
answerability, cached stems, loss weights, tags and weights."""

from __future__ import annotations

import time
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers import check_gradients, isolate_caches, save_tiny_clip_checkpoint, train_steps, vocab
from vqabench_plugins import clip_linear
from vqabench_plugins.clip_linear import (
    VIZWIZ_ANSWER_TYPES,
    CLIPLinearConfig,
    answer_types,
    build_clip_linear,
)
from vqabench_plugins.clip_pretrain import MINI_CLEVR_CLIP

import vqabench
from vqabench.config import apply_overrides
from vqabench.pretrain import parse_reference
from vqabench.registry import ModelSpec
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.qa import QABatch, QASample
from vqabench.weights import WeightsUnavailable, load_open_clip

ANSWERS = vocab(5)
TYPES = list(VIZWIZ_ANSWER_TYPES)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_tiny_clip_checkpoint(tmp_path_factory.mktemp("clip"))


def tiny(checkpoint: Path, **changes) -> CLIPLinearConfig:
    return CLIPLinearConfig(arch="ViT-B-32", checkpoint=str(checkpoint), hidden=16, **changes)


@pytest.fixture
def model(checkpoint):
    torch.manual_seed(0)
    return build_clip_linear(tiny(checkpoint), ANSWERS, TYPES)


def qa_batch(seed: int = 0, **fields) -> QABatch:
    """Four questions on two 32-px images, one unanswerable, one without an answer type."""
    g = torch.Generator().manual_seed(seed)
    values = dict(
        ids=["q0", "q1", "q2", "q3"],
        images=torch.rand(2, 3, 32, 32, generator=g),
        image_index=torch.tensor([0, 0, 1, 1]),
        questions=["what color is the circle?", "how many red objects are there?", "what color is the circle?", "a?"],
        labels=torch.tensor([0, 1, 2, -1]),
        answerable=torch.tensor([1.0, 1.0, 1.0, 0.0]),
        question_types=["query_color", "count", "query_color", "left_of"],
        answer_types=["other", "number", "other", ""],
    )
    return QABatch(**{**values, **fields})


def cached(model, batch: QABatch) -> QABatch:
    """``batch`` as the feature cache delivers it: stem outputs (fp32) instead of pixels."""
    features = model.image_stem().encode(batch.images)
    text, mask = model.text_stem().encode(batch.questions)
    assert mask is None and text.shape == (4, 32)
    return qa_batch(images=torch.empty(2, 0), image_features=features, text_features=text)


def toy_data(kind: str) -> TaskData:
    samples = [
        QASample("a", "/nowhere/0.png", "what color?", ("answer0",), "query_color", "other"),
        QASample("b", "/nowhere/1.png", "is it?", ("answer1",), "left_of", "yes/no", answerable=False),
        QASample("c", "/nowhere/1.png", "which shape?", ("answer2",), "query_shape", "shape"),
        QASample("d", "/nowhere/0.png", "which size?", ("answer3",), "query_size", "attribute"),
    ]
    return TaskData(
        "toy", kind, Path("/nowhere"), {"train": samples[:3], "test": samples[3:]}, "r0", answer_vocab=ANSWERS
    )


# --- registration and recipe ---------------------------------------------------------------------


def test_registers_one_model_for_vqa_and_answerability():
    found: list[ModelSpec] = []
    clip_linear.register_models(register=found.append)
    (spec,) = found
    assert (spec.name, spec.family, spec.display_name) == ("clip-linear", "clip-linear", "CLIP-linear (Deuser et al.)")
    assert spec.task_kinds == (TaskKind.VQA, TaskKind.ANSWERABILITY)
    assert set(spec.profiles) == {"quick", "paper"} and set(spec.tags) == {
        "ViT-L-14-336-openai",
        "RN50x64-openai",
        "random",
    }
    for overrides in [*spec.profiles.values(), *spec.tags.values()]:
        apply_overrides(spec.config_cls(), overrides)
    rn = apply_overrides(spec.config_cls(), spec.tags["RN50x64-openai"])
    assert (rn.arch, rn.checkpoint, rn.pretrained) == ("RN50x64", "openai", True)
    assert clip_linear.CLIPLinear.training_depends_on_kind is False


def test_defaults_are_report_002():
    cfg = CLIPLinearConfig()
    assert (cfg.arch, cfg.checkpoint, cfg.pretrained, cfg.hidden, cfg.dropout) == (
        "ViT-L-14-336",
        "openai",
        True,
        512,
        0.5,
    )
    assert (cfg.answer_weight, cfg.type_weight, cfg.answerable_weight) == (1.0, 1.0, 1.0)
    t = cfg.train
    assert (t.epochs, t.batch_size, dict(t.lrs), t.weight_decay, t.label_smoothing) == (10, 128, {"head": 1e-3}, 0, 0)
    # A constant rate (plain Adam): step schedule, factor 1, no warm-up.
    assert (t.schedule, t.step_gamma, t.warmup_epochs, t.grad_clip) == ("step", 1.0, 0.0, 0.0)
    assert (t.best_metric, t.augment, t.targets) == ("val_loss", (), "hard")
    for arch in ("ViT-L-14-336", "RN50x64"):  # report 002's two CLIPs exist in open_clip with OpenAI weights
        assert open_clip.get_model_config(arch) and open_clip.get_pretrained_cfg(arch, "openai")


def test_quick_profile_uses_the_mini_clevr_pretraining():
    from vqabench.plugins import load_plugins

    registry, _ = load_plugins()
    spec = registry.model("clip-linear")
    quick = apply_overrides(spec.config_cls(), spec.profiles["quick"])
    assert (quick.arch, quick.checkpoint, quick.model_cfg, quick.hidden) == (
        "ViT-B-32",
        "pretrain:clip/mini-clevr",
        MINI_CLEVR_CLIP,
        256,
    )
    name, dataset = parse_reference(quick.checkpoint)
    assert set(registry.pretrainer(name).task_kinds) <= set(registry.dataset(dataset).task_kinds)
    # The random tag needs no checkpoint, so it never triggers the pretraining.
    random = apply_overrides(quick, spec.tags["random"])
    assert (random.pretrained, random.checkpoint) == (False, "")


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="train.targets=hard"):
        apply_overrides(CLIPLinearConfig(), {"train.targets": "soft"})
    with pytest.raises(ValueError, match="hidden=0"):
        CLIPLinearConfig(hidden=0)
    with pytest.raises(ValueError, match="type_weight=-1"):
        CLIPLinearConfig(type_weight=-1.0)


# --- answer types ----------------------------------------------------------------------------------


def test_answer_types_are_vizwiz_first_then_the_datas_own_sorted():
    assert answer_types(toy_data(TaskKind.VQA)) == [*VIZWIZ_ANSWER_TYPES, "attribute", "shape"]


def test_empty_or_unknown_answer_types_give_no_type_loss(model):
    labels = model.type_labels(["other", "yes/no", "number", "unanswerable", "", "colour"], torch.device("cpu"))
    assert labels.tolist() == [0, 1, 2, 3, -1, -1]


# --- the model -------------------------------------------------------------------------------------


def test_only_the_head_trains_and_every_head_weight_gets_gradient(model):
    assert set(model.param_groups()) == {"head"}
    head = {id(p) for p in model.head.parameters()}
    assert all(p.requires_grad == (id(p) in head) for p in model.parameters())
    # ln1 over [text, image] (2 x 32), fc1 -> 16, ln2, fc2 -> 5 answers, fc_aux -> 4 types, fc_gate, fc3.
    expected = 2 * 64 + (64 * 16 + 16) + 2 * 16 + (16 * 5 + 5) + (16 * 4 + 4) + (4 * 5 + 5) + (16 + 1)
    assert sum(p.numel() for p in model.param_groups()["head"]) == expected
    check_gradients(model, qa_batch())
    model.train()
    assert not model.visual.training and not model.question_encoder.encoder.training  # frozen towers stay in eval


def test_logits_are_the_head_on_raw_open_clip_embeddings(model, checkpoint):
    """Text first, then the image's embedding, both from encode_* without normalisation."""
    assert (model.image_size, model.resize) == (32, "center_crop")
    assert model.weights == "ViT-B-32 (open_clip_model.safetensors), frozen; head trained"
    clip, tokenizer, mean, std, _ = load_open_clip("ViT-B-32", pretrained=True, checkpoint=str(checkpoint))
    clip.eval()
    model.eval()
    batch = qa_batch()
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    with torch.no_grad():
        image = clip.encode_image((batch.images - m) / s, normalize=False)[batch.image_index]
        text = clip.encode_text(tokenizer(batch.questions), normalize=False)
        expected = model.head(text, image)
        got = model(batch)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(F.normalize(image, dim=-1), image)  # raw, not unit vectors


def test_the_gate_multiplies_the_answer_logits(model):
    model.eval()
    batch = qa_batch()
    with torch.no_grad():
        gate = model.head.fc_gate
        gate.weight.zero_()
        gate.bias.fill_(-1e4)  # sigmoid -> 0: every answer masked
        closed, _, _ = model(batch)
        assert closed.abs().max() < 1e-6
        gate.bias.fill_(1e4)  # sigmoid -> 1: the answer head alone
        opened, _, _ = model(batch)
        head = model.head
        text, image = model.question_encoder(batch.questions), model._encode_image(batch.images)
        x = head.fc1(head.ln1(torch.cat([text, image[batch.image_index]], -1)))
        torch.testing.assert_close(opened, head.fc2(head.ln2(x)))
        assert opened.abs().max() > 1e-3


def test_predictions_carry_both_kinds_fields(model):
    model.eval()
    lines = model.predict(qa_batch())
    assert len(lines) == 4
    for line in lines:
        assert set(line) == {"answer", "confidence", "answerable_score"}
        assert line["answer"] in ANSWERS and 0.0 <= line["confidence"] <= 1.0 and 0.0 < line["answerable_score"] < 1.0
    output, _, answerable = model(qa_batch())
    assert [line["answer"] for line in lines] == [ANSWERS[i] for i in output.argmax(-1).tolist()]
    assert [line["confidence"] for line in lines] == pytest.approx(output.softmax(-1).max(-1).values.tolist())
    assert [line["answerable_score"] for line in lines] == pytest.approx(torch.sigmoid(answerable).tolist())


def test_the_model_is_the_same_whatever_the_kind(checkpoint):
    models = {}
    for kind in (TaskKind.VQA, TaskKind.ANSWERABILITY):
        torch.manual_seed(0)
        models[kind] = clip_linear.build(tiny(checkpoint), toy_data(kind), "cpu").eval()
    vqa, able = models[TaskKind.VQA], models[TaskKind.ANSWERABILITY]
    assert vqa.answer_types == able.answer_types
    assert vqa.state_dict().keys() == able.state_dict().keys()
    assert all(torch.equal(v, able.state_dict()[k]) for k, v in vqa.state_dict().items())
    batch = qa_batch()
    assert vqa.loss(batch).item() == able.loss(batch).item() and vqa.predict(batch) == able.predict(batch)


def test_cached_stem_features_give_the_same_loss_and_predictions(model):
    image, text = model.image_stem(), model.text_stem()
    assert image.key.startswith("clip-linear/") and image.key == model.image_stem().key
    assert text.key.startswith("clip-linear/ViT-B-32/") and text.key != image.key
    model.eval()
    batch = qa_batch()
    from_features = cached(model, batch)
    torch.testing.assert_close(model.loss(from_features), model.loss(batch))
    for a, b in zip(model.predict(from_features), model.predict(batch)):
        assert a["answer"] == b["answer"]
        assert (a["confidence"], a["answerable_score"]) == pytest.approx((b["confidence"], b["answerable_score"]))


def test_a_cached_epoch_never_runs_the_towers(model):
    batch = cached(model, qa_batch())
    calls = []
    for tower in (model.visual, model.question_encoder.encoder):
        tower.register_forward_hook(lambda *_: calls.append(1))
    model.train()
    model.loss(batch).backward()
    model.predict(batch)
    assert calls == []


def test_loss_weights_weigh_the_three_terms(checkpoint):
    batch = qa_batch()

    def loss(**weights) -> float:
        torch.manual_seed(0)
        return build_clip_linear(tiny(checkpoint, **weights), ANSWERS, TYPES).eval().loss(batch).item()

    answer = loss(type_weight=0.0, answerable_weight=0.0)
    types = loss(answer_weight=0.0, answerable_weight=0.0)
    able = loss(answer_weight=0.0, type_weight=0.0)
    assert min(answer, types, able) > 0
    assert loss() == pytest.approx(answer + types + able, rel=1e-5)
    assert loss(answer_weight=2.0, type_weight=0.5, answerable_weight=3.0) == pytest.approx(
        2 * answer + 0.5 * types + 3 * able, rel=1e-5
    )
    # The terms themselves: CE on the gated logits (label -1 ignored), CE on the types, BCE.
    torch.manual_seed(0)
    model = build_clip_linear(tiny(checkpoint), ANSWERS, TYPES).eval()
    with torch.no_grad():
        output, aux, logit = model(batch)
    assert answer == pytest.approx(F.cross_entropy(output[:3], batch.labels[:3]).item(), rel=1e-5)
    assert types == pytest.approx(F.cross_entropy(aux[:3], torch.tensor([0, 2, 0])).item(), rel=1e-5)
    assert able == pytest.approx(F.binary_cross_entropy(torch.sigmoid(logit), batch.answerable).item(), rel=1e-5)


def test_the_head_learns_a_fixed_batch(model):
    batch = cached(model, qa_batch())
    losses = train_steps(model, batch, lr=1e-2, steps=40)
    assert losses[-1] < 0.5 * losses[0]


# --- weights and tags -----------------------------------------------------------------------------


def test_random_tag_through_create_model(tmp_path):
    model = vqabench.create_model(
        "clip-linear@random",
        dataset="mini-clevr",
        kind="answerability",
        data_overrides={"images": 24, "image_size": 48, "zeroshot_per_class": 10},
        cache_dir=tmp_path,
    )
    assert model.weights == "random init (ViT-B-32, custom config), frozen; head trained"
    assert model.image_size == MINI_CLEVR_CLIP["vision_cfg"]["image_size"]
    assert model.answer_types == list(VIZWIZ_ANSWER_TYPES)  # Mini-CLEVR uses VizWiz's type names
    assert "unanswerable" in model.answer_vocab
    assert not (tmp_path / "pretrained").exists()  # the random tag pretrains nothing


def test_missing_paper_weights_fail_fast_before_training(tmp_path, monkeypatch):
    isolate_caches(monkeypatch, tmp_path)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as info:
        clip_linear.build(CLIPLinearConfig(), toy_data(TaskKind.VQA), "cpu")
    assert time.perf_counter() - start < 20
    for name in ["ViT-L-14-336", "openai", "--profile quick", "clip-linear@random", "checkpoint=FILE"]:
        assert name in str(info.value)
