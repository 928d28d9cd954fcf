import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import run_cli

from vqabench.plugins import load_plugins
from vqabench.registry import DatasetSpec
from vqabench.results import iter_records, read_jsonl
from vqabench.runner import RunOptions, Skipped, plan, run

# The example plugin's first two models; its others (soft targets, stages, streams) have their own tests.
MODELS = ("example-bow", "example-colorname")


@pytest.fixture
def opts(only_example, tmp_path):
    # Captioning has its own test below: its Java scorers take seconds to start.
    return RunOptions(
        models=MODELS,
        tasks=("example-colors/vqa", "example-colors/zeroshot"),
        out=tmp_path / "runs",
        cache_dir=tmp_path / "cache",
        progress=False,
    )


def test_plan_pairs_compatible_cells_and_lists_skipped(opts):
    registry, _ = load_plugins()
    cells, skipped = plan(registry, RunOptions(models=MODELS, tasks=("example-colors",)))
    assert sorted((str(c.ref), c.kind) for c in cells) == [
        ("example-bow", "answerability"),
        ("example-bow", "vqa"),
        ("example-colorname", "captioning"),
        ("example-colorname", "multiple-choice"),
        ("example-colorname", "zeroshot"),
    ]
    assert all(type(c.kind) is str and c.task.name == c.kind for c in cells)
    assert all(isinstance(s, Skipped) for s in skipped)
    assert Skipped("example-bow", "example-colors/captioning", "model supports vqa, answerability") in skipped
    assert (
        Skipped("example-colorname", "example-colors/vqa", "model supports zeroshot, captioning, multiple-choice")
        in skipped
    )
    assert sorted((s.model, s.task) for s in skipped) == [
        ("example-bow", "example-colors/captioning"),
        ("example-bow", "example-colors/multiple-choice"),
        ("example-bow", "example-colors/zeroshot"),
        ("example-colorname", "example-colors/answerability"),
        ("example-colorname", "example-colors/vqa"),
    ]


def test_plan_all_models_plans_every_registered_model(opts):
    registry, _ = load_plugins()
    cells, skipped = plan(registry, RunOptions(models=("all",), tasks=("example-colors/vqa",)))
    planned = {str(c.ref) for c in cells} | {s.model for s in skipped}
    assert planned == set(registry.models) and set(MODELS) <= planned


def test_plan_errors_name_the_unknown_thing(opts):
    registry, _ = load_plugins()
    with pytest.raises(KeyError, match="did you mean 'example-bow'"):
        plan(registry, RunOptions(models=("example-bw",), tasks=("example-colors",)))
    with pytest.raises(KeyError, match="unknown task kind 'answerable'; did you mean 'answerability'"):
        plan(registry, RunOptions(models=("example-bow",), tasks=("example-colors/answerable",)))
    registry.add("dataset", DatasetSpec("only-vqa", ("vqa",), type(None), lambda c, k, d: None), "test")
    with pytest.raises(ValueError, match=r"dataset 'only-vqa' has no task kind 'zeroshot'; it has: vqa$"):
        plan(registry, RunOptions(models=("example-bow",), tasks=("only-vqa/zeroshot",)))
    with pytest.raises(ValueError, match="no weights tag 'openai'"):
        plan(registry, RunOptions(models=("example-bow@openai",), tasks=("example-colors",)))


def test_run_writes_records_predictions_and_ledger(opts):
    registry, infos = load_plugins()
    ledger = run(registry, infos, opts)
    states = {k.split("|")[0] + "|" + k.split("|")[1]: v["state"] for k, v in ledger.cells.items()}
    assert states["example-bow|example-colors/vqa"] == "done"
    assert states["example-colorname|example-colors/vqa"] == "skipped"
    records = {r["model"]: (p, r) for p, r in iter_records(opts.out)}
    path, rec = records["example-bow"]
    assert rec["weights"] == "random init" and rec["params"]["trainable"] == rec["params"]["total"] > 0
    assert [h["epoch"] for h in rec["history"]] == list(range(1, 7))
    assert rec["schema"] == 2 and rec["trained"] is True and rec["kind"] == "vqa"
    assert rec["final"]["test"]["vqa_accuracy"] > rec["baseline"]["test"]["vqa_accuracy"]  # it learns
    # The baseline: its label, the prediction it makes and every scalar metric of the kind.
    base = rec["baseline"]["test"]
    assert base["label"] == f'Majority answer ("{base["prediction"]["answer"]}")'
    assert {"vqa_accuracy", "weighted_precision", "weighted_recall", "weighted_f1", "aurc"} <= set(base)
    assert "prediction_distribution" not in base and "risk_coverage" not in base  # scalars only
    assert set(rec["baseline"]) == {"val", "test"}
    assert [st["name"] for st in rec["stages"]] == ["train"] and rec["stages"][0]["best_metric"] == "vqa_accuracy"
    assert rec["best_epoch"] == rec["stages"][0]["best_epoch"] and rec["resumed_from"] is None
    assert rec["vocab"]["size"] == 6  # four colours, yes and no
    assert rec["vocab"]["rule"] == "all training answers" and set(rec["vocab"]["coverage"]) == {"val", "test"}
    assert rec["augmentations"] == {
        "used": ["color_jitter"],
        "disabled": {"hflip": "changes answers on example-colors"},
    }
    assert rec["compiled"] == []  # train.compile is off by default
    assert rec["versions"]["model_plugin"] == {
        "plugin": "example",
        "distribution": "vqabench-example",
        "version": "0.1.0",
    }
    lines = read_jsonl(path.parent / "predictions-test.jsonl")
    assert len(lines) == 24 and {"id", "answer", "answers", "question_type", "confidence"} <= set(lines[0])
    stage = path.parent / "ckpt" / "1-train"
    assert (stage / "best.safetensors").exists() and (stage / "last" / "checkpoint.json").exists()
    assert (stage / "done").is_dir()
    zs = records["example-colorname"][1]
    assert zs["trained"] is False and zs["training"] == "not trained (evaluation only)"
    assert not {"history", "step_losses", "stages", "best_epoch", "resumed_from"} & set(zs)
    assert zs["final"]["test"]["top1"] == 1.0 and "val" not in zs["final"]
    assert zs["baseline"]["test"]["label"].startswith("Most frequent class")
    assert zs["vocab"] is None and "timing" in zs and "epoch_seconds" not in zs["timing"]


