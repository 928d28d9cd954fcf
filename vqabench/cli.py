"""The ``vqabench`` command: a thin layer over the modules."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate


def default_cache() -> Path:
    env = os.environ.get("VQABENCH_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vqabench"


def _pairs(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _int_at_least(low: int, why: str = "") -> Any:
    """An argparse type: an integer >= ``low``; argparse names the flag and exits 2 otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}" + (f" ({why})" if why else ""))
        return value

    return parse


EPOCHS = _int_at_least(1, "a model that trains trains at least one epoch; an evaluation-only model has no recipe")
POSITIVE = _int_at_least(1)
SEED = _int_at_least(0, "seeds are non-negative")


def _lr_pairs(items: Sequence[str] | None) -> dict[str, str]:
    """``--lr GROUP=LR`` pairs; GROUP is a parameter group name, never a dotted or scoped key."""
    pairs = _pairs(items, "--lr")
    for group in pairs:
        if ":" in group or "." in group:
            raise ValueError(
                f"--lr {group}=...: GROUP is a parameter group name such as head; for one model only use "
                f"--set MODEL:train.lrs.GROUP=LR"
            )
    return pairs


def cmd_plugins(args: argparse.Namespace) -> int:
    from vqabench.plugins import load_plugins

    registry, infos = load_plugins()

    def names(what: str, registered: list[str]) -> str:
        marked = [f"{n} (conflict)" if (what, n) in registry.conflicts else n for n in registered]
        return ", ".join(marked) or "–"

    rows = [
        [
            i.name,
            i.distribution,
            i.version,
            i.status,
            names("task", i.tasks),
            names("dataset", i.datasets),
            names("model", i.models),
            names("pretrainer", i.pretrainers),
            i.error or "",
        ]
        for i in infos
    ]
    print(
        tabulate(
            rows,
            headers=[
                "plugin",
                "distribution",
                "version",
                "status",
                "task kinds",
                "datasets",
                "models",
                "pretrain",
                "error",
            ],
        )
    )
    if registry.conflicts:
        print(
            "\nname conflicts: each name below is registered by several plugins and resolves to none of them "
            "until you pick one:\nPLUGIN:NAME (e.g. --models PLUGIN:MODEL, --tasks PLUGIN:DATASET/KIND; not for "
            "task kinds) or VQABENCH_PLUGINS=... (load only one of them)\n"
        )
        conflicts = [
            [
                "task kind" if what == "task" else what,
                name,
                ", ".join(f"{p} ({registry.plugins.get(p, '?')})" for p in claims),
            ]
            for (what, name), claims in sorted(registry.conflicts.items())
        ]
        print(tabulate(conflicts, headers=["what", "name", "registered by (plugin, distribution)"]))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from vqabench import distributed, leaderboard
    from vqabench.files import check_writable_dir
    from vqabench.plugins import load_plugins
    from vqabench.results import iter_records
    from vqabench.runner import RunOptions, plan, run

    overrides: dict[str, Any] = _pairs(args.set, "--set")
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    if args.batch_size is not None:
        overrides["train.batch_size"] = args.batch_size
    lrs = _lr_pairs(args.lr)
    for name, value in lrs.items():
        overrides[f"train.lrs.{name}"] = value
    if not args.list:  # before plugins load or anything trains: the first write would fail late
        check_writable_dir(Path(args.out), "--out")
    opts = RunOptions(
        models=tuple(m for m in args.models.split(",") if m),
        tasks=tuple(t for t in args.tasks.split(",") if t),
        profile=args.profile,
        device=args.device,
        seed=args.seed,
        out=Path(args.out),
        cache_dir=Path(args.cache_dir or default_cache()),
        model_overrides=overrides,
        data_overrides=_pairs(args.data, "--data"),
        limit=args.limit,
        force=args.force,
        no_cache=args.no_cache,
        clipscore=args.clipscore,
        progress=not args.no_progress,
        lr_groups=tuple(lrs),
    )
    executor = None
    if args.ray_address and args.executor != "ray":
        raise ValueError("--ray-address is for --executor ray; add --executor ray")
    if args.executor == "ray":
        from vqabench.executors import RayExecutor

        if distributed.world_size() > 1:
            raise ValueError("--executor ray: run it as one process (not under torchrun / accelerate launch)")
        executor = RayExecutor(address=args.ray_address, progress=not args.no_progress)
    registry, infos = load_plugins()
    cells, skipped = plan(registry, opts)
    if distributed.is_main():  # with several ranks (torchrun), rank 0 alone reports
        print(
            tabulate(
                [[str(c.ref), f"{c.dataset.name}/{c.kind}", "planned", ""] for c in cells]
                + [[s.model, s.task, "skipped", s.reason] for s in skipped],
                headers=["model", "task", "status", "reason"],
            )
        )
    if args.list:
        return 0
    ledger = run(registry, infos, opts, executor)
    if not distributed.is_main():
        return 1 if any(v["state"] == "failed" for v in ledger.cells.values()) else 0
    print()
    print(tabulate(ledger.summary(), headers=["cell", "state", "reason / error"], maxcolwidths=[None, None, 80]))
    found = list(iter_records(opts.out))
    if found:
        records, dirs = [r for _, r in found], [p.parent for p, _ in found]
        for path in leaderboard.write(records, Path(args.leaderboards or opts.out / "leaderboards"), dirs):
            print(f"leaderboard: {path}")
    return 1 if any(v["state"] == "failed" for v in ledger.cells.values()) else 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from vqabench.config import apply_overrides
    from vqabench.plugins import load_plugins

    registry, _ = load_plugins()
    spec = registry.dataset(args.name)
    if spec.prepare is None:
        raise ValueError(f"dataset {args.name!r} cannot be prepared by vqabench (its plugin gives no prepare step)")
    overrides: dict[str, Any] = _pairs(args.data, "--data")
    for flag, field in (("seed", "seed"), ("images", "images"), ("image_size", "image_size")):
        if getattr(args, flag) is not None:
            overrides[field] = getattr(args, flag)
    cfg = apply_overrides(spec.config_cls(), overrides, where=f"dataset {args.name}")
    root = spec.prepare(cfg, Path(args.root))
    print(f"prepared {args.name} in {root}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from vqabench import leaderboard
    from vqabench.plugins import load_plugins

    load_plugins()  # task kinds that plugins register render with their own columns
    from vqabench.results import iter_records

    found = list(iter_records(Path(args.runs)))
    if not found:
        raise FileNotFoundError(f"no result records (record.json) under {args.runs}: give the --out of a vqabench run")
    for path in leaderboard.write([r for _, r in found], Path(args.out), [p.parent for p, _ in found]):
        print(f"wrote {path}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from vqabench.gate import check, load_thresholds
    from vqabench.plugins import load_plugins

    load_plugins()

    rows = check(load_thresholds(Path(args.thresholds)), Path(args.runs))
    print(tabulate(rows, headers="keys"))
    failed = [r for r in rows if r["status"] != "pass"]
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from vqabench.bench import bench
    from vqabench.files import atomic_write_text
    from vqabench.plugins import load_plugins
    from vqabench.runner import RunOptions

    opts = RunOptions(
        models=tuple(m for m in args.models.split(",") if m),
        tasks=tuple(t for t in args.tasks.split(",") if t),
        profile=args.profile,
        device=args.device,
        seed=args.seed,
        cache_dir=Path(args.cache_dir or default_cache()),
        model_overrides=_pairs(args.set, "--set"),
        data_overrides=_pairs(args.data, "--data"),
        progress=not args.no_progress,
    )
    registry, infos = load_plugins()
    rows = bench(registry, infos, opts, max_steps=args.max_steps)
    if not rows:
        raise ValueError("no (model, task) pair to benchmark: see the skipped pairs with vqabench run ... --list")
    # One column per cell: the rows are long, the cells few.
    fields = [k for k in rows[0] if k not in ("model", "task")]
    table = [[k, *[(f"{r[k]:.4g}" if isinstance(r[k], float) else r[k]) for r in rows]] for k in fields]
    print(tabulate(table, headers=["", *[f"{r['model']} / {r['task']}" for r in rows]]))
    atomic_write_text(Path(args.json), json.dumps({"profile": args.profile, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    import json

    from vqabench.plugins import load_plugins
    from vqabench.pretrain import ensure

    registry, _ = load_plugins()
    done = ensure(
        registry,
        args.name,
        args.data,
        cache_dir=Path(args.cache_dir or default_cache()),
        overrides=_pairs(args.set, "--set"),
        device=args.device,
        force=args.force,
        progress=not args.no_progress,
    )
    print(json.dumps({"path": str(done.artifact), "key": done.key, **done.summary()["evaluation"]}, indent=2))
    print(
        f"\nrecord: {done.path / 'record.json'}; a model config field (the family's weights field, e.g. "
        f"--set checkpoint=...) loads it as pretrain:{args.name}/{args.data}"
    )
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    from vqabench.features import clear

    cache = Path(args.cache_dir or default_cache())
    removed = clear(cache, args.what)
    print(f"removed {len(removed)} item(s) from {cache}" + "".join(f"\n  {p}" for p in removed))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from vqabench.plugins import load_plugins
    from vqabench.rescore import rescore

    load_plugins()
    runs = Path(args.runs)
    if not runs.is_dir():
        what = "is not a directory" if runs.exists() else "does not exist"
        raise FileNotFoundError(f"{runs} {what}: give the --out directory of a vqabench run")
    for path, changed in rescore(runs, spice=args.spice):
        print(f"{'updated' if changed else 'unchanged'} {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vqabench.export import export
    from vqabench.plugins import load_plugins

    registry, _ = load_plugins()
    paths = export(
        registry,
        args.dataset,
        Path(args.runs),
        args.split,
        Path(args.out),
        model=args.model,
        profile=args.profile,
        seed=args.seed,
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqabench", description="Benchmark harness for VQA and CLIP-family models.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("plugins", help="list installed plugins and what they register").set_defaults(fn=cmd_plugins)

    r = sub.add_parser("run", help="train and evaluate models on tasks")
    r.add_argument("--models", default="all", help="'all' or comma-separated NAME[@TAG] (e.g. clip-lora@random)")
    r.add_argument("--tasks", required=True, help="comma-separated DATASET or DATASET/KIND")
    r.add_argument("--profile", default="quick", choices=["quick", "paper"])
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--seed", type=SEED, default=0)
    r.add_argument("--out", default="runs", help="run directory (records, predictions, checkpoints)")
    r.add_argument(
        "--cache-dir", default=None, help="data and feature cache (default $VQABENCH_CACHE or ~/.cache/vqabench)"
    )
    r.add_argument("--leaderboards", default=None, help="where to write leaderboards (default OUT/leaderboards)")
    r.add_argument("--epochs", type=EPOCHS)
    r.add_argument("--batch-size", type=POSITIVE)
    r.add_argument("--lr", action="append", metavar="GROUP=LR", help="learning rate of a parameter group (repeatable)")
    r.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a model config field, dotted; NAME:KEY=VALUE for one model only (repeatable)",
    )
    r.add_argument("--data", action="append", metavar="KEY=VALUE", help="override a dataset config field (repeatable)")
    r.add_argument("--limit", type=POSITIVE, help="seeded random sample of at most N per split (marked partial)")
    r.add_argument("--force", action="store_true", help="redo cells that are already done")
    r.add_argument("--list", action="store_true", help="only list the planned and skipped pairs")
    r.add_argument("--no-cache", action="store_true", help="recompute frozen encoders every step (no feature cache)")
    r.add_argument(
        "--clipscore", metavar="ARCH@WEIGHTS", help="score captions with this CLIP too (e.g. ViT-B-32@openai)"
    )
    r.add_argument(
        "--executor",
        default="sequential",
        choices=["sequential", "ray"],
        help="run the cells one after the other here, or as Ray tasks (pip install vqabench[ray])",
    )
    r.add_argument(
        "--ray-address", default=None, help="Ray cluster to submit the cells to (default: start a local Ray)"
    )
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(fn=cmd_run)

    d = sub.add_parser("data", help="dataset commands").add_subparsers(dest="data_command", required=True)
    dp = d.add_parser("prepare", help="generate or check a dataset in a directory")
    dp.add_argument("name")
    dp.add_argument("--root", required=True)
    dp.add_argument("--seed", type=SEED)
    dp.add_argument("--images", type=POSITIVE)
    dp.add_argument("--image-size", type=POSITIVE)
    dp.add_argument("--data", action="append", metavar="KEY=VALUE", help="override a dataset config field")
    dp.set_defaults(fn=cmd_data_prepare)

    lb = sub.add_parser("leaderboard", help="write Markdown leaderboards from result records")
    lb.add_argument("runs")
    lb.add_argument("--out", default="leaderboards")
    lb.set_defaults(fn=cmd_leaderboard)

    c = sub.add_parser("check", help="regression gate: compare metrics with thresholds")
    c.add_argument("--thresholds", required=True)
    c.add_argument("runs")
    c.set_defaults(fn=cmd_check)

    b = sub.add_parser("bench", help="throughput benchmark: images/s, cached vs uncached epochs, memory")
    b.add_argument("--models", default="all")
    b.add_argument("--tasks", required=True)
    b.add_argument("--profile", default="quick", choices=["quick", "paper"])
    b.add_argument("--device", default="auto")
    b.add_argument("--seed", type=SEED, default=0)
    b.add_argument("--cache-dir", default=None)
    b.add_argument("--set", action="append", metavar="KEY=VALUE")
    b.add_argument("--data", action="append", metavar="KEY=VALUE")
    b.add_argument("--max-steps", type=POSITIVE, default=None, help="cap the timed epochs at N steps")
    b.add_argument("--json", default="bench.json", help="where to write the measurements")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(fn=cmd_bench)

    pt = sub.add_parser("pretrain", help="pretrain a model once (content-addressed in the cache), e.g. clip")
    pt.add_argument("name", help="a registered pretraining recipe (vqabench plugins lists them)")
    pt.add_argument("--data", required=True, help="the dataset to pretrain on, e.g. mini-clevr")
    pt.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe config field (repeatable)")
    pt.add_argument("--device", default="auto")
    pt.add_argument("--cache-dir", default=None)
    pt.add_argument("--force", action="store_true", help="train again even when the cache holds it")
    pt.add_argument("--no-progress", action="store_true")
    pt.set_defaults(fn=cmd_pretrain)

    cc = sub.add_parser("cache", help="cache commands").add_subparsers(dest="cache_command", required=True)
    cl = cc.add_parser("clear", help="delete cached features, decoded images, pretrainings or generated data")
    cl.add_argument("what", nargs="?", default="features", choices=["features", "images", "pretrained", "data", "all"])
    cl.add_argument("--cache-dir", default=None)
    cl.set_defaults(fn=cmd_cache_clear)

    s = sub.add_parser("score", help="recompute metrics from stored predictions")
    s.add_argument("runs")
    s.add_argument("--spice", action="store_true", help="also compute SPICE (needs its CoreNLP download)")
    s.set_defaults(fn=cmd_score)

    ex = sub.add_parser("export", help="write an evaluation server's files from stored predictions")
    ex.add_argument("dataset", help="the dataset whose format to write, e.g. vizwiz")
    ex.add_argument("runs", help="the --out of a vqabench run, or one cell's directory")
    ex.add_argument("--split", default="challenge", help="the split whose predictions to export (default: challenge)")
    ex.add_argument("--out", required=True, help="the file to write (the dataset may write files next to it)")
    ex.add_argument("--model", default=None, help="the model, when the directory holds several")
    ex.add_argument("--profile", default=None)
    ex.add_argument("--seed", type=SEED, default=None)
    ex.set_defaults(fn=cmd_export)

    # --debug before or after the command (``vqabench --debug run ...`` or ``vqabench run ... --debug``);
    # SUPPRESS keeps a subcommand's absent flag from resetting the global one.
    p.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    for action in (sub, d, cc):
        for parser in {id(v): v for v in action.choices.values()}.values():
            parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def describe_error(exc: BaseException) -> str:
    """The one-line message of an expected error: the path or name involved and the fix."""
    from vqabench.files import describe_os_error

    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, OSError) and exc.errno is not None:
        return describe_os_error(exc)
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    from vqabench.plugins import PluginWarning
    from vqabench.results import RunWarning

    default_format = warnings.formatwarning
    warnings.formatwarning = lambda msg, cat, *a, **k: (
        f"warning: {msg}\n" if issubclass(cat, (PluginWarning, RunWarning)) else default_format(msg, cat, *a, **k)
    )
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:  # OSError: disk full, permissions, not a dir
        if args.debug:
            traceback.print_exc()
        else:
            # One line, whatever the message (a library's may span several): "; " joins its lines.
            message = "; ".join(line.strip() for line in describe_error(exc).splitlines() if line.strip())
            print(f"error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
