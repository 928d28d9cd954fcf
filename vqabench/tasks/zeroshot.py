"""Zero-shot classification: an image and its class label; class names, prompt templates and class attributes.

A model may add ``prompt_logits`` ({template: [C floats]}) and ``prompts`` (the templates in the
order it used them: stored JSON sorts object keys) to its ensemble ``logits``; ``score`` then
reports every template (``by_prompt``, with ``prompts`` for the order) and the spread of top-1
over them, and the leaderboard adds a prompt table per model (report 003).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from vqabench import metrics
from vqabench.metrics.base import Metric
from vqabench.metrics.zeroshot import attribute_accuracy
from vqabench.tasks.base import Batch, CollateContext, Task

ATTRIBUTE_SUFFIX = "_accuracy"  # "<attribute>_accuracy": the predicted class has the true class's attribute value
ENSEMBLE = "Ensemble (mean of normalised embeddings)"
# The placeholders a template may write the class name with; report 003 shows them as "{object}".
_PLACEHOLDER = re.compile(r"\{(?:0|c)?\}")


@dataclass(frozen=True)
class ImageSample:
    """One labelled image."""

    id: str
    image: str  # absolute path of the image file
    label: int  # index into TaskData.class_names


@dataclass
class ImageBatch(Batch):
    ids: list[str]
    images: torch.Tensor  # float [B, 3, H, W] in [0, 1]
    labels: torch.Tensor  # long [B]
    image_features: torch.Tensor | None = None  # frozen-stem output per image, when cached


class ZeroShotTask(Task):
    name = "zeroshot"
    description = "zero-shot classification: logits over class names"
    sample_type = ImageSample
    prediction_fields = ("logits",)
    primary_metric = "top1"
    metric_names = ("top1", "mean_per_class_recall")  # top5 too, with at least five classes
    columns = (("top1", "Top-1"), ("top5", "Top-5"), ("mean_per_class_recall", "Mean per-class"))
    # Not best-metric choices (a model without prompt_logits lacks them), but the gate may threshold them.
    extra_metrics = {
        "prompt_top1_mean": Metric("prompt_top1_mean", description="Top-1 averaged over the prompt templates"),
        "prompt_top1_std": Metric(
            "prompt_top1_std",
            higher_is_better=False,
            description="Sample standard deviation of top-1 over the prompt templates (prompt sensitivity)",
        ),
    }

    def metric(self, name: str) -> Metric:
        """As ``Task.metric``, plus ``<attribute>_accuracy`` (higher is better) for any class attribute."""
        try:
            return super().metric(name)
        except KeyError:
            if name.endswith(ATTRIBUTE_SUFFIX) and len(name) > len(ATTRIBUTE_SUFFIX):
                attr = name[: -len(ATTRIBUTE_SUFFIX)]
                return Metric(name, description=f"Fraction of images whose predicted class has the true {attr}")
            raise

    def check_data(self, data: Any) -> None:
        super().check_data(data)
        names = data.class_names or []
        if not names or not data.templates:
            raise ValueError(f"dataset {data.dataset!r} (zeroshot) gives no class_names or no prompt templates")
        for split, samples in data.splits.items():
            bad = next((s for s in samples if not 0 <= s.label < len(names)), None)
            if bad is not None:
                raise ValueError(
                    f"dataset {data.dataset!r} (zeroshot): sample {bad.id!r} of split {split!r} has label {bad.label}, "
                    f"outside the {len(names)} class names"
                )
        for attr, values in (data.class_attributes or {}).items():
            if len(values) != len(names):
                raise ValueError(
                    f"dataset {data.dataset!r} (zeroshot): class attribute {attr!r} has {len(values)} values "
                    f"but there are {len(names)} class names; give one value per class, in class_names order"
                )

    def fixture(self, images: list[str]) -> dict[str, Any]:
        samples = [ImageSample(f"z{i}", images[i % len(images)], i % 2) for i in range(4)]
        splits = {"train": samples, "val": samples, "test": samples}
        return {"splits": splits, "class_names": ["red", "blue"], "templates": ["a {} image"]}

    def collate(self, samples: list[ImageSample], ctx: CollateContext) -> ImageBatch:
        images, feats = ctx.images([s.image for s in samples])
        return ImageBatch([s.id for s in samples], images, ctx.tensor([s.label for s in samples], torch.long), feats)

    def reference_fields(self, sample: ImageSample) -> dict[str, Any]:
        return {"id": sample.id, "label": sample.label}

    def score_options(self, data: Any) -> dict[str, Any]:
        attributes = {k: list(v) for k, v in data.class_attributes.items()} if data.class_attributes else None
        return {"num_classes": len(data.class_names) if data.class_names else None, "attributes": attributes}

    def score(
        self,
        lines: Sequence[dict[str, Any]],
        num_classes: int | None = None,
        attributes: dict[str, list[str]] | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        """top1, top5 (five classes or more), mean_per_class_recall and ``<attribute>_accuracy`` of
        ``logits``; with ``prompt_logits``, the same per template (``by_prompt``) and the mean and
        standard deviation of top-1 over the templates (``prompt_top1_mean``, ``prompt_top1_std``)."""
        num_classes = num_classes or len(lines[0]["logits"])
        labels = [int(r["label"]) for r in lines]
        out = _classification(_matrix([r["logits"] for r in lines], num_classes), labels, attributes)
        templates = list(lines[0].get("prompts") or lines[0].get("prompt_logits") or {})
        if not templates:
            return out
        for r in lines:
            if set(r.get("prompt_logits") or {}) != set(templates):
                raise ValueError(
                    f"prediction {r.get('id')!r} has prompt_logits for {sorted(r.get('prompt_logits') or {})} but the "
                    f"first one for {sorted(templates)}: a model must score every image with the same templates"
                )
        out["prompts"] = templates
        out["by_prompt"] = {
            t: _classification(_matrix([r["prompt_logits"][t] for r in lines], num_classes), labels, attributes)
            for t in templates
        }
        top1 = [m["top1"] for m in out["by_prompt"].values()]
        out["prompt_top1_mean"] = statistics.mean(top1)
        # The sample standard deviation (n - 1): the templates are a sample of the phrasings one could
        # write. One template has no spread, 0.0 rather than undefined.
        out["prompt_top1_std"] = statistics.stdev(top1) if len(top1) > 1 else 0.0
        return out

    def columns_for(self, records: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
        """The static columns, then "<Attribute> acc" for every attribute accuracy a record's test split has."""
        return [*self.columns, *((k, _attribute_title(k)) for k in _attribute_keys(records))]

    def sections(self, records: Sequence[dict[str, Any]]) -> list[str]:
        """Report 003's prompt table, per model whose test metrics have ``by_prompt`` (its lowest seed)."""
        by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            if r["final"].get("test", {}).get("by_prompt"):
                by_model[r["model"]].append(r)
        # Zero-shot models are evaluated, not trained, so seeds rarely differ: show the lowest seed.
        shown = {model: min(rs, key=lambda r: r.get("seed", 0)) for model, rs in by_model.items()}
        attrs = _attribute_keys(records)
        lines: list[str] = []
        # Models in the order of the main table (best top-1 first), ties by model name.
        for model in sorted(shown, key=lambda m: (-shown[m]["final"]["test"].get("top1", 0.0), m)):
            r = shown[model]
            test = r["final"]["test"]
            name = r["display_name"] + (f" [{model.split('@', 1)[1]}]" if "@" in model else "")
            seed = f", seed {r['seed']}" if len(by_model[model]) > 1 else ""
            order = test.get("prompts") or list(test["by_prompt"])
            rows = [_prompt_row(_PLACEHOLDER.sub("{object}", t), test["by_prompt"][t], attrs) for t in order]
            rows.append(_prompt_row(ENSEMBLE, test, attrs))
            n = len(test["by_prompt"])
            mean, std = _fmt(test.get("prompt_top1_mean")), _fmt(test.get("prompt_top1_std"))
            lines += [
                f"### Prompts — {name} (test split{seed})",
                "",
                pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True),
                "",
                f"Sensitivity over the {n} prompt{'s' if n != 1 else ''}: top-1 mean {mean}, standard deviation {std}.",
                "",
            ]
        return lines

    def baseline(self, train: Sequence[ImageSample], data: Any) -> tuple[str, dict[str, Any]] | None:
        if not train or not data.class_names:
            return None
        counts = Counter(s.label for s in train)
        label = min(counts, key=lambda c: (-counts[c], c))
        # Classes ranked by training frequency, so top-5 is the five most frequent classes.
        rank = {c: -(counts.get(c, 0) + (1 if c == label else 0)) for c in range(len(data.class_names))}
        logits = [float(-rank[c]) for c in range(len(data.class_names))]
        # Baseline lines are the model's lines with these fields laid over them: a null prompt_logits
        # keeps the model's per-template logits out of the baseline's scores.
        return f'Most frequent class ("{data.class_names[label]}")', {
            "logits": logits,
            "prompt_logits": None,
            "prompts": None,
        }


