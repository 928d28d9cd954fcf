"""One (model, task) cell: resolve its configs, prepare its data, model, images and features, and
build its result record. The runner, ``vqabench bench`` and ``create_model`` share this path.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import vqabench
from vqabench import distributed, evaluate
from vqabench.config import EvalConfig, Stage, TrainConfig, apply_overrides, eval_config, to_jsonable, train_config
from vqabench.data import Batches, limit_samples
from vqabench.device import device_name, peak_memory, pick_device, reset_peak_memory
from vqabench.features import cache_for, text_cache_for
from vqabench.images import ImageStore
from vqabench.model import compile_methods, count_parameters
from vqabench.pretrain import resolve_references
from vqabench.registry import DatasetSpec, ModelRef, ModelSpec
from vqabench.results import SCHEMA_VERSION
from vqabench.tasks import TaskData, get_task
from vqabench.tasks.base import CollateContext, Task
from vqabench.vocab import AnswerTargets, coverage


@dataclass(frozen=True)
class RunOptions:
    """Everything ``vqabench run`` takes; overrides use dotted keys on the model config."""

    models: tuple[str, ...] = ("all",)
    tasks: tuple[str, ...] = ()
    profile: str = "quick"
    device: str = "auto"
    seed: int = 0
    out: Path = Path("runs")
    cache_dir: Path = Path(".cache/vqabench")
    model_overrides: Mapping[str, Any] = field(default_factory=dict)
    data_overrides: Mapping[str, Any] = field(default_factory=dict)
    limit: int | None = None
    force: bool = False
    no_cache: bool = False
    clipscore: str | None = None  # "ARCH@TAG_OR_FILE": the CLIP that scores captions (CLIPScore)
    progress: bool = True
    # Parameter groups the user named with --lr (their rates are train.lrs.* overrides): only these
    # must be groups of the model, since a recipe may carry rates for groups a variant lacks.
    lr_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cell:
    """One planned (model, dataset, kind) combination."""

    ref: ModelRef
    model: ModelSpec
    dataset: DatasetSpec
    kind: str
    dataset_plugin: str | None = None  # the plugin the user picked with PLUGIN:DATASET, if any
    # The registry the cell was planned from: resolves ``pretrain:`` references in its config.
    registry: Any = field(default=None, compare=False, repr=False)

    @property
    def task(self) -> Task:
        return get_task(self.kind)

    def key(self, opts: RunOptions) -> str:
        return f"{self.ref}|{self.dataset.name}/{self.kind}|{opts.profile}|seed{opts.seed}"


@dataclass(frozen=True)
class Skipped:
    """A (model, task) pair that was not planned, and why."""

    model: str
    task: str
    reason: str


def resolve(cell: Cell, opts: RunOptions) -> tuple[Any, Any]:
    """The model and dataset configs: defaults, then profile, weights tag and user overrides.

    ``--set KEY=V`` applies to every model that has the field ``KEY`` names (an eval-only model
    has no ``train``); ``--set NAME:KEY=V`` (or ``PLUGIN:NAME:KEY=V``) applies to model NAME and
    must fit its config.
    """
    mcfg = apply_overrides(
        cell.model.config_cls(),
        cell.model.profiles.get(opts.profile, {}),
        where=f"model {cell.ref} profile {opts.profile}",
    )
    if cell.ref.tag:
        mcfg = apply_overrides(mcfg, cell.model.tags[cell.ref.tag], where=f"model {cell.ref}")
    fields = {f.name: getattr(mcfg, f.name) for f in dataclasses.fields(mcfg)}
    # The scope ends at the last ':' (config keys hold none), so it may be NAME or PLUGIN:NAME.
    mine = {
        k.rpartition(":")[2]: v
        for k, v in opts.model_overrides.items()
        if ":" in k and k.rpartition(":")[0] in (cell.ref.name, cell.ref.qualified_name)
    }
    shared = {
        k: v for k, v in opts.model_overrides.items() if ":" not in k and fields.get(k.partition(".")[0]) is not None
    }
    overrides = {**shared, **mine}
    train = train_config(mcfg)
    if "train.epochs" in overrides and train is not None and any(s.epochs is not None for s in train.stages):
        names = ", ".join(s.name for s in train.stages)
        raise ValueError(
            f"model {cell.ref}: its recipe has stages ({names}); set each stage's epochs with "
            f"--set {cell.ref.name}:train.stages.{train.stages[0].name}.epochs=N"
        )
    mcfg = apply_overrides(mcfg, overrides, where=f"model {cell.ref} (--set)")
    dcfg = apply_overrides(
        cell.dataset.config_cls(),
        cell.dataset.profiles.get(opts.profile, {}),
        where=f"dataset {cell.dataset.name} profile {opts.profile}",
    )
    dcfg = apply_overrides(dcfg, opts.data_overrides, where=f"dataset {cell.dataset.name} (--data)")
    return mcfg, dcfg


def check_recipe(cell: Cell, mcfg: Any) -> None:
    """Fail before any work on a recipe the task cannot serve (best metric, streams)."""
    train = train_config(mcfg)
    if train is None:
        return
    for metric in (train.best_metric, *train.keep_best):
        cell.task.check_best_metric(metric)
    for stage in train.resolved_stages():
        if not stage.streams:
            raise ValueError(f"model {cell.ref}: stage {stage.name!r} has no training streams")


def check_lr_groups(cell: Cell, opts: RunOptions, mcfg: Any, model: Any = None) -> None:
    """Fail before training when a ``--lr GROUP=VALUE`` cannot take effect on this cell's model.

    Without ``model``: only what the recipe shows (when each of its stages sets its own rates, a
    top-level rate reaches none of them). With it: GROUP must be one of the model's parameter
    groups or one a stage of the recipe trains (a stage may add its group in ``begin_stage``).
    """
    train = train_config(mcfg)
    if not opts.lr_groups or train is None:
        return  # an evaluation-only model takes no train.* override at all
    if train.stages and all(s.lrs for s in train.stages):
        stage = train.stages[-1]
        raise ValueError(
            f"model {cell.ref}: --lr {opts.lr_groups[0]}=... would change nothing: each stage of its recipe "
            f"({', '.join(s.name for s in train.stages)}) sets its own rates; set one stage's rate with "
            f"--set {cell.ref.name}:train.stages.{stage.name}.lrs.{opts.lr_groups[0]}=VALUE"
        )
    if model is None:
        return
    # The recipe as it was before --lr added its rates: a typo must not count as a recipe group.
    given = {f"train.lrs.{g}" for g in opts.lr_groups}
    base = dataclasses.replace(opts, model_overrides={k: v for k, v in opts.model_overrides.items() if k not in given})
    recipe = train_config(resolve(cell, base)[0])
    groups = set(model.param_groups()) | {g for s in (recipe.resolved_stages() if recipe else ()) for g in s.lrs}
    for name in opts.lr_groups:
        if name not in groups:
            raise ValueError(
                f"--lr {name}=...: model {cell.ref} has no parameter group {name!r}; its groups: "
                f"{', '.join(sorted(groups))} (to give a rate to one model only: --set MODEL:train.lrs.GROUP=VALUE)"
            )


def augmentations(cell: Cell, data: TaskData, names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The recipe's augmentations this dataset allows, and the dropped ones with the reason."""
    unsafe = cell.dataset.unsafe_augmentations | data.unsafe_augmentations
    used = [a for a in names if a not in unsafe]
    return used, {a: f"changes answers on {data.dataset}" for a in names if a in unsafe}


