import json

from helpers import run_cli

from vqabench.bench import FIELDS


def test_bench_prints_and_writes_every_field(only_example, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli(
        "bench",
        "--models",
        "example-bow",
        "--tasks",
        "example-colors/vqa",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--set",
        "train.augment=",
        "--json",
        str(out),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert list(row) == FIELDS
    assert row["model"] == "example-bow" and row["task"] == "example-colors/vqa"
    for key in (
        "uncached_epoch_s",
        "cached_epoch_s",
        "cached_speedup",
        "train_images_per_s",
        "inference_images_per_s",
        "prepare_data_s",
        "cache_build_s",
    ):
        assert isinstance(row[key], float) and row[key] > 0, key
    # 48 source images and 24 of the second (target) domain, every split counted.
    assert row["prepare_images"] == 72 and row["train_steps"] >= 1 and row["cache"] == "avg-pool 8px"
    assert "cached_speedup" in proc.stdout and "example-bow / example-colors/vqa" in proc.stdout


def test_bench_says_when_runs_of_the_recipe_cannot_use_the_cache(only_example, tmp_path):
    """example-bow's recipe augments with color_jitter (hflip is unsafe on example-colors and dropped)."""
    out = tmp_path / "bench.json"
    proc = run_cli(
        "bench",
        "--models",
        "example-bow",
        "--tasks",
        "example-colors/vqa",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--max-steps",
        "1",
        "--json",
        str(out),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["cache"] == "avg-pool 8px (not in runs: they augment with color_jitter)"
    assert row["compiled"] == "no" and row["cached_speedup"] > 0


def test_bench_of_an_evaluation_only_model_times_inference_only(only_example, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli(
        "bench",
        "--models",
        "example-colorname",
        "--tasks",
        "example-colors/zeroshot",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--json",
        str(out),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert list(row) == FIELDS and row["task"] == "example-colors/zeroshot"
    # Zero-shot samples come from the source domain only: its 48 images.
    assert row["inference_images_per_s"] > 0 and row["prepare_images"] == 48
    for key in ("train_steps", "uncached_epoch_s", "cached_epoch_s", "train_images_per_s"):
        assert row[key] is None, key
