import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from vqabench.checkpoint import load_weights_file
from vqabench.config import Stage, TrainConfig
from vqabench.engine import (
    make_optimizer,
    make_scheduler,
    restore,
    trained_state,
    warmup_cosine,
    warmup_step,
)


class Tiny(nn.Module):
    """A frozen backbone (with a BatchNorm), a trainable head and a group with nothing trainable."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)
        self.proj = nn.Linear(2, 2)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.proj.bias.requires_grad_(False)

    def param_groups(self):
        return {
            "backbone": list(self.backbone.parameters()),
            "head": list(self.head.parameters()),
            "proj": list(self.proj.parameters()),
        }


def optimizer(model, strict=True, **lrs):
    return make_optimizer(model, lrs, 0.05, strict=strict)


# -- warmup_cosine ----------------------------------------------------------------------------------


def test_warmup_cosine_values():
    f = warmup_cosine(total_steps=110, warmup_steps=10)
    assert f(0) == pytest.approx(0.1)
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)  # last warm-up step
    assert f(10) == pytest.approx(1.0)  # first decay step
    assert f(60) == pytest.approx(0.5)  # halfway through the decay
    assert f(35) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert f(110) == pytest.approx(0.0, abs=1e-12)
    assert f(500) == pytest.approx(0.0, abs=1e-12)


def test_warmup_cosine_is_monotone():
    f = warmup_cosine(50, 5)
    up = [f(s) for s in range(5)]
    down = [f(s) for s in range(5, 51)]
    assert up == sorted(up)
    assert down == sorted(down, reverse=True)


def test_warmup_cosine_without_warmup():
    f = warmup_cosine(total_steps=4, warmup_steps=0)
    assert [round(f(s), 6) for s in range(5)] == [
        1.0,
        round(0.5 * (1 + math.cos(math.pi / 4)), 6),
        0.5,
        round(0.5 * (1 + math.cos(3 * math.pi / 4)), 6),
        0.0,
    ]


def test_warmup_cosine_warmup_longer_than_training():
    f = warmup_cosine(total_steps=3, warmup_steps=5)
    assert [f(s) for s in range(3)] == pytest.approx([0.2, 0.4, 0.6])


def test_warmup_cosine_drives_lambda_lr():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(10, 2))
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.1, 0.2, 0.2])
    assert lrs[-1] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))


# -- make_optimizer ---------------------------------------------------------------------------------


def test_make_optimizer_groups_use_recipe_lrs():
    model = Tiny()
    opt = optimizer(model, head=1e-3, proj=5e-4, unused=1.0)
    assert isinstance(opt, torch.optim.AdamW)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        ("head", 1e-3, 0.05),
        ("proj", 5e-4, 0.05),
    ]
    head, proj = opt.param_groups
    assert [id(p) for p in head["params"]] == [id(model.head.weight), id(model.head.bias)]
    assert [id(p) for p in proj["params"]] == [id(model.proj.weight)]  # the frozen bias is left out


def test_make_optimizer_frozen_group_needs_no_lr():
    # "backbone" has no lr in the recipe, but it is all frozen: no error.
    assert len(optimizer(Tiny(), head=1.0, proj=1.0).param_groups) == 2


def test_make_optimizer_missing_lr_names_group_and_flag():
    with pytest.raises(
        ValueError,
        match=r"parameter group 'proj' of Tiny has no learning rate; set one with --lr proj=VALUE \(recipe has: head\)",
    ):
        optimizer(Tiny(), head=1e-3)


def test_make_optimizer_no_trainable_parameters():
    model = Tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match=r"Tiny has no trainable parameters in groups head; it has: backbone, head, proj"):
        optimizer(model, head=1e-3)


def test_make_optimizer_not_strict_leaves_out_groups_without_a_rate():
    # A stage of a staged recipe lists the groups it trains; the others are not optimised.
    opt = optimizer(Tiny(), strict=False, head=1e-3)
    assert [g["name"] for g in opt.param_groups] == ["head"]
    with pytest.raises(ValueError, match=r"Tiny has no trainable parameters in groups backbone"):
        optimizer(Tiny(), strict=False, backbone=1e-3)


def test_make_optimizer_default_recipe_trains_a_head_only_model():
    class HeadOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def param_groups(self):
            return {"head": list(self.parameters())}

    recipe = TrainConfig()
    opt = make_optimizer(HeadOnly(), dict(recipe.lrs), recipe.weight_decay)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [("head", 1e-3, 0.01)]


# -- trained_state / restore --------------------------------------------------------------------------


def perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        for b in model.buffers():
            if b.is_floating_point():
                b.mul_(3.0).add_(0.5)
            else:
                b.add_(7)


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_trained_state_holds_the_named_parameters_and_every_buffer():
    torch.manual_seed(0)
    model = Tiny()
    state = trained_state(model, trainable_names(model))
    assert sorted(state) == [
        "backbone.1.num_batches_tracked",
        "backbone.1.running_mean",
        "backbone.1.running_var",
        "head.bias",
        "head.weight",
        "proj.weight",
    ]
    assert all(v.device.type == "cpu" and v.is_contiguous() and not v.requires_grad for v in state.values())
    # A copy: training on does not change what was taken.
    before = state["head.weight"].clone()
    perturb(model)
    assert torch.equal(state["head.weight"], before)


def test_trained_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    model.train()
    model.backbone(torch.randn(8, 3))  # moves the BatchNorm running statistics
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file(trained_state(model, trainable_names(model)), str(path))
    perturb(model)
    frozen_after = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k in ("backbone.0.weight", "backbone.0.bias", "proj.bias")
    }
    restore(model, load_weights_file(path), path)
    state = model.state_dict()
    for key in [
        "head.weight",
        "head.bias",
        "proj.weight",
        "backbone.1.running_mean",
        "backbone.1.running_var",
        "backbone.1.num_batches_tracked",
    ]:
        assert torch.equal(state[key], saved[key]), key
    for key, value in frozen_after.items():  # frozen parameters are not in the file: left as they are
        assert torch.equal(state[key], value), key
        assert not torch.equal(state[key], saved[key]), key


def test_restore_into_fresh_model():
    torch.manual_seed(0)
    a = Tiny()
    torch.manual_seed(1)
    b = Tiny()
    restore(b, trained_state(a, trainable_names(a)), Path("w"))
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.backbone[0].weight, b.backbone[0].weight)


def test_restore_missing_trainable_tensor_names_the_checkpoint(tmp_path):
    where = tmp_path / "ckpt" / "1-train" / "best.safetensors"
    weights = {"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}  # none of Tiny's
    with pytest.raises(
        RuntimeError,
        match=rf"checkpoint {re.escape(str(where))} lacks 3 trainable tensors \(e\.g\. head\.bias\); "
        rf"delete {re.escape(str(where.parent))} to retrain",
    ):
        restore(Tiny(), weights, where)


# -- the step loop on a GPU ----------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", ["resnet-sbert", "clip-lora"])
@pytest.mark.parametrize("store_on_gpu", [True, False])
def test_training_steps_never_make_the_host_wait_for_the_gpu(tmp_path, family, store_on_gpu):
    """Host-device syncs per epoch do not grow with the number of steps (only the epoch's end syncs)."""
    import warnings

    from helpers import NARROW_RESNET, TINY_CLIP, save_tiny_sentence_transformer, vocab
    from vqabench_plugins.clip_lora import CLIPLoRAConfig, build_clip_lora
    from vqabench_plugins.resnet_sbert import ResNetSBERTConfig, build_resnet_sbert

    from vqabench import augment
    from vqabench.data import Batches, ImageStore
    from vqabench.engine import train_epoch
    from vqabench.tasks import TaskKind
    from vqabench.tasks.qa import QASample

    device = torch.device("cuda")
    torch.manual_seed(0)
    answers = vocab(4)
    if family == "resnet-sbert":
        sbert = save_tiny_sentence_transformer(tmp_path)
        model = build_resnet_sbert(
            ResNetSBERTConfig(pretrained=False, image_encoder_kwargs=NARROW_RESNET, text_encoder=str(sbert)), answers
        )
        size = 32
    else:
        model = build_clip_lora(CLIPLoRAConfig(model_cfg=TINY_CLIP, lora_blocks=(1,)), answers, load_weights=False)
        size = model.image_size
    model = model.to(device).to(memory_format=torch.channels_last)
    paths = [f"img{i}" for i in range(24)]
    store = ImageStore(paths, torch.randint(0, 256, (24, 3, size, size), dtype=torch.uint8))
    store = store.to(device) if store_on_gpu else store
    questions = ["what color is the circle?", "how many red objects are there?", "is the square left of the circle?"]
    samples = [
        QASample(f"q{i}", p, q, (answers[i % 4],), "t")
        for i, (p, q) in enumerate((p, q) for p in paths for q in questions)
    ]
    batches = Batches(
        TaskKind.VQA,
        samples,
        store,
        12,
        shuffle=True,
        answer_index={a: i for i, a in enumerate(answers)},
        device=device,
    )
    cfg = TrainConfig(lrs={"head": 1e-3, model.encoder_group: 1e-4})
    opt = make_optimizer(model, cfg)
    jitter = augment.build(["color_jitter", "crop"])
    # Warm-up: memoised question embeddings, cuDNN plans, optimiser state, pinned host blocks.
    train_epoch(model, batches, opt, None, cfg, device, jitter)

    def syncs(steps: int) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_epoch(model, batches, opt, None, cfg, device, jitter, max_steps=steps)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(2) == syncs(5)
