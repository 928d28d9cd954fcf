"""Pretraining once per (recipe, corpus), content-addressed in the cache, loaded by every later run.

A plugin registers a ``PretrainSpec`` ("clip"): a recipe that trains on a dataset's data and
writes its files into a directory. ``ensure`` returns that directory for the key (recipe name,
resolved recipe config, dataset name, dataset config, dataset revision), training it on first use:
``<cache>/pretrained/<name>-<dataset>-<key>/`` holds the recipe's files and ``record.json``. The
directory is written through ``files.atomic_dir``, so a killed pretraining leaves nothing behind
that a later run would load.

A model config names an artefact as ``pretrain:NAME/DATASET`` in any string field (a checkpoint
path): ``resolve_references`` replaces it with the artefact's path before the model is built,
pretraining first when needed, so a family only ever sees a local checkpoint file and the record
keeps the reference plus the key it resolved to.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqabench.config import apply_overrides, config_hash, to_jsonable
from vqabench.files import atomic_dir, atomic_write_text, recover_dir
from vqabench.registry import PretrainSpec, Registry
from vqabench.tasks import TaskData

log = logging.getLogger(__name__)

SCHEME = "pretrain:"
DIRECTORY = "pretrained"  # under the cache directory; ``vqabench cache clear pretrained`` removes it
RECORD = "record.json"


@dataclass
class PretrainContext:
    """What a recipe's ``run`` gets besides its config."""

    dataset: str
    data_config: Any
    cache_dir: Path
    out: Path  # the (temporary) directory to write the artefact into
    device: Any
    load: Callable[[str], TaskData]  # the dataset's TaskData of one kind
    progress: bool = True


@dataclass(frozen=True)
class Pretrained:
    """A finished pretraining: its directory, the artefact file and its record."""

    name: str
    dataset: str
    key: str
    path: Path
    record: dict[str, Any]

    @property
    def artifact(self) -> Path:
        return self.path / self.record["artifact"]

    def summary(self) -> dict[str, Any]:
        """What a result record keeps of it: the reference, key, path and headline evaluation."""
        return {
            "reference": f"{SCHEME}{self.name}/{self.dataset}",
            "key": self.key,
            "path": str(self.artifact),
            "evaluation": self.record.get("evaluation", {}),
        }


def parse_reference(text: str) -> tuple[str, str]:
    """``pretrain:NAME/DATASET`` -> (NAME, DATASET); a clear error otherwise."""
    name, slash, dataset = text[len(SCHEME) :].partition("/")
    if not (name and slash and dataset):
        raise ValueError(
            f"bad pretrained reference {text!r}: expected {SCHEME}NAME/DATASET (e.g. {SCHEME}clip/mini-clevr)"
        )
    return name, dataset


def resolve_config(spec: PretrainSpec, overrides: Mapping[str, Any] | None = None) -> Any:
    """The recipe's config: its defaults (one recipe for every run profile) with ``--set`` overrides."""
    return apply_overrides(spec.config_cls(), overrides or {}, where=f"pretrain {spec.name} (--set)")


def data_config(registry: Registry, dataset: str, config: Any) -> Any:
    """The dataset config a recipe trains on: the dataset's defaults with the recipe's overrides for
    it (``config.data[DATASET]``, when the recipe has a ``data`` field).

    The corpus is independent of the run's profile on purpose: every profile and every family
    loads the same pretraining, and a recipe may draw its own corpus (another seed) so that no
    image a run evaluates on was seen in pretraining.
    """
    ds = registry.dataset(dataset)
    overrides = dict((getattr(config, "data", None) or {}).get(ds.name, {}))
    return apply_overrides(ds.config_cls(), overrides, where=f"dataset {ds.name} (pretrain data.{ds.name})")


