"""CLIP-decoder captioning (report 003 Q2): PEFT variants, parameter counts, decoding, attention maps, caption LM."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import TINY_CLIP, check_gradients, isolate_caches, run_in, save_tiny_clip_checkpoint
from vqabench_plugins import clip_decoder, clip_decoder_lm
from vqabench_plugins.clip_decoder import (
    BEAMS,
    VARIANTS,
    CLIPDecoderConfig,
    build_clip_decoder,
    parse_decoding,
)
from vqabench_plugins.clip_decoder_lm import CaptionLMConfig
from vqabench_plugins.clip_decoder_peft import cross_attention_parameter_count, peft_parameter_count
from vqabench_plugins.clip_pretrain import MINI_CLEVR_CLIP

from vqabench.config import apply_overrides
from vqabench.registry import ModelSpec
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.captioning import CaptionBatch, CaptionSample
from vqabench.weights import WeightsUnavailable

CAPTIONS = [
    "There are two red shapes and one blue shape.",
    "A small green circle is to the left of a large red square.",
    "From left to right there is a small blue triangle and a large yellow circle.",
    "Three shapes: a large purple square, a small cyan circle and a small red triangle.",
]
LM = CaptionLMConfig(layers=2, width=32, heads=2, positions=40, epochs=1, batch_size=4)


def save_tiny_lm(root: Path, texts=CAPTIONS, cfg: CaptionLMConfig = LM) -> Path:
    """A random caption LM saved as ``vqabench pretrain caption-lm`` saves one; the artefact file."""
    torch.manual_seed(0)
    model, tokenizer = clip_decoder_lm.new_model(cfg, texts)
    root.mkdir(parents=True, exist_ok=True)
    return clip_decoder_lm.save(model, cfg, tokenizer, root)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("clip-decoder")
    return SimpleNamespace(clip=save_tiny_clip_checkpoint(root / "clip"), lm=save_tiny_lm(root / "lm"))


def tiny(files, **changes) -> CLIPDecoderConfig:
    """The quick architecture in small: a 2-block 32-wide CLIP ViT at 32 px and a 2-block 32-wide caption LM."""
    base = dict(
        encoder="open_clip",
        encoder_arch="ViT-B-32",
        checkpoint=str(files.clip),
        decoder=str(files.lm),
        tokenizer="open_clip",
        max_length=40,
        greedy_steps=12,
        beam_steps=8,
    )
    return CLIPDecoderConfig(**{**base, **changes})


def build(files, name: str = "clip-decoder", **changes):
    torch.manual_seed(0)
    return build_clip_decoder(tiny(files, **{**VARIANTS[name][2], **changes}))


def caption_batch(n: int = 2, size: int = 32, seed: int = 0) -> CaptionBatch:
    g = torch.Generator().manual_seed(seed)
    return CaptionBatch(
        ids=[f"c{i}" for i in range(n)],
        images=torch.rand(n, 3, size, size, generator=g),
        captions=[[CAPTIONS[i % 4], CAPTIONS[(i + 1) % 4]] for i in range(n)],
        domains=["source"] * n,
    )


def perturb(model) -> None:
    """Trained-looking weights: zero-initialised PEFT parts and new cross-attention would hide bugs."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)


# --- registration and recipe -------------------------------------------------------------------


def registered() -> dict[str, ModelSpec]:
    found: list[ModelSpec] = []
    clip_decoder.register_models(register=found.append)
    return {s.name: s for s in found}


