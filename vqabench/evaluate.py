"""Prediction over a split and scoring of stored predictions, dispatched on the task kind."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from vqabench.tasks import TaskData, TaskKind, captioning, qa, zeroshot

PRIMARY_METRIC = {
    TaskKind.VQA: "vqa_accuracy",
    TaskKind.ANSWERABILITY: "ap_unanswerable",
    TaskKind.ZEROSHOT: "top1",
    TaskKind.CAPTIONING: "cider",
}

_REFERENCE = {
    TaskKind.VQA: qa.reference_fields,
    TaskKind.ANSWERABILITY: qa.reference_fields,
    TaskKind.ZEROSHOT: zeroshot.reference_fields,
    TaskKind.CAPTIONING: captioning.reference_fields,
}


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA unless fp32 is asked for; nothing on CPU unless bf16 is asked for."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def predict(
    model: Any,
    batches: Iterable[Any],
    samples: Sequence[Any],
    kind: TaskKind,
    device: torch.device,
    precision: str = "auto",
    progress: Any = None,
) -> list[dict[str, Any]]:
    """One stored-prediction line per sample: its reference fields plus the model's prediction."""
    by_id = {s.id: s for s in samples}
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
        for sid, pred in zip(batch.ids, preds):
            lines.append({**_REFERENCE[kind](by_id[sid]), **pred})
        if progress is not None:
            progress.update(len(batch.ids))
    return lines


def score(
    kind: TaskKind,
    records: Sequence[dict[str, Any]],
    *,
    vqa_mode: str = "vqa",
    num_classes: int | None = None,
    spice: bool = False,
) -> dict[str, Any]:
    """The task kind's metrics from stored prediction lines."""
    if not records:
        raise ValueError("no predictions to score")
    if kind is TaskKind.VQA:
        return qa.score_vqa(records, mode=vqa_mode)
    if kind is TaskKind.ANSWERABILITY:
        return qa.score_answerability(records, mode=vqa_mode)
    if kind is TaskKind.ZEROSHOT:
        if num_classes is None:
            num_classes = len(records[0]["logits"])
        return zeroshot.score_zeroshot(records, num_classes)
    return captioning.score_captioning(records, spice=spice)


def score_options(data: TaskData) -> dict[str, Any]:
    """The keyword arguments ``score`` needs for this data, as stored in a result record."""
    return {"vqa_mode": data.vqa_mode, "num_classes": len(data.class_names) if data.class_names else None}


def clipscore(
    spec: str, samples: Sequence[Any], lines: Sequence[dict[str, Any]], device: torch.device
) -> dict[str, Any]:
    """CLIPScore and RefCLIPScore of generated captions with the CLIP named by ``ARCH@WEIGHTS``.

    ``WEIGHTS`` is an open_clip pretrained tag or a checkpoint file; ``ARCH`` may be the path of an
    open_clip model-config JSON (a custom architecture, registered under its file name).
    """
    import open_clip
    from PIL import Image

    from vqabench.metrics import ClipScorer
    from vqabench.weights import load_open_clip

    arch, _, weights = spec.partition("@")
    if not arch or not weights:
        raise ValueError(
            f"--clipscore {spec!r}: expected ARCH@WEIGHTS, e.g. ViT-B-32@openai or my-clip.json@my-clip.pt"
        )
    if arch.endswith(".json"):
        open_clip.add_model_config(arch)
        arch = arch.rsplit("/", 1)[-1][: -len(".json")]
    model, tokenizer, mean, std, description = load_open_clip(arch, pretrained=True, checkpoint=weights)
    size = model.visual.image_size
    preprocess = open_clip.image_transform(
        size if isinstance(size, int) else size[0], is_train=False, mean=mean, std=std
    )
    by_id = {s.id: s for s in samples}
    images = []
    for line in lines:
        with Image.open(by_id[line["id"]].image) as im:
            images.append(im.convert("RGB"))
    scorer = ClipScorer(model.to(device), preprocess, tokenizer, name=f"{arch} {description}")
    return scorer.score(images, [ln["caption"] for ln in lines], [ln["references"] for ln in lines])
