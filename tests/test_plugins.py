import warnings

import pytest
from helpers import add_distribution, run_cli

from vqabench import tasks
from vqabench.plugins import PluginWarning, load_plugins
from vqabench.tasks import get_task

HOOK_RAISES = """
from vqabench.hookspecs import hookimpl

@hookimpl
def register_models(register):
    raise RuntimeError("boom in hook")
"""

DUPLICATE = """
from vqabench.hookspecs import hookimpl
from vqabench.registry import ModelSpec
from vqabench.tasks import TaskKind
import vqabench_example as ex

@hookimpl
def register_models(register):
    register(ModelSpec("fine-model", "F", "Fine", (TaskKind.VQA,), ex.BowConfig, None))
    register(ModelSpec("twice", "X", "X", (TaskKind.VQA,), ex.BowConfig, None))
    register(ModelSpec("twice", "X", "X", (TaskKind.VQA,), ex.BowConfig, None))
"""


def test_example_plugin_is_discovered_through_entry_points(plugin_site, monkeypatch):
    monkeypatch.setenv("VQABENCH_PLUGINS", "example")
    registry, infos = load_plugins()
    (info,) = infos
    assert (info.name, info.distribution, info.version, info.status) == ("example", "vqabench-example", "0.1.0", "ok")
    assert info.datasets == ["example-colors"]
    assert info.models[:2] == ["example-bow", "example-colorname"] and set(info.models) == set(registry.models)
    assert registry.owner[("model", "example-bow")] == "example"
    # The plugin's own task kind: registered, owned and reachable through get_task.
    assert info.tasks == ["multiple-choice"]
    assert registry.owner[("task", "multiple-choice")] == "example"
    assert list(registry.tasks) == ["vqa", "answerability", "zeroshot", "captioning", "multiple-choice"]
    assert get_task("multiple-choice") is registry.tasks["multiple-choice"]
    assert "multiple-choice" in registry.dataset("example-colors").task_kinds


def test_broken_plugins_warn_and_the_rest_load(plugin_site, monkeypatch):
    add_distribution(plugin_site, "vqabench-broken", {"broken_import": "vqabench_no_such_module"})
    add_distribution(plugin_site, "vqabench-raises", {"raises": "vqabench_raises"}, {"vqabench_raises": HOOK_RAISES})
    add_distribution(plugin_site, "vqabench-dup", {"zz_dup": "vqabench_dup"}, {"vqabench_dup": DUPLICATE})
    monkeypatch.setenv("VQABENCH_PLUGINS", "example,broken_import,raises,zz_dup")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry, infos = load_plugins()
    by_name = {i.name: i for i in infos}
    assert by_name["example"].status == "ok"
    assert "ModuleNotFoundError" in by_name["broken_import"].error
    assert "boom in hook" in by_name["raises"].error
    assert "registers model 'twice' twice" in by_name["zz_dup"].error
    # The duplicate plugin's valid registration is rolled back with the rest of it.
    assert "fine-model" not in registry.models and by_name["zz_dup"].models == []
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert len(messages) == 3 and any("'raises'" in m for m in messages)


def test_allow_list_restricts_plugins(plugin_site, monkeypatch):
    monkeypatch.setenv("VQABENCH_PLUGINS", "nothing-by-this-name")
    registry, infos = load_plugins()
    assert infos == [] and registry.models == {}


def test_cli_plugins_lists_first_party_and_example(plugin_site):
    proc = run_cli("plugins")
    assert proc.returncode == 0, proc.stderr
    for name in (
        "example",
        "vqabench-example",
        "example-colors",
        "mini_clevr",
        "mini-clevr",
        "resnet_sbert",
        "clip_lora",
    ):
        assert name in proc.stdout


def test_first_party_plugins_are_not_a_top_level_plugins_package():
    import importlib.util

    assert importlib.util.find_spec("vqabench_plugins") is not None
    assert importlib.util.find_spec("plugins") is None or "site-packages" not in str(
        importlib.util.find_spec("plugins").origin
    )