def build_model(
    cell: Cell, mcfg: Any, data: TaskData, device: torch.device, opts: RunOptions
) -> tuple[Any, list[str], dict[str, Any]]:
    """The cell's model, seeded, on ``device`` (channels-last on a GPU, peak memory counted from
    here), with the methods ``train.compile`` asks for compiled; returns (model, their names, the
    pretrainings its ``pretrain:`` references resolved to, by config field)."""
    pretrained: dict[str, Any] = {}
    if cell.registry is not None:  # pretraining (first use only) comes before the seeded build
        mcfg, pretrained = resolve_references(
            cell.registry, mcfg, cache_dir=opts.cache_dir, device=device, progress=opts.progress
        )
    torch.manual_seed(opts.seed)
    reset_peak_memory(device)
    model = cell.model.build(mcfg, data, device).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    train = train_config(mcfg)
    return model, compile_methods(model) if train is not None and train.compile else [], pretrained


@dataclass
class Prepared:
    """A cell ready to train and evaluate: configs, data, model, image store, features."""

    cell: Cell
    opts: RunOptions
    mcfg: Any
    dcfg: Any
    data: TaskData
    splits: dict[str, list[Any]]  # the splits this cell uses, sampled by --limit
    model: Any
    compiled: list[str]
    device: torch.device
    store: ImageStore
    used_aug: list[str]
    disabled_aug: dict[str, str]
    answers: AnswerTargets | None
    features: Any = None
    text_features: Any = None
    cached: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # the record's "warnings" (see vocab_warnings)
    pretrained: dict[str, Any] = field(default_factory=dict)  # resolved ``pretrain:`` references

    @property
    def task(self) -> Task:
        return self.cell.task

    @property
    def train(self) -> TrainConfig | None:
        return train_config(self.mcfg)

    @property
    def eval(self) -> EvalConfig:
        return eval_config(self.mcfg)

    def refresh_features(self) -> dict[str, Any]:
        """(Re)build the feature caches for what the model has frozen now; the record's note."""
        precision = self.train.precision if self.train else self.eval.precision
        used = self.used_aug if self.train else []
        self.features, note = cache_for(
            self.model,
            self.store,
            used,
            self.opts.cache_dir,
            self.opts.no_cache,
            self.data.revision,
            self.device,
            precision,
        )
        questions = sorted({s.question for v in self.splits.values() for s in v if hasattr(s, "question")})
        self.text_features, text_note = text_cache_for(
            self.model, questions, self.opts.cache_dir, self.opts.no_cache, self.device, precision
        )
        if text_note:
            note["text"] = text_note
        self.cached = note
        return note

    def batches(self, split: str, shuffle: bool = False, samples: list[Any] | None = None) -> Batches:
        targets = self.train.targets if self.train else "hard"
        ctx = CollateContext(self.store, self.features, self.text_features, self.answers, targets, self.device)
        size = self.train.batch_size if (self.train and shuffle) else self.eval.batch_size
        chosen = self.splits[split] if samples is None else samples
        return Batches(self.task, chosen, size, ctx, shuffle=shuffle, seed=self.opts.seed)

    def streams(self, stage: Stage) -> dict[str, Batches]:
        """The stage's training batches by split; the feature cache follows what is frozen now."""
        before = self.cached.get("stages", {})
        note = self.refresh_features()
        if self.train is not None and self.train.stages:
            note["stages"] = {**before, stage.name: note["image"] or f"off: {note['off']}"}
        return {name: self.batches(name, shuffle=True) for name in stage.streams or ("train",)}


