"""CLIP-prefix captioning (report 004): mapper + decoder, gradient reversal, the stage-1 pretraining,
per-epoch loss parts, and both models end to end on a tiny Mini-CLEVR."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import TINY_CLIP, check_gradients, run_in, save_tiny_clip_checkpoint
from vqabench_plugins import clip_prefix, clip_prefix_pretrain
from vqabench_plugins.clip_prefix import ARTIFACT, build_clip_prefix, quick_config
from vqabench_plugins.clip_prefix_pretrain import PrefixPretrainConfig, read_pairs
from vqabench_plugins.clip_pretrain import MINI_CLEVR_CLIP

from vqabench.config import TrainConfig, apply_overrides
from vqabench.engine import train_epoch
from vqabench.layers import GradReverse, reversal_weight
from vqabench.model import TaskModel
from vqabench.pretrain import PretrainContext, ensure
from vqabench.results import cell_dir
from vqabench.tasks import TaskData, TaskKind
from vqabench.tasks.base import Streams
from vqabench.tasks.captioning import CaptionBatch, CaptionSample
from vqabench.weights import WeightsUnavailable

CAPTIONS = (
    "a small red circle.",
    "a large blue square.",
    "two green triangles.",
    "a yellow pentagon left of a cyan circle.",
)
# A small captioner: what the quick profile builds, narrower and with a 2-token prefix.
SMALL = {"captioner.width": 16, "captioner.heads": 2, "captioner.prefix_length": 2, "captioner.max_tokens": 16}


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_tiny_clip_checkpoint(tmp_path_factory.mktemp("clip"))


def tiny(clip_file: Path, adversarial: bool = False, **changes):
    """The quick configuration on the tiny 32-d CLIP, without a stage-1 pretraining."""
    base = {"checkpoint": str(clip_file), "model_cfg": TINY_CLIP, "init": "none", **SMALL, "discriminator_hidden": 8}
    return quick_config({**base, **changes}, adversarial=adversarial)


def data() -> TaskData:
    samples = [CaptionSample(f"s{i}", f"/nowhere/{i}.png", (c, CAPTIONS[(i + 1) % 4])) for i, c in enumerate(CAPTIONS)]
    targets = [dataclasses.replace(s, id=f"t{i}", domain="target") for i, s in enumerate(samples)]
    return TaskData("toy", TaskKind.CAPTIONING, Path("/nowhere"), {"train": samples, "target_train": targets}, "r0")


def batch(domain: str, seed: int = 0, size: int = 32) -> CaptionBatch:
    g = torch.Generator().manual_seed(seed)
    return CaptionBatch(
        ids=[f"{domain}{i}" for i in range(4)],
        images=torch.rand(4, 3, size, size, generator=g),
        captions=[[c, CAPTIONS[(i + 1) % 4]] for i, c in enumerate(CAPTIONS)],
        domains=[domain] * 4,
    )


def streams(size: int = 32) -> Streams:
    return Streams({"target_train": batch("target", 1, size), "train": batch("source", 2, size)})


# --- gradient reversal and its schedule -------------------------------------------------------------


def test_gradient_reversal_is_the_identity_forward_and_minus_lambda_times_the_gradient_backward():
    x = torch.randn(3, 5, requires_grad=True)
    y = GradReverse.apply(x, 0.3)
    assert torch.equal(y, x)
    grad = torch.randn(3, 5)
    y.backward(grad)
    torch.testing.assert_close(x.grad, -0.3 * grad)


def test_the_reversal_weight_follows_ganin_and_lempitsky():
    assert reversal_weight(0.0) == 0.0
    assert reversal_weight(0.1) == pytest.approx(2 / (1 + math.exp(-1)) - 1)  # 0.4621
    assert reversal_weight(0.5) == pytest.approx(0.98661, abs=1e-5)
    assert reversal_weight(1.0) == pytest.approx(0.99991, abs=1e-5)
    values = [reversal_weight(p / 10) for p in range(11)]
    assert values == sorted(values)


# --- the model ------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["ce", "mse"])
@pytest.mark.parametrize("adversarial", [False, True])
def test_every_trainable_parameter_gets_a_gradient_and_the_clip_none(clip_file, adversarial, objective):
    torch.manual_seed(0)
    model = build_clip_prefix(tiny(clip_file, adversarial, **{"captioner.objective": objective}), data())
    model.progress = 0.5  # the reversal weight is 0 at the very start
    check_gradients(model, streams())
    assert not any(p.requires_grad for p in model.visual.parameters())
    groups = {"mapper", "decoder", "discriminator"} if adversarial else {"mapper", "decoder"}
    assert set(model.param_groups()) == groups
    wte = model.captioner.decoder.get_input_embeddings().weight
    # The MSE objective regresses the token embeddings: they are its fixed target, so frozen.
    assert wte.requires_grad is (objective == "ce")


def test_clipcaps_transformer_mapper_trains_too(clip_file):
    torch.manual_seed(0)
    changes = {"captioner.mapper": "transformer", "captioner.mapper_layers": 2}
    model = build_clip_prefix(tiny(clip_file, adversarial=True, **changes), data())
    model.progress = 0.5
    check_gradients(model, streams())
    assert model.captioner.prefix(torch.randn(3, 32)).shape == (3, 2, 16)


def test_the_discriminator_gradient_reaches_the_mapper_reversed_and_scaled(clip_file):
    torch.manual_seed(0)
    model = build_clip_prefix(tiny(clip_file, adversarial=True), data())
    features = model._encode(torch.rand(6, 3, 32, 32))
    domains = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])

    def mapper_grad(weight: float) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss, _ = model.domain_losses(model.captioner.prefix(features), domains, weight)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.captioner.mapper.parameters()])

    model.eval()  # no dropout: the same discriminator output each time
    plain = mapper_grad(-1.0)  # a reversal by -1 passes the gradient unchanged
    reversed_ = mapper_grad(0.5)
    assert plain.abs().sum() > 0
    torch.testing.assert_close(reversed_, -0.5 * plain)
    assert mapper_grad(0.0).abs().sum() == 0  # lambda(0) = 0: the mapper feels nothing yet
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.discriminator.parameters())


def test_loss_reports_its_parts_and_the_adversarial_loss_is_the_flipped_label_bce(clip_file):
    torch.manual_seed(0)
    model = build_clip_prefix(tiny(clip_file, adversarial=True), data())
    model.progress = 0.2
    loss = model.loss(streams())
    parts = model.loss_parts
    assert set(parts) == {
        "caption",
        "caption_source",
        "caption_target",
        "discriminator",
        "adversarial",
        "reversal_weight",
    }
    assert parts["reversal_weight"].item() == pytest.approx(reversal_weight(0.2))
    assert loss.item() == pytest.approx((parts["caption"] + parts["discriminator"]).item(), rel=1e-5)
    # Equal source and target weights: the caption loss is the token-weighted mean of the two domains'.
    assert min(parts["caption_source"], parts["caption_target"]) <= parts["caption"]
    assert parts["caption"] <= max(parts["caption_source"], parts["caption_target"])
    # One domain alone (a validation batch): captions only.
    model.loss(batch("source"))
    assert set(model.loss_parts) == {"caption", "caption_source", "caption_target"}
    plain = build_clip_prefix(tiny(clip_file), data())
    plain.loss(streams())
    assert "discriminator" not in plain.loss_parts


def test_source_weight_zero_trains_on_target_captions_only(clip_file):
    torch.manual_seed(0)
    model = build_clip_prefix(tiny(clip_file, source_weight=0.0), data())
    model.eval()
    torch.manual_seed(1)
    loss = model.loss(streams())
    assert loss.item() == pytest.approx(model.loss_parts["caption_target"].item())


def test_cached_features_give_the_same_loss_and_captions(clip_file):
    torch.manual_seed(0)
    model = build_clip_prefix(tiny(clip_file), data()).eval()
    plain = batch("source")
    cached = dataclasses.replace(
        plain, images=torch.empty(4, 0), image_features=model.image_stem().encode(plain.images)
    )
    torch.manual_seed(3)
    expected = model.loss(plain).item()
    torch.manual_seed(3)
    assert model.loss(cached).item() == pytest.approx(expected, abs=1e-6)
    assert model.predict(cached) == model.predict(plain)
    # The stem is keyed by the CLIP weights and the normalisation: another key when either changes.
    raw = build_clip_prefix(tiny(clip_file, **{"captioner.normalize": False}), data())
    assert raw.image_stem().key != model.image_stem().key
    assert torch.allclose(model.image_stem().encode(plain.images).norm(dim=-1), torch.ones(4))


def test_greedy_and_beam_captions_are_decoded_from_the_restricted_vocabulary(clip_file):
    torch.manual_seed(0)
    model = build_clip_prefix(tiny(clip_file), data()).eval()
    assert model.default_variant == "greedy" and model.eval_variants() == ("beam-3",)
    greedy = model.predict(batch("source"))
    model.use_variant("beam-3")
    beam = model.predict(batch("source"))
    model.use_variant(None)
    assert len(greedy) == len(beam) == 4 and all(isinstance(p["caption"], str) for p in greedy + beam)
    words = {w.strip(".") for c in CAPTIONS for w in c.split()}
    assert {w.strip(".,") for p in greedy + beam for w in p["caption"].split()} <= words
    assert "restricted to" in model.weights and "from random init" in model.weights
    with pytest.raises(ValueError, match="no prediction variant 'beam-9'"):
        model.use_variant("beam-9")


def test_configuration_errors_name_the_field_and_the_fix(clip_file):
    with pytest.raises(ValueError, match="captioner.objective='l1' is not one of ce, mse"):
        tiny(clip_file, **{"captioner.objective": "l1"})
    with pytest.raises(ValueError, match="train.streams=train; e.g. --set train.streams=target_train,train"):
        tiny(clip_file, adversarial=True, **{"train.streams": "train"})
    # The paper profile fine-tunes from a stage-1 pretraining: without one it stops before training.
    with pytest.raises(WeightsUnavailable, match="vqabench pretrain clip-prefix"):
        build_clip_prefix(clip_prefix.ClipPrefixConfig(), data())


# --- per-epoch loss parts in the engine --------------------------------------------------------------


class _Parts(TaskModel):
    def __init__(self, parts: bool) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.step, self.parts = 0, parts

    def loss(self, batch):
        self.step += 1
        if self.parts:
            self.loss_parts = {"a": torch.tensor(float(self.step)), "b": torch.tensor(2.0)}
        return self.w.sum() * self.step


def test_the_engine_records_the_epoch_means_of_a_models_loss_parts():
    for parts, expected in ((True, {"a": 2.5, "b": 2.0}), (False, {})):
        model = _Parts(parts)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        stats = train_epoch(model, [batch("source") for _ in range(4)], opt, None, TrainConfig(), torch.device("cpu"))
        assert stats.parts == expected and len(stats.losses) == 4


# --- stage 1: pretraining on pairs -------------------------------------------------------------------


def write_pairs(path: Path, n: int = 200, dim: int = 32) -> Path:
    """Four clusters of embeddings, each with its own caption."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, dim)).astype(np.float32)
    labels = np.arange(n) % 4
    embeddings = centres[labels] + 0.05 * rng.normal(size=(n, dim)).astype(np.float32)
    np.savez(path, embeddings=embeddings, captions=np.array([CAPTIONS[i] for i in labels]))
    return path