def test_registers_every_report_003_variant_for_captioning():
    specs = registered()
    assert list(specs) == [
        "clip-decoder",
        "clip-decoder-adapter-64",
        "clip-decoder-adapter-128",
        "clip-decoder-prefix-32",
        "clip-decoder-prefix-64",
        "clip-decoder-lora-4",
        "clip-decoder-lora-8",
        "clip-decoder-lora-32",
    ]
    for spec in specs.values():
        assert spec.task_kinds == (TaskKind.CAPTIONING,) and spec.family == "clip-decoder"
        for overrides in spec.profiles.values():
            apply_overrides(spec.config_cls(), overrides)
    assert specs["clip-decoder"].display_name == "CLIP-Decoder (Cross Attention + Encoder Projection Only)"
    lora8 = specs["clip-decoder-lora-8"].config_cls()
    assert (lora8.peft, lora8.lora_r, lora8.eval_decodings) == ("lora", 8, BEAMS)
    assert specs["clip-decoder-prefix-64"].config_cls().prefix_length == 64
    assert specs["clip-decoder-adapter-128"].config_cls().eval_decodings == ("beam5",)
    # Typed overrides still reach the variant classes' fields.
    assert apply_overrides(lora8, {"eval_decodings": "beam3,greedy-20"}).eval_decodings == ("beam3", "greedy-20")
    pretrainers = []
    clip_decoder.register_pretrainers(register=pretrainers.append)
    assert [p.name for p in pretrainers] == ["caption-lm"]


def test_defaults_are_report_003():
    cfg = CLIPDecoderConfig()
    assert (cfg.encoder, cfg.encoder_arch, cfg.decoder, cfg.max_length) == (
        "timm",
        "vit_large_patch14_clip_224",
        "gpt2",
        128,
    )
    train = cfg.train
    assert (train.epochs, train.batch_size, train.weight_decay, train.warmup_epochs, train.schedule) == (
        10,
        64,
        1e-5,
        0.0,
        "cosine",
    )
    assert set(train.lrs.values()) == {1e-4} and train.label_smoothing == 0.0
    assert train.best_metric == "cider" and train.keep_best == ("val_loss", "cider", "clipscore")
    assert (cfg.greedy_steps, cfg.beam_steps, cfg.eval_decodings) == (50, 30, ("beam5",))
    quick = apply_overrides(cfg, clip_decoder.QUICK)
    assert (quick.checkpoint, quick.decoder, quick.model_cfg) == (
        "pretrain:clip/mini-clevr",
        "pretrain:caption-lm/mini-clevr",
        MINI_CLEVR_CLIP,
    )


def test_decoding_names():
    cfg = CLIPDecoderConfig()
    assert parse_decoding("greedy-50", cfg) == (1, 50)
    assert parse_decoding("beam5", cfg) == (5, 30)
    assert parse_decoding("beam20-50", cfg) == (20, 50)
    for bad in ("beam", "beam0", "nucleus", "beam5-x"):
        with pytest.raises(ValueError, match="decoding"):
            parse_decoding(bad, cfg)
    with pytest.raises(ValueError, match="eval_decodings|decoding"):
        CLIPDecoderConfig(eval_decodings=("top5",))
    with pytest.raises(ValueError, match="peft"):
        CLIPDecoderConfig(peft="ia3")


# --- gradients and parameter counts ------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_trainable_parameters_get_gradient_and_frozen_ones_none(files, name):
    model = build(files, name)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    groups = model.param_groups()
    assert set(groups) == ({"projection", "cross_attention"} | ({"peft"} if VARIANTS[name][2] else set()))
    check_gradients(model, caption_batch())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_peft_parameter_counts_follow_the_formulas(files, name):
    model = build(files, name)
    cfg = model.cfg
    width, layers, heads = 32, 2, 2  # the tiny caption LM
    groups = {k: sum(p.numel() for p in ps) for k, ps in model.param_groups().items()}
    assert groups["projection"] == 32 * width + width  # tiny CLIP tokens are 32 wide
    assert groups["cross_attention"] == cross_attention_parameter_count(width, layers)
    expected = peft_parameter_count(
        cfg.peft, width, layers, heads, size=cfg.adapter_size, length=cfg.prefix_length, r=cfg.lora_r
    )
    assert groups.get("peft", 0) == expected
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(groups.values())


def test_paper_size_counts_match_report_003():
    """GPT-2 small (12 x 768) with a 1024-wide ViT: report 003's trainable parameters."""
    base = cross_attention_parameter_count(768, 12) + 1024 * 768 + 768
    assert round(base / 1e6, 2) == 29.15  # report: 29.13M
    counts = {
        ("lora", 4): 29.74,  # report: 29.73M
        ("lora", 8): 30.33,  # report: 30.32M
        ("lora", 32): 33.87,  # report: 33.85M
        ("adapter", 64): 31.53,  # report: 31.51M
        ("adapter", 128): 33.89,  # report: 33.88M
        ("prefix", 32): 29.74,  # report: 29.16M (a prefix of input embeddings; see clip_decoder_peft)
    }
    for (kind, n), millions in counts.items():
        extra = peft_parameter_count(kind, 768, 12, 12, size=n, length=n, r=n)
        assert round((base + extra) / 1e6, 2) == millions, (kind, n)


