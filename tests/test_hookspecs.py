import inspect

import pluggy
import pytest

from vqabench import hookspecs

HOOKS = sorted(
    name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if fn.__module__ == hookspecs.__name__
)


def test_hooks_are_found():
    # Guards the parametrised tests below against silently checking nothing.
    assert {"register_tasks", "register_datasets", "register_models"} <= set(HOOKS)


def test_markers_belong_to_the_vqabench_project():
    assert hookspecs.hookspec.project_name == "vqabench"
    assert hookspecs.hookimpl.project_name == "vqabench"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_one_line_docstring(name):
    doc = getattr(hookspecs, name).__doc__
    assert doc, f"hook {name} has no docstring"
    assert doc.strip() and "\n" not in doc.strip(), f"hook {name}: docstring must be one line"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_a_vqabench_hookspec(name):
    fn = getattr(hookspecs, name)
    assert isinstance(getattr(fn, "vqabench_spec", None), dict), f"hook {name} lacks @hookspec"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_takes_a_register_callback(name):
    assert list(inspect.signature(getattr(hookspecs, name)).parameters) == ["register"]


def test_plugin_manager_accepts_the_specs():
    pm = pluggy.PluginManager("vqabench")
    pm.add_hookspecs(hookspecs)
    assert set(HOOKS) <= {n for n in dir(pm.hook) if not n.startswith("_")}