def needed_splits(mcfg: Any) -> list[str]:
    """Splits a cell decodes: every training stream, val and the eval splits (eval only: those)."""
    train, ev = train_config(mcfg), eval_config(mcfg)
    names: list[str] = []
    if train is not None:
        for stage in train.resolved_stages():
            names.extend(stage.streams or ())
        names.append(train.val_split)
    names.extend(ev.splits)
    return list(dict.fromkeys(names))


def prepare(cell: Cell, opts: RunOptions, mcfg: Any, dcfg: Any, data: TaskData) -> Prepared:
    """Sample the splits, build the model, decode the images the cell needs, cache features."""
    cell.task.check_data(data)  # what the kind needs, before anything is built or decoded
    # Unlabelled splits are predicted by every cell, so that their predictions can be exported.
    names = needed_splits(mcfg) + sorted(s for s in data.unlabelled if s in data.splits)
    names = list(dict.fromkeys(names))
    for name in names:
        data.split(name)  # a missing split fails here, naming the ones the dataset has
    splits = {s: limit_samples(data.splits[s], opts.limit, opts.seed) for s in names}
    for name, samples in splits.items():
        if not samples:
            raise ValueError(f"dataset {data.dataset!r} ({data.kind}): split {name!r} is empty")
    device = distributed.place(pick_device(opts.device))  # several ranks: each its own GPU
    model, compiled, pretrained = build_model(cell, mcfg, data, device, opts)
    check_lr_groups(cell, opts, mcfg, model)  # needs the model's groups; before images are decoded
    task = cell.task
    paths = [task.image_of(s) for v in splits.values() for s in v]
    store = ImageStore.build(
        paths,
        model.image_size,
        opts.cache_dir,
        data.revision,
        opts.progress,
        resize=getattr(model, "resize", "squash"),
        dataset=data.dataset,
    ).place(device)
    train = train_config(mcfg)
    used, disabled = augmentations(cell, data, train.augment if train else ())
    answers = AnswerTargets(data.answer_vocab, data.vqa_mode) if data.answer_vocab else None
    prep = Prepared(cell, opts, mcfg, dcfg, data, splits, model, compiled, device, store, used, disabled, answers)
    prep.warnings = vocab_warnings(prep)
    prep.pretrained = pretrained
    if train is None:
        prep.refresh_features()  # a trained model gets them per stage (streams)
    return prep