TASK_USER = """
from vqabench.hookspecs import hookimpl
from vqabench.registry import DatasetSpec
import vqabench_example as ex

@hookimpl
def register_datasets(register):
    register(DatasetSpec("counted", ("counting",), ex.ExampleConfig, ex.load))
"""

TASK_MAKER = """
from vqabench.hookspecs import hookimpl
from vqabench.metrics.base import Metric
from vqabench.tasks.base import Task

class Counting(Task):
    name = "counting"
    primary_metric = "mae"
    metric_names = ("mae",)
    extra_metrics = {"mae": Metric("mae", higher_is_better=False)}

@hookimpl
def register_tasks(register):
    register(Counting())
"""

TASK_TAKEN = """
from vqabench.hookspecs import hookimpl
from vqabench.registry import ModelSpec
import vqabench_example as ex
from vqabench_example.multiple_choice import MultipleChoiceTask

@hookimpl
def register_tasks(register):
    register(MultipleChoiceTask())

@hookimpl
def register_models(register):
    register(ModelSpec("never", "N", "N", ("vqa",), ex.BowConfig, None))
"""


def test_a_dataset_may_use_a_kind_a_plugin_loaded_after_it_registers(plugin_site, monkeypatch):
    # "a_user" sorts before "z_maker": task kinds are collected from every plugin before datasets.
    add_distribution(plugin_site, "vqabench-user", {"a_user": "vqabench_user"}, {"vqabench_user": TASK_USER})
    add_distribution(plugin_site, "vqabench-maker", {"z_maker": "vqabench_maker"}, {"vqabench_maker": TASK_MAKER})
    monkeypatch.setenv("VQABENCH_PLUGINS", "example,a_user,z_maker")
    try:
        registry, infos = load_plugins()
        by_name = {i.name: i for i in infos}
        assert all(i.status == "ok" for i in infos), [(i.name, i.error) for i in infos]
        assert by_name["z_maker"].tasks == ["counting"] and by_name["a_user"].datasets == ["counted"]
        assert registry.dataset("counted").task_kinds == ("counting",)
        assert get_task("counting").metric("mae").higher_is_better is False
    finally:
        monkeypatch.setenv("VQABENCH_PLUGINS", "example")
        registry, _ = load_plugins()
    # A new registry has only what its plugins register, but a kind once loaded stays resolvable in
    # this process (records and objects of that kind must not be stranded by a later load).
    assert "counting" not in registry.tasks and registry.dataset("example-colors")
    assert get_task("counting").name == "counting"
    tasks.set_plugin_tasks(
        {k: v for k, v in tasks.all_tasks().items() if k not in ("counting", *tasks.builtin_tasks())}
    )


def test_a_kind_two_plugins_register_is_a_conflict_and_both_plugins_load(plugin_site, monkeypatch):
    add_distribution(plugin_site, "vqabench-taken", {"zz_taken": "vqabench_taken"}, {"vqabench_taken": TASK_TAKEN})
    monkeypatch.setenv("VQABENCH_PLUGINS", "example,zz_taken")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry, infos = load_plugins()
    by_name = {i.name: i for i in infos}
    assert by_name["example"].status == "ok" and by_name["zz_taken"].status == "ok"
    # The kind resolves to neither; everything else of both plugins stays usable.
    assert "multiple-choice" not in registry.tasks and ("task", "multiple-choice") not in registry.owner
    assert set(registry.conflicts[("task", "multiple-choice")]) == {"example", "zz_taken"}
    assert registry.model("never") and registry.dataset("example-colors") and registry.model("example-bow")
    assert any(
        "task kind 'multiple-choice' is registered by plugins 'example'" in str(w.message)
        for w in caught
        if issubclass(w.category, PluginWarning)
    )
