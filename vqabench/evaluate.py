"""Prediction over a split and scoring of stored predictions, through the task kind's object."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from vqabench import distributed
from vqabench.data import Batches
from vqabench.device import autocast
from vqabench.tasks import get_task


@torch.no_grad()
def predict(
    model: Any,
    batches: Iterable[Any],
    samples: Sequence[Any],
    kind: Any,
    device: torch.device,
    precision: str = "auto",
    progress: Any = None,
) -> list[dict[str, Any]]:
    """One stored-prediction line per sample: its reference fields plus the model's prediction.

    With several ranks each predicts a share of the batches and every rank gets all the lines,
    each sample once, in the order of one process.
    """
    task = get_task(kind)
    by_id = {s.id: s for s in samples}
    dp = distributed.current()
    if dp is not None and isinstance(batches, Batches):
        dp.sync_buffers(model)
        batches = distributed.EvalShard.of(batches, dp.rank, dp.world)
        order = batches.order()
    model.eval()
    lines: list[dict[str, Any]] = []
    for batch in batches:
        batch = batch.to(device)
        with autocast(device, precision):
            preds = model.predict(batch)
        if len(preds) != len(batch.ids):
            raise RuntimeError(
                f"{type(model).__name__}.predict returned {len(preds)} predictions for {len(batch.ids)} samples"
            )
        if not lines:
            task.check_predictions(model, preds)
        for sid, pred in zip(batch.ids, preds):
            lines.append({**task.reference_fields(by_id[sid]), **pred})
        if progress is not None:
            progress.update(len(batch.ids))
    if dp is not None and isinstance(batches, distributed.EvalShard):
        lines = dp.gather(lines, order)
    return lines


@torch.no_grad()
def mean_loss(model: Any, batches: Iterable[Any], device: torch.device, precision: str = "auto") -> float:
    """The model's mean loss over ``batches`` in eval mode (validation loss)."""
    model.eval()
    total, n = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        with autocast(device, precision):
            total += float(model.loss(batch)) * batch.num_samples
        n += batch.num_samples
    return total / max(1, n)


def score(kind: Any, records: Sequence[dict[str, Any]], **options: Any) -> dict[str, Any]:
    """The task kind's metrics from stored prediction lines."""
    if not records:
        raise ValueError("no predictions to score")
    return get_task(kind).score(records, **options)


def clipscore(
    spec: str, samples: Sequence[Any], lines: Sequence[dict[str, Any]], device: torch.device
) -> dict[str, Any]:
    """CLIPScore and RefCLIPScore of generated captions with the CLIP named by ``ARCH@WEIGHTS``;
    each line also gets its own CLIP-S under "clipscore" (to find the best and worst captions).

    ``WEIGHTS`` is an open_clip pretrained tag or a checkpoint file; ``ARCH`` may be the path of an
    open_clip model-config JSON (a custom architecture, registered under its file name).
    """
    from PIL import Image

    scorer = _clip_scorer(spec, str(device))
    by_id = {s.id: s for s in samples}
    images = []
    for line in lines:
        with Image.open(by_id[line["id"]].image) as im:
            images.append(im.convert("RGB"))
    result = scorer.score(images, [ln["caption"] for ln in lines], [ln["references"] for ln in lines], each=True)
    for line, value in zip(lines, result.pop("clipscore_each")):
        line["clipscore"] = value
    return result


@functools.lru_cache(maxsize=2)
def _clip_scorer(spec: str, device: str) -> Any:
    # Loaded once per process: validation may score captions every epoch.
    import open_clip

    from vqabench.metrics import ClipScorer
    from vqabench.weights import clip_image_size, load_open_clip

    arch, _, weights = spec.partition("@")
    if not arch or not weights:
        raise ValueError(
            f"--clipscore {spec!r}: expected ARCH@WEIGHTS, e.g. ViT-B-32@openai or my-clip.json@my-clip.pt"
        )
    if arch.endswith(".json"):
        open_clip.add_model_config(arch)
        arch = arch.rsplit("/", 1)[-1][: -len(".json")]
    model, tokenizer, mean, std, description = load_open_clip(arch, pretrained=True, checkpoint=weights)
    preprocess = open_clip.image_transform(clip_image_size(model), is_train=False, mean=mean, std=std)
    return ClipScorer(model.to(device), preprocess, tokenizer, name=f"{arch} {description}")
