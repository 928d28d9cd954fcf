"""``create_model``: a ready model for notebooks and tests, built as a run builds it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqabench.cell import Cell, RunOptions, check_recipe, resolve
from vqabench.registry import ModelRef, split_plugin


def create_model(
    name: str,
    *,
    dataset: str,
    kind: str,
    profile: str = "quick",
    overrides: dict[str, Any] | None = None,
    data_overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Any:
    """The model ``name`` (``NAME`` or ``NAME@TAG``) for ``dataset``'s task ``kind``, on ``device``.

    When two plugins register a name, ``PLUGIN:NAME`` picks one (for ``name`` and ``dataset``);
    the bare name is refused, naming both plugins.

    Configs are resolved exactly as ``vqabench run`` resolves them (profile, tag, ``overrides``
    as with ``--set``); the dataset is loaded (generated when needed) for its vocabulary or
    class names. Example: ``create_model("clip-lora@random", dataset="mini-clevr", kind="vqa")``.
    """
    from vqabench.cell import build_model
    from vqabench.cli import default_cache
    from vqabench.device import pick_device
    from vqabench.plugins import load_plugins
    from vqabench.tasks import get_task, kind_name

    registry, _ = load_plugins()
    ref = ModelRef.parse(name)
    spec, ds = registry.model(ref.qualified_name), registry.dataset(dataset)
    registry.check_kind(kind_name(kind))
    task = get_task(kind)
    if ref.tag and ref.tag not in spec.tags:
        raise ValueError(f"model {ref.name!r} has no weights tag {ref.tag!r}; it has: {', '.join(spec.tags) or 'none'}")
    for what, kinds in (("dataset " + ds.name, ds.task_kinds), ("model " + spec.name, spec.task_kinds)):
        if task.name not in kinds:
            raise ValueError(f"{what} has no task kind {task.name!r}; it has: {', '.join(kinds)}")
    opts = RunOptions(
        models=(name,),
        tasks=(f"{dataset}/{task.name}",),
        profile=profile,
        device=device,
        seed=seed,
        cache_dir=Path(cache_dir) if cache_dir else default_cache(),
        model_overrides=dict(overrides or {}),
        data_overrides=dict(data_overrides or {}),
    )
    cell = Cell(ref, spec, ds, task.name, split_plugin(dataset)[0], registry)
    mcfg, dcfg = resolve(cell, opts)
    check_recipe(cell, mcfg)
    data = ds.load(dcfg, task.name, opts.cache_dir)
    model, _, _ = build_model(cell, mcfg, data, pick_device(device), opts)
    return model