def baselines(prep: Prepared, lines_by_split: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The task's trivial baseline scored on every evaluated split."""
    train = prep.splits.get("train") or prep.data.splits.get("train") or []
    made = prep.task.baseline(train, prep.data)
    if made is None:
        return {}
    label, prediction = made
    out = {}
    for split, lines in lines_by_split.items():
        scored = evaluate.score(
            prep.cell.kind, [{**ln, **prediction} for ln in lines], **prep.task.score_options(prep.data)
        )
        out[split] = {"label": label, "prediction": prediction, **{k: v for k, v in scored.items() if _scalar(v)}}
    return out


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def vocab_note(prep: Prepared) -> dict[str, Any] | None:
    """Answer-vocabulary size, rule and coverage (accuracy ceiling) per evaluated split."""
    vocab = prep.data.answer_vocab
    if not vocab:
        return None
    scored = [s for s in prep.eval.splits if s not in prep.data.unlabelled]
    return {
        "size": len(vocab),
        "rule": prep.data.vocab_rule or "given by the dataset",
        "coverage": {s: coverage(prep.splits[s], vocab, prep.data.vqa_mode) for s in scored},
    }


def vocab_warnings(prep: Prepared) -> list[str]:
    """Per split, the questions none of whose human answers is in the answer vocabulary.

    Scoring handles them (a prediction just scores 0 against them), so they would pass unseen:
    the count goes into the record and onto the terminal instead.
    """
    if prep.answers is None:
        return []
    out = []
    for split, samples in prep.splits.items():
        if split in prep.data.unlabelled:
            continue  # no answers to miss
        questions = [s for s in samples if hasattr(s, "answers")]
        missing = sum(1 for s in questions if prep.answers.hard(s.answers) == -1)
        if missing:
            out.append(
                f"{missing:,} of {len(questions):,} {split} questions have no answer in the vocabulary "
                f"({len(prep.answers):,} answers): training has no target for them and they lower its coverage "
                f"(the accuracy ceiling)"
            )
    return out


def build_record(
    prep: Prepared,
    *,
    config_hash: str,
    fit: Any,
    final: dict[str, Any],
    baseline: dict[str, Any],
    total_seconds: float,
    inference_rate: dict[str, float],
    versions: dict[str, Any],
) -> dict[str, Any]:
    """The result record of a finished cell (fields: ``vqabench.results.RECORD_FIELDS``)."""
    cell, opts = prep.cell, prep.opts
    trainable, n_total = count_parameters(prep.model)
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "model": str(cell.ref),
        "display_name": cell.model.display_name,
        "family": cell.model.family,
        "dataset": cell.dataset.name,
        "kind": cell.kind,
        "profile": opts.profile,
        "seed": opts.seed,
        "config": {
            "model": to_jsonable(prep.mcfg),
            "dataset": to_jsonable(prep.dcfg),
            "score": prep.task.score_options(prep.data),
        },
        "config_hash": config_hash,
        "weights": prep.model.weights,
        "pretrained": prep.pretrained,
        "partial": opts.limit is not None,
        "limit": opts.limit,
        "sample_ids": {s: [x.id for x in v] for s, v in prep.splits.items()} if opts.limit is not None else None,
        "augmentations": {"used": prep.used_aug, "disabled": prep.disabled_aug},
        "cached": prep.cached,
        "compiled": prep.compiled,
        "params": {"trainable": trainable, "total": n_total},
        "trained": fit is not None,
        "final": final,
        "baseline": baseline,
        "vocab": vocab_note(prep),
        "data_notes": prep.data.notes,
        "warnings": list(prep.warnings),
        "timing": {"total_seconds": total_seconds, "inference_samples_per_second": inference_rate},
        "memory": peak_memory(prep.device),
        "device": device_name(prep.device),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "vqabench": vqabench.__version__,
            **versions,
        },
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if fit is None:
        record["training"] = "not trained (evaluation only)"
        return record
    if distributed.world_size() > 1:
        # The recipe's batch is the global one and its rates are used as given on any number of ranks.
        record["config"]["parallel"] = {
            "world_size": distributed.world_size(),
            "effective_batch_size": prep.train.batch_size,
            "batch_size_per_rank": prep.train.batch_size / distributed.world_size(),
            "lrs": {s.name: dict(s.lrs) for s in prep.train.resolved_stages()},
        }
    record.update(
        history=fit.history,
        step_losses=fit.step_losses,
        stages=fit.stages,
        best_epoch=fit.best_epoch,
        resumed_from=fit.resumed_from,
    )
    record["timing"].update(
        epoch_seconds=[h["seconds"] for h in fit.history],
        train_seconds=fit.train_seconds,
        train_images_per_second=fit.train_images / fit.train_seconds if fit.train_seconds else None,
        train_samples_per_second=fit.train_samples / fit.train_seconds if fit.train_seconds else None,
    )
    return record
