"""CLIP-cosine (report 004) and its zero-shot CLIP baseline: recipe, gradients, the cosine loss, the
nearest-answer prediction, the zero-shot sentences, cached stems, and both run end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import check_gradients, isolate_caches, run_in, save_tiny_clip_checkpoint, train_steps
from vqabench_plugins import clip_cosine
from vqabench_plugins.clip_cosine import (
    CLIPCosineConfig,
    CLIPCosineZeroShotConfig,
    build_clip_cosine,
    build_zeroshot,
    statement,
)
from vqabench_plugins.clip_pretrain import MINI_CLEVR_CLIP

from vqabench.config import apply_overrides, train_config
from vqabench.registry import ModelSpec
from vqabench.results import cell_dir
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.qa import QABatch
from vqabench.weights import WeightsUnavailable, load_open_clip

ANSWERS = ["left of", "right of", "above", "below", "red"]
QUESTIONS = [
    "What is the relationship between the red circle and the blue square?",
    "What is the relationship between the small square and the triangle?",
    "What color is the circle?",
    "What is the relationship between the cyan shape and the large pentagon?",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_tiny_clip_checkpoint(tmp_path_factory.mktemp("clip"))


def tiny(checkpoint: Path, **changes) -> CLIPCosineConfig:
    return CLIPCosineConfig(arch="ViT-B-32", checkpoint=str(checkpoint), hidden=16, **changes)


def toy_data(checkpoint: Path) -> TaskData:
    return TaskData("toy", TaskKind.VQA, checkpoint.parent, {"train": []}, "r0", answer_vocab=list(ANSWERS))


@pytest.fixture
def model(checkpoint):
    torch.manual_seed(0)
    return build_clip_cosine(tiny(checkpoint), ANSWERS)


@pytest.fixture
def zeroshot(checkpoint):
    cfg = CLIPCosineZeroShotConfig(arch="ViT-B-32", checkpoint=str(checkpoint))
    return build_zeroshot(cfg, toy_data(checkpoint), "cpu")


def qa_batch(seed: int = 0, **fields) -> QABatch:
    """Four questions on two 32-px images, the last without an answer in the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    values = dict(
        ids=["q0", "q1", "q2", "q3"],
        images=torch.rand(2, 3, 32, 32, generator=g),
        image_index=torch.tensor([0, 0, 1, 1]),
        questions=list(QUESTIONS),
        labels=torch.tensor([0, 2, 4, -1]),
        answerable=torch.ones(4),
        question_types=["relation", "relation", "query_color", "relation"],
        answer_types=["other"] * 4,
    )
    return QABatch(**{**values, **fields})


def reference_clip(checkpoint: Path):
    clip, tokenizer, mean, std, _ = load_open_clip("ViT-B-32", pretrained=True, checkpoint=str(checkpoint))
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    return clip.eval(), tokenizer, lambda images: (images - m) / s


# --- registration and recipe ---------------------------------------------------------------------


def test_registers_the_family_and_its_zero_shot_baseline():
    found: list[ModelSpec] = []
    clip_cosine.register_models(register=found.append)
    trained, zero = found
    assert (trained.name, trained.family, zero.name, zero.family) == (
        "clip-cosine",
        "clip-cosine",
        "clip-cosine-zeroshot",
        "clip-cosine-zeroshot",
    )
    assert trained.task_kinds == zero.task_kinds == (TaskKind.VQA,)
    for spec in found:
        assert set(spec.profiles) == {"quick", "paper"}
        for overrides in [*spec.profiles.values(), *spec.tags.values()]:
            apply_overrides(spec.config_cls(), overrides)
    assert "random" in trained.tags and "random" not in zero.tags  # a random CLIP has no zero-shot meaning
    assert train_config(CLIPCosineZeroShotConfig()) is None  # evaluation only


def test_defaults_are_report_004():
    cfg = CLIPCosineConfig()
    assert (cfg.arch, cfg.checkpoint, cfg.pretrained) == ("ViT-B-32", "openai", True)
    t = cfg.train
    assert (t.epochs, t.batch_size, t.grad_accum, dict(t.lrs), t.weight_decay) == (3, 32, 2, {"head": 5e-5}, 1e-4)
    assert (t.schedule, t.warmup_epochs, t.precision, t.augment, t.targets) == ("step", 0.0, "auto", (), "hard")
    zero = CLIPCosineZeroShotConfig()
    assert (zero.arch, zero.checkpoint) == (cfg.arch, cfg.checkpoint)


