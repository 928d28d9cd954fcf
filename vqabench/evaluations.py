"""Evaluating a prepared cell: one split, and what a record reports beyond the selected checkpoint's
default predictions, each on the test split:

- selections: the checkpoint each further selection metric kept (``train.keep_best``), restored
  and evaluated (report 003's "Model Saved Methods"), then the selected weights put back;
- variants: each of the model's prediction variants (decoding settings), with its speed;
- figures: what the model draws of its test predictions (attention maps).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from vqabench import distributed, evaluate
from vqabench.checkpoint import load_weights_file
from vqabench.engine import restore
from vqabench.results import write_jsonl


def score_split(
    prep: Any, split: str, where: Path | None = None, suffix: str = ""
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, float]:
    """Predict ``split``, score it (None for an unlabelled split) and write ``predictions-<split><suffix>.jsonl``
    into ``where``; returns (lines, metrics, samples per second of prediction)."""
    task, kind = prep.task, prep.cell.kind
    t0 = time.perf_counter()
    lines = evaluate.predict(
        prep.model, prep.batches(split), prep.splits[split], kind, prep.device, prep.eval.precision
    )
    rate = len(lines) / max(1e-9, time.perf_counter() - t0)
    metrics = None
    if split not in prep.data.unlabelled:
        metrics = evaluate.score(kind, lines, **task.score_options(prep.data))
        # Run scores first: they may add each line's own score (CLIPScore), which the file keeps.
        metrics.update(task.run_scores(prep.splits[split], lines, prep.opts, prep.device))
    if where is not None and distributed.is_main():  # every rank holds every line; rank 0 writes them
        write_jsonl(where / f"predictions-{split}{suffix}.jsonl", lines)
    return lines, metrics, rate


def test_split(prep: Any) -> str | None:
    """The split further evaluations use: "test" when evaluated, else the last labelled eval split."""
    labelled = [s for s in prep.eval.splits if s not in prep.data.unlabelled]
    return "test" if "test" in labelled else (labelled[-1] if labelled else None)


def scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def selections(prep: Any, fit: Any, final: dict[str, Any], where: Path) -> dict[str, Any]:
    """Per ``train.keep_best`` metric: the epoch it chose, its validation value and the test metrics
    of that checkpoint; the model ends with the weights it started with (the selected ones)."""
    split = test_split(prep)
    if fit is None or not fit.kept or split is None:
        return {}
    selected = {k: v.detach().clone() for k, v in prep.model.state_dict().items()}
    # By epoch: the checkpoints of one epoch hold the same weights, scored once (the selected one's: ``final``).
    scored: dict[int, dict[str, Any]] = {fit.best_epoch: scalars(final[split])}
    out: dict[str, Any] = {}
    try:
        for name, kept in fit.kept.items():
            entry: dict[str, Any] = {"epoch": kept["epoch"] or None, "val": kept["value"], "split": split}
            if kept["path"] is None:
                hint = (
                    " (a run-level score: give the run its scorer, e.g. --clipscore)" if _run_score(prep, name) else ""
                )
                out[name] = {**entry, "note": f"validation never produced {name}{hint}"}
                continue
            if kept["epoch"] not in scored:
                restore(prep.model, load_weights_file(kept["path"]), kept["path"])
                _, metrics, _ = score_split(prep, split, where, suffix=f".best-{name}")
                scored[kept["epoch"]] = scalars(metrics or {})
            out[name] = {**entry, "test": scored[kept["epoch"]]}
    finally:
        prep.model.load_state_dict(selected)
    return out


def _run_score(prep: Any, name: str) -> bool:
    return any(name.startswith(p) for p in prep.task.run_score_prefixes)


def variants(prep: Any, final: dict[str, Any], rates: dict[str, float], where: Path) -> list[dict[str, Any]]:
    """The default prediction, then each of the model's variants, on the test split: metrics and speed
    (a list: records are written with sorted keys, and the default comes first)."""
    names = tuple(prep.model.eval_variants())
    split = test_split(prep)
    if not names or split is None:
        return []
    label = prep.model.default_variant or "default"
    out = [{"name": label, "split": split, "test": scalars(final[split]), "samples_per_second": rates[split]}]
    try:
        for name in names:
            prep.model.use_variant(name)
            _, metrics, rate = score_split(prep, split, where, suffix=f".{name}")
            out.append({"name": name, "split": split, "test": scalars(metrics or {}), "samples_per_second": rate})
    finally:
        prep.model.use_variant(None)
    return out


def figures(prep: Any, lines: list[dict[str, Any]] | None, where: Path) -> list[dict[str, str]]:
    """The model's figures of its test predictions, as {"title", "file"} relative to the cell directory."""
    split = test_split(prep)
    if lines is None or split is None or not distributed.is_main():
        return []
    out = where / "figures"

    def batch_of(samples: list[Any]) -> Any:
        return next(iter(prep.batches(split, samples=list(samples)))).to(prep.device)

    with torch.no_grad():
        made = prep.model.figures(list(prep.splits[split]), lines, batch_of, out)
    checked = []
    for fig in made:
        path = (out / fig["file"]).resolve()
        if not path.is_file() or out.resolve() not in path.parents:
            model = type(prep.model).__name__
            raise RuntimeError(f"{model}.figures listed {fig['file']!r}, which is not a file it wrote under {out}")
        checked.append({"title": str(fig["title"]), "file": str(path.relative_to(where.resolve()))})
    return checked
