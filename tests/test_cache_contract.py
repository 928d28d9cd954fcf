"""Contract: a model's cached stem features give what its own stem gives, for every registered model.

For every model whose ``image_stem()`` is not None on a small configuration, ``loss``, ``predict``
and the logits are computed on the same batch once from pixels and once from ``image_features``
gathered out of a ``FeatureStore`` (built through the disk cache):

* float32 cache: equal to 1e-5 (the stem runs the same arithmetic, in chunks of another size);
* float16 cache (the default): logits within 5e-2, loss within 1e-2, and at least 95% of the
  predicted answers the same. float16 keeps 11 significant bits (relative error <= 2**-11 per
  feature); on these small random models that moved logits by at most 1.5e-4 and the loss by
  2e-5, with every answer the same, so the bounds leave ample room for other models.

The paper architectures of the first-party families are cacheable (frozen stems); they are built
small and random-initialised, without downloads. Other models use their quick profile.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import NARROW_RESNET, QUESTION_WORDS, TINY_CLIP, save_tiny_sentence_transformer
from test_contracts import REGISTRY
from vqabench_plugins.clip_decoder import VARIANTS as CLIP_DECODERS

from vqabench.config import apply_overrides
from vqabench.data import ImageStore
from vqabench.features import FeatureStore
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.qa import QABatch

CPU = torch.device("cpu")
IMAGES, PER_IMAGE = 16, 4  # 64 questions: the 95% agreement allows 3 to differ
VOCAB = [f"answer{i}" for i in range(6)]
QA_KINDS = {TaskKind.VQA, TaskKind.ANSWERABILITY}


@pytest.fixture(scope="module")
def sbert(tmp_path_factory) -> str:
    return str(save_tiny_sentence_transformer(tmp_path_factory.mktemp("sbert"), dim=32))


def _small_resnet_sbert(spec, sbert: str):
    from vqabench_plugins.resnet_sbert import build_resnet_sbert

    cfg = dataclasses.replace(
        spec.config_cls(),
        image_encoder="resnet18",
        image_encoder_kwargs=NARROW_RESNET,
        text_encoder=sbert,
        image_size=32,
        hidden=32,
    )
    return build_resnet_sbert(cfg, VOCAB, load_weights=False)


def _small_clip_lora(spec, sbert: str):
    from vqabench_plugins.clip_lora import build_clip_lora

    # Three blocks with LoRA on the last: the cached stem is blocks 0-1, as 0-9 in ViT-B/32.
    tiny = {**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "layers": 3}}
    cfg = dataclasses.replace(spec.config_cls(), model_cfg=tiny, lora_blocks=(2,), hidden=32)
    model = build_clip_lora(cfg, VOCAB, load_weights=False)
    for name, p in model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.1)  # a trained adapter, so that the back half matters
    return model


def _small_clip_linear(spec, sbert):
    from vqabench_plugins.clip_linear import VIZWIZ_ANSWER_TYPES, build_clip_linear

    # Random frozen towers (the quick profile would first pretrain the Mini-CLEVR CLIP).
    cfg = dataclasses.replace(
        spec.config_cls(), arch="ViT-B-32", model_cfg=TINY_CLIP, pretrained=False, checkpoint="", hidden=32
    )
    return build_clip_linear(cfg, VOCAB, list(VIZWIZ_ANSWER_TYPES))


def _small_clip_cosine(spec, sbert):
    from vqabench_plugins.clip_cosine import build_clip_cosine

    # Random frozen towers (the quick profile would first pretrain the Mini-CLEVR CLIP).
    cfg = dataclasses.replace(
        spec.config_cls(), arch="ViT-B-32", model_cfg=TINY_CLIP, pretrained=False, checkpoint="", hidden=32
    )
    return build_clip_cosine(cfg, VOCAB)


def _small_clip_cosine_zeroshot(spec, sbert):
    from vqabench_plugins.clip_cosine import build_clip_cosine_zeroshot

    cfg = dataclasses.replace(spec.config_cls(), arch="ViT-B-32", model_cfg=TINY_CLIP, checkpoint="")
    return build_clip_cosine_zeroshot(cfg, VOCAB, pretrained=False)


# Models of other kinds whose family tests check the same contract on their own batches.
OWN_CACHE_TEST = {
    "clip-zeroshot": "tests/plugins/test_clip_zeroshot.py::test_cached_stem_features_give_the_same_predictions",
    **dict.fromkeys(
        CLIP_DECODERS, "tests/plugins/test_clip_decoder.py::test_cached_stem_features_give_the_same_outputs"
    ),
    **dict.fromkeys(
        ("clip-prefix-caption", "clip-prefix-caption-dann"),
        "tests/plugins/test_clip_prefix.py::test_cached_features_give_the_same_loss_and_captions",
    ),
}

# Paper architectures, small and random, per family; other families use their quick profile.
SMALL = {
    "resnet-sbert": _small_resnet_sbert,
    "clip-lora": _small_clip_lora,
    "clip-linear": _small_clip_linear,
    "clip-cosine": _small_clip_cosine,
    "clip-cosine-zeroshot": _small_clip_cosine_zeroshot,
}


def _data(kind: TaskKind, root) -> TaskData:
    return TaskData(
        "cache-contract", kind, root, {"train": [], "val": [], "test": []}, "rev0", answer_vocab=list(VOCAB)
    )


def _build(spec, kind: TaskKind, sbert: str, root):
    torch.manual_seed(0)
    if spec.family in SMALL:
        return SMALL[spec.family](spec, sbert)
    cfg = apply_overrides(spec.config_cls(), spec.profiles.get("quick", {}))
    return spec.build(cfg, _data(kind, root), CPU)


def _store(size: int) -> ImageStore:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(IMAGES, 3, size, size), dtype=np.uint8)
    return ImageStore([f"/contract/{i}.png" for i in range(IMAGES)], images)


def _batch(store: ImageStore, features: FeatureStore | None) -> QABatch:
    """Every image with PER_IMAGE questions, built as collation does: pixels, or a placeholder
    plus the cached stem features of the batch's distinct images."""
    rng = np.random.default_rng(1)
    paths = list(reversed(store.paths))  # not the store's order: rows are looked up by key
    questions = [" ".join(rng.choice(QUESTION_WORDS, size=rng.integers(3, 8))) + " ?" for _ in paths * PER_IMAGE]
    image_index = torch.arange(len(paths)).repeat_interleave(PER_IMAGE)
    if features is None:
        images, cached = store.gather(paths), None
    else:
        images, cached = torch.empty(len(paths), 0), features.gather(paths)
    n = len(questions)
    return QABatch(
        ids=[f"q{i}" for i in range(n)],
        images=images,
        image_index=image_index,
        questions=questions,
        labels=torch.from_numpy(rng.integers(0, len(VOCAB), size=n)),
        answerable=torch.ones(n),
        question_types=["t"] * n,
        answer_types=["other"] * n,
        image_features=cached,
    )