def ensure(
    registry: Registry,
    name: str,
    dataset: str,
    *,
    cache_dir: Path,
    overrides: Mapping[str, Any] | None = None,
    device: Any = "cpu",
    force: bool = False,
    progress: bool = True,
) -> Pretrained:
    """The pretraining ``name`` on ``dataset``: loaded from the cache, or trained and stored first."""
    from vqabench.device import device_name, pick_device

    spec = registry.pretrainer(name)
    ds = registry.dataset(dataset)
    cfg = resolve_config(spec, overrides)
    dcfg = data_config(registry, dataset, cfg)
    loaded: dict[str, TaskData] = {}

    def load(kind: str) -> TaskData:
        if kind not in spec.task_kinds:
            raise ValueError(f"pretrain {spec.name}: reads only {', '.join(spec.task_kinds)}, not {kind!r}")
        if kind not in ds.task_kinds:
            raise ValueError(f"pretrain {spec.name}: dataset {ds.name!r} has no task kind {kind!r}")
        if kind not in loaded:
            loaded[kind] = ds.load(dcfg, kind, Path(cache_dir))
        return loaded[kind]

    missing = [k for k in spec.task_kinds if k not in ds.task_kinds]
    if missing:
        raise ValueError(
            f"pretrain {spec.name} needs task kind(s) {', '.join(missing)}, which dataset {ds.name!r} does not give "
            f"(it gives {', '.join(ds.task_kinds)})"
        )
    revisions = {kind: load(kind).revision for kind in spec.task_kinds}
    key = config_hash(
        {"recipe": spec.name, "config": to_jsonable(cfg), "dataset": ds.name, "data": to_jsonable(dcfg), **revisions}
    )
    path = Path(cache_dir) / DIRECTORY / f"{spec.name}-{ds.name}-{key}"
    recover_dir(path)
    found = _read(path, spec)
    if found is not None and not force:
        return Pretrained(spec.name, ds.name, key, path, found)
    dev = pick_device(str(device))
    log.warning("pretraining %s on %s (key %s): trained once, then loaded from %s", spec.name, ds.name, key, path)
    start = time.perf_counter()
    with atomic_dir(path) as tmp:
        ctx = PretrainContext(ds.name, dcfg, Path(cache_dir), tmp, dev, load, progress)
        body = spec.run(cfg, ctx)
        if not (tmp / spec.artifact).is_file():
            raise RuntimeError(f"pretrain {spec.name} did not write its artefact {spec.artifact}")
        record = {
            "recipe": spec.name,
            "dataset": ds.name,
            "key": key,
            "artifact": spec.artifact,
            "config": to_jsonable(cfg),
            "data": to_jsonable(dcfg),
            "revisions": revisions,
            "device": device_name(dev),
            "seconds": round(time.perf_counter() - start, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **body,
        }
        atomic_write_text(tmp / RECORD, json.dumps(record, indent=2) + "\n")
    return Pretrained(spec.name, ds.name, key, path, record)


def _read(path: Path, spec: PretrainSpec) -> dict[str, Any] | None:
    """The record of a complete pretraining directory, or None (absent, partial or damaged)."""
    try:
        record = json.loads((path / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not (path / spec.artifact).is_file():
        return None
    return record


def resolve_references(
    registry: Registry, config: Any, *, cache_dir: Path, device: Any = "cpu", progress: bool = True
) -> tuple[Any, dict[str, Any]]:
    """``config`` with every top-level ``pretrain:NAME/DATASET`` string replaced by its artefact's
    path (pretraining first when needed), and {field: summary} for the result record."""
    found: dict[str, Any] = {}
    notes: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, str) and value.startswith(SCHEME):
            name, dataset = parse_reference(value)
            done = ensure(registry, name, dataset, cache_dir=cache_dir, device=device, progress=progress)
            found[f.name] = str(done.artifact)
            notes[f.name] = done.summary()
    return (dataclasses.replace(config, **found) if found else config), notes


def resolve_scorer(
    registry: Registry, spec: str, *, cache_dir: Path, device: Any = "cpu", progress: bool = True
) -> str:
    """A scorer spec ``ARCH@WEIGHTS`` (``--clipscore``) with a ``pretrain:NAME/DATASET`` weights
    reference replaced by its artefact's path (pretraining first when needed); else unchanged."""
    arch, at, weights = spec.partition("@")
    if not at or not weights.startswith(SCHEME):
        return spec
    name, dataset = parse_reference(weights)
    done = ensure(registry, name, dataset, cache_dir=cache_dir, device=device, progress=progress)
    return f"{arch}@{done.artifact}"


def describe(path: str | Path) -> str | None:
    """A weights description for an artefact file of a pretraining directory, else None."""
    record_file = Path(path).parent / RECORD
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
        return f"pretrained here: {record['recipe']} on {record['dataset']} ({record['key']})"
    except (OSError, ValueError, KeyError, TypeError):
        return None
