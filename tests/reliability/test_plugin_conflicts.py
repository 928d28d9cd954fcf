"""A name two plugins register: both load, the name resolves to neither, PLUGIN:NAME picks one, and
a run directory written with one distribution's model is never overwritten with another's."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from helpers import add_distribution, run_cli, run_in

import vqabench
from vqabench.plugins import PluginWarning, load_plugins
from vqabench.registry import NameConflictError
from vqabench.runner import RunOptions, plan

# Loading the two plugins warns about their conflicts every time; the first test checks the warnings.
pytestmark = pytest.mark.filterwarnings("ignore::vqabench.plugins.PluginWarning")

# A third-party plugin that also registers the example plugin's ``example-bow`` model and
# ``example-colors`` dataset (the same code under the same names, as a fork would), plus a model
# of its own that must stay usable.
IMPOSTOR = """
from vqabench.hookspecs import hookimpl
from vqabench.registry import DatasetSpec, ModelSpec
from vqabench.tasks import TaskKind
import vqabench_example as ex


def build(cfg, data, device):
    return ex.BagOfWords(cfg, data.answer_vocab, data.kind)


@hookimpl
def register_datasets(register):
    register(DatasetSpec("example-colors", (TaskKind.VQA,), ex.ExampleConfig, ex.load))


@hookimpl
def register_models(register):
    register(ModelSpec("example-bow", "Impostor", "Impostor BoW", (TaskKind.VQA,), ex.BowConfig, build))
    register(ModelSpec("impostor-only", "Impostor", "Impostor only", (TaskKind.VQA,), ex.BowConfig, build))