def _outputs(model, batch: QABatch, state: dict) -> dict:
    model.load_state_dict(state)  # a training-mode loss moves BatchNorm statistics of trained layers
    model.train()
    torch.manual_seed(0)  # the same dropout masks on both paths
    loss = model.loss(batch).item()
    model.eval()
    with torch.no_grad():
        out = model(batch)  # the answer logits, or a tuple of heads with them first (clip-linear)
        logits = (out[0] if isinstance(out, tuple) else out).float()
    preds = model.predict(batch)
    return {"loss": loss, "logits": logits, "preds": preds}


@pytest.mark.parametrize("name", sorted(REGISTRY.models))
def test_cached_stem_features_give_the_same_outputs(name, sbert, tmp_path):
    spec = REGISTRY.model(name)
    kinds = [k for k in spec.task_kinds if k in QA_KINDS]
    if spec.name in OWN_CACHE_TEST:
        pytest.skip(f"{name} ({', '.join(spec.task_kinds)}): its cache is checked by {OWN_CACHE_TEST[spec.name]}")
    model = _build(spec, kinds[0] if kinds else spec.task_kinds[0], sbert, tmp_path)
    stem = model.image_stem()
    if stem is None:
        pytest.skip(f"{name} has no frozen image stem on its small configuration")
    if not kinds:
        pytest.fail(f"{name} caches its stem for {spec.task_kinds}: add a batch of that kind to this test")
    store = _store(model.image_size)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = _outputs(model, _batch(store, None), state)
    assert math.isfinite(plain["loss"])

    exact, hit = FeatureStore.build(stem, store, tmp_path, "rev0", CPU, batch_size=5, dtype="float32")
    assert not hit and exact.features.dtype == torch.float32
    cached = _outputs(model, _batch(store, exact), state)
    assert torch.allclose(cached["logits"], plain["logits"], atol=1e-5, rtol=0)
    assert cached["loss"] == pytest.approx(plain["loss"], abs=1e-5)
    assert [p["answer"] for p in cached["preds"]] == [p["answer"] for p in plain["preds"]]
    assert [p["confidence"] for p in cached["preds"]] == pytest.approx(
        [p["confidence"] for p in plain["preds"]], abs=1e-5
    )

    half, _ = FeatureStore.build(stem, store, tmp_path, "rev0", CPU, batch_size=5)
    assert half.features.dtype == torch.float16
    approx = _outputs(model, _batch(store, half), state)
    assert torch.allclose(approx["logits"], plain["logits"], atol=5e-2, rtol=0)
    assert approx["loss"] == pytest.approx(plain["loss"], abs=1e-2)
    same = sum(a["answer"] == b["answer"] for a, b in zip(approx["preds"], plain["preds"]))
    assert same >= 0.95 * len(plain["preds"])