def pretrain_pairs(tmp_path: Path, pairs: Path, **changes) -> tuple[dict, Path]:
    cfg = apply_overrides(
        PrefixPretrainConfig(),
        {"pairs": str(pairs), "epochs": 15, "batch_size": 16, "lr": 3e-3, **SMALL, **changes},
    )
    out = tmp_path / "stage1"
    out.mkdir()

    def load(kind):
        raise AssertionError("pretraining on pairs reads no dataset")

    ctx = PretrainContext("toy", None, tmp_path, out, torch.device("cpu"), load, progress=False)
    return clip_prefix_pretrain.pretrain(cfg, ctx), out / ARTIFACT


def test_pretraining_on_an_npz_of_pairs_learns_and_fine_tuning_starts_from_it(tmp_path, clip_file):
    torch.manual_seed(0)
    body, artifact = pretrain_pairs(tmp_path, write_pairs(tmp_path / "pairs.npz"))
    losses = [e["loss"] for e in body["epochs"]]
    assert losses[-1] < 0.5 * losses[0]
    held = body["evaluation"]["held_out"]
    assert held["images"] == 4 and held["bleu_1"] > 0.9 and held["example"] in CAPTIONS
    assert body["corpus"]["embeddings"]["digest"] is None and body["corpus"]["embeddings"]["dim"] == 32
    saved = json.loads((artifact.parent / clip_prefix.ARTIFACT_CONFIG).read_text())
    assert saved["tokenizer"] == "open_clip" and len(saved["token_ids"]) > 10

    # Stage 2 loads mapper and decoder as trained.
    from safetensors.torch import load_file

    model = build_clip_prefix(tiny(clip_file, init=str(artifact)))
    weights = load_file(str(artifact))
    assert set(weights) <= set(model.captioner.state_dict()) and "mapper.net.0.weight" in weights
    for name, tensor in weights.items():
        torch.testing.assert_close(model.captioner.state_dict()[name], tensor)
    assert "pretrained here (clip-prefix on toy: 196 images' captions" in model.weights
    # Another architecture than the pretraining's is refused, naming the field.
    with pytest.raises(ValueError, match="another captioner \\(width: 16 there, 24 here\\)"):
        build_clip_prefix(tiny(clip_file, init=str(artifact), **{"captioner.width": 24}))
    # Embeddings of another size than this CLIP's are refused.
    other = dict(TINY_CLIP, embed_dim=48)
    clip48 = save_tiny_clip_checkpoint(tmp_path / "clip48", other)
    with pytest.raises(ValueError, match="pretrained on 32-d embeddings; this CLIP gives 48-d"):
        build_clip_prefix(tiny(clip48, model_cfg=other, init=str(artifact)))