def test_paper_architecture_builds_with_the_report_counts():
    """The paper decoder (GPT-2 small shape, random, no download) with LoRA r=8 on a 1024-wide ViT stand-in."""
    cfg = CLIPDecoderConfig(
        pretrained=False,
        peft="lora",
        lora_r=8,
        encoder_kwargs={"img_size": 28, "patch_size": 14, "embed_dim": 1024, "depth": 1, "num_heads": 16},
        tokenizer="open_clip",
    )
    model = build_clip_decoder(cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 29_154_048 + 1_179_648
    assert model.decoder.config.n_layer == 12 and model.projection.weight.shape == (768, 1024)


# --- image path: timm tokens, open_clip tokens, the cache --------------------------------------


def test_timm_clip_vit_token_path_builds_small_without_weights():
    cfg = CLIPDecoderConfig(
        pretrained=False,
        encoder_kwargs={"img_size": 28, "patch_size": 14, "embed_dim": 32, "depth": 1, "num_heads": 2},
        decoder_cfg={"n_layer": 1, "n_embd": 32, "n_head": 2},
        tokenizer="open_clip",
        max_length=40,
    )
    model = build_clip_decoder(cfg)
    assert model.image_size == 28 and type(model.encoder).__name__ == "TimmTokens"
    tokens = model.image_stem().encode(torch.rand(2, 3, 28, 28))
    assert tokens.shape == (2, 5, 32)  # class token + 2 x 2 patches, all kept
    assert "random init" in model.weights
    check_gradients(model, caption_batch(size=28))


def test_cached_stem_features_give_the_same_outputs(files):
    model = build(files, "clip-decoder-lora-8")
    perturb(model)
    model.eval()
    batch = caption_batch(3)
    stem = model.image_stem()
    assert stem is not None and stem.name == "CLIP ViT tokens (all)"
    cached = dataclasses.replace(batch, images=torch.empty(3, 0), image_features=stem.encode(batch.images))
    assert cached.image_features.shape == (3, 17, 32)  # class token + 4 x 4 patches
    torch.manual_seed(0)
    plain_loss = model.loss(batch)
    torch.manual_seed(0)
    assert model.loss(cached).item() == pytest.approx(plain_loss.item(), abs=1e-5)
    assert model.predict(cached) == model.predict(batch)


# --- decoding ----------------------------------------------------------------------------------


def test_greedy_generate_equals_a_hand_argmax_loop(files):
    model = build(files, "clip-decoder-prefix-32")
    perturb(model)
    model.eval()
    batch = caption_batch(2)
    with torch.no_grad():
        states = model.encode(batch)
        out = model.generate(states, 1, 10)
        ids = torch.full((2, 1), model.tokenizer.bos_id)
        done = torch.zeros(2, dtype=torch.bool)
        for _ in range(10):
            nxt = model.decoder(input_ids=ids, encoder_hidden_states=states).logits[:, -1].argmax(-1)
            nxt = torch.where(done, model.tokenizer.pad_id, nxt)
            done |= nxt == model.tokenizer.eos_id
            ids = torch.cat([ids, nxt[:, None]], 1)
            if done.all():
                break
    assert torch.equal(out, ids)


def test_batched_beam_search_equals_per_image_beam_search(files):
    model = build(files, "clip-decoder-lora-8")
    perturb(model)
    model.eval()
    batch = caption_batch(2)
    model.use_variant("beam3")
    together = model.predict(batch)
    alone = []
    for i in range(2):
        one = dataclasses.replace(
            batch, ids=batch.ids[i : i + 1], images=batch.images[i : i + 1], captions=batch.captions[i : i + 1]
        )
        alone += model.predict(one)
    assert together == alone and all(p["caption"] for p in together)


def test_variants_switch_the_decoding_and_back(files):
    model = build(files, "clip-decoder-lora-8")
    assert model.default_variant == "greedy-12" and model._decoding == (1, 12)
    model.use_variant("beam10")
    assert model._decoding == (10, 8)
    model.use_variant(None)
    assert model._decoding == (1, 12)
    with pytest.raises(ValueError, match="decoding 'top3'"):
        model.use_variant("top3")


def test_the_encoder_runs_once_per_image_whatever_the_beams(files):
    model = build(files, "clip-decoder-lora-8")
    model.eval()
    rows = []
    model.encoder.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    assert model.eval_variants() == BEAMS
    for name in BEAMS:
        model.use_variant(name)
        model.predict(caption_batch(3))
    assert rows == [3] * len(BEAMS)


# --- attention maps ----------------------------------------------------------------------------


def test_attention_figure_for_one_chosen_image(files, tmp_path):
    model = build(files, "clip-decoder-lora-8", attention_ids=("s1",))
    perturb(model)
    model.eval()
    from PIL import Image

    samples = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        blocks = torch.rand(3, 4, 4).repeat_interleave(8, 1).repeat_interleave(8, 2)  # flat shapes, as scenes
        Image.fromarray((blocks.permute(1, 2, 0) * 255).byte().numpy()).save(path)
        samples.append(CaptionSample(f"s{i}", str(path), (CAPTIONS[i],)))

    def batch_of(chosen):
        images = torch.stack([torch.rand(3, 32, 32) for _ in chosen])
        return CaptionBatch(
            [s.id for s in chosen], images, [list(s.captions) for s in chosen], ["source"] * len(chosen)
        )

    made = model.figures(samples, [], batch_of, tmp_path / "figures")
    assert made == [{"title": "Cross-attention, s1 (chosen)", "file": "attention-s1.png"}]
    png = tmp_path / "figures" / "attention-s1.png"
    assert png.stat().st_size < 60_000 and Image.open(png).format == "PNG"

    # With CLIPScores the lowest and highest scored images are drawn too.
    lines = [{"id": f"s{i}", "caption": "x", "clipscore": score} for i, score in enumerate([0.5, 0.2, 0.9])]
    made = model.figures(samples, lines, batch_of, tmp_path / "ranked")
    assert [m["title"] for m in made] == [
        "Cross-attention, s1 (chosen)",
        "Cross-attention, s2 (highest CLIPScore 0.9000)",
    ]
    # Report 003 draws maps for its chosen setting (LoRA r=8) only; the other variants draw none.
    assert build(files, "clip-decoder-lora-4").figures(samples, lines, batch_of, tmp_path / "none") == []


def test_word_maps_sum_cross_attention_over_blocks_and_heads(files):
    from vqabench_plugins.clip_decoder_maps import word_maps

    model = build(files, "clip-decoder")
    perturb(model)
    model.eval()
    batch = caption_batch(1)
    ((words, maps),) = word_maps(model, batch, 10)
    assert maps.shape == (len(words), 4, 4)
    # Each step's attention sums to 1 per block and head over all tokens; the class token is dropped.
    # (Steps, not the words' re-encoded length: an unknown token decodes to text that re-encodes longer or shorter.)
    heads, blocks = model.decoder.config.n_head, model.decoder.config.n_layer
    with torch.no_grad():
        ids = model.generate(model.encode(batch), 1, 10)[0, 1:].tolist()
    steps = ids.index(model.tokenizer.eos_id) if model.tokenizer.eos_id in ids else len(ids)
    assert 0 < float(maps.sum()) <= steps * heads * blocks + 1e-3


# --- weights -----------------------------------------------------------------------------------


def test_paper_profile_stops_offline_with_the_weights_message(tmp_path, monkeypatch):
    isolate_caches(monkeypatch, tmp_path)
    from transformers import GPT2LMHeadModel

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(GPT2LMHeadModel, "from_pretrained", no_download)
    data = TaskData("mini-clevr", TaskKind.CAPTIONING, Path(tmp_path), {}, "rev")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as info:
        clip_decoder.build(CLIPDecoderConfig(), data, "cpu")
    assert time.perf_counter() - start < 20
    assert "gpt2" in str(info.value) and "--profile quick" in str(info.value)


def test_local_caption_lm_loads_with_new_cross_attention(files):
    from transformers import GPT2LMHeadModel

    source = GPT2LMHeadModel.from_pretrained(str(files.lm.parent))
    model = build(files)
    assert model.tokenizer.vocab_size == source.config.vocab_size
    torch.testing.assert_close(model.decoder.transformer.wte.weight, source.transformer.wte.weight)
    assert "Mini" not in model.weights and "LM" not in model.weights  # a local directory, described by name
    assert model.weights.endswith("(frozen); cross-attention, projection trained")


# --- the caption LM recipe ---------------------------------------------------------------------


def test_caption_lm_pretraining_learns_and_saves_a_loadable_decoder(tmp_path):
    texts = CAPTIONS * 16
    samples = [CaptionSample(f"c{i}", "", (t,)) for i, t in enumerate(texts)]
    data = TaskData("toy", TaskKind.CAPTIONING, tmp_path, {"train": samples, "val": samples[:8], "test": []}, "rev")
    ctx = SimpleNamespace(dataset="toy", load=lambda kind: data, out=tmp_path / "out", device=torch.device("cpu"))
    ctx.out.mkdir()
    cfg = dataclasses.replace(LM, epochs=6, batch_size=8, lr=5e-3)
    body = clip_decoder_lm.run(cfg, ctx)
    losses = body["step_losses"]
    assert len(losses) == 6 * 8 and sum(losses[-4:]) < 0.5 * sum(losses[:4])
    assert body["evaluation"]["val_loss"] < body["evaluation"]["val_loss_before"]
    assert (ctx.out / "model.safetensors").is_file() and (ctx.out / "vocabulary.json").is_file()
    vocab = json.loads((ctx.out / "vocabulary.json").read_text())
    assert vocab["tokenizer"] == "open_clip" and len(vocab["ids"]) == body["evaluation"]["vocabulary"] - 3
    files = SimpleNamespace(clip=save_tiny_clip_checkpoint(tmp_path / "clip"), lm=ctx.out / "model.safetensors")
    model = build(files)
    ids, _ = model.tokenizer.encode([CAPTIONS[1]], 40)
    assert model.tokenizer.decode(ids[0].tolist()) == CAPTIONS[1].lower()


# --- one quick run end to end ------------------------------------------------------------------


def test_quick_run_of_lora_8_records_captions_and_cider(tmp_path):
    clip = save_tiny_clip_checkpoint(tmp_path / "clip", MINI_CLEVR_CLIP)
    lm = save_tiny_lm(tmp_path / "lm", cfg=dataclasses.replace(LM, positions=64), texts=CAPTIONS)
    res = run_in(
        tmp_path,
        "clip-decoder-lora-8",
        "mini-clevr/captioning",
        "--profile",
        "quick",
        *("--data", "images=30", "--data", "workers=1"),
        *("--set", f"checkpoint={clip}", "--set", f"decoder={lm}"),
        *("--set", "eval_decodings=beam3", "--set", "greedy_steps=10", "--set", "beam_steps=8"),
        *("--epochs", "1", "--set", "train.keep_best="),  # one checkpoint: each kept one is scored again
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (path,) = (tmp_path / "runs").rglob("record.json")
    record = json.loads(path.read_text())
    assert (record["model"], record["kind"], record["profile"]) == ("clip-decoder-lora-8", "captioning", "quick")
    assert "cider" in record["final"]["test"] and record["params"]["trainable"] > 0
    assert "LoRA r=8 trained" in record["weights"]
    lines = [json.loads(line) for line in (path.parent / "predictions-test.jsonl").read_text().splitlines()]
    assert lines and all(isinstance(line["caption"], str) for line in lines)
    assert [v["name"] for v in record["variants"]] == ["greedy-10", "beam3"]
    assert all("cider" in v["test"] and v["samples_per_second"] > 0 for v in record["variants"])
    assert [f["title"] for f in record["figures"]][:1] == [f"Cross-attention, {lines[0]['id']} (first test images)"]
