"""CLIP-LoRA (report 000 section 3): LoRA in the compute path, parameter counts, learning, weights."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from helpers import MINI_CLEVR_ANSWERS, TINY_CLIP, check_gradients, isolate_caches, make_batch, train_steps, vocab
from vqabench_plugins import clip_lora
from vqabench_plugins.clip_lora import CLIPLoRAConfig, add_lora, build_clip_lora

from vqabench.config import apply_overrides
from vqabench.model import compile_methods
from vqabench.registry import ModelSpec
from vqabench.tasks import TaskData, TaskKind
from vqabench.weights import WeightsUnavailable, load_open_clip

# The tiny CLIP has blocks 0-1: adapt both, as blocks 10-11 are adapted in ViT-B/32.
TINY = {"model_cfg": TINY_CLIP, "lora_blocks": (0, 1)}


def quick() -> CLIPLoRAConfig:
    return apply_overrides(CLIPLoRAConfig(), clip_lora.QUICK)


def lora_parameters(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


@pytest.fixture(scope="module")
def paper_model():
    """ViT-B/32 as the report (random weights, no download), frozen and adapted as if pretrained."""
    torch.manual_seed(0)
    return build_clip_lora(CLIPLoRAConfig(), vocab(18), load_weights=False)


# --- registration and recipe -------------------------------------------------------------------


def test_registers_clip_lora_for_vqa():
    found: list[ModelSpec] = []
    clip_lora.register_models(register=found.append)
    (spec,) = found
    assert (spec.name, spec.display_name, spec.task_kinds) == ("clip-lora", "CLIP + LoRA", (TaskKind.VQA,))
    assert set(spec.profiles) == {"quick", "paper"}
    for overrides in spec.profiles.values():
        apply_overrides(spec.config_cls(), overrides)
    # Random towers clear the checkpoint: the quick profile's pretrain: reference is not trained for nothing.
    assert spec.tags["random"] == {"pretrained": False, "checkpoint": ""}


def test_defaults_are_report_000():
    cfg = CLIPLoRAConfig()
    assert (cfg.arch, cfg.checkpoint, cfg.lora_r, cfg.lora_alpha, cfg.lora_blocks) == (
        "ViT-B-32",
        "openai",
        8,
        32,
        (10, 11),
    )
    assert cfg.lora_targets == ("attn.out_proj", "mlp.c_fc", "mlp.c_proj") and not cfg.lora_text
    assert (cfg.train.lrs["lora"], cfg.train.lrs["head"], cfg.train.batch_size, cfg.train.epochs) == (
        2e-4,
        1e-3,
        128,
        15,
    )
    assert cfg.train.augment == ()
    q = quick()  # the paper recipe on the CLIP pretrained on Mini-CLEVR (4 blocks: LoRA on 2-3)
    assert (q.pretrained, q.checkpoint, q.lora_blocks, q.train.batch_size) == (
        True,
        "pretrain:clip/mini-clevr",
        (2, 3),
        64,
    )


# --- parameter counts --------------------------------------------------------------------------

R = 8
WIDTH, MLP = 768, 3072  # ViT-B/32 visual tower
LORA = 2 * (  # visual blocks 10 and 11; A is r x in, B is out x r
    (R * WIDTH + WIDTH * R)  # attn.out_proj 768 -> 768
    + (R * WIDTH + MLP * R)  # mlp.c_fc 768 -> 3072
    + (R * MLP + WIDTH * R)  # mlp.c_proj 3072 -> 768
)


def head_count(answers: int) -> int:
    projection = 512 * 512 + 512  # g_txt = Linear(512 -> 512)
    fused = (4 * 512) * 512 + 512  # z is 2,048-d -> 512
    return projection + fused + 512 * answers + answers


@pytest.mark.parametrize("answers", [18, MINI_CLEVR_ANSWERS])
def test_paper_trainable_parameter_counts(paper_model, answers):
    model = paper_model if answers == 18 else build_clip_lora(CLIPLoRAConfig(), vocab(answers), load_weights=False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert LORA == 147_456 and head_count(18) == 1_320_978
    assert trainable == LORA + head_count(answers)
    assert sum(p.numel() for p in lora_parameters(model).values()) == LORA
    groups = model.param_groups()
    assert set(groups) == {"lora", "head"}
    assert sum(p.numel() for p in groups["lora"]) == LORA


# --- LoRA in the compute path ------------------------------------------------------------------


def test_paper_lora_matrices_of_every_target_receive_gradient(paper_model):
    from open_clip.transformer import Attention

    lora = lora_parameters(paper_model)
    adapted = sorted({n.split(".lora_")[0] for n in lora})
    assert adapted == [
        f"visual.transformer.resblocks.{b}.{t}" for b in (10, 11) for t in ("attn.out_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    for block in (10, 11):
        assert isinstance(paper_model.visual.transformer.resblocks[block].attn, Attention)
    assert len(lora) == 12  # A and B of 6 modules
    check_gradients(paper_model, make_batch(224, 18))


def test_lora_around_multihead_attention_out_proj_would_get_no_gradient():
    """Why the adapted blocks use open_clip's custom Attention: nn.MultiheadAttention bypasses out_proj.forward."""
    from peft import LoraConfig, inject_adapter_in_model

    clip, tokenizer, mean, std, _ = load_open_clip("ViT-B-32", pretrained=False, model_cfg=TINY_CLIP)
    inject_adapter_in_model(
        LoraConfig(r=4, target_modules=r"visual\.transformer\.resblocks\.1\.(attn\.out_proj|mlp\.c_fc)"), clip
    )
    for name, p in clip.named_parameters():
        if "lora_A" in name:
            torch.nn.init.normal_(p)
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # non-zero B, so that both A and B would get gradient if called
    clip.encode_image(torch.rand(2, 3, 32, 32)).sum().backward()
    grads = {n.split(".lora_")[0].rsplit(".", 1)[-1]: p.grad for n, p in clip.named_parameters() if "lora_" in n}
    assert grads["out_proj"] is None  # never called
    assert grads["c_fc"] is not None and grads["c_fc"].abs().sum() > 0


