"""``vqabench run --executor ray`` on a local two-CPU Ray: same records as a sequential run, a dead
worker retried once, a cell that always dies recorded failed, finished cells never rerun."""

import dataclasses
import json
import os
import sys

import pytest
from conftest import EXAMPLE_DIR
from helpers import add_distribution

from vqabench.executors import RayExecutor
from vqabench.plugins import load_plugins
from vqabench.results import read_jsonl
from vqabench.runner import RunOptions, run

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'vqabench[ray]'")

# A model whose worker process is killed (SIGKILL, as a lost node or the OOM killer does) while it
# builds: once, when its marker file is missing ("crashy-once"), or every time ("crashy-always");
# "crashy-raises" raises an error of its own instead.
CRASHY = """
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from vqabench.hookspecs import hookimpl
from vqabench.registry import ModelSpec
from vqabench_example import BagOfWords, BowConfig


@dataclass(frozen=True)
class CrashConfig(BowConfig):
    marker: str = ""


def build(always):
    def make(cfg, data, device):
        if always is None:
            raise ValueError("crashy-raises: a bad value")
        if always or not Path(cfg.marker).exists():
            Path(cfg.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return BagOfWords(cfg, data.answer_vocab, data.kind)

    return make


@hookimpl
def register_models(register):
    for name, always in (("crashy-once", False), ("crashy-always", True), ("crashy-raises", None)):
        register(ModelSpec(name, "Example", name, ("vqa",), CrashConfig, build(always)))
"""


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray with two CPUs whose workers import the example plugin and the crashing models."""
    site = tmp_path_factory.mktemp("site")
    add_distribution(site, "vqabench-example", {"example": "vqabench_example"})
    add_distribution(site, "vqabench-crashy", {"crashy": "vqabench_crashy"}, {"vqabench_crashy": CRASHY})
    with pytest.MonkeyPatch.context() as mp:
        for path in (str(EXAMPLE_DIR), str(site)):
            mp.syspath_prepend(path)
        # Workers start with the driver's environment: the plugins' path and which plugins to load.
        mp.setenv("PYTHONPATH", os.pathsep.join([str(site), str(EXAMPLE_DIR), *sys.path]))
        mp.setenv("VQABENCH_PLUGINS", "example,crashy")
        mp.setenv("OMP_NUM_THREADS", "1")
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        try:
            yield
        finally:
            ray.shutdown()


def _opts(tmp_path, out, models, **kw):
    return RunOptions(
        models=models,
        tasks=("example-colors/vqa",),
        out=tmp_path / out,
        cache_dir=tmp_path / "cache",
        progress=False,
        model_overrides={"train.augment": ()},
        **kw,
    )


def test_cells_run_as_ray_tasks_give_the_sequential_records_and_are_not_rerun(local_ray, tmp_path):
    registry, infos = load_plugins()
    models = ("example-bow", "example-bow-soft")
    seq = run(registry, infos, _opts(tmp_path, "seq", models))
    opts = _opts(tmp_path, "ray", models)
    executor = RayExecutor(progress=False)
    assert executor.resources(ray, opts) == {"num_gpus": 0, "num_cpus": 1.0}  # a CPU cluster: no GPU asked
    ledger = run(registry, infos, opts, executor)
    assert {k: v["state"] for k, v in ledger.cells.items()} == {k: v["state"] for k, v in seq.cells.items()}
    assert all(v["state"] == "done" and v["attempts"] == 1 for v in ledger.cells.values())
    on_disk = json.loads((tmp_path / "ray" / "status.json").read_text())["cells"]
    assert {k: v["state"] for k, v in on_disk.items()} == {k: "done" for k in ledger.cells}
    for model in models:
        where = [tmp_path / out / "example-colors" / "vqa" / model / "quick-seed0" for out in ("seq", "ray")]
        a, b = (json.loads((w / "record.json").read_text()) for w in where)
        assert a["config_hash"] == b["config_hash"]
        assert b["step_losses"] == pytest.approx(a["step_losses"], abs=1e-5)
        for split in ("val", "test"):
            assert b["final"][split]["vqa_accuracy"] == pytest.approx(a["final"][split]["vqa_accuracy"], abs=1e-6)
            pa, pb = (read_jsonl(w / f"predictions-{split}.jsonl") for w in where)
            assert [(x["id"], x["answer"]) for x in pa] == [(x["id"], x["answer"]) for x in pb]
    # Finished cells: the same config hash, so the workers leave their records as they are.
    records = sorted((tmp_path / "ray").rglob("record.json"))
    before = [p.stat().st_mtime_ns for p in records]
    again = run(registry, infos, opts, executor)
    assert all(v["reason"] == "already done (same config hash)" for v in again.cells.values())
    assert [p.stat().st_mtime_ns for p in records] == before


def test_a_dead_worker_is_retried_once_and_a_cell_that_always_dies_or_raises_is_recorded_failed(local_ray, tmp_path):
    registry, infos = load_plugins()
    marker = tmp_path / "died-once"
    overrides = {"train.augment": (), "crashy-once:marker": str(marker), "crashy-always:marker": str(tmp_path / "m")}
    models = ("crashy-once", "crashy-always", "crashy-raises")
    opts = dataclasses.replace(_opts(tmp_path, "runs", models), model_overrides=overrides)
    ledger = run(registry, infos, opts, RayExecutor(progress=False))
    once = ledger.cells["crashy-once|example-colors/vqa|quick|seed0"]
    always = ledger.cells["crashy-always|example-colors/vqa|quick|seed0"]
    assert marker.exists()
    assert once["state"] == "done" and once["attempts"] == 2
    assert "worker died" in once["first_error"]
    assert (tmp_path / "runs" / "example-colors" / "vqa" / "crashy-once" / "quick-seed0" / "record.json").exists()
    assert always["state"] == "failed" and always["attempts"] == 2
    assert "worker died" in always["error"] and "gave up after 2 attempts" in always["error"]
    # The cell's own error is not a dead worker: recorded at once, as a sequential run records it.
    raises = ledger.cells["crashy-raises|example-colors/vqa|quick|seed0"]
    assert raises["state"] == "failed" and raises["attempts"] == 1
    assert raises["error"] == "ValueError: crashy-raises: a bad value"
