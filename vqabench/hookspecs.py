"""Every hook a vqabench plugin can implement, one per extension kind.

Hooks receive a ``register`` callback instead of returning lists, so that the core can validate
each registration (duplicate names, unknown task kinds) and name the plugin in every error. Task
kinds are collected from every plugin before any dataset or model, so a dataset may use a kind
another plugin adds.
"""

import pluggy

hookspec = pluggy.HookspecMarker("vqabench")
hookimpl = pluggy.HookimplMarker("vqabench")


@hookspec
def register_tasks(register):
    """Register task kinds: call ``register(Task)`` once per kind (a ``vqabench.tasks.base.Task``)."""


@hookspec
def register_datasets(register):
    """Register datasets: call ``register(DatasetSpec(...))`` once per dataset."""


@hookspec
def register_models(register):
    """Register models: call ``register(ModelSpec(...))`` once per model variant."""


@hookspec
def register_pretrainers(register):
    """Register pretraining recipes: call ``register(PretrainSpec(...))`` once per recipe."""
