import numpy as np
import pytest
import torch
from PIL import Image

from vqabench.metrics.clipscore import ClipScorer, clip_score, ref_clip_score


def test_clip_score_by_hand():
    images = [[1, 0], [0, 1], [1, 1], [1, 0]]
    captions = [[1, 0], [1, 0], [-1, -1], [3, 4]]
    # Cosines 1, 0, -1 and 0.6; negatives are clipped to 0 before scaling by 2.5.
    assert clip_score(images, captions) == pytest.approx([2.5, 0.0, 0.0, 1.5])
    assert clip_score(images, captions, w=1.0) == pytest.approx([1.0, 0.0, 0.0, 0.6])


def test_clip_score_ignores_feature_scale():
    rng = np.random.default_rng(4)
    images, captions = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    assert clip_score(3 * images, 0.1 * captions) == pytest.approx(clip_score(images, captions))


def test_ref_clip_score_by_hand():
    # CLIP-S 2.5 * 0.6 = 1.5; best reference cosine max(0.8, 0.6) = 0.8.
    result = ref_clip_score([[1, 0]], [[0.6, 0.8]], [np.array([[0, 1], [1, 0]])])
    assert result == pytest.approx([2 * 1.5 * 0.8 / (1.5 + 0.8)])


def test_ref_clip_score_reference_term_is_neither_clipped_nor_scaled():
    result = ref_clip_score([[1, 0]], [[1, 0]], [np.array([[-1, 0]])])
    assert result == pytest.approx([2 * 2.5 * -1.0 / (2.5 - 1.0)])


def test_ref_clip_score_is_zero_where_both_terms_are_zero():
    assert ref_clip_score([[0, 1]], [[1, 0]], [np.array([[0, 1]])]) == pytest.approx([0.0])


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: clip_score(np.zeros((0, 2)), np.zeros((0, 2))), "image_features"),
        (lambda: clip_score([[1, 0]], [[1, 0], [0, 1]]), "caption_features"),
        (lambda: ref_clip_score([[1, 0]], [[1, 0]], []), "reference_features"),
        (lambda: ref_clip_score([[1, 0]], [[1, 0]], [np.zeros((1, 3))]), "reference_features"),
    ],
)
def test_pure_functions_bad_input(call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.fixture(scope="module")
def tiny_clip():
    # Imported here so the pure-function tests do not pay open_clip's import time.
    import open_clip
    from open_clip.transform import image_transform

    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=32, patch_size=8, image_size=32, head_width=16),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    )
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    return model.eval(), image_transform(32, is_train=False), tokenizer


def _images(n):
    rng = np.random.default_rng(5)
    return [Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def test_clip_scorer_matches_the_pure_functions_on_prefixed_captions(tiny_clip):
    model, preprocess, tokenizer = tiny_clip
    images = _images(3)
    captions = ["a red square", "two dogs", "noise"]
    references = [["a square"], ["dogs playing", "a dog"], ["static", "grey noise", "tv"]]

    result = ClipScorer(model, preprocess, tokenizer, name="tiny-test").score(images, captions, references)

    with torch.no_grad():
        image_feats = model.encode_image(torch.stack([preprocess(im) for im in images])).numpy()
        caption_feats = model.encode_text(tokenizer(["A photo depicts " + c for c in captions])).numpy()
        ref_feats = [
            model.encode_text(tokenizer(["A photo depicts " + r for r in refs])).numpy() for refs in references
        ]
    assert set(result) == {"clipscore", "refclipscore", "clipscore_model"}
    assert result["clipscore_model"] == "tiny-test"
    assert result["clipscore"] == pytest.approx(float(np.mean(clip_score(image_feats, caption_feats))), rel=1e-5)
    assert result["refclipscore"] == pytest.approx(
        float(np.mean(ref_clip_score(image_feats, caption_feats, ref_feats))), rel=1e-5
    )


def test_clip_scorer_batching_does_not_change_the_score(tiny_clip):
    model, preprocess, tokenizer = tiny_clip
    images, captions = _images(3), ["a", "b c", "d e f"]
    whole = ClipScorer(model, preprocess, tokenizer, name="tiny").score(images, captions)
    batched = ClipScorer(model, preprocess, tokenizer, name="tiny", batch_size=2).score(images, captions)
    assert set(whole) == {"clipscore", "clipscore_model"}
    assert batched["clipscore"] == pytest.approx(whole["clipscore"], rel=1e-5)


def test_clip_scorer_bad_input(tiny_clip):
    model, preprocess, tokenizer = tiny_clip
    with pytest.raises(ValueError, match="name"):
        ClipScorer(model, preprocess, tokenizer, name="")
    scorer = ClipScorer(model, preprocess, tokenizer, name="tiny")
    with pytest.raises(ValueError, match="images"):
        scorer.score([], [])
    with pytest.raises(ValueError, match="captions"):
        scorer.score(_images(2), ["one"])
    with pytest.raises(ValueError, match="references"):
        scorer.score(_images(1), ["one"], [[]])
