"""The plugin manager: entry-point discovery with an explicit ``load_plugins()``.

Nothing is loaded on import. ``VQABENCH_PLUGINS`` (comma-separated entry-point names) restricts
which plugins load. A plugin that fails to import, raises in a hook or registers a taken name is
reported with a warning and marked failed; the others still load. A name two plugins register
resolves to neither (``Registry.conflicts``, listed by ``vqabench plugins`` and warned about): the
user picks one as ``PLUGIN:NAME`` or with ``VQABENCH_PLUGINS``.
"""

from __future__ import annotations

import importlib
import os
import warnings
from importlib.metadata import entry_points

import pluggy

from vqabench import hookspecs
from vqabench.registry import PluginInfo, Registry
from vqabench.tasks import add_plugin_tasks, builtin_tasks

GROUP = "vqabench"
ENV_ALLOW = "VQABENCH_PLUGINS"


class PluginWarning(UserWarning):
    """A plugin could not be loaded or registered something invalid."""


def _collect(pm: pluggy.PluginManager, plugin: object, info: PluginInfo, registry: Registry, hooks: list) -> None:
    """Call this plugin's ``hooks`` alone, so an error is pinned on it and its partial work undone."""
    staged = registry.copy()
    for what, hook_name, names in hooks:
        impls = [i for i in getattr(pm.hook, hook_name).get_hookimpls() if i.plugin is plugin]
        for impl in impls:

            def register(spec, _what=what, _names=names):
                if _what == "task":
                    staged.add_task(spec, info.name)
                else:
                    staged.add(_what, spec, info.name)
                _names.append(spec.name)

            impl.function(register=register)
    registry.tasks, registry.datasets, registry.models = staged.tasks, staged.datasets, staged.models
    registry.pretrainers = staged.pretrainers
    registry.owner, registry.conflicts = staged.owner, staged.conflicts


def load_plugins(extra: dict[str, object] | None = None) -> tuple[Registry, list[PluginInfo]]:
    """Discover the ``vqabench`` entry points, run their hooks, return the registry and plugin list.

    ``extra`` maps names to already-imported plugin modules or objects (for tests and embedding).
    """
    allow = {n.strip() for n in os.environ.get(ENV_ALLOW, "").split(",") if n.strip()}
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    infos: list[PluginInfo] = []
    candidates: list[tuple[PluginInfo, object | None, str | None]] = []

    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if allow and ep.name not in allow:
            continue
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        info = PluginInfo(name=ep.name, distribution=dist, version=version)
        try:
            candidates.append((info, ep.load(), None))
        except Exception as exc:  # a broken plugin must not take the harness down
            candidates.append((info, None, f"import failed: {type(exc).__name__}: {exc}"))
    for name, obj in (extra or {}).items():
        module = importlib.import_module(obj) if isinstance(obj, str) else obj
        candidates.append((PluginInfo(name=name, distribution="(local)", version="-"), module, None))

    # Task kinds from every plugin first: a dataset or model may use a kind another plugin adds.
    registered = []
    for info, plugin, error in candidates:
        infos.append(info)
        if plugin is not None and error is None:
            try:
                pm.register(plugin, name=info.name)
                _collect(pm, plugin, info, registry, [("task", "register_tasks", info.tasks)])
                registered.append((info, plugin))
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                info.tasks.clear()
        if error:
            info.error = error
    for info, plugin in registered:
        try:
            hooks = [
                ("dataset", "register_datasets", info.datasets),
                ("model", "register_models", info.models),
                ("pretrainer", "register_pretrainers", info.pretrainers),
            ]
            _collect(pm, plugin, info, registry, hooks)
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            info.datasets.clear()
            info.models.clear()
            info.pretrainers.clear()
    for info in infos:
        if info.error:
            warnings.warn(
                f"vqabench plugin {info.name!r} ({info.distribution}) failed: {info.error}", PluginWarning, stacklevel=2
            )
    registry.plugins = {i.name: i.distribution for i in infos if not i.error}
    for what, name in registry.conflicts:
        warnings.warn(registry.conflict_message(what, name), PluginWarning, stacklevel=2)
    add_plugin_tasks({n: t for n, t in registry.tasks.items() if n not in builtin_tasks()})
    return registry, infos


def plugin_version(
    registry: Registry, what: str, name: str, infos: list[PluginInfo], plugin: str | None = None
) -> dict[str, str]:
    """The plugin, distribution and version that registered a dataset or model.

    ``plugin`` names the provider when the user picked one (``PLUGIN:NAME``); by default the
    registry's owner of ``name``.
    """
    plugin = plugin or registry.plugin_of(what, name) or "?"
    for info in infos:
        if info.name == plugin:
            return {"plugin": plugin, "distribution": info.distribution, "version": info.version}
    return {"plugin": plugin, "distribution": "?", "version": "?"}
