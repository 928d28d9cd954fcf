"""Data-parallel training of one cell: shards, gather-once, and two gloo processes against one."""

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import psutil
import pytest
from safetensors.torch import load_file

from vqabench.data import Batches
from vqabench.distributed import EvalShard, ShardedBatches, gather_once
from vqabench.results import read_jsonl

TASK = SimpleNamespace(group_by_image=False, collate=lambda samples, ctx: [s.id for s in samples])
CELL = ("example-colors", "vqa", "example-bow", "quick-seed0")


def batches(n: int, size: int, shuffle: bool = False) -> Batches:
    samples = [SimpleNamespace(id=f"s{i}") for i in range(n)]
    return Batches(TASK, samples, size, ctx=None, shuffle=shuffle, seed=3)


def test_each_global_batch_is_split_over_the_ranks_once_with_weights_that_make_its_mean():
    whole = batches(10, 4, shuffle=True)  # global batches of 4, 4 and 2 samples
    expected = [[f"s{i}" for i in g] for g in whole._groups()]
    ranks = [ShardedBatches.of(whole, r, 3) for r in range(3)]
    parts = [s.parts() for s in ranks]
    assert all(len(s) == len(whole) == 3 for s in ranks)  # every rank takes as many steps as one process
    for step, group in enumerate(expected):
        real = [(idx, w) for idx, w in (p[step] for p in parts) if w > 0]
        assert sorted(f"s{i}" for idx, _ in real for i in idx) == sorted(group)
        # w_r = n_r * world / N: DDP's mean over ranks of w_r * loss_r is the global batch's mean loss.
        assert sum(w for _, w in (p[step] for p in parts)) == pytest.approx(3)
    assert parts[2][2] == ([whole._groups()[2][0]], 0.0)  # 2 samples, 3 ranks: the third adds nothing
    # The shuffle is the global one: the same on every rank and epoch by epoch as one process.
    ranks[0].epoch = whole.epoch = 5
    assert [i for idx, _ in ranks[0].parts() for i in idx][:2] == whole._groups()[0][:2]


def test_evaluation_gathers_each_sample_exactly_once_with_uneven_shares():
    whole = batches(7, 2)  # 4 batches over 3 ranks: 2, 1 and 1
    shards = [EvalShard.of(whole, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [2, 1, 1]
    parts = [[{"id": sid} for batch in s for sid in batch] for s in shards]
    order = shards[0].order()
    assert [line["id"] for line in gather_once(parts, order)] == [f"s{i}" for i in range(7)]
    with pytest.raises(RuntimeError, match="1 duplicated"):
        gather_once([*parts, [{"id": "s0"}]], order)
    with pytest.raises(RuntimeError, match="2 missing"):
        gather_once([parts[0], parts[1]], order)


def _run(tmp_path, out, *extra, ranks=1, wait=True, model="example-bow", sets=()):
    cmd = [sys.executable, "-m", "vqabench.cli"]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m"]
        cmd.append("vqabench.cli")
    cmd += ["run", "--models", model, "--tasks", "example-colors/vqa", "--out", str(tmp_path / out)]
    cmd += ["--cache-dir", str(tmp_path / "cache"), "--no-progress", "--set", "train.augment=", *extra]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _cell(tmp_path, out, model="example-bow"):
    return tmp_path / out / "example-colors" / "vqa" / model / "quick-seed0"


def test_two_gloo_ranks_train_and_score_as_one_process_with_the_same_global_batch(only_example, tmp_path):
    _run(tmp_path, "one")
    two = _run(tmp_path, "two", ranks=2)
    assert two.stdout.count("leaderboard:") == 1  # rank 0 alone reports and writes
    a = json.loads((_cell(tmp_path, "one") / "record.json").read_text())
    b = json.loads((_cell(tmp_path, "two") / "record.json").read_text())
    assert b["config"]["parallel"] == {
        "world_size": 2,
        "effective_batch_size": 16,
        "batch_size_per_rank": 8.0,
        "lrs": {"train": {"head": 0.05}},
    }
    assert "parallel" not in a["config"]  # one process: the record as before
    assert b["step_losses"] == pytest.approx(a["step_losses"], abs=1e-5)
    assert b["best_epoch"] == a["best_epoch"]
    assert b["timing"]["train_seconds"] > 0 and b["history"][0]["train_loss"] == pytest.approx(
        a["history"][0]["train_loss"], abs=1e-5
    )
    for split in ("val", "test"):
        for metric in ("vqa_accuracy", "weighted_f1"):
            assert b["final"][split][metric] == pytest.approx(a["final"][split][metric], abs=1e-6)
        one = read_jsonl(_cell(tmp_path, "one") / f"predictions-{split}.jsonl")
        two_lines = read_jsonl(_cell(tmp_path, "two") / f"predictions-{split}.jsonl")
        # Gathered from both ranks: every sample once, in one process's order, the same answers.
        assert [x["id"] for x in two_lines] == [x["id"] for x in one]
        assert [x["answer"] for x in two_lines] == [x["answer"] for x in one]
        assert [x["confidence"] for x in two_lines] == pytest.approx([x["confidence"] for x in one], abs=1e-5)
    w1 = load_file(_cell(tmp_path, "one") / "ckpt" / "1-train" / "best.safetensors")
    w2 = load_file(_cell(tmp_path, "two") / "ckpt" / "1-train" / "best.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert (w1[k] - w2[k]).abs().max() < 1e-5, k
    assert not list((tmp_path / "two").rglob("*.tmp"))


def test_a_killed_two_rank_run_resumes_and_ends_as_one_uninterrupted_process(only_example, tmp_path):
    # Two stages, no dropout (each rank draws its own masks), slowed so the kill lands mid-run.
    model = "example-staged"
    sets = (f"{model}:dropout=0", f"{model}:step_delay=0.05")
    _run(tmp_path, "one", model=model, sets=sets)
    proc = _run(tmp_path, "two", ranks=2, wait=False, model=model, sets=sets)
    first = _cell(tmp_path, "two", model) / "ckpt" / "1-head" / "last"
    deadline = time.time() + 180
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.exists() and proc.poll() is None, "the two-rank run ended before its first epoch checkpoint"
    # The launcher and its rank processes (torchrun starts them in sessions of their own).
    victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(victims) >= 3
    for p in victims:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=30)
    proc.wait()
    assert not (_cell(tmp_path, "two", model) / "record.json").exists()
    _run(tmp_path, "two", ranks=2, model=model, sets=sets)
    a = json.loads((_cell(tmp_path, "one", model) / "record.json").read_text())
    b = json.loads((_cell(tmp_path, "two", model) / "record.json").read_text())
    assert b["resumed_from"] is not None and b["resumed_from"]["epoch"] >= 1
    assert b["step_losses"] == pytest.approx(a["step_losses"], abs=1e-5)
    assert [s["best_epoch"] for s in b["stages"]] == [s["best_epoch"] for s in a["stages"]]
    for split in ("val", "test"):
        assert b["final"][split]["vqa_accuracy"] == pytest.approx(a["final"][split]["vqa_accuracy"], abs=1e-6)
    assert not list((tmp_path / "two").rglob("*.tmp"))