def test_rerun_skips_finished_cells_unless_forced_or_config_changes(opts):
    registry, infos = load_plugins()
    run(registry, infos, opts)
    rec_path = next(p for p, r in iter_records(opts.out) if r["model"] == "example-bow")
    before = rec_path.stat().st_mtime_ns
    ledger = run(registry, infos, opts)
    assert rec_path.stat().st_mtime_ns == before
    assert any("same config hash" in v.get("reason", "") for v in ledger.cells.values())
    changed = RunOptions(**{**opts.__dict__, "model_overrides": {"train.epochs": "2"}, "models": ("example-bow",)})
    run(registry, infos, changed)
    assert len(json.loads(rec_path.read_text())["history"]) == 2


def test_failing_cell_is_recorded_and_the_run_goes_on(opts, monkeypatch):
    import vqabench_example

    def broken(*args):
        raise RuntimeError("cannot build")

    monkeypatch.setattr(vqabench_example, "BagOfWords", broken)
    registry, infos = load_plugins()
    ledger = run(registry, infos, opts)
    failed = [v for k, v in ledger.cells.items() if k.startswith("example-bow|example-colors/vqa")]
    assert failed[0]["state"] == "failed" and "cannot build" in failed[0]["error"]
    assert any(k.startswith("example-colorname") and v["state"] == "done" for k, v in ledger.cells.items())


def test_limit_takes_a_recorded_partial_sample(opts):
    registry, infos = load_plugins()
    run(registry, infos, RunOptions(**{**opts.__dict__, "limit": 6, "models": ("example-bow",)}))
    ((_, rec),) = list(iter_records(opts.out))
    assert rec["partial"] is True and rec["limit"] == 6
    assert all(len(ids) == 6 for ids in rec["sample_ids"].values())


def test_killed_run_resumes_from_its_last_epoch(only_example, tmp_path):
    args = [
        sys.executable,
        "-m",
        "vqabench.cli",
        "run",
        "--models",
        "example-bow",
        "--tasks",
        "example-colors/vqa",
        "--out",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--epochs",
        "40",
        "--no-progress",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cell = tmp_path / "runs/example-colors/vqa/example-bow/quick-seed0"
    last = cell / "ckpt" / "1-train" / "last"  # a checkpoint set, renamed into place when complete
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists(), "training never reached its first checkpoint"
    assert not (cell / "record.json").exists()
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rec = json.loads((cell / "record.json").read_text())
    assert rec["resumed_from"]["stage"] == "train" and rec["resumed_from"]["epoch"] >= 1
    assert [h["epoch"] for h in rec["history"]] == list(range(1, 41))
    assert len(rec["timing"]["epoch_seconds"]) == 40


def test_cli_run_list_shows_task_kinds(only_example):
    proc = run_cli("run", "--tasks", "example-colors", "--list")
    assert proc.returncode == 0, proc.stderr
    for kind in ("example-colors/vqa", "example-colors/zeroshot", "example-colors/captioning"):
        assert kind in proc.stdout


def test_cli_unknown_dataset_is_a_clear_error(only_example):
    proc = run_cli("run", "--tasks", "example-colours", "--list")
    assert proc.returncode == 2
    assert "unknown dataset 'example-colours'; did you mean 'example-colors'?" in proc.stderr


def test_captioning_cell_scores_with_pycocoevalcap_and_a_local_clip(only_example, tmp_path):
    import open_clip
    import torch

    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(tmp_path / "tiny-clip.json"))
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-clip").state_dict(), tmp_path / "tiny-clip.pt")
    opts = RunOptions(
        models=("example-colorname",),
        tasks=("example-colors/captioning",),
        out=tmp_path / "runs",
        cache_dir=tmp_path / "cache",
        clipscore=f"{tmp_path / 'tiny-clip.json'}@{tmp_path / 'tiny-clip.pt'}",
        progress=False,
    )
    registry, infos = load_plugins()
    ledger = run(registry, infos, opts)
    assert [v["state"] for v in ledger.cells.values()] == ["done"], ledger.cells
    ((path, rec),) = list(iter_records(opts.out))
    test = rec["final"]["test"]
    # Every caption names the right colour: "a red square" against "a red square" / "a red square on black".
    assert test["bleu_1"] > 0.9 and test["cider"] > 1.0 and 0 < test["meteor"] <= 1
    assert 0 <= test["clipscore"] <= 2.5 and "refclipscore" in test and test["clipscore_model"].startswith("tiny-clip")
    lines = read_jsonl(path.parent / "predictions-test.jsonl")
    assert lines[0]["caption"].startswith("a ") and lines[0]["references"]