def test_quick_profiles_use_the_mini_clevr_pretraining():
    found: list[ModelSpec] = []
    clip_cosine.register_models(register=found.append)
    for spec in found:
        quick = apply_overrides(spec.config_cls(), spec.profiles["quick"])
        assert (quick.checkpoint, dict(quick.model_cfg)) == ("pretrain:clip/mini-clevr", MINI_CLEVR_CLIP)
    # The random tag needs no checkpoint, so it never triggers the pretraining.
    random = apply_overrides(apply_overrides(CLIPCosineConfig(), found[0].profiles["quick"]), found[0].tags["random"])
    assert (random.pretrained, random.checkpoint) == (False, "")


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="train.targets=hard"):
        apply_overrides(CLIPCosineConfig(), {"train.targets": "soft"})
    with pytest.raises(ValueError, match="hidden=0"):
        CLIPCosineConfig(hidden=0)
    with pytest.raises(ValueError, match="dropout=1.0"):
        CLIPCosineConfig(dropout=1.0)


# --- the trained model ---------------------------------------------------------------------------


def test_only_the_mlp_trains_and_every_weight_gets_gradient(model):
    assert set(model.param_groups()) == {"head"}
    head = {id(p) for p in model.head.parameters()}
    assert all(p.requires_grad == (id(p) in head) for p in model.parameters())
    # [image, question] (2 x 32) -> 16 -> 32, CLIP's text space.
    assert sum(p.numel() for p in model.param_groups()["head"]) == (64 * 16 + 16) + (16 * 32 + 32)
    check_gradients(model, qa_batch())
    model.train()
    assert not model.visual.training and not model.text.training  # frozen towers stay in eval


def test_answer_embeddings_are_clips_normalised_text_embeddings(model, checkpoint):
    clip, tokenizer, _ = reference_clip(checkpoint)
    with torch.no_grad():
        expected = F.normalize(clip.encode_text(tokenizer(ANSWERS)), dim=-1)
    torch.testing.assert_close(model.answer_embeddings, expected, rtol=1e-5, atol=1e-5)
    assert model.weights == "ViT-B-32 (open_clip_model.safetensors), frozen; cosine MLP trained"


def test_loss_is_one_minus_the_cosine_with_the_answers_embedding(model, checkpoint):
    model.eval()
    batch = qa_batch()
    clip, tokenizer, normalize = reference_clip(checkpoint)
    with torch.no_grad():
        image = F.normalize(clip.encode_image(normalize(batch.images)), dim=-1)[batch.image_index]
        text = F.normalize(clip.encode_text(tokenizer(batch.questions)), dim=-1)
        predicted = F.normalize(model.head(torch.cat([image, text], -1)), dim=-1)
        torch.testing.assert_close(model.embedding(batch), predicted, rtol=1e-5, atol=1e-5)
        target = model.answer_embeddings[torch.tensor([0, 2, 4])]
        expected = (1 - F.cosine_similarity(predicted[:3], target)).mean()  # the label -1 gives no loss
        assert model.loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)
        assert model.loss(qa_batch(labels=torch.full((4,), -1))).item() == 0.0


def test_prediction_is_the_nearest_answer_embedding(model):
    model.eval()
    batch = qa_batch()
    with torch.no_grad():
        cosines = model.embedding(batch) @ model.answer_embeddings.T
    lines = model.predict(batch)
    assert [line["answer"] for line in lines] == [ANSWERS[i] for i in cosines.argmax(-1).tolist()]
    assert [line["confidence"] for line in lines] == pytest.approx((100 * cosines).softmax(-1).max(-1).values.tolist())


def test_cached_stem_features_give_the_same_loss_and_predictions(model):
    model.eval()
    batch = qa_batch()
    features = model.image_stem().encode(batch.images)
    text, mask = model.text_stem().encode(batch.questions)
    assert mask is None and text.shape == (4, 32)
    cached = qa_batch(images=torch.empty(2, 0), image_features=features, text_features=text)
    torch.testing.assert_close(model.loss(cached), model.loss(batch))
    assert [p["answer"] for p in model.predict(cached)] == [p["answer"] for p in model.predict(batch)]


def test_the_mlp_learns_a_fixed_batch(model):
    losses = train_steps(model, qa_batch(), lr=1e-2, steps=40)
    assert losses[-1] < 0.5 * losses[0]


def test_missing_paper_weights_fail_fast_before_training(tmp_path, monkeypatch, checkpoint):
    isolate_caches(monkeypatch, tmp_path)
    start = time.perf_counter()
    for build, cfg in ((clip_cosine.build, CLIPCosineConfig()), (build_zeroshot, CLIPCosineZeroShotConfig())):
        with pytest.raises(WeightsUnavailable) as info:
            build(cfg, toy_data(checkpoint), "cpu")
        for name in ["ViT-B-32", "openai", "--profile quick", "checkpoint=FILE"]:
            assert name in str(info.value)
    assert time.perf_counter() - start < 20


# --- the zero-shot baseline ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "answer", "expected"),
    [
        (QUESTIONS[0], "left of", "the red circle is left of the blue square"),
        ("What is the relationship between the man and the horse?", "riding", "the man is riding the horse"),
        ("what is the relationship between the man and the hat ?", "has", "the man has the hat"),
        ("What is the relationship between the car and the road?", "are on", "the car are on the road"),
        ("What color is the circle?", "red", "What color is the circle? red"),  # the generic fallback
        ("  How many dots are there? ", "2", "How many dots are there? 2"),
    ],
)
def test_zero_shot_sentences(question, answer, expected):
    assert statement(question, answer) == expected


