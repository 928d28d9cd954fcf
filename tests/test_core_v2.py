"""The core's general mechanisms, each end to end through ``vqabench run`` with the example plugin:
two stages that add adapters, two training streams with the training progress, an evaluation-only
model, soft targets from ten answers, a plugin-registered task kind; and what guards them."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_cli, run_in

from vqabench.results import cell_dir

ROOT = Path(__file__).resolve().parents[1]


def _record(out: Path, model: str, kind: str = "vqa") -> dict:
    return json.loads((cell_dir(out, "example-colors", kind, model, "quick", 0) / "record.json").read_text())


def _run(tmp_path: Path, out: str, *args: str) -> subprocess.CompletedProcess:
    models = args[args.index("--models") + 1]
    rest = [a for i, a in enumerate(args) if i not in (args.index("--models"), args.index("--models") + 1)]
    proc = run_in(tmp_path, models, "example-colors/vqa", *rest, out=out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_two_stage_model_adds_an_adapter_in_stage_two(tmp_path, only_example):
    _run(tmp_path, "runs", "--models", "example-staged", "--leaderboards", str(tmp_path / "lb"))
    rec = _record(tmp_path / "runs", "example-staged")
    assert [s["name"] for s in rec["stages"]] == ["head", "adapt"]
    assert rec["stages"][0]["lrs"] == {"head": 0.05} and rec["stages"][1]["schedule"] == "step"
    assert [h["stage"] for h in rec["history"]] == ["head"] * 3 + ["adapt"] * 4
    # The adapter exists only from stage 2, and its group trains there alone with the head.
    assert set(rec["history"][0]["lr"]) == {"head"} and set(rec["history"][-1]["lr"]) == {"adapter", "head"}
    # Step decay: the adapter's rate halves every 2 epochs of stage 2 (rates as at each epoch's end).
    lrs = [h["lr"]["adapter"] for h in rec["history"][3:]]
    assert lrs == pytest.approx([0.02, 0.01, 0.01, 0.005])
    # What is cached changes with what is frozen: the projection in stage 1, pooled pixels in stage 2.
    assert rec["cached"]["stages"]["head"].startswith("avg-pool + frozen projection")
    assert rec["cached"]["stages"]["adapt"].startswith("avg-pool 8px")
    assert rec["final"]["test"]["vqa_accuracy"] > rec["baseline"]["test"]["vqa_accuracy"]
    board = (tmp_path / "lb" / "example-colors.md").read_text()
    assert "Val vqa_accuracy after head" in board and "Val vqa_accuracy after adapt" in board


def test_a_run_killed_in_stage_two_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path, only_example):
    args = ["--models", "example-staged", "--set", "example-staged:step_delay=0.03"]
    _run(tmp_path, "whole", *args)
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "vqabench.cli",
        "run",
        "--tasks",
        "example-colors/vqa",
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
        *args,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stage2 = cell_dir(out, "example-colors", "vqa", "example-staged", "quick", 0) / "ckpt" / "2-adapt" / "last"
    deadline = time.monotonic() + 300
    while not stage2.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed in stage 2"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (stage2.parent.parent.parent / "record.json").exists()
    _run(tmp_path, "killed", *args)
    whole, resumed = _record(tmp_path / "whole", "example-staged"), _record(out, "example-staged")
    assert resumed["resumed_from"]["stage"] == "adapt"
    assert resumed["final"] == whole["final"]
    assert resumed["step_losses"] == whole["step_losses"]
    assert [h.get("val") for h in resumed["history"]] == [h.get("val") for h in whole["history"]]
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.old"))


def test_two_streams_give_the_model_the_training_progress(tmp_path, only_example):
    _run(tmp_path, "runs", "--models", "example-dann", "--leaderboards", str(tmp_path / "lb"))
    rec = _record(tmp_path / "runs", "example-dann")
    assert rec["config"]["model"]["train"]["streams"] == ["train", "target_train"]
    assert set(rec["final"]) == {"val", "test", "target_test"}
    assert "target_test" in rec["baseline"]
    assert "Test Acc (target_test)" in (tmp_path / "lb" / "example-colors.md").read_text()


def test_the_engine_cycles_the_shorter_stream_and_progress_runs_from_0_to_1(tmp_path, plugin_site):
    import vqabench_example.models as models

    from vqabench.factory import create_model
    from vqabench.tasks.base import Streams

    model = create_model("example-dann", dataset="example-colors", kind="vqa", cache_dir=tmp_path)
    seen = []
    real = models.reversal_weight
    models.reversal_weight = lambda p: seen.append(p) or real(p)
    try:
        from vqabench.cell import Cell, RunOptions, prepare, resolve
        from vqabench.engine import fit
        from vqabench.plugins import load_plugins
        from vqabench.registry import ModelRef

        registry, _ = load_plugins()
        cell = Cell(ModelRef("example-dann"), registry.model("example-dann"), registry.dataset("example-colors"), "vqa")
        opts = RunOptions(cache_dir=tmp_path, progress=False)
        mcfg, dcfg = resolve(cell, opts)
        prep = prepare(cell, opts, mcfg, dcfg, cell.dataset.load(dcfg, "vqa", tmp_path))
        batches = []
        original = prep.model.loss
        prep.model.loss = lambda b: batches.append(b) or original(b)
        result = fit(
            prep.model,
            prep.train,
            prep.streams,
            lambda: {"vqa_accuracy": 0.5},
            cell.task.metric("vqa_accuracy"),
            prep.device,
            tmp_path / "ckpt",
            progress=False,
        )
    finally:
        models.reversal_weight = real
    assert model is not None and len(result.history) == 6
    assert all(isinstance(b, Streams) and set(b) == {"train", "target_train"} for b in batches)
    steps = len(prep.batches("train", shuffle=True))
    assert len(seen) == 6 * steps and steps > len(prep.batches("target_train", shuffle=True))  # target cycles
    assert seen[0] == 0.0 and seen == sorted(seen) and 0.95 < seen[-1] < 1.0


def test_an_evaluation_only_model_is_not_trained_and_decodes_only_its_splits(tmp_path, only_example):
    proc = run_in(tmp_path, "example-colorname", "example-colors/zeroshot", "--epochs", "3")
    assert proc.returncode == 0, proc.stderr
    rec = _record(tmp_path / "runs", "example-colorname", "zeroshot")
    assert rec["trained"] is False and rec["training"].startswith("not trained")
    for absent in ("history", "step_losses", "best_epoch", "stages"):
        assert absent not in rec
    assert set(rec["final"]) == {"test"} and "train_seconds" not in rec["timing"]
    # Only the test split's images were decoded into the store.
    stores = list((tmp_path / "cache" / "images").glob("*.npy"))
    import numpy as np

    assert [np.load(p, mmap_mode="r").shape[0] for p in stores] == [8]  # 48 images, one in six is test


def test_soft_targets_from_ten_answers(tmp_path, plugin_site):
    import torch

    from vqabench.cell import Cell, RunOptions, prepare, resolve
    from vqabench.metrics import vqa_score
    from vqabench.plugins import load_plugins
    from vqabench.registry import ModelRef

    registry, _ = load_plugins()
    cell = Cell(
        ModelRef("example-bow-soft"), registry.model("example-bow-soft"), registry.dataset("example-colors"), "vqa"
    )
    opts = RunOptions(cache_dir=tmp_path, progress=False, data_overrides={"annotators": 10})
    mcfg, dcfg = resolve(cell, opts)
    prep = prepare(cell, opts, mcfg, dcfg, cell.dataset.load(dcfg, "vqa", tmp_path))
    prep.refresh_features()
    batch = next(iter(prep.batches("train")))
    samples = {s.id: s for s in prep.splits["train"]}
    vocab = prep.data.answer_vocab
    assert any(len(set(samples[i].answers)) > 1 for i in batch.ids), "some question has disagreeing answers"
    for row, sid in enumerate(batch.ids):
        answers = list(samples[sid].answers)
        expected = torch.tensor([vqa_score(a, answers) if a in answers else 0.0 for a in vocab])
        assert torch.allclose(batch.soft_labels[row], expected)
    _run(tmp_path, "runs", "--models", "example-bow-soft", "--data", "annotators=10")
    rec = _record(tmp_path / "runs", "example-bow-soft")
    assert rec["config"]["model"]["train"]["targets"] == "soft"
    assert rec["vocab"]["size"] == len(vocab) and rec["vocab"]["coverage"]["test"] > 0.5
    assert rec["final"]["test"]["vqa_accuracy"] > rec["baseline"]["test"]["vqa_accuracy"] + 0.1


def test_a_plugin_registered_task_kind_runs_scores_and_gets_a_table(tmp_path, only_example):
    proc = run_in(
        tmp_path, "example-colorname", "example-colors/multiple-choice", "--leaderboards", str(tmp_path / "lb")
    )
    assert proc.returncode == 0, proc.stderr
    rec = _record(tmp_path / "runs", "example-colorname", "multiple-choice")
    assert rec["final"]["test"]["mc_accuracy"] == 1.0
    assert rec["baseline"]["test"]["label"] == "Always the first candidate"
    board = (tmp_path / "lb" / "example-colors.md").read_text()
    assert "## multiple-choice — quick profile" in board and "| Accuracy" in board
    assert "multiple-choice" in run_cli("plugins").stdout
    rescored = run_cli("score", str(tmp_path / "runs"))
    assert rescored.returncode == 0 and "unchanged" in rescored.stdout


def test_a_best_metric_the_task_does_not_produce_fails_before_training(tmp_path, only_example):
    proc = run_in(tmp_path, "example-bow", "example-colors/vqa", "--set", "train.best_metric=top1")
    assert proc.returncode == 2
    assert (
        "'top1' (train.best_metric / train.keep_best) is not produced by task kind 'vqa'" in proc.stderr
        and "vqa_accuracy" in proc.stderr
    )
    assert not (tmp_path / "runs" / "example-colors").exists()


def test_validation_loss_selects_the_lowest_and_val_every_skips_epochs(tmp_path, only_example):
    _run(
        tmp_path,
        "runs",
        "--models",
        "example-bow",
        "--set",
        "train.best_metric=val_loss",
        "--set",
        "train.val_every=2",
        "--set",
        "train.val_limit=10",
        "--epochs",
        "5",
    )
    rec = _record(tmp_path / "runs", "example-bow")
    validated = [h for h in rec["history"] if "val" in h]
    assert [h["epoch"] for h in validated] == [2, 4, 5]  # every 2 epochs and after the last
    losses = {h["epoch"]: h["val"]["val_loss"] for h in validated}
    assert rec["best_epoch"] == min(losses, key=losses.get)


def test_staged_epochs_need_a_stage_name(tmp_path, only_example):
    proc = run_in(tmp_path, "example-staged", "example-colors/vqa", "--epochs", "2")
    assert proc.returncode == 2 and "train.stages.head.epochs=N" in proc.stderr
    _run(tmp_path, "runs", "--models", "example-staged", "--set", "example-staged:train.stages.adapt.epochs=1")
    assert [h["stage"] for h in _record(tmp_path / "runs", "example-staged")["history"]] == ["head"] * 3 + ["adapt"]


def test_create_model_builds_a_ready_model(tmp_path, plugin_site):
    import vqabench

    model = vqabench.create_model("example-bow", dataset="example-colors", kind="vqa", cache_dir=tmp_path)
    assert model.vocab and model.training is not None
    with pytest.raises(ValueError, match="has no task kind 'zeroshot'"):
        vqabench.create_model("example-bow", dataset="example-colors", kind="zeroshot", cache_dir=tmp_path)


def test_no_per_kind_branch_outside_the_tasks_package():
    kinds = "vqa|answerability|zeroshot|captioning"
    pattern = re.compile(rf"(TaskKind\.[A-Z]+|kind\W*(==|!=|is|in)\W*\(?[\"']({kinds})[\"'])")
    offenders = []
    for path in (ROOT / "vqabench").rglob("*.py"):
        if "tasks" in path.relative_to(ROOT / "vqabench").parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_kept_checkpoints_variants_and_figures_reach_the_record_and_the_leaderboard(tmp_path, only_example):
    from helpers import save_tiny_clip_checkpoint

    clip = save_tiny_clip_checkpoint(tmp_path / "clip")
    lb = tmp_path / "lb"
    proc = run_in(
        tmp_path, "example-caption", "example-colors/captioning", "--clipscore", f"ViT-B-32@{clip}",
        "--leaderboards", str(lb),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    where = cell_dir(tmp_path / "runs", "example-colors", "captioning", "example-caption", "quick", 0)
    rec = json.loads((where / "record.json").read_text())
    # One checkpoint per selection metric, each at the epoch whose validation value was best.
    validated = [h for h in rec["history"] if "val" in h]
    for name, higher in (("val_loss", False), ("cider", True), ("clipscore", True)):
        values = [h["val"][name] for h in validated]
        best = (max if higher else min)(values)
        chosen = rec["selections"][name]
        assert chosen["val"] == best and chosen["epoch"] == validated[values.index(best)]["epoch"]
        assert set(chosen["test"]) >= {"cider", "bleu_4", "clipscore"}
        assert (where / "ckpt" / "1-train" / f"best-{name}.safetensors").is_file()
    assert rec["selections"]["cider"]["test"] == {
        k: v for k, v in rec["final"]["test"].items() if k != "clipscore_model"
    }
    # The default prediction and the variant, each scored on the test split with its speed.
    top, runner_up = rec["variants"]
    assert top["name"] == "top-1" and runner_up["name"] == "runner-up"
    assert top["test"]["cider"] == rec["final"]["test"]["cider"] != runner_up["test"]["cider"]
    assert top["samples_per_second"] > 0 and runner_up["samples_per_second"] > 0
    assert (where / "predictions-test.runner-up.jsonl").is_file()
    # Every test line carries its own CLIPScore; the record's is their mean.
    lines = [json.loads(x) for x in (where / "predictions-test.jsonl").read_text().splitlines()]
    assert sum(ln["clipscore"] for ln in lines) / len(lines) == pytest.approx(rec["final"]["test"]["clipscore"])
    # The model's figure is in the record, copied next to the leaderboard and linked from it.
    (fig,) = rec["figures"]
    assert (where / fig["file"]).is_file() and fig["file"].startswith("figures/")
    board = (lb / "example-colors.md").read_text()
    assert "### Model Saved Methods" in board and "By best CLIPScore" in board
    assert "### Decoding" in board and "runner-up" in board and "### Trainable Parameters" in board
    link = re.search(r"\[image [^\]]+\]\((figures/[^)]+\.png)\)", board)
    assert link and (lb / link.group(1)).is_file()


def test_a_selection_metric_validation_cannot_produce_is_noted_not_fatal(tmp_path, only_example):
    # Without --clipscore, validation has no CLIPScore: that selection keeps nothing and says why.
    proc = run_in(tmp_path, "example-caption", "example-colors/captioning")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec = json.loads(
        (
            cell_dir(tmp_path / "runs", "example-colors", "captioning", "example-caption", "quick", 0) / "record.json"
        ).read_text()
    )
    assert rec["selections"]["clipscore"]["epoch"] is None
    assert "--clipscore" in rec["selections"]["clipscore"]["note"]
    assert rec["selections"]["val_loss"]["epoch"] is not None


def test_a_selection_metric_the_kind_does_not_produce_fails_before_training(tmp_path, only_example):
    proc = run_in(tmp_path, "example-caption", "example-colors/captioning", "--set", "train.keep_best=vqa_accuracy")
    assert proc.returncode != 0
    assert "selection metric 'vqa_accuracy'" in proc.stderr and "cider" in proc.stderr


def test_val_split_selects_on_the_split_it_names(tmp_path, only_example):
    # Validated on "test" itself, the selected checkpoint's validation accuracy is its test accuracy.
    _run(tmp_path, "runs", "--models", "example-bow", "--set", "train.val_split=test")
    rec = _record(tmp_path / "runs", "example-bow")
    assert rec["stages"][0]["val"]["vqa_accuracy"] == rec["final"]["test"]["vqa_accuracy"]
    assert rec["config"]["model"]["train"]["val_split"] == "test"
    proc = run_in(tmp_path, "example-bow", "example-colors/vqa", "--set", "train.val_split=nope", out="bad")
    assert proc.returncode != 0 and "'nope'" in proc.stdout + proc.stderr
