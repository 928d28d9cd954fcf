"""Markdown leaderboards from result records, in the layout of the reports' result tables.

``render`` is a pure function from records to Markdown text; ``write`` adds the files and the
training-curve PNGs. One file per dataset, one table per (task kind, profile), followed by the sections the kind adds.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from vqabench.files import atomic_write_bytes, atomic_write_text
from vqabench.tasks import get_task


def fmt_params(n: int) -> str:
    if n == 0:
        return "0"
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} K"


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def _mean(values: Sequence[float | None]) -> str:
    vals = [v for v in values if isinstance(v, (int, float)) and v == v]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def _val_at(record: dict[str, Any], epoch: int, metric: str) -> float | None:
    for h in record.get("history", []):
        if h["epoch"] == epoch:
            return h.get("val", {}).get(metric)
    return None


def _epoch_columns(records: Sequence[dict[str, Any]]) -> list[int]:
    epochs: set[int] = set()
    for r in records:
        validated = [h["epoch"] for h in r.get("history", []) if "val" in h]
        if validated:
            last = validated[-1]
            epochs.add(last)
            train = r["config"]["model"].get("train") or {}
            epochs.update(e for e in train.get("report_epochs", []) if e < last and e in validated)
    return sorted(epochs)


def _stage_names(records: Sequence[dict[str, Any]]) -> list[str]:
    """Stage names of the records trained in more than one stage (a column per stage)."""
    staged = [r for r in records if len(r.get("stages") or []) > 1]
    return list(dict.fromkeys(s["name"] for r in staged for s in r["stages"]))


def _extra_splits(records: Sequence[dict[str, Any]]) -> list[str]:
    """Evaluated splits besides val and test (e.g. a second domain's target_test)."""
    return sorted({s for r in records for s in r["final"] if s not in ("val", "test")})


def _stage_val(record: dict[str, Any], stage: str, metric: str) -> float | None:
    for s in record.get("stages") or []:
        if s["name"] == stage:
            return s.get("val", {}).get(metric)
    return None


def table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per model (seeds averaged) plus the task's baseline, sorted by the primary metric."""
    task = get_task(records[0]["kind"])
    primary = task.primary_metric
    higher = task.metric(primary).higher_is_better
    epochs = _epoch_columns(records)
    stages = _stage_names(records)
    prefix = task.type_prefix
    extra = _extra_splits(records)
    qtypes = sorted({k for r in records for k in r["final"].get("test", {}) if prefix and k.startswith(prefix)})
    # Optional metrics (CLIPScore without a scorer, top-5 under five classes) get no empty column.
    columns = task.columns_for(records) or [(primary, primary)]
    present = [(k, t) for k, t in columns if k == primary or any(k in r["final"].get("test", {}) for r in records)]
    val_title = "Val Acc ({} ep)" if primary == "vqa_accuracy" else f"Val {primary} ({{}} ep)"
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_model[r["model"]].append(r)
    rows = []
    for model, rs in by_model.items():
        name = rs[0]["display_name"] + (f" [{model.split('@', 1)[1]}]" if "@" in model else "")
        if any(r["partial"] for r in rs):
            name += f" (partial: --limit {next(r['limit'] for r in rs if r['partial'])})"
        trained = rs[0].get("trained", True)
        row: dict[str, Any] = {
            "Model": name,
            "Weights": rs[0]["weights"],
            "Trainable params": fmt_params(rs[0]["params"]["trainable"]) if trained else "not trained",
        }
        for e in epochs:
            row[val_title.format(e)] = _mean([_val_at(r, e, primary) for r in rs])
        for stage in stages:
            row[f"Val {primary} after {stage}"] = _mean([_stage_val(r, stage, primary) for r in rs])
        for key, title in present:
            row[title] = _mean([r["final"].get("test", {}).get(key) for r in rs])
        for q in qtypes:
            row[f"Acc {q[len(prefix) :]}"] = _mean([r["final"].get("test", {}).get(q) for r in rs])
        for split in extra:
            row[f"{dict(columns).get(primary, primary)} ({split})"] = _mean(
                [r["final"].get(split, {}).get(primary) for r in rs]
            )
        row["Time"] = fmt_seconds(statistics.mean(r["timing"]["total_seconds"] for r in rs))
        worst = float("-inf") if higher else float("inf")
        row["_sort"] = statistics.mean([r["final"].get("test", {}).get(primary, worst) for r in rs])
        rows.append(row)
    base = [r["baseline"]["test"] for r in records if (r.get("baseline") or {}).get("test")]
    if base:
        val = [r["baseline"].get("val") for r in records if (r.get("baseline") or {}).get("val")]
        row = {"Model": base[0].get("label", "Baseline"), "Weights": "–", "Trainable params": "0"}
        for e in epochs:
            row[val_title.format(e)] = _mean([val[0].get(primary)] if val else [])
        for key, title in present:
            row[title] = _mean([base[0].get(key)])
        for split in extra:
            other = [r["baseline"][split] for r in records if split in (r.get("baseline") or {})]
            row[f"{dict(columns).get(primary, primary)} ({split})"] = _mean([other[0].get(primary)] if other else [])
        row["_sort"] = base[0].get(primary, float("-inf") if higher else float("inf"))
        rows.append(row)
    df = pd.DataFrame(rows).sort_values("_sort", ascending=not higher, kind="stable").drop(columns="_sort")
    return df.fillna("–")


def render(
    records: Iterable[dict[str, Any]],
    curves: dict[tuple[str, str], str] | None = None,
    figures: dict[str, dict[tuple[str, str], list[tuple[str, str]]]] | None = None,
) -> dict[str, str]:
    """Markdown text per dataset: one table per (task kind, profile); ``figures`` links the kind's
    plots ({dataset: {(kind, profile): [(title, file)]}})."""
    groups: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        groups[r["dataset"]][(r["kind"], r["profile"])].append(r)
    out = {}
    for dataset, tables in sorted(groups.items()):
        lines = [
            f"# {dataset}",
            "",
            "Generated by `vqabench leaderboard` from result records; do not edit by hand.",
            "",
        ]
        for (kind, profile), rs in sorted(tables.items()):
            devices = sorted({r["device"] for r in rs})
            seeds = sorted({r["seed"] for r in rs})
            dates = sorted({r["finished"][:10] for r in rs})
            versions = sorted({r["versions"]["vqabench"] for r in rs})
            lines += [
                f"## {kind} — {profile} profile",
                "",
                f"- Profile: `{profile}`; seeds: {', '.join(map(str, seeds))}; device: {'; '.join(devices)}",
                f"- Weights: {'; '.join(sorted({r['model'] + ': ' + r['weights'] for r in rs}))}",
                f"- Date: {' to '.join(dict.fromkeys([dates[0], dates[-1]]))}; vqabench {', '.join(versions)}",
                "- Test metrics of each model's best-validation checkpoint (evaluation-only models as built); "
                "values are fractions in [0, 1].",
            ]
            scorers = sorted({r["final"].get("test", {}).get("clipscore_model") for r in rs} - {None})
            if scorers:
                lines.append(f"- CLIPScore computed by: {'; '.join(scorers)}")
            disabled = sorted({f"{a} ({why})" for r in rs for a, why in r["augmentations"]["disabled"].items()})
            if disabled:
                lines.append(f"- Augmentations switched off: {', '.join(disabled)}")
            lines += ["", table(rs).to_markdown(index=False, disable_numparse=True), ""]
            if curves and (kind, profile) in curves.get(dataset, {}):
                lines += [f"![training curves]({curves[dataset][(kind, profile)]})", ""]
            for title, name in (figures or {}).get(dataset, {}).get((kind, profile), []):
                lines += [f"![{title}]({name})", ""]
            lines += get_task(kind).sections(rs)  # the kind's own tables (zeroshot: per-prompt scores)
            lines += model_figures(rs)
        out[dataset] = "\n".join(lines)
    return out


def model_figures(records: Sequence[dict[str, Any]]) -> list[str]:
    """Links to the figures models drew of their test predictions (copied by ``write``: ``link``)."""
    links = [
        f"- {r['model']} (seed {r['seed']}): [{fig['title']}]({fig['link']})"
        for r in sorted(records, key=lambda r: (r["model"], r["seed"]))
        for fig in r.get("figures") or []
        if fig.get("link")
    ]
    return ["### Figures", "", *links, ""] if links else []


def copy_figures(record: dict[str, Any], cell_dir: Path, out_dir: Path) -> dict[str, Any]:
    """``record`` with its figures copied from its cell directory into ``out_dir/figures`` and linked."""
    figures = []
    for fig in record.get("figures") or []:
        src = cell_dir / fig["file"]
        if not src.is_file():
            continue  # a run directory copied without its figures: the record keeps them unlinked
        r = record
        slug = f"{r['dataset']}-{r['kind']}-{r['profile']}-{r['model']}-seed{r['seed']}".replace("@", "_")
        name = f"figures/{slug}-{src.name}"
        (out_dir / "figures").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / name, src.read_bytes())
        figures.append({**fig, "link": name})
    return {**record, "figures": figures} if figures else record