def test_source_embeddings_from_a_pairs_file_stand_in_for_a_source_stream(tmp_path, clip_file):
    """Report 004's setting: one target dataset (Flickr30k) against LAION's source embeddings."""
    pairs = str(write_pairs(tmp_path / "laion.npz"))
    one = {"train.streams": "train", "source_pairs": pairs}
    torch.manual_seed(0)
    model = build_clip_prefix(tiny(clip_file, adversarial=True, **one), data())
    assert model.source_bank.shape == (200, 32) and "against the source embeddings of laion.npz" in model.weights
    model.progress = 0.5
    check_gradients(model, batch("source"))  # the dataset's samples are the target domain now
    model.loss(batch("source"))
    assert {"discriminator", "adversarial"} <= set(model.loss_parts)
    assert model.loss_parts["caption_target"] == model.loss_parts["caption"]
    assert not any(k.startswith("source") for k in model.state_dict())  # the bank stays out of checkpoints
    with pytest.raises(ValueError, match="200-d embeddings; this CLIP gives 32-d"):
        write_pairs(tmp_path / "wide.npz", dim=200)
        build_clip_prefix(tiny(clip_file, adversarial=True, **{**one, "source_pairs": str(tmp_path / "wide.npz")}))


def test_pairs_files_that_cannot_be_read_are_refused_naming_the_file_and_the_fix(tmp_path):
    np.savez(tmp_path / "bad.npz", embeddings=np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"bad.npz: lacks array\(s\) captions"):
        read_pairs(str(tmp_path / "bad.npz"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_pairs(str(tmp_path / "missing.npz"))
    (tmp_path / "pairs.txt").write_text("a red circle\n")
    with pytest.raises(ValueError, match="expected a .npz or .parquet file"):
        read_pairs(str(tmp_path / "pairs.txt"))


def test_pretraining_on_a_laion_style_parquet(tmp_path, clip_file):
    pd = pytest.importorskip("pandas")
    file = tmp_path / "laion.parquet"
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        file.write_bytes(b"PAR1")
        with pytest.raises(ImportError, match=r"needs pyarrow.*npz file \(numpy.savez"):
            read_pairs(str(file))
        return
    with np.load(write_pairs(tmp_path / "pairs.npz")) as z:
        frame = pd.DataFrame({"TEXT": list(z["captions"]), "img_emb": list(z["embeddings"]), "url": "x"})
    frame.to_parquet(file)
    with pytest.raises(ValueError, match="needs columns 'caption' and 'embedding'"):
        read_pairs(str(file))
    embeddings, captions = read_pairs(str(file), "TEXT", "img_emb")
    assert embeddings.shape == (200, 32) and captions[:2] == list(CAPTIONS[:2])
    torch.manual_seed(0)
    body, _ = pretrain_pairs(tmp_path, file, caption_column="TEXT", embedding_column="img_emb")
    assert body["evaluation"]["held_out"]["bleu_1"] > 0.9


# --- end to end ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> SimpleNamespace:
    """A random Mini-CLEVR-sized CLIP, and a short stage-1 pretraining through it on a tiny Mini-CLEVR."""
    from vqabench.plugins import load_plugins

    root = tmp_path_factory.mktemp("clip-prefix-e2e")
    torch.manual_seed(0)
    clip = save_tiny_clip_checkpoint(root / "clip", MINI_CLEVR_CLIP)
    registry, _ = load_plugins()
    done = ensure(
        registry,
        "clip-prefix",
        "mini-clevr",
        cache_dir=root / "cache",
        overrides={"checkpoint": str(clip), "epochs": 1, "data": {"mini-clevr": {"images": 40, "image_size": 64}}},
        progress=False,
    )
    return SimpleNamespace(root=root, clip=clip, pretrained=done)


def test_the_stage1_pretraining_embeds_the_source_images_with_the_clip_and_evaluates_both_domains(stage1):
    record = stage1.pretrained.record
    assert record["corpus"]["images"] == 32  # the source-domain train split of 40 scenes
    assert set(record["evaluation"]) == {"val", "target_val"}
    assert record["corpus"]["embeddings"]["digest"] and "clip-prefix on mini-clevr" in json.dumps(record)


def test_both_models_run_end_to_end_with_target_and_source_scores_and_loss_parts(stage1, tmp_path):
    res = run_in(
        tmp_path,
        "clip-prefix-caption,clip-prefix-caption-dann",
        "mini-clevr/captioning",
        *("--data", "images=40", "--data", "workers=1"),
        *("--set", f"checkpoint={stage1.clip}", "--set", f"init={stage1.pretrained.artifact}"),
        *("--set", "train.epochs=3", "--set", "train.val_every=3"),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    records = {}
    for name in ("clip-prefix-caption", "clip-prefix-caption-dann"):
        record = json.loads(
            (cell_dir(tmp_path / "runs", "mini-clevr", "captioning", name, "quick", 0) / "record.json").read_text()
        )
        records[name] = record
        for split in ("test", "target_test"):
            assert {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"} <= set(record["final"][split])
        assert len(record["history"]) == 3 and "val" in record["history"][-1]
        assert "pretrained here (clip-prefix on mini-clevr" in record["weights"]
        assert [v["name"] for v in record.get("variants", [])] in ([], ["greedy", "beam-3"])
    plain, dann = records["clip-prefix-caption"], records["clip-prefix-caption-dann"]
    for entry in dann["history"]:
        parts = entry["train_loss_parts"]
        assert {"caption", "discriminator", "adversarial", "reversal_weight"} <= set(parts)
        assert 0 < parts["discriminator"] < 5 and 0 < parts["adversarial"] < 5
    weights = [e["train_loss_parts"]["reversal_weight"] for e in dann["history"]]
    assert weights == sorted(weights) and weights[0] < weights[-1] < 1
    assert all("discriminator" not in e["train_loss_parts"] for e in plain["history"])
    assert "domain-adversarial" in dann["weights"] and "domain-adversarial" not in plain["weights"]