def test_adapting_missing_blocks_is_an_error():
    clip, *_ = load_open_clip(
        "ViT-B-32",
        pretrained=False,
        model_cfg={**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "block_type": "custom"}},
    )
    with pytest.raises(ValueError, match="blocks 0-1"):
        add_lora(clip, CLIPLoRAConfig(model_cfg=TINY_CLIP))


def test_text_lora_is_available_and_counted():
    model = build_clip_lora(CLIPLoRAConfig(**TINY, lora_text=True), vocab(4), load_weights=False)
    text = [n for n in lora_parameters(model) if n.startswith("question_encoder.")]
    assert len(text) == 12 and model.text_cache_info() is None
    check_gradients(model, make_batch(32, 4))


def test_random_tag_on_quick_trains_both_towers_whole_without_lora():
    model = build_clip_lora(apply_overrides(quick(), {"pretrained": False}), vocab(MINI_CLEVR_ANSWERS))
    assert not lora_parameters(model)
    assert set(model.param_groups()) == {"head", "backbone"}
    assert all(p.requires_grad for p in model.parameters())
    assert (
        model.weights == "random init (ViT-B-32, custom config), both towers trained whole, no LoRA"
        and model.image_size == 64
    )
    assert model.image_stem() is None
    check_gradients(model, make_batch(64, MINI_CLEVR_ANSWERS))


# --- forward path ------------------------------------------------------------------------------


def test_each_image_is_encoded_once_per_step():
    model = build_clip_lora(CLIPLoRAConfig(**TINY), vocab(4), load_weights=False)
    rows = []
    model.visual.conv1.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    model.loss(make_batch(32, 4))
    assert rows == [2]


