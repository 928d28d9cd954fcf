"""VizWiz end to end, as a user runs it: a fixture in the official format, ``vqabench run`` of
CLIP-linear on both kinds (one training), the leaderboard with its risk-coverage plot, and
``vqabench export`` of the challenge split's stored predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli, run_in, save_tiny_clip_checkpoint
from vqabench_plugins.vizwiz_fixture import write_fixture

from vqabench.results import cell_dir, read_jsonl

# The paper recipe with its architecture swapped for a tiny random CLIP saved locally (the quick
# profile's model_cfg would resize it to the Mini-CLEVR CLIP's).
PAPER = ("--profile", "paper")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("vizwiz")
    root = write_fixture(tmp / "vizwiz", train=40, val=12, test=6, image_size=32)
    clip = save_tiny_clip_checkpoint(tmp / "clip")
    model = ["--set", "arch=ViT-B-32", "--set", f"checkpoint={clip}", "--set", "hidden=16"]
    done = run_in(tmp, "clip-linear", "vizwiz", "--data", f"root={root}", *model, "--epochs", "2", *PAPER)
    assert done.returncode == 0, done.stderr
    return tmp


def _cell(runs: Path, kind: str) -> Path:
    return cell_dir(runs / "runs", "vizwiz", kind, "clip-linear", "paper", 0)


def _record(runs: Path, kind: str) -> dict:
    return json.loads((_cell(runs, kind) / "record.json").read_text())


def test_both_kinds_share_one_training(runs):
    vqa, ans = _record(runs, "vqa"), _record(runs, "answerability")
    vqa_key = "clip-linear|vizwiz/vqa|paper|seed0"
    assert vqa["shared_training"] == {"key": vqa["shared_training"]["key"], "trained_by": vqa_key}
    assert ans["shared_training"] == vqa["shared_training"]  # loaded, not trained again
    assert ans["step_losses"] == vqa["step_losses"] and ans["history"] == vqa["history"]
    assert (_cell(runs, "vqa") / "ckpt").is_dir() and not (_cell(runs, "answerability") / "ckpt").exists()
    index = json.loads((runs / "runs" / "trained" / f"{vqa['shared_training']['key']}.json").read_text())
    assert index["cell"] == vqa_key
    # Both cells score the same network: its answers agree line by line on the test split.
    answers = [ln["answer"] for ln in read_jsonl(_cell(runs, "vqa") / "predictions-test.jsonl")]
    assert answers == [ln["answer"] for ln in read_jsonl(_cell(runs, "answerability") / "predictions-test.jsonl")]


def test_force_trains_once_for_both_kinds(runs):
    before = _record(runs, "answerability")["shared_training"]
    clip = runs / "clip" / "open_clip_model.safetensors"
    model = ["--set", "arch=ViT-B-32", "--set", f"checkpoint={clip}", "--set", "hidden=16", "--epochs", "2", *PAPER]
    forced = run_in(runs, "clip-linear", "vizwiz", "--data", f"root={runs / 'vizwiz'}", *model, "--force", out="forced")
    assert forced.returncode == 0, forced.stderr
    rec = {
        k: json.loads((cell_dir(runs / "forced", "vizwiz", k, "clip-linear", "paper", 0) / "record.json").read_text())
        for k in ("vqa", "answerability")
    }
    assert rec["answerability"]["shared_training"]["trained_by"] == "clip-linear|vizwiz/vqa|paper|seed0"
    assert rec["vqa"]["shared_training"]["key"] == before["key"]  # the key is the training's, not the run's


def test_the_challenge_split_is_predicted_and_stored_not_scored(runs):
    for kind in ("vqa", "answerability"):
        record = _record(runs, kind)
        assert record["unscored"] == {"challenge": 6}
        assert "challenge" not in record["final"] and "challenge" not in record["baseline"]
        lines = read_jsonl(_cell(runs, kind) / "predictions-challenge.jsonl")
        assert len(lines) == 6 and all(ln["answers"] == [] for ln in lines)
        assert {"answer", "answerable_score"} <= set(lines[0])


def test_export_writes_the_evaluation_server_files(runs, tmp_path):
    out = tmp_path / "submission.json"
    done = run_cli("export", "vizwiz", str(runs / "runs"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    answers = json.loads(out.read_text())
    answerable = json.loads((tmp_path / "submission-answerability.json").read_text())
    assert [a["image"] for a in answers] == [f"VizWiz_test_{i:08d}.jpg" for i in range(6)]
    assert all(isinstance(a["answer"], str) for a in answers)
    assert [a["image"] for a in answerable] == [a["image"] for a in answers]
    assert all(0.0 <= a["answerable"] <= 1.0 for a in answerable)
    # The scored split exports too (the official val, for the official evaluation script).
    done = run_cli("export", "vizwiz", str(_cell(runs, "vqa")), "--split", "test", "--out", str(tmp_path / "val.json"))
    assert done.returncode == 0, done.stderr
    assert len(json.loads((tmp_path / "val.json").read_text())) == 12  # official val: the fixture's 12


def test_export_errors_name_the_fix(runs, tmp_path):
    missing = run_cli("export", "vizwiz", str(runs / "runs"), "--split", "nope", "--out", str(tmp_path / "x.json"))
    assert missing.returncode == 2 and "stored splits: challenge, test" in missing.stderr
    other = run_cli("export", "vizwiz", str(runs / "runs"), "--model", "clip-lora", "--out", str(tmp_path / "x.json"))
    assert other.returncode == 2 and "it holds: clip-linear" in other.stderr
    none = run_cli("export", "mini-clevr", str(runs / "runs"), "--out", str(tmp_path / "x.json"))
    assert none.returncode == 2 and "has no export format" in none.stderr


def test_leaderboard_has_report_002_columns_and_the_risk_coverage_plot(runs, tmp_path):
    done = run_cli("leaderboard", str(runs / "runs"), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "vizwiz.md").read_text()
    assert "## answerability — paper profile" in text and "AP (unanswerable)" in text and "AURC" in text
    assert "Acc [unanswerable]" in text and "Acc [yes/no]" in text  # VQA accuracy per answer type
    assert "![VQA accuracy when answering only the most surely answerable questions]" in text
    assert (tmp_path / "vizwiz-answerability-paper-risk-coverage.png").stat().st_size > 1000


def test_bench_with_a_cached_text_tower_evaluates_questions_training_never_saw(runs, tmp_path):
    # The bench's cached epoch reads the text cache, and so does its inference on val: the cache
    # must hold every split's questions, not the training ones only.
    clip = runs / "clip" / "open_clip_model.safetensors"
    model = ["--set", "arch=ViT-B-32", "--set", f"checkpoint={clip}", "--set", "hidden=16", *PAPER]
    out = tmp_path / "bench.json"
    done = run_cli(
        "bench", "--models", "clip-linear", "--tasks", "vizwiz/vqa", "--data", f"root={runs / 'vizwiz'}", *model,
        "--cache-dir", str(tmp_path / "cache"), "--max-steps", "2", "--json", str(out), "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["cached_speedup"] > 1 and row["inference_images_per_s"] > 0
