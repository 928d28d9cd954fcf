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
from vqabench.model import TaskModel


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
    with pytest.raises(
        ValueError, match=r"Tiny has no trainable parameters in groups head; it has: backbone, head, proj"
    ):
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
    from vqabench.tasks import TaskKind, get_task
    from vqabench.tasks.base import CollateContext
    from vqabench.tasks.qa import QASample
    from vqabench.vocab import AnswerTargets

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
    ctx = CollateContext(store, None, None, AnswerTargets(answers), "hard", device)
    batches = Batches(get_task(TaskKind.VQA), samples, 12, ctx, shuffle=True)
    cfg = TrainConfig(lrs={"head": 1e-3, model.encoder_group: 1e-4})
    opt = make_optimizer(model, dict(cfg.lrs), cfg.weight_decay)
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


# -- warmup_step / make_scheduler ---------------------------------------------------------------------


def test_warmup_step_values():
    f = warmup_step(warmup_steps=2, decay_every=3, gamma=0.1)
    assert [f(s) for s in range(2)] == pytest.approx([0.5, 1.0])
    # After warm-up the rate is multiplied by gamma every ``decay_every`` steps (counted from step 0).
    assert [f(s) for s in range(2, 10)] == pytest.approx([1.0, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001])


def test_make_scheduler_follows_the_stage_schedule():
    def lrs(stage, steps=8):
        p = nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        sched = make_scheduler(opt, stage, steps_per_epoch=2)
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    step = Stage("s", epochs=4, warmup_epochs=0.5, schedule="step", step_every=1, step_gamma=0.5)
    # One warm-up step, then the rate halves every epoch (two steps), epochs counted from the start.
    assert lrs(step) == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125])
    cosine = Stage("c", epochs=4, warmup_epochs=1.0, schedule="cosine")
    got = lrs(cosine)
    assert got[:2] == pytest.approx([0.5, 1.0]) and got == sorted(got[:2]) + sorted(got[2:], reverse=True)
    assert got[2] == pytest.approx(1.0) and got[-1] < 0.1


# -- fit: stages, checkpoints, resume ------------------------------------------------------------------


class Probe(TaskModel):
    """A zero-shot-style classifier over mean pixel colour: a backbone group and a head group."""

    image_size = 4

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Linear(3, 8)
        self.head = nn.Linear(8, classes)
        self.begun: list[str] = []
        self.progresses: list[float] = []
        self.streams_seen: list[dict[str, int]] = []

    def param_groups(self):
        return {"backbone": list(self.backbone.parameters()), "head": list(self.head.parameters())}

    def begin_stage(self, stage):
        self.begun.append(stage.name)

    def forward(self, images):
        return self.head(torch.relu(self.backbone(images.mean((2, 3)))))

    def loss(self, batch):
        self.progresses.append(self.progress)
        if isinstance(batch, dict):
            self.streams_seen.append({k: b.num_samples for k, b in batch.items()})
            batch = batch["train"]
        return nn.functional.cross_entropy(self(batch.images), batch.labels)

    def predict(self, batch):
        return [{"logits": row.tolist()} for row in self(batch.images).float()]


def image_data(n=24, classes=3, seed=0):
    from vqabench.images import ImageStore
    from vqabench.tasks.zeroshot import ImageSample

    g = torch.Generator().manual_seed(seed)
    paths = [f"/img/{i}.png" for i in range(n)]
    store = ImageStore(paths, torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g))
    return store, [ImageSample(f"i{i}", p, i % classes) for i, p in enumerate(paths)]


def make_batches(store, samples, batch_size=5, shuffle=True, seed=0):
    from vqabench.data import Batches
    from vqabench.tasks import get_task
    from vqabench.tasks.base import CollateContext

    return Batches(get_task("zeroshot"), samples, batch_size, CollateContext(store), shuffle=shuffle, seed=seed)