def test_cached_stem_features_give_the_same_predictions():
    cfg = CLIPLoRAConfig(
        model_cfg={**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "layers": 3}}, lora_blocks=(2,)
    )
    model = build_clip_lora(cfg, vocab(4), load_weights=False).eval()
    for p in lora_parameters(model).values():
        torch.nn.init.normal_(p, std=0.1)  # a trained adapter, so that the back half matters
    stem = model.image_stem()
    assert stem is not None and stem.name == "ViT blocks 0-1 tokens"
    batch = make_batch(32, 4)
    with torch.no_grad():
        direct = model(batch)
        batch.image_features = stem.encode(batch.images)
        assert batch.image_features.shape == (2, 17, 32)  # class token + 4 x 4 patches
        assert torch.allclose(model(batch), direct, atol=1e-5)
        assert torch.allclose(
            model._back(model._front(batch.images)), model.visual(model.normalize(batch.images)), atol=1e-5
        )


def test_a_few_steps_on_a_fixed_batch_reduce_the_loss():
    torch.manual_seed(0)
    model = build_clip_lora(CLIPLoRAConfig(**TINY), vocab(6), load_weights=False)
    batch = make_batch(32, 6)
    losses = train_steps(model, batch, lr=2e-3, steps=15)
    assert losses[-1] < 0.5 * losses[0]


def test_compiled_image_path_trains_like_the_eager_one():
    """train.compile: torch.compile'd _front/_back give the eager losses and the same checkpoint keys."""
    from torch._dynamo.utils import counters

    def build():
        torch.manual_seed(0)
        return build_clip_lora(CLIPLoRAConfig(**TINY, dropout=0.0, lora_dropout=0.0), vocab(6), load_weights=False)

    eager, compiled = build(), build()
    counters.clear()
    assert compile_methods(compiled) == ["_front", "_back"]
    batch = make_batch(32, 6)
    assert train_steps(compiled, batch, lr=2e-3, steps=3) == pytest.approx(
        train_steps(eager, batch, lr=2e-3, steps=3), rel=1e-4
    )
    assert counters["stats"]["unique_graphs"] >= 2  # both methods really ran compiled
    assert compiled.state_dict().keys() == eager.state_dict().keys()


def test_predict_returns_an_answer_and_confidence_per_question():
    model = build_clip_lora(CLIPLoRAConfig(**TINY), vocab(5), load_weights=False).eval()
    out = model.predict(make_batch(32, 5))
    assert len(out) == 4 and all(o["answer"] in vocab(5) and 0.0 <= o["confidence"] <= 1.0 for o in out)


# --- weights -----------------------------------------------------------------------------------


def test_missing_paper_weights_fail_fast_before_training(tmp_path, monkeypatch):
    isolate_caches(monkeypatch, tmp_path)
    data = TaskData("mini-clevr", TaskKind.VQA, Path(tmp_path), {}, "rev", answer_vocab=vocab(18))
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as info:
        clip_lora.build(CLIPLoRAConfig(), data, "cpu")
    assert time.perf_counter() - start < 20
    for name in ["ViT-B-32", "openai", "--profile quick", "clip-lora@random", "checkpoint=FILE"]:
        assert name in str(info.value)


def test_local_checkpoint_loads_into_the_adapted_model(tmp_path):
    torch.manual_seed(0)
    source, tokenizer, *_ = load_open_clip("ViT-B-32", pretrained=False, checkpoint="", model_cfg=TINY_CLIP)
    torch.save(source.state_dict(), tmp_path / "tiny-clip.pt")
    model = build_clip_lora(CLIPLoRAConfig(**TINY, checkpoint=str(tmp_path / "tiny-clip.pt")), vocab(3)).eval()
    assert model.weights == "ViT-B-32 (tiny-clip.pt), LoRA"
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # LoRA B starts at zero: the adapted towers compute what the checkpoint does
        torch.testing.assert_close(
            model.visual(model.normalize(images)), source.encode_image(model.normalize(images)), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            model.question_encoder(["what color?"]),
            source.encode_text(tokenizer(["what color?"])),
            rtol=1e-5,
            atol=1e-5,
        )