def test_answerability_cell_reports_ap_and_risk_coverage(only_example, tmp_path):
    opts = RunOptions(
        models=("example-bow",),
        tasks=("example-colors/answerability",),
        out=tmp_path / "runs",
        cache_dir=tmp_path / "cache",
        model_overrides={"train.best_metric": "ap_unanswerable", "train.epochs": "12"},
        progress=False,
    )
    registry, infos = load_plugins()
    run(registry, infos, opts)
    ((path, rec),) = list(iter_records(opts.out))
    test = rec["final"]["test"]
    # "what color is the circle?" is always unanswerable: the bag of words finds it.
    assert test["ap_unanswerable"] > 0.9 and test["auroc"] > 0.9
    assert {"f1_unanswerable", "accuracy", "vqa_accuracy", "aurc"} <= set(test)
    assert len(test["risk_coverage"]["coverage"]) == 20
    lines = read_jsonl(path.parent / "predictions-test.jsonl")
    assert {"answerable", "answerable_score", "answer", "answers"} <= set(lines[0])


def test_scoped_overrides_reach_only_their_model(only_example, tmp_path):
    from vqabench.runner import resolve

    registry, _ = load_plugins()
    opts = RunOptions(
        models=("example-bow", "example-colorname"),
        tasks=("example-colors",),
        model_overrides={"example-bow:hidden": "7", "train.batch_size": "5", "eval.batch_size": "3"},
    )
    cells, _ = plan(registry, opts)
    configs = {(str(c.ref), c.kind): resolve(c, opts)[0] for c in cells}
    bow, names = configs[("example-bow", "vqa")], configs[("example-colorname", "zeroshot")]
    assert bow.hidden == 7 and bow.train.batch_size == 5
    # A shared override reaches the models that have its field: the evaluation-only model has no train.
    assert not hasattr(names, "train") and names.eval.batch_size == 3 and names.eval.splits == ("test",)
    assert not hasattr(bow, "eval")
    scoped = RunOptions(**{**opts.__dict__, "model_overrides": {"example-colorname:train.epochs": "2"}})
    with pytest.raises(ValueError, match=r"model example-colorname \(--set\): unknown field 'train'"):
        resolve(next(c for c in cells if str(c.ref) == "example-colorname"), scoped)
    with pytest.raises(ValueError, match="no planned model is called 'example-bw'"):
        run(
            registry,
            [],
            RunOptions(**{**opts.__dict__, "model_overrides": {"example-bw:hidden": "7"}, "out": tmp_path}),
        )


def test_train_metrics_score_a_training_sample_as_large_as_the_validation_one(opts):
    import dataclasses

    registry, infos = load_plugins()
    plain = dataclasses.replace(opts, models=("example-bow",), tasks=("example-colors/vqa",))
    run(registry, infos, plain)
    ((_, without),) = list(iter_records(opts.out))
    assert not any(k.startswith("train_") for h in without["history"] for k in h["val"])
    more = dataclasses.replace(plain, out=opts.out.parent / "more", model_overrides={"train.train_metrics": "true"})
    run(registry, infos, more)
    ((_, rec),) = list(iter_records(more.out))
    for h in rec["history"]:
        assert 0.0 <= h["val"]["train_vqa_accuracy"] <= 1.0 and "train_weighted_f1" in h["val"]
        # The validation metrics themselves are those of the run without it: the same training.
        assert (
            h["val"]["vqa_accuracy"]
            == next(w for w in without["history"] if w["epoch"] == h["epoch"])["val"]["vqa_accuracy"]
        )
    assert rec["final"] == without["final"]