class Setup:
    """A model, its training streams and a validation function scoring top-1 as the runner does."""

    def __init__(self, streams=("train",), fail_at=None, scripted=None):
        from vqabench import evaluate
        from vqabench.tasks import get_task

        torch.manual_seed(0)
        self.model = Probe()
        store, samples = image_data(30)
        self.train = {"train": samples[:18], "target_train": samples[18:24]}
        self.val = samples[24:]
        self.store = store
        self.streams = streams
        self.fail_at, self.scripted, self.calls = fail_at, scripted, 0
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.built: list[str] = []
        self.task = get_task("zeroshot")
        self.evaluate = evaluate

    def streams_for(self, stage):
        self.built.append(stage.name)
        return {name: make_batches(self.store, self.train[name]) for name in stage.streams or self.streams}

    def validate(self):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("killed")
        self.snapshots.append({k: v.clone() for k, v in self.model.state_dict().items()})
        if self.scripted is not None:
            return {"top1": self.scripted[self.calls - 1], "val_loss": self.scripted[self.calls - 1]}
        val = make_batches(self.store, self.val, shuffle=False)
        lines = self.evaluate.predict(self.model, val, self.val, "zeroshot", torch.device("cpu"))
        return {k: v for k, v in self.task.score(lines, num_classes=3).items() if isinstance(v, float)}

    def fit(self, cfg, ckpt, metric="top1", keep=()):
        from vqabench.engine import fit

        best = self.task.check_best_metric(metric)
        kept = {m: self.task.check_best_metric(m) for m in keep}
        cpu = torch.device("cpu")
        return fit(self.model, cfg, self.streams_for, self.validate, best, cpu, ckpt, progress=False, keep=kept)


def recipe(**kw):
    base = {"epochs": 3, "batch_size": 5, "warmup_epochs": 0.5, "lrs": {"head": 0.05, "backbone": 0.05}}
    return TrainConfig(**{**base, **kw})


def test_fit_single_stage_history_and_checkpoint_set(tmp_path):
    s = Setup()
    result = s.fit(recipe(), tmp_path / "ckpt")
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert all(h["stage"] == "train" and "val" in h for h in result.history)
    assert [h["stage_epoch"] for h in result.history] == [1, 2, 3]
    assert set(result.history[0]["lr"]) == {"backbone", "head"}
    assert len(result.step_losses) == 3 * 4  # 18 samples in batches of 5
    assert result.train_samples == 3 * 18 and result.train_images == 3 * 18
    assert result.resumed_from is None
    [stage] = result.stages
    assert stage["name"] == "train" and stage["best_metric"] == "top1" and stage["epochs"] == 3
    assert stage["best_value"] == max(h["val"]["top1"] for h in result.history)
    assert result.best_epoch == stage["best_epoch"]
    sdir = tmp_path / "ckpt" / "1-train"
    assert sorted(p.name for p in sdir.iterdir()) == ["best.safetensors", "done", "last"]
    assert {"checkpoint.json", "weights.safetensors", "optimizer.safetensors"} <= {
        p.name for p in (sdir / "last").iterdir()
    }
    assert s.model.begun == ["train"] and s.built == ["train"]
    # The progress p runs over the whole recipe.
    assert s.model.progresses[0] == 0.0 and s.model.progresses[-1] == pytest.approx(11 / 12)


@pytest.mark.parametrize(("metric", "best"), [("top1", 2), ("val_loss", 3)])
def test_fit_keeps_the_best_epoch_in_the_metric_direction(tmp_path, metric, best):
    s = Setup(scripted=[0.5, 0.9, 0.2, 0.6])
    result = s.fit(recipe(epochs=4), tmp_path / "ckpt", metric=metric)
    assert result.best_epoch == best and result.stages[0]["best_metric"] == metric
    # The best epoch's weights are restored at the end.
    for key, value in s.model.state_dict().items():
        assert torch.equal(value, s.snapshots[best - 1][key]), key


