"""The captioning leaderboard's own tables, in the layout of reports 003 and 004.

- Model Saved Methods (report 003): test CIDEr and CLIPScore of the checkpoint each selection
  metric kept (``record["selections"]``).
- Decoding (report 003): test CIDEr and CLIPScore of each decoding setting, and its speed
  (``record["variants"]``).
- Trainable Parameters (report 003): per model.
- Per split (report 004): BLEU-1..4, METEOR, ROUGE-L and CIDEr on every evaluated test split (the
  target domain's and the source domain's), with and without adaptation.

Rows are per model (seeds averaged: mean ± standard deviation).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pandas as pd

SELECTION_TITLES = {"val_loss": "By best validation loss", "cider": "By best CIDEr", "clipscore": "By best CLIPScore"}
SPLIT_METRICS = (
    ("bleu_1", "BLEU-1"),
    ("bleu_2", "BLEU-2"),
    ("bleu_3", "BLEU-3"),
    ("bleu_4", "BLEU-4"),
    ("meteor", "METEOR"),
    ("rouge_l", "ROUGE-L"),
    ("cider", "CIDEr"),
)


def _fmt(values: Sequence[Any], digits: int = 3) -> str:
    vals = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def _by_model(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r["model"], r["seed"])):
        out[r["model"]].append(r)
    return out


def _markdown(title: str, note: str, rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    return [f"### {title}", "", note, "", pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True), ""]


def selections_table(records: Sequence[dict[str, Any]]) -> list[str]:
    rows = []
    for model, rs in _by_model(records).items():
        names = list(dict.fromkeys(n for r in rs for n in r.get("selections") or {}))
        for name in names:
            entries = [r["selections"][name] for r in rs if name in (r.get("selections") or {})]
            notes = sorted({e["note"] for e in entries if e.get("note")})
            rows.append(
                {
                    "Model": model,
                    "Model Saved Method": SELECTION_TITLES.get(name, f"By best {name}"),
                    "Epoch": ", ".join(str(e["epoch"]) for e in entries if e.get("epoch")) or "–",
                    "CIDEr": _fmt([e.get("test", {}).get("cider") for e in entries]),
                    "CLIPScore": _fmt([e.get("test", {}).get("clipscore") for e in entries]),
                    "Note": "; ".join(notes) or "",
                }
            )
    note = "Test scores of the checkpoint each validation metric selected (validation decodes greedily)."
    return _markdown("Model Saved Methods", note, rows)


def decoding_table(records: Sequence[dict[str, Any]]) -> list[str]:
    rows = []
    for model, rs in _by_model(records).items():
        names = list(dict.fromkeys(v["name"] for r in rs for v in r.get("variants") or []))
        for name in names:
            entries = [v for r in rs for v in r.get("variants") or [] if v["name"] == name]
            rows.append(
                {
                    "Model": model,
                    "Decoding": name,
                    "CIDEr": _fmt([e["test"].get("cider") for e in entries]),
                    "CLIPScore": _fmt([e["test"].get("clipscore") for e in entries]),
                    "Captions / s": _fmt([e.get("samples_per_second") for e in entries], 1),
                }
            )
    note = "The selected checkpoint's test captions under each decoding setting (batched; on the run's device)."
    return _markdown("Decoding", note, rows)


def parameters_table(records: Sequence[dict[str, Any]]) -> list[str]:
    from vqabench.leaderboard import fmt_params

    rows = [
        {"Settings": model, "Trainable Parameters": fmt_params(rs[0]["params"]["trainable"])}
        for model, rs in _by_model(records).items()
        if rs[0].get("trained", True)
    ]
    return _markdown("Trainable Parameters", "Parameters the recipe trains (the rest are frozen).", rows)


def splits_table(records: Sequence[dict[str, Any]]) -> list[str]:
    # Models evaluated on more than one test split (the main table already shows a lone one).
    several = [r for r in records if len([s for s in r["final"] if s != "val"]) > 1]
    splits = sorted({s for r in several for s in r["final"] if s != "val"})
    if not several:
        return []
    rows = []
    for model, rs in _by_model(several).items():
        for split in splits:
            scored = [r["final"][split] for r in rs if split in r["final"]]
            if scored:
                row = {"Model": model, "Split": split}
                row.update({title: _fmt([m.get(key) for m in scored], 4) for key, title in SPLIT_METRICS})
                rows.append(row)
    for split in splits:
        base = next((r["baseline"][split] for r in records if split in (r.get("baseline") or {})), None)
        if base:
            row = {"Model": base.get("label", "Baseline"), "Split": split}
            row.update({title: _fmt([base.get(key)], 4) for key, title in SPLIT_METRICS})
            rows.append(row)
    note = "Every evaluated split (report 004: the target domain's test split, and the source domain's)."
    return _markdown("Per split", note, rows)