def test_zero_shot_predicts_the_candidate_sentence_nearest_the_image(zeroshot, checkpoint):
    assert zeroshot.weights == "ViT-B-32 (open_clip_model.safetensors), not trained"
    assert not any(p.requires_grad for p in zeroshot.parameters())
    batch = qa_batch()
    clip, tokenizer, normalize = reference_clip(checkpoint)
    with torch.no_grad():
        image = F.normalize(clip.encode_image(normalize(batch.images)), dim=-1)[batch.image_index]
        expected = []
        for i, question in enumerate(batch.questions):
            texts = F.normalize(clip.encode_text(tokenizer([statement(question, a) for a in ANSWERS])), dim=-1)
            expected.append(100 * texts @ image[i])
        expected = torch.stack(expected)
    lines = zeroshot.predict(batch)
    assert [line["answer"] for line in lines] == [ANSWERS[i] for i in expected.argmax(-1).tolist()]
    # Float32 softmax of logits scaled by 100: the two computations agree to a few ulps, not 1e-6.
    assert [line["confidence"] for line in lines] == pytest.approx(
        expected.softmax(-1).max(-1).values.tolist(), rel=1e-5
    )
    torch.testing.assert_close(zeroshot(batch), expected, rtol=1e-4, atol=1e-4)
    # Cached image features give the same, and each sentence is embedded once.
    cached = qa_batch(images=torch.empty(2, 0), image_features=zeroshot.image_stem().encode(batch.images))
    assert [p["answer"] for p in zeroshot.predict(cached)] == [line["answer"] for line in lines]
    assert len(zeroshot._memo) == len(QUESTIONS) * len(ANSWERS)


def test_zero_shot_candidates_are_the_most_frequent_answers_when_capped(checkpoint):
    cfg = CLIPCosineZeroShotConfig(arch="ViT-B-32", checkpoint=str(checkpoint), max_candidates=2)
    capped = build_zeroshot(cfg, toy_data(checkpoint), "cpu")
    assert capped.answer_vocab == ANSWERS[:2]
    assert {line["answer"] for line in capped.predict(qa_batch())} <= set(ANSWERS[:2])
    with pytest.raises(ValueError, match="max_candidates=-1"):
        CLIPCosineZeroShotConfig(max_candidates=-1)


def test_zero_shot_memo_is_emptied_when_full(zeroshot, monkeypatch):
    monkeypatch.setattr(clip_cosine, "MEMO_SIZE", len(ANSWERS) + 1)
    first = zeroshot.candidates(QUESTIONS[:1])
    assert len(zeroshot._memo) == len(ANSWERS)
    again = zeroshot.candidates(QUESTIONS[:2])  # over the cap: emptied, then this batch's sentences
    assert set(zeroshot._memo) == {statement(q, a) for q in QUESTIONS[:2] for a in ANSWERS}
    torch.testing.assert_close(again[0], first[0])


# --- end to end ----------------------------------------------------------------------------------


def test_both_models_run_on_mini_clevr_relations(tmp_path):
    clip = save_tiny_clip_checkpoint(tmp_path / "clip", MINI_CLEVR_CLIP)
    data = ["--data", "images=40", "--data", "image_size=64", "--data", "zeroshot_per_class=10"]
    model = ["--set", f"checkpoint={clip}", "--set", "clip-cosine:train.epochs=2"]
    proc = run_in(tmp_path, "clip-cosine,clip-cosine-zeroshot", "mini-clevr-relations/vqa", *data, *model)
    assert proc.returncode == 0, proc.stderr
    records = {}
    for name in ("clip-cosine", "clip-cosine-zeroshot"):
        cell = cell_dir(tmp_path / "runs", "mini-clevr-relations", "vqa", name, "quick", 0)
        records[name] = json.loads((cell / "record.json").read_text())
        lines = [json.loads(x) for x in (cell / "predictions-test.jsonl").read_text().splitlines()]
        assert lines and all(x["answer"] in ("left of", "right of", "above", "below") for x in lines)
        assert all(x["question"].startswith("What is the relationship between the ") for x in lines)
    trained, zero = records["clip-cosine"], records["clip-cosine-zeroshot"]
    assert trained["trained"] and len(trained["history"]) == 2 and trained["params"]["trainable"] > 0
    assert not zero["trained"] and zero["training"] == "not trained (evaluation only)"
    assert zero["params"]["trainable"] == 0
    for record in records.values():
        assert 0.0 <= record["final"]["test"]["vqa_accuracy"] <= 1.0
        assert record["vocab"]["size"] == 4 and record["vocab"]["coverage"]["test"] == 1.0
    board = (tmp_path / "runs" / "leaderboards" / "mini-clevr-relations.md").read_text()
    assert "CLIP-cosine (report 004)" in board and "CLIP zero-shot VQA (report 004 baseline)" in board