def test_fit_keeps_a_checkpoint_per_further_selection_metric_and_resumes_them(tmp_path):
    from vqabench.checkpoint import load_weights_file

    s = Setup(scripted=[0.5, 0.9, 0.2, 0.6])
    result = s.fit(recipe(epochs=4), tmp_path / "ckpt", keep=("top1", "val_loss"))
    assert result.best_epoch == 2
    assert {k: (v["epoch"], v["value"]) for k, v in result.kept.items()} == {"top1": (2, 0.9), "val_loss": (3, 0.2)}
    for name, epoch in (("top1", 2), ("val_loss", 3)):
        saved = load_weights_file(result.kept[name]["path"])
        assert result.kept[name]["path"].name == f"best-{name}.safetensors"
        for key, value in saved.items():
            assert torch.equal(value, s.snapshots[epoch - 1][key]), (name, key)
    # A finished recipe run again reports the same kept checkpoints without training.
    again = Setup(scripted=[0.0] * 4)
    resumed = again.fit(recipe(epochs=4), tmp_path / "ckpt", keep=("top1", "val_loss"))
    assert again.calls == 0 and resumed.kept == result.kept


def test_fit_validates_every_n_epochs_and_after_the_last(tmp_path):
    s = Setup(scripted=[0.1, 0.2, 0.3])
    result = s.fit(recipe(epochs=5, val_every=2), tmp_path / "ckpt")
    assert [h["epoch"] for h in result.history if "val" in h] == [2, 4, 5]
    assert s.calls == 3 and result.best_epoch == 5


def test_fit_fails_when_the_best_metric_is_not_validated(tmp_path):
    s = Setup()
    with pytest.raises(ValueError, match=r"best_metric 'val_loss' is undefined .* it gave: top1"):
        s.fit(recipe(), tmp_path / "ckpt", metric="val_loss")


def comparable(result):
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]
    stages = [dict(st) for st in result.stages]
    return history, result.step_losses, stages, result.best_epoch