"""

CONFLICT = (
    "model 'example-bow' is registered by plugins 'example' (vqabench-example) and 'impostor' (vqabench-impostor), "
    "so it resolves to neither; pick one by naming it PLUGIN:NAME (e.g. example:example-bow) or load only one of "
    "them (e.g. VQABENCH_PLUGINS=example)"
)


@pytest.fixture
def impostor(plugin_site, monkeypatch) -> Path:
    add_distribution(
        plugin_site, "vqabench-impostor", {"impostor": "vqabench_impostor"}, {"vqabench_impostor": IMPOSTOR}
    )
    # Only the two plugins: fast, and the message's VQABENCH_PLUGINS suggestion is exact.
    monkeypatch.setenv("VQABENCH_PLUGINS", "example,impostor")
    return plugin_site


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_both_plugins_load_and_the_conflict_is_warned_and_kept_apart(impostor):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry, infos = load_plugins()
    assert [(i.name, i.status) for i in infos] == [("example", "ok"), ("impostor", "ok")]
    assert set(registry.conflicts) == {("model", "example-bow"), ("dataset", "example-colors")}
    assert "example-bow" not in registry.models and "example-colors" not in registry.datasets
    # Everything else of both plugins stays usable, and each claimant is reachable by PLUGIN:NAME.
    assert registry.model("example-staged") and registry.model("impostor-only")
    assert registry.model("example:example-bow") is not registry.model("impostor:example-bow")
    assert registry.model("impostor:example-bow").display_name == "Impostor BoW"
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert CONFLICT in messages and len(messages) == 2


def test_vqabench_plugins_lists_the_conflict(impostor):
    proc = run_cli("plugins")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "name conflicts" in out and "PLUGIN:NAME" in out
    rows = [line.split() for line in out.splitlines()]
    assert ["model", "example-bow", "example", "(vqabench-example),", "impostor", "(vqabench-impostor)"] in rows
    assert ["dataset", "example-colors", "example", "(vqabench-example),", "impostor", "(vqabench-impostor)"] in rows
    assert "example-bow (conflict)" in out and CONFLICT in proc.stderr


@pytest.mark.parametrize(
    ("models", "tasks", "expected"),
    [
        ("example-bow", "example:example-colors/vqa", CONFLICT),
        ("all", "example:example-colors/vqa", f"--models all: {CONFLICT}"),
        ("example:example-bow", "example-colors/vqa", "dataset 'example-colors' is registered by plugins 'example'"),
        ("nobody:example-bow", "example:example-colors/vqa", "plugin 'nobody' registers no model 'example-bow'"),
    ],
)
def test_a_bare_conflicting_name_is_refused_before_anything_runs(impostor, tmp_path, models, tasks, expected):
    proc = run_in(tmp_path, models, tasks)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and proc.stderr.count("\nerror: ") + proc.stderr.startswith("error: ") == 1
    assert not (tmp_path / "runs").exists()  # no ledger, no cell directory: nothing ran


def test_bench_and_create_model_refuse_the_bare_name(impostor, tmp_path):
    proc = run_cli("bench", "--models", "example-bow", "--tasks", "example:example-colors/vqa", "--no-progress")
    assert proc.returncode == 2 and CONFLICT in proc.stderr
    with pytest.raises(NameConflictError, match="model 'example-bow' is registered by plugins 'example'"):
        vqabench.create_model("example-bow", dataset="example:example-colors", kind="vqa", cache_dir=tmp_path)
    model = vqabench.create_model(
        "impostor:example-bow", dataset="example:example-colors", kind="vqa", cache_dir=tmp_path
    )
    assert type(model).__name__ == "BagOfWords"


def test_plan_keeps_the_picked_plugins_and_scoped_overrides_accept_plugin_names(impostor):
    registry, _ = load_plugins()
    opts = RunOptions(
        models=("impostor:example-bow@random",),
        tasks=("example:example-colors/vqa",),
        model_overrides={"impostor:example-bow:train.epochs": 2, "example-bow:hidden": 16},
    )
    (cell,), _ = plan(registry, opts)
    assert (cell.ref.plugin, cell.ref.name, cell.ref.tag, cell.dataset_plugin) == (
        "impostor",
        "example-bow",
        "random",
        "example",
    )
    assert cell.key(opts) == "example-bow@random|example-colors/vqa|quick|seed0"
    from vqabench.cell import resolve

    mcfg, _ = resolve(cell, opts)
    assert (mcfg.train.epochs, mcfg.hidden) == (2, 16)  # PLUGIN:NAME:KEY and NAME:KEY both reach it
    # A name only one plugin registers is planned with its provider, so PLUGIN:NAME scopes reach it too.
    scoped = {"impostor:impostor-only:hidden": 8}
    unique = RunOptions(models=("impostor-only",), tasks=("example:example-colors/vqa",), model_overrides=scoped)
    (cell,), _ = plan(registry, unique)
    assert cell.ref.plugin == "impostor" and str(cell.ref) == "impostor-only"
    assert resolve(cell, unique)[0].hidden == 8


def test_plugin_name_runs_and_a_record_of_the_other_distribution_is_never_overwritten(impostor, tmp_path):
    # The example plugin's model writes the cell first.
    proc = run_in(
        tmp_path, "example:example-bow", "example:example-colors/vqa", "--set", "example:example-bow:train.epochs=1"
    )
    assert proc.returncode == 0, proc.stderr
    (record_path,) = (tmp_path / "runs").rglob("record.json")
    record = json.loads(record_path.read_text())
    assert record["model"] == "example-bow" and record["config"]["model"]["train"]["epochs"] == 1
    assert record["versions"]["model_plugin"] == {
        "plugin": "example",
        "distribution": "vqabench-example",
        "version": "0.1.0",
    }
    assert record["versions"]["dataset_plugin"]["distribution"] == "vqabench-example"
    cell = record_path.parent
    before = _files(cell)
    assert "record.json" in before and "predictions-test.jsonl" in before and any(k.startswith("ckpt/") for k in before)

    # The impostor's model of the same name maps to the same directory: refused, even with --force,
    # before anything is read, deleted, resumed or written.
    for extra in ((), ("--force",)):
        proc = run_in(tmp_path, "impostor:example-bow", "example:example-colors/vqa", "--epochs", "1", *extra)
        assert proc.returncode == 2, proc.stderr
        assert (
            f"{record_path} was written with model 'example-bow' from distribution 'vqabench-example', but model "
            f"'example-bow' now comes from 'vqabench-impostor': refusing to overwrite it, its predictions or its "
            f"checkpoints; use another --out, or delete {cell} to replace that result"
        ) in proc.stderr
        assert _files(cell) == before

    # Another --out is the way: the impostor's model runs there and its record says whose it is.
    proc = run_in(tmp_path, "impostor:example-bow", "example:example-colors/vqa", "--epochs", "1", out="other")
    assert proc.returncode == 0, proc.stderr
    (other,) = (tmp_path / "other").rglob("record.json")
    assert json.loads(other.read_text())["versions"]["model_plugin"]["plugin"] == "impostor"
    assert _files(cell) == before
