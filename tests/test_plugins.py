import warnings

from helpers import add_distribution, run_cli

from vqabench.plugins import PluginWarning, load_plugins

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
    register(ModelSpec("example-bow", "X", "X", (TaskKind.VQA,), ex.BowConfig, None))
"""


def test_example_plugin_is_discovered_through_entry_points(plugin_site, monkeypatch):
    monkeypatch.setenv("VQABENCH_PLUGINS", "example")
    registry, infos = load_plugins()
    (info,) = infos
    assert (info.name, info.distribution, info.version, info.status) == ("example", "vqabench-example", "0.1.0", "ok")
    assert info.datasets == ["example-colors"]
    assert info.models == ["example-bow", "example-colorname"]
    assert registry.owner[("model", "example-bow")] == "example"


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
    assert "already registered by plugin 'example'" in by_name["zz_dup"].error
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