def test_fit_resumes_a_killed_run_as_if_uninterrupted(tmp_path):
    whole = Setup()
    expected = whole.fit(recipe(epochs=4), tmp_path / "a")
    killed = Setup(fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        killed.fit(recipe(epochs=4), tmp_path / "b")
    assert not (tmp_path / "b" / "1-train" / "done").exists()
    again = Setup()
    result = again.fit(recipe(epochs=4), tmp_path / "b")
    assert result.resumed_from == {"stage": "train", "epoch": 2}
    assert comparable(result) == comparable(expected)
    for key, value in again.model.state_dict().items():
        assert torch.equal(value, whole.model.state_dict()[key]), key


def test_fit_of_a_finished_recipe_trains_nothing(tmp_path):
    first = Setup()
    expected = first.fit(recipe(), tmp_path / "ckpt")
    again = Setup()
    result = again.fit(recipe(), tmp_path / "ckpt")
    # No training; the last stage's streams only, for what the caller derives from them (its
    # feature cache, which evaluation reads) to be as after an uninterrupted run.
    assert again.calls == 0 and again.built == ["train"] and again.model.begun == ["train"]
    assert comparable(result) == comparable(expected)
    for key, value in again.model.state_dict().items():
        assert torch.equal(value, first.model.state_dict()[key]), key


STAGED = dict(
    epochs=2,
    stages=(Stage("probe", lrs={"head": 0.05}), Stage("tune", epochs=1, lrs={"head": 0.01, "backbone": 0.01})),
)


def test_fit_staged_recipe_trains_the_listed_groups_per_stage(tmp_path):
    s = Setup()
    start = {k: v.clone() for k, v in s.model.state_dict().items()}
    result = s.fit(recipe(**STAGED), tmp_path / "ckpt")
    assert s.model.begun == ["probe", "tune"] and s.built == ["probe", "tune"]
    assert [(h["epoch"], h["stage"], h["stage_epoch"]) for h in result.history] == [
        (1, "probe", 1),
        (2, "probe", 2),
        (3, "tune", 1),
    ]
    assert [set(h["lr"]) for h in result.history] == [{"head"}, {"head"}, {"head", "backbone"}]
    assert [st["name"] for st in result.stages] == ["probe", "tune"]
    assert result.stages[1]["lrs"] == {"head": 0.01, "backbone": 0.01}
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["1-probe", "2-tune"]
    # The backbone was frozen for the probe stage (its weights after it are the initial ones) ...
    after_probe = s.snapshots[1]
    assert torch.equal(after_probe["backbone.weight"], start["backbone.weight"])
    assert not torch.equal(after_probe["head.weight"], start["head.weight"])
    # ... trained in the tune stage, and trainable again after the recipe.
    assert not torch.equal(s.snapshots[2]["backbone.weight"], start["backbone.weight"])
    assert all(p.requires_grad for p in s.model.parameters())


def test_fit_staged_resume_in_a_later_stage(tmp_path):
    whole = Setup()
    expected = whole.fit(recipe(**STAGED), tmp_path / "a")
    killed = Setup(fail_at=3)  # the tune stage's validation
    with pytest.raises(KeyboardInterrupt):
        killed.fit(recipe(**STAGED), tmp_path / "b")
    assert (tmp_path / "b" / "1-probe" / "done").exists()
    again = Setup()
    result = again.fit(recipe(**STAGED), tmp_path / "b")
    assert again.model.begun == ["probe", "tune"] and again.built == ["tune"]
    assert comparable(result) == comparable(expected)
    for key, value in again.model.state_dict().items():
        assert torch.equal(value, whole.model.state_dict()[key]), key


def test_fit_with_two_streams_gives_the_model_a_batch_of_each(tmp_path):
    s = Setup(streams=("train", "target_train"))
    result = s.fit(recipe(epochs=1, streams=("train", "target_train")), tmp_path / "ckpt")
    # The first stream sets the epoch (18 samples: 4 steps); the 6-sample one cycles.
    assert len(result.step_losses) == 4
    assert s.model.streams_seen == [
        {"train": 5, "target_train": 5},
        {"train": 5, "target_train": 1},
        {"train": 5, "target_train": 5},
        {"train": 3, "target_train": 1},
    ]
    assert result.train_samples == 18 + 12


def test_fit_stops_on_a_non_finite_loss(tmp_path):
    s = Setup()
    with torch.no_grad():
        s.model.head.weight.fill_(float("nan"))
    with pytest.raises(
        FloatingPointError, match=r"training loss is nan at step 1 \(epoch 1/3\); lower the learning rate"
    ):
        s.fit(recipe(), tmp_path / "ckpt")


def test_a_stage_stops_on_a_plateau_after_patience_validations_without_improvement(tmp_path):
    s = Setup(scripted=[0.5, 0.7, 0.6, 0.65, 0.9, 0.95])
    result = s.fit(recipe(epochs=6, patience=2), tmp_path / "ckpt")
    # Best at epoch 2; epochs 3 and 4 do not beat it: the stage ends after epoch 4, with epoch 2's weights.
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4] and s.calls == 4
    assert result.best_epoch == 2 and result.stages[0]["epochs_run"] == 4 and result.stages[0]["epochs"] == 6
    for key, value in s.model.state_dict().items():
        assert torch.equal(value, s.snapshots[1][key]), key
    # A finished plateau is not trained again when the run is restarted.
    again = Setup(scripted=[0.5, 0.7, 0.6, 0.65, 0.9, 0.95])
    assert comparable(again.fit(recipe(epochs=6, patience=2), tmp_path / "ckpt")) == comparable(result)
    assert again.calls == 0
    # Without patience every epoch trains.
    assert len(Setup(scripted=[0.5, 0.7, 0.6, 0.65, 0.9, 0.95]).fit(recipe(epochs=6), tmp_path / "all").history) == 6


def test_patience_is_checked_and_a_stage_may_set_its_own():
    with pytest.raises(ValueError, match=r"train.patience must be >= 0"):
        TrainConfig(patience=-1)
    cfg = TrainConfig(patience=3, stages=(Stage("head", epochs=2, patience=1), Stage("lora", epochs=2)))
    assert [s.patience for s in cfg.resolved_stages()] == [1, 3]