def plot_curves(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Validation metric per epoch and step loss per model, as report 000 figure 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = get_task(records[0]["kind"]).primary_metric
    # Named loss parts a model reports per epoch (a domain discriminator's and adversarial losses)
    # get a third panel.
    with_parts = [r for r in records if any(h.get("train_loss_parts") for h in r["history"])]
    fig, axes = plt.subplots(1, 3 if with_parts else 2, figsize=(15 if with_parts else 10, 3.6), dpi=90)
    ax1, ax2 = axes[0], axes[1]
    for r in records:
        label = f"{r['model']} (seed {r['seed']})"
        ax1.plot(
            [h["epoch"] for h in r["history"] if "val" in h],
            [h["val"].get(primary) for h in r["history"] if "val" in h],
            marker="o",
            ms=3,
            label=label,
        )
        losses = pd.Series(r["step_losses"], dtype=float)
        ax2.plot(losses.rolling(max(1, len(losses) // 50), min_periods=1).mean(), label=label)
    ax1.set(xlabel="epoch", ylabel=f"val {primary}", title="Validation")
    ax2.set(xlabel="step", ylabel="training loss (smoothed)", title="Step loss")
    ax1.legend(fontsize=7)
    for r in with_parts:
        parts = list(dict.fromkeys(k for h in r["history"] for k in h.get("train_loss_parts") or {}))
        for part in parts:
            points = [(h["epoch"], h["train_loss_parts"].get(part)) for h in r["history"] if h.get("train_loss_parts")]
            points = [(e, v) for e, v in points if v is not None]
            axes[2].plot(*zip(*points), marker=".", label=f"{r['model']}: {part}")
    if with_parts:
        axes[2].set(xlabel="epoch", ylabel="epoch mean", title="Loss parts")
        axes[2].legend(fontsize=6)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    """Write a figure through a temporary file and a rename, and free it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def plot_figure(draw: Any, path: Path) -> None:
    """One of a kind's figures (``Task.plots``): ``draw(axes)`` onto a single panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=90)
    draw(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def write(records: Sequence[dict[str, Any]], out_dir: Path, cell_dirs: Sequence[Path] | None = None) -> list[Path]:
    """Write ``<dataset>.md`` and its curve PNGs into ``out_dir``; return the Markdown paths.

    ``cell_dirs`` (each record's directory, in order) lets the models' figures be copied and linked.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if cell_dirs is not None:
        records = [copy_figures(r, d, out_dir) for r, d in zip(records, cell_dirs)]
    curves: dict[str, dict[tuple[str, str], str]] = defaultdict(dict)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["dataset"], r["kind"], r["profile"])].append(r)
    figures: dict[str, dict[tuple[str, str], list[tuple[str, str]]]] = defaultdict(dict)
    for (dataset, kind, profile), rs in groups.items():
        if any(r.get("history") for r in rs):
            name = f"{dataset}-{kind}-{profile}.png"
            plot_curves([r for r in rs if r.get("history")], out_dir / name)
            curves[dataset][(kind, profile)] = name
        for slug, title, draw in get_task(kind).plots(rs):
            name = f"{dataset}-{kind}-{profile}-{slug}.png"
            plot_figure(draw, out_dir / name)
            figures[dataset].setdefault((kind, profile), []).append((title, name))
    paths = []
    for dataset, text in render(records, curves, figures).items():
        path = out_dir / f"{dataset}.md"
        atomic_write_text(path, text)
        paths.append(path)
    return paths