def _matrix(rows: list[list[float]], num_classes: int) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), num_classes)


def _classification(logits: np.ndarray, labels: list[int], attributes: dict[str, list[str]] | None) -> dict[str, Any]:
    out: dict[str, Any] = dict(metrics.zero_shot_metrics(logits, labels))
    for attr, values in (attributes or {}).items():
        out[f"{attr}{ATTRIBUTE_SUFFIX}"] = attribute_accuracy(logits, labels, values)
    return out


def _attribute_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """The ``<attribute>_accuracy`` keys of the records' test metrics, in order of first appearance."""
    static = {k for k, _ in ZeroShotTask.columns}
    keys = (k for r in records for k in r["final"].get("test", {}) if k.endswith(ATTRIBUTE_SUFFIX))
    return [k for k in dict.fromkeys(keys) if k not in static]


def _attribute_title(key: str) -> str:
    return f"{key[: -len(ATTRIBUTE_SUFFIX)].replace('_', ' ').capitalize()} acc"


def _prompt_row(prompt: str, scores: dict[str, Any], attrs: list[str]) -> dict[str, str]:
    return {
        "Prompt": prompt,
        "Top-1": _fmt(scores.get("top1")),
        **{_attribute_title(k): _fmt(scores.get(k)) for k in attrs},
    }


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and value == value else "–"


TASK = ZeroShotTask()
